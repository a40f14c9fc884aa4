"""Restoration quality against the number of steps, at one scale under the paper convention.

    python benchmarks/quality_vs_steps.py --task sr4 --steps 250 100 50 25 --num 16
    python benchmarks/quality_vs_steps.py --task colorize --steps 100 50   # scale 10000 + colour constancy 5
    python benchmarks/quality_vs_steps.py --task inpaint --steps 2 --num 1 --batch-size 1   # a smoke run

16 fixed 64×64 crops of scikit-image's photos (skimage64 prior), fixed seeds; PSNR on 8-bit outputs (and, for
colorization, the chroma: the mean per-pixel spread of the channels, 0 for gray). Each task has the scale of
tests/test_restoration.py (``--scale`` overrides it). If the scale means the same at every step count, the rows
differ little.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdp_lightning.benchmark import psnr, quantize, skimage_crops  # noqa: E402
from gdp_lightning.degradations import (  # noqa: E402
    Blur,
    Colorization,
    Inpainting,
    SuperResolution,
    gdp_gaussian_kernel,
    random_mask,
)
from gdp_lightning.diffusion import GaussianDiffusion  # noqa: E402
from gdp_lightning.losses import ColorConstancy  # noqa: E402
from gdp_lightning.prior import get_preset, load_prior  # noqa: E402
from gdp_lightning.sampling import GDPSampler, QualityTerm  # noqa: E402

# task: (the degradation, its scale under the paper convention, its quality terms), as in tests/test_restoration.py
TASKS = {
    "sr4": (lambda: SuperResolution(4), 8000.0, lambda: []),
    "deblur": (lambda: Blur(gdp_gaussian_kernel(9, 2), padding="valid"), 24000.0, lambda: []),
    "inpaint": (lambda: Inpainting(random_mask(64, 64, 0.25, torch.Generator().manual_seed(1))), 16000.0, lambda: []),
    "colorize": (lambda: Colorization("mean"), 10000.0,
                 lambda: [QualityTerm(ColorConstancy(value_range="[-1,1]"), 5.0, name="color")]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sr4", choices=sorted(TASKS))
    p.add_argument("--scale", type=float, default=None, help="default: the task's (sr4 8000, deblur 24000, "
                   "inpaint 16000, colorize 10000)")
    p.add_argument("--steps", nargs="+", default=["250", "100", "50", "25"])
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--substeps", type=int, default=1, help="guidance_substeps (0: 1000 / steps per step)")
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "shared" / "priors" / "skimage64.pt"))
    args = p.parse_args()

    spec = get_preset("skimage64")
    unet = load_prior(spec, args.checkpoint)
    clean = skimage_crops(args.num, seed=123)
    make, default_scale, quality = TASKS[args.task]
    scale = default_scale if args.scale is None else args.scale
    deg = make()
    y = quantize(deg(clean))
    colour = args.task == "colorize"
    terms = ", ".join(f"{q.name} {q.weight:g}{' x s' if q.relative else ''}" for q in quality())
    print(f"# {args.task}, scale {scale:g} (paper convention){', ' + terms if terms else ''}, {args.num} crops, "
          f"guidance_substeps {args.substeps}, skimage64, CPU")
    print("| steps | PSNR mean (dB) | min | max |" + (" chroma |" if colour else "") + " seconds |\n"
          "|---|---|---|---|" + ("---|" if colour else "") + "---|", flush=True)
    for steps in args.steps:
        sampler = GDPSampler(unet, GaussianDiffusion.from_prior(spec, respacing=steps), deg, scale, quality=quality(),
                             guidance_substeps=args.substeps)
        start = time.perf_counter()
        outs = []
        for i in range(0, args.num, args.batch_size):
            sl = slice(i, i + args.batch_size)
            outs.append(sampler.restore(y[sl], seeds=range(i, min(args.num, i + args.batch_size))).images)
        out = quantize(torch.cat(outs))
        p_ = psnr(out, clean)
        chroma = f" {out.std(1).mean():.3f} |" if colour else ""
        print(f"| {steps} | {p_.mean():.2f} | {p_.min():.2f} | {p_.max():.2f} |{chroma} "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
