"""Blind deblurring: how well the shipped config recovers a Gaussian blur it is not told.

    python benchmarks/blind_kernel.py                       # σ 1, 1.5, 2 px, 100 steps, the 24 held-out crops
    python benchmarks/blind_kernel.py --sigmas 2 --steps 20 --num 8

Each held-out crop (data/heldout) is blurred with a Gaussian of σ px on a 13×13 grid (reflect padding, float
observation) and restored with ``configs/task/blind_deblur.yaml`` as shipped (a 9×9 kernel learned per image,
from the second half of the steps on the least-squares kernel of x̃0). Reported per σ: the recovered kernel's width (its RMS radius, σ for a
Gaussian, see gdp_lightning.degradations.kernel_width) as mean, min and max, how many are within 25 % of the true
width, the kernel error ‖k̂ − k‖/‖k‖, the PSNR of the 8-bit outputs and of the blurred input, how far the kernel's
centre of mass drifted from its grid's centre, and diverged images.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from versus_diffpir import CHECKPOINT, load_crops  # noqa: E402

from gdp_lightning.api import build_module, restore  # noqa: E402
from gdp_lightning.benchmark import psnr, quantize  # noqa: E402
from gdp_lightning.degradations import Blur, gaussian_kernel, kernel_error, kernel_offset, kernel_width  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigmas", nargs="+", type=float, default=[1.0, 1.5, 2.0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--num", type=int, default=0, help="first N crops (0: all)")
    p.add_argument("--crops", choices=["heldout", "tuning"], default="heldout")
    p.add_argument("--checkpoint", default=str(CHECKPOINT))
    args = p.parse_args()
    clean = load_crops(args.crops, args.num)
    print(f"# blind deblurring, configs/task/blind_deblur.yaml, {args.steps} steps, {clean.shape[0]} {args.crops} crops")
    print("| true σ | recovered width mean (min–max) | within 25 % | kernel error | PSNR out | PSNR blurred | "
          "centre offset px | diverged | s/img |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for sigma in args.sigmas:
        truth = gaussian_kernel(13, sigma)
        y = Blur(truth, padding="reflect")(clean)
        module = build_module("blind_deblur", "skimage64", args.checkpoint, sampler={"steps": str(args.steps)},
                              metrics=[], progress=False)
        start = time.perf_counter()
        results = restore([y[i : i + 8] for i in range(0, y.shape[0], 8)], module=module, details=True, device="cpu")
        seconds = (time.perf_counter() - start) / clean.shape[0]
        kernels = [r["phi"]["kernel"] for r in results]
        widths = torch.tensor([kernel_width(k) for k in kernels])
        true_width = kernel_width(truth)
        within = int(((widths - true_width).abs() <= 0.25 * true_width).sum())
        errors = torch.tensor([kernel_error(k, truth) for k in kernels])
        offsets = torch.tensor([math.hypot(*kernel_offset(k)) for k in kernels])
        kept = [i for i, r in enumerate(results) if r["image"] is not None]
        out = quantize(torch.stack([results[i]["image"] for i in kept]))
        print(f"| {sigma:g} | {widths.mean():.2f} ({widths.min():.2f}–{widths.max():.2f}) | {within}/{len(kernels)} | "
              f"{errors.mean():.3f} | {psnr(out, clean[kept]).mean():.2f} | {psnr(quantize(y), clean).mean():.2f} | "
              f"{offsets.mean():.2f} (max {offsets.max():.2f}) | "
              f"{len(results) - len(kept)} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
