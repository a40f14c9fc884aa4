"""The shipped task configs against deepinv's DiffPIR, on the same prior and the same crops, in one run.

    pip install deepinv        # DiffPIR (not a dependency of the project)
    python benchmarks/versus_diffpir.py                          # held-out crops, 100, 20 and 10 steps
    python benchmarks/versus_diffpir.py --crops tuning --steps 20 --tasks deblur

Crops: ``heldout`` (default): the 24 crops of ``data/heldout`` (photos the skimage64 prior never saw, written by
benchmarks/heldout_data.py); ``tuning``: 16 crops of scikit-image's photos (the prior's training photos, where
settings were chosen). The official protocol's operators: SR×4 block average, GDP's ``gkern(9, 2)`` blur with
valid padding, 25 % of the pixels missing (a seeded random mask), gray = channel mean; noiseless observations
(float values, or 8-bit with ``--observation 8bit``); PSNR of the 8-bit outputs, full frame; consistency c =
MSE(A(x̂), y) on the 0–255 scale.

Ours: ``configs/task/<task>.yaml`` as shipped (its sampler settings and quality terms) with the protocol's
operator, ``--model.sampler.steps N``, seed 0. DiffPIR: deepinv's ``DiffPIR`` (λ 7, ζ 0.1, its defaults) with the
same UNet wrapped as a denoiser the way deepinv's DiffUNet maps a noise level to a timestep, the same operator
as a ``LinearPhysics`` (its prox by conjugate gradients) and the noise level ``--diffpir-sigma`` (its ρ_t =
λσ²/σ̄_t²; 0.002 was its best of 0.01 and 0.002 on the tuning crops). Times are per image on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gdp_lightning.api import build_module, restore  # noqa: E402
from gdp_lightning.benchmark import psnr, quantize, save_columns, skimage_crops  # noqa: E402
from gdp_lightning.degradations import (  # noqa: E402
    Blur,
    Colorization,
    Inpainting,
    SuperResolution,
    gdp_gaussian_kernel,
    random_mask,
)
from gdp_lightning.diffusion import GaussianDiffusion  # noqa: E402
from gdp_lightning.prior import get_preset, load_prior  # noqa: E402

CHECKPOINT = ROOT.parent / "shared" / "priors" / "skimage64.pt"

# the protocol's operator of each task, for images of side 64
OPERATORS = {
    "sr4": lambda: SuperResolution(4),
    "deblur": lambda: Blur(gdp_gaussian_kernel(9, 2), padding="valid"),
    "inpaint": lambda: Inpainting(random_mask(64, 64, 0.25, torch.Generator().manual_seed(1))),
    "colorize": lambda: Colorization("mean"),
}


def load_crops(which: str, num: int) -> torch.Tensor:
    if which == "tuning":
        return skimage_crops(num or 16, seed=123)
    files = sorted((ROOT / "data" / "heldout").glob("*.png"))
    if not files:
        raise SystemExit("no crops in data/heldout: run benchmarks/heldout_data.py")
    files = files[:num] if num else files
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
                        for f in files])


class DiffusionDenoiser(torch.nn.Module):
    """The prior as a Gaussian denoiser D(x, σ) on [0, 1] images (deepinv's convention, as its DiffUNet): the
    timestep whose x_t noise level √(1/ᾱ − 1) is nearest to 2σ, x_t = √ᾱ (2x − 1), x̃0 from the predicted ε."""

    def __init__(self, unet: torch.nn.Module, diffusion: GaussianDiffusion):
        super().__init__()
        self.unet = unet
        self.alphas = diffusion.alphas_cumprod.float()

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        levels = (1 / self.alphas - 1).sqrt()
        t = (levels[None] - 2 * sigma[:, None]).abs().argmin(1).expand(x.shape[0])
        a = self.alphas[t].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * (2 * x - 1)
        with torch.no_grad():
            eps = self.unet(xt, t)[:, :3]
        return ((xt - (1 - a).sqrt() * eps) / a.sqrt() + 1) / 2


def run_diffpir(denoiser, operator, y: torch.Tensor, steps: int, sigma: float, batch: int) -> torch.Tensor:
    import deepinv as dinv

    size = (64, 64)
    physics = dinv.physics.LinearPhysics(A=operator, A_adjoint=lambda v: operator.adjoint(v, size),
                                         noise_model=dinv.physics.GaussianNoise(sigma=sigma))
    sampler = dinv.sampling.DiffPIR(denoiser, dinv.optim.data_fidelity.L2(), sigma=sigma, max_iter=steps,
                                    zeta=0.1, lambda_=7.0)
    out = []
    for i in range(0, y.shape[0], batch):
        torch.manual_seed(i)
        with torch.no_grad():
            out.append(sampler(y[i : i + batch], physics).clamp(0, 1))
    return torch.cat(out)


def score(task: str, out: torch.Tensor, clean: torch.Tensor, y: torch.Tensor):
    out = quantize(out)
    c = ((OPERATORS[task]()(out) - y) * 255).pow(2).flatten(1).mean(1)
    return psnr(out, clean), c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", choices=["heldout", "tuning"], default="heldout")
    p.add_argument("--num", type=int, default=0, help="first N crops (0: all)")
    p.add_argument("--tasks", nargs="+", default=list(OPERATORS), choices=list(OPERATORS))
    p.add_argument("--steps", nargs="+", type=int, default=[100, 20, 10])
    p.add_argument("--observation", choices=["float", "8bit"], default="float")
    p.add_argument("--diffpir-sigma", type=float, default=0.002)
    p.add_argument("--no-diffpir", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--checkpoint", default=str(CHECKPOINT))
    p.add_argument("--figure", default=None, help="also write a PNG: per task and crop, the observation, DiffPIR, "
                   "ours and the ground truth (the last step count)")
    args = p.parse_args()
    rows = []
    torch.set_num_threads(max(1, torch.get_num_threads()))

    clean = load_crops(args.crops, args.num)
    spec = get_preset("skimage64")
    denoiser = None if args.no_diffpir else DiffusionDenoiser(load_prior(spec, args.checkpoint),
                                                              GaussianDiffusion.from_prior(spec))
    print(f"# {args.crops} crops ({clean.shape[0]}), {args.observation} observations, skimage64, "
          f"{torch.get_num_threads()} CPU threads; DiffPIR sigma {args.diffpir_sigma:g}")
    print("| task | steps | ours PSNR (min) | ours c (max) | ours s/img | DiffPIR PSNR (min) | DiffPIR c | "
          "DiffPIR s/img | ours − DiffPIR |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for task in args.tasks:
        y = OPERATORS[task]()(clean)
        if args.observation == "8bit":
            y = quantize(y)
        for steps in args.steps:
            module = build_module(task, "skimage64", args.checkpoint, sampler={"steps": str(steps)}, metrics=[],
                                  progress=False)
            module.set_task(degradation=OPERATORS[task]())
            start = time.perf_counter()
            # batches of --batch-size (image i gets the seed (0, i) whatever its batch)
            chunks = [y[i : i + args.batch_size] for i in range(0, y.shape[0], args.batch_size)]
            results = restore(chunks, module=module, details=True, device="cpu")
            ours_time = (time.perf_counter() - start) / clean.shape[0]
            diverged = sum(r["diverged"] is not None for r in results)
            out = torch.stack([r["image"] if r["image"] is not None else torch.zeros(3, 64, 64) for r in results])
            ours_p, ours_c = score(task, out, clean, y)
            row = (f"| {task} | {steps} | {ours_p.mean():.2f} ({ours_p.min():.2f}) | {ours_c.mean():.3f} "
                   f"({ours_c.max():.3f}){f', {diverged} diverged' if diverged else ''} | {ours_time:.2f} |")
            if denoiser is None:
                print(row + " | | | |", flush=True)
                continue
            start = time.perf_counter()
            out = run_diffpir(denoiser, OPERATORS[task](), y, steps, args.diffpir_sigma, args.batch_size)
            dp_time = (time.perf_counter() - start) / clean.shape[0]
            dp_p, dp_c = score(task, out, clean, y)
            if args.figure and steps == args.steps[-1]:
                ours_out = torch.stack([r["image"] if r["image"] is not None else torch.zeros(3, 64, 64)
                                        for r in results])
                rows += [[shown(task, y[i]), out[i], ours_out[i], clean[i]] for i in range(clean.shape[0])]
            print(row + f" {dp_p.mean():.2f} ({dp_p.min():.2f}) | {dp_c.mean():.3f} | {dp_time:.2f} | "
                  f"{ours_p.mean() - dp_p.mean():+.2f} |", flush=True)
    if rows:
        save_columns([list(c) for c in zip(*rows)], args.figure, zoom=2)
        print(f"wrote {args.figure}: observation, DiffPIR, ours, ground truth")


def shown(task: str, y: torch.Tensor) -> torch.Tensor:
    """An observation shown at the image's size (upsampled, padded or repeated to three channels)."""
    if task == "sr4":
        return F.interpolate(y[None], scale_factor=4, mode="nearest")[0]
    if task == "deblur":
        return F.pad(y[None], (4, 4, 4, 4), value=1.0)[0]
    return y.expand(3, -1, -1).clamp(0, 1)


if __name__ == "__main__":
    main()
