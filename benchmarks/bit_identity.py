"""When are outputs bit-identical? The same ``gdp predict`` run as a user would run it in different ways, its PNGs
compared level by level.

    .venv/bin/python benchmarks/bit_identity.py [--images 8] [--steps 20]

Runs (skimage64, SR×4 of 16×16 low-resolution crops to 64×64, ``--data.batch_size 2``), each a fresh ``gdp``
process on the CPU:

- ``1p x 1t``: one process, one intra-op thread (``OMP_NUM_THREADS=1``), twice;
- ``1p x 2t``: one process, two threads (what a user gets by default on two cores);
- ``2p x 1t``: two DDP processes (gloo), one thread each (the repository's DDP test);
- ``2p x 2t``: two DDP processes, two threads each;
- ``batch 1``: one process, one thread, one image per batch.

Every run is compared with the first ``1p x 1t`` run: the number of differing 8-bit values, the largest
difference in levels, and the share of the pixels that differ.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image

from gdp_lightning.benchmark import quantize, skimage_crops
from gdp_lightning.data import write_image

REPO = Path(__file__).resolve().parents[1]
PRIOR = REPO.parent / "shared" / "priors" / "skimage64.pt"


def run(inputs: Path, out: Path, steps: int, threads: int, processes: int, batch_size: int) -> None:
    cmd = [sys.executable, "-m", "gdp_lightning", "predict", "--config", str(REPO / "configs/prior/skimage64.yaml"),
           "--config", str(REPO / "configs/task/sr4.yaml"), "--model.prior.checkpoint", str(PRIOR),
           "--model.sampler.steps", str(steps), "--model.progress", "false", "--trainer.enable_progress_bar", "false",
           "--data.input_dir", str(inputs), "--data.batch_size", str(batch_size), "--writer.output_dir", str(out),
           "--trainer.logger.init_args.save_dir", str(out.parent / f"{out.name}_logs"), "--trainer.accelerator",
           "cpu", "--trainer.devices", str(processes)]
    if processes > 1:
        cmd += ["--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise SystemExit(proc.stderr[-3000:])


def pixels(folder: Path) -> dict:
    return {p.name: np.asarray(Image.open(p)).astype(int) for p in sorted(folder.glob("*.png"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crops = skimage_crops(args.images, size=64, seed=101)  # not the crops any setting was tuned on
        low = quantize(F.avg_pool2d(crops, 4))
        for i, image in enumerate(low):
            write_image(root / "inputs" / f"c{i}.png", image)
        runs = {"1p x 1t": (1, 1, 2), "1p x 1t again": (1, 1, 2), "1p x 2t": (2, 1, 2), "2p x 1t": (1, 2, 2),
                "2p x 2t": (2, 2, 2), "batch 1": (1, 1, 1)}
        outputs = {}
        for name, (threads, processes, batch) in runs.items():
            out = root / name.replace(" ", "_")
            run(root / "inputs", out, args.steps, threads, processes, batch)
            outputs[name] = pixels(out)
        reference = outputs["1p x 1t"]
        print(f"| run | differing values | largest difference | pixels that differ |")
        print("|---|---|---|---|")
        for name, images in outputs.items():
            if name == "1p x 1t":
                continue
            diffs = [np.abs(images[k] - reference[k]) for k in reference]
            values = sum(int((d > 0).sum()) for d in diffs)
            total_pixels = sum(d.shape[0] * d.shape[1] for d in diffs)
            changed_pixels = sum(int((d.reshape(d.shape[0], d.shape[1], -1).max(-1) > 0).sum()) for d in diffs)
            largest = max(int(d.max()) for d in diffs)
            print(f"| {name} | {values} | {largest} levels | {100 * changed_pixels / total_pixels:.3f} % |")


if __name__ == "__main__":
    main()
