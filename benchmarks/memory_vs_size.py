"""Peak memory (RSS) and time of ``gdp predict`` against the image's side: the memory must grow no faster than the
pixel count, so that a large photo restores within a stated peak.

    python benchmarks/memory_vs_size.py --sides 1000 2000 4000 6000 --steps 2

Each size runs the real command in its own process (a PNG made by enlarging a held-out crop, the skimage64 prior,
inpainting with 25 % of the pixels missing, ``--model.sampler.steps 2``: the first steps, whose state every later
step repeats) and reports the process's peak resident memory from the operating system (``wait4``), the wall time
and the peak per megapixel beyond the 1000×1000 run's. ``--task deblur`` measures the deblurring config instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gdp_lightning.data import read_image, write_image  # noqa: E402

CHECKPOINT = ROOT.parent / "shared" / "priors" / "skimage64.pt"
TASKS = {"inpaint": ["--config", str(ROOT / "configs/task/inpaint.yaml"),
                     "--model.degradation.init_args.mask", "random:0.25"],
         "deblur": ["--config", str(ROOT / "configs/task/deblur.yaml")]}


def photo(side: int, path: Path) -> None:
    crop = read_image(ROOT / "data" / "heldout" / "china_0.png").pixels[None]
    big = F.interpolate(crop, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    write_image(path, big)


def run(side: int, steps: int, task: str, folder: Path) -> dict:
    inputs = folder / f"in{side}"
    inputs.mkdir()
    photo(side, inputs / "photo.png")
    command = [sys.executable, "-m", "gdp_lightning", "predict", "--config", str(ROOT / "configs/prior/skimage64.yaml"),
               "--model.prior.checkpoint", str(CHECKPOINT), *TASKS[task], "--model.sampler.steps", str(steps),
               "--data.input_dir", str(inputs), "--writer.output_dir", str(folder / f"out{side}"),
               "--trainer.logger.init_args.save_dir", str(folder / "logs"), "--model.progress", "false",
               "--trainer.enable_progress_bar", "false", "--model.metrics", "[]"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    err = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"side {side}: exit status {code}\n{err[-2000:]}")
    return {"side": side, "megapixels": side * side / 1e6, "peak_gib": usage.ru_maxrss / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1000, 2000, 4000, 6000])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--task", choices=sorted(TASKS), default="inpaint")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, task {args.task}, {args.steps} steps")
    print("| side | megapixels | peak RSS (GiB) | per extra megapixel (MiB) | wall (s) |")
    print("|---|---|---|---|---|")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            row = run(side, args.steps, args.task, Path(tmp))
            first = first or row
            extra = row["megapixels"] - first["megapixels"]
            slope = f"{(row['peak_gib'] - first['peak_gib']) * 1024 / extra:.0f}" if extra > 0 else "-"
            print(f"| {side}×{side} | {row['megapixels']:.1f} | {row['peak_gib']:.2f} | {slope} | "
                  f"{row['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
