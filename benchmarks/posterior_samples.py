"""What the posterior mean of K samples (``--model.sampler.num_samples K``) gains over one sample, what it costs in
sharpness, and whether the samples' standard deviation marks where the error is.

    .venv/bin/python benchmarks/posterior_samples.py [--crops 6] [--steps 25] [--samples 1 4 8]

On held-out crops (``skimage_crops(seed=202)``: no setting was tuned on them), each linear task of
``configs/task`` (SR×4, deblurring, inpainting with 25 % missing, colorization) degrades the clean crop with the
task's operator (8-bit observation) and restores it with skimage64 at the task's settings and ``--steps``, for
every K. Per task and K: the mean PSNR of the output (the mean of K samples; K = 1 is one sample), its sharpness
(mean gradient magnitude over the ground truth's: 1 is as sharp, below 1 smoother), and the mean over crops of the
per-pixel Pearson correlation of the samples' standard deviation with the output's absolute error (both averaged
over the channels).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import gdp_lightning
from gdp_lightning.benchmark import LINEAR_TASKS, observe, psnr, quantize, skimage_crops

REPO = Path(__file__).resolve().parents[1]
PRIOR = REPO.parent / "shared" / "priors" / "skimage64.pt"


def sharpness(image: torch.Tensor, truth: torch.Tensor) -> float:
    def gradient(x: torch.Tensor) -> torch.Tensor:
        return (x[..., 1:, :-1] - x[..., :-1, :-1]).abs().mean() + (x[..., :-1, 1:] - x[..., :-1, :-1]).abs().mean()

    return float(gradient(image) / gradient(truth))


def correlation(std: torch.Tensor, error: torch.Tensor) -> float:
    a, b = std.mean(0).flatten(), error.mean(0).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(2)
    clean = skimage_crops(args.crops, size=64, seed=202)
    print(f"{args.crops} held-out 64x64 crops, skimage64, {args.steps} steps")
    print("| task | K | PSNR (dB) | sharpness | corr(std, abs error) | s per image |")
    print("|---|---|---|---|---|---|")
    for task, options in LINEAR_TASKS.items():
        module = gdp_lightning.build_module(task, "skimage64", PRIOR, sampler={"steps": str(args.steps)}, **options)
        y = observe(module.degradation, clean)
        for k in args.samples:
            start = time.perf_counter()
            results = gdp_lightning.restore(y, task, "skimage64", PRIOR, steps=args.steps, details=True,
                                            sampler={"steps": str(args.steps), "num_samples": k,
                                                     "on_divergence": "keep"}, progress=False, **options)
            seconds = (time.perf_counter() - start) / len(clean)
            images = torch.stack([r["image"] for r in results])
            quality = float(psnr(quantize(images), clean).mean())
            sharp = sum(sharpness(images[i], clean[i]) for i in range(len(clean))) / len(clean)
            if k > 1:
                corr = sum(correlation(r["std"], (r["image"] - clean[i]).abs())
                           for i, r in enumerate(results)) / len(clean)
                shown = f"{corr:.2f}"
            else:
                shown = "–"
            print(f"| {task} | {k} | {quality:.2f} | {sharp:.2f} | {shown} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
