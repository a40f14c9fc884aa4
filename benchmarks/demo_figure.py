"""The README's picture of ``make demo``: the demo's inputs, its outputs and the ground truth side by side.

    make demo && .venv/bin/python benchmarks/demo_figure.py        # writes docs/demo.png

Reads the crops of ``data/demo`` (the ground truth), makes the observations the demo restores from them (4×4 block
average, 8 bits; shown enlarged ×4 by pixel repetition) and reads the outputs from ``logs/demo/outputs``; prints
each output's PSNR from the demo's ``metrics.csv``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image

from gdp_lightning.data import read_image
from gdp_lightning.degradations import SuperResolution
from gdp_lightning.metrics import to_8bit

REPO = Path(__file__).resolve().parents[1]


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default=str(REPO / "data/demo"))
    parser.add_argument("--outputs", default=str(REPO / "logs/demo/outputs"))
    parser.add_argument("--out", default=str(REPO / "docs/demo.png"))
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args()
    inputs, outputs = Path(args.inputs), Path(args.outputs)
    names = sorted(p.stem for p in inputs.glob("*.png"))
    with open(outputs / "metrics.csv", newline="") as f:
        psnr = {row["name"]: float(row["psnr"]) for row in csv.DictReader(f)}
    size, gap = 64, 2
    canvas = np.full((3 * (size + gap) - gap, len(names) * (size + gap) - gap, 3), 255, np.uint8)
    for c, name in enumerate(names):
        clean = read_image(inputs / f"{name}.png").pixels[None]
        observed = F.interpolate(to_8bit(SuperResolution(4)(clean)), scale_factor=4, mode="nearest")[0]
        column = [observed, read_image(outputs / f"{name}.png").pixels, clean[0]]
        for r, image in enumerate(column):
            pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            canvas[r * (size + gap): r * (size + gap) + size, c * (size + gap): c * (size + gap) + size] = pixels
        print(f"{name}: PSNR {psnr[name]:.2f} dB")
    image = Image.fromarray(canvas)
    image.resize((canvas.shape[1] * args.zoom, canvas.shape[0] * args.zoom), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}: rows input (16x16, shown x4), output, ground truth; columns {', '.join(names)}")


if __name__ == "__main__":
    cli()
