"""Restoration quality against the number of steps, at one scale under the paper convention.

    python benchmarks/quality_vs_steps.py --task sr4 --scale 8000 --steps 250 100 50 25 --num 16

16 fixed 64×64 crops of scikit-image's photos (skimage64 prior), fixed seeds; PSNR on 8-bit outputs.
If the scale means the same at every step count, the rows differ little.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdp_lightning.benchmark import psnr, quantize, skimage_crops  # noqa: E402
from gdp_lightning.degradations import Blur, Inpainting, SuperResolution, gdp_gaussian_kernel, random_mask  # noqa: E402
from gdp_lightning.diffusion import GaussianDiffusion  # noqa: E402
from gdp_lightning.prior import get_preset, load_prior  # noqa: E402
from gdp_lightning.sampling import GDPSampler  # noqa: E402

TASKS = {
    "sr4": lambda: SuperResolution(4),
    "deblur": lambda: Blur(gdp_gaussian_kernel(9, 2), padding="valid"),
    "inpaint": lambda: Inpainting(random_mask(64, 64, 0.25, torch.Generator().manual_seed(1))),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sr4", choices=sorted(TASKS))
    p.add_argument("--scale", type=float, default=8000.0)
    p.add_argument("--steps", nargs="+", default=["250", "100", "50", "25"])
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "shared" / "priors" / "skimage64.pt"))
    args = p.parse_args()

    spec = get_preset("skimage64")
    unet = load_prior(spec, args.checkpoint)
    clean = skimage_crops(args.num, seed=123)
    deg = TASKS[args.task]()
    y = quantize(deg(clean))
    print(f"# {args.task}, scale {args.scale:g} (paper convention), {args.num} crops, skimage64, CPU")
    print("| steps | PSNR mean (dB) | min | max | seconds |\n|---|---|---|---|---|", flush=True)
    for steps in args.steps:
        sampler = GDPSampler(unet, GaussianDiffusion.from_prior(spec, respacing=steps), deg, args.scale)
        start = time.perf_counter()
        outs = []
        for i in range(0, args.num, args.batch_size):
            sl = slice(i, i + args.batch_size)
            outs.append(sampler.restore(y[sl], seeds=range(i, min(args.num, i + args.batch_size))).images)
        p_ = psnr(quantize(torch.cat(outs)), clean)
        print(f"| {steps} | {p_.mean():.2f} | {p_.min():.2f} | {p_.max():.2f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
