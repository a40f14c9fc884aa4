"""Peak memory (RSS) and time of ``gdp predict`` against the image's side: the memory must grow no faster than the
pixel count, so that a large photo restores within a stated peak.

    python benchmarks/memory_vs_size.py --sides 1000 2000 --steps 2              # whole runs
    python benchmarks/memory_vs_size.py --sides 1000 2000 4000 6000 --first-step  # the first step of 20

Each size runs the real command in its own process (a PNG made by enlarging a held-out crop, the skimage64 prior,
inpainting with 25 % of the pixels missing) and reports the process's peak resident memory from the operating
system, the wall time and the peak per megapixel beyond the first size's. Whole runs (``--steps``) include
reading, writing and scoring; ``--first-step`` runs 20 steps, waits for the line the command prints after its
first step (when the restoration will take more than two minutes), reads the peak so far (``VmHWM``) and stops
the process: every later step repeats the first one's state. ``--task deblur`` measures the deblurring config.
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


def _peak(pid: int) -> float:
    """VmHWM of a running process, in GiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM")


def first_step(command: list, side: int) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "step 1 of" in line:
            peak, seconds = _peak(process.pid), time.perf_counter() - start
            process.kill()
            process.wait()
            return {"side": side, "megapixels": side * side / 1e6, "peak_gib": peak, "seconds": seconds,
                    "note": line.split(": ", 1)[-1].strip()}
    process.wait()
    raise SystemExit(f"side {side}: ended (status {process.returncode}) before its first step was announced\n"
                     + "".join(lines[-20:]))


def run(side: int, steps: int, task: str, folder: Path, first: bool = False) -> dict:
    inputs = folder / f"in{side}"
    inputs.mkdir()
    photo(side, inputs / "photo.png")
    command = [sys.executable, "-m", "gdp_lightning", "predict", "--config", str(ROOT / "configs/prior/skimage64.yaml"),
               "--model.prior.checkpoint", str(CHECKPOINT), *TASKS[task], "--model.sampler.steps", str(steps),
               "--data.input_dir", str(inputs), "--writer.output_dir", str(folder / f"out{side}"),
               "--trainer.logger.init_args.save_dir", str(folder / "logs"), "--model.progress", "false",
               "--trainer.enable_progress_bar", "false", "--model.metrics", "[]"]
    if first:
        return first_step(command, side)
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
    parser.add_argument("--first-step", action="store_true", help="20 steps, stopped after the first")
    args = parser.parse_args()
    steps = 20 if args.first_step else args.steps
    what = "the first of 20 steps" if args.first_step else f"{steps} steps, whole runs"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, task {args.task}, {what}")
    print("| side | megapixels | peak RSS (GiB) | per extra megapixel (MiB) | wall (s) |")
    print("|---|---|---|---|---|")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            row = run(side, steps, args.task, Path(tmp), first=args.first_step)
            first = first or row
            extra = row["megapixels"] - first["megapixels"]
            slope = f"{(row['peak_gib'] - first['peak_gib']) * 1024 / extra:.0f}" if extra > 0 else "-"
            print(f"| {side}×{side} | {row['megapixels']:.1f} | {row['peak_gib']:.2f} | {slope} | "
                  f"{row['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
