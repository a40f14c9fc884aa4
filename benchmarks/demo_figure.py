"""The README's picture of ``make demo``: the demo's inputs, its outputs and the ground truth side by side.

    make demo && .venv/bin/python benchmarks/demo_figure.py        # writes docs/demo.png

Reads the crops of ``data/demo`` (the ground truth), makes the observations the demo restores from them with the
degradation of ``configs/demo.yaml`` (8 bits; a smaller observation is shown enlarged by pixel repetition) and
reads the outputs from ``logs/demo/outputs``; prints each output's PSNR from the demo's ``metrics.csv``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch.nn.functional as F

import gdp_lightning
from gdp_lightning.benchmark import observe, save_columns
from gdp_lightning.data import read_image

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
    operator = gdp_lightning.build_module(REPO / "configs" / "demo.yaml").degradation
    columns = []
    for name in names:
        clean = read_image(inputs / f"{name}.png").pixels[None]
        observed = observe(operator, clean)
        observed = F.interpolate(observed, size=clean.shape[-2:], mode="nearest")
        columns.append([observed[0], read_image(outputs / f"{name}.png").pixels, clean[0]])
        print(f"{name}: PSNR {psnr[name]:.2f} dB")
    save_columns(columns, args.out, zoom=args.zoom)
    print(f"wrote {args.out}: rows input, output, ground truth; columns {', '.join(names)}")


if __name__ == "__main__":
    cli()
