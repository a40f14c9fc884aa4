"""Cost of a GDP step against the bare UNet forward at the same batch size.

    python benchmarks/sampler_speed.py --preset skimage64 --batch-sizes 1 8 --task sr4
    python benchmarks/sampler_speed.py --batch-sizes 8 --task blind_deblur colorize lowlight
    python benchmarks/sampler_speed.py --preset imagenet256_uncond --batch-sizes 8 32 --device cuda --dtype bfloat16

Random weights (the cost does not depend on them). A step is everything the sampler does per diffusion
step (forward, x̃0/μ/Σ, guidance gradient with the task's quality terms, φ update, noise, finiteness check);
the forward is the UNet call alone. Both are timed in alternating rounds; medians are reported. Tasks:
sr4, deblur, inpaint (no φ); blind_deblur (a 9×9 kernel, one Adam step per diffusion step); lowlight (f and
M, Adam); colorize (colour constancy on x̃0 in [-1, 1], weight 5, in the guidance).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdp_lightning.degradations import (  # noqa: E402
    Blur,
    Colorization,
    Inpainting,
    LowLight,
    SuperResolution,
    gdp_gaussian_kernel,
    random_mask,
)
from gdp_lightning.diffusion import GaussianDiffusion, randn  # noqa: E402
from gdp_lightning.losses import ColorConstancy  # noqa: E402
from gdp_lightning.prior import get_preset  # noqa: E402
from gdp_lightning.sampling import GDPSampler, QualityTerm  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


TASKS = {
    "sr4": lambda size: SuperResolution(4),
    "deblur": lambda size: Blur(gdp_gaussian_kernel(9, 2), padding="valid"),
    "blind_deblur": lambda size: Blur(kernel_size=9, init_sigma=1.5, learnable=True, padding="reflect"),
    "inpaint": lambda size: Inpainting(random_mask(size, size, 0.25, torch.Generator().manual_seed(0))),
    "lowlight": lambda size: LowLight(),
    "colorize": lambda size: Colorization("mean"),
}


def degradation(task: str, size: int):
    return TASKS[task](size)


def quality(task: str):
    """The task's quality terms in the guidance (as configs/task/colorize.yaml)."""
    if task == "colorize":
        return [QualityTerm(ColorConstancy(value_range="[-1,1]"), 5.0, name="color")]
    return []


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="skimage64")
    p.add_argument("--task", nargs="+", default=["sr4"], choices=list(TASKS), help="one or more tasks")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    device = torch.device(args.device)
    spec = get_preset(args.preset)
    torch.manual_seed(0)
    unet = spec.build_unet(use_fp16=False).set_compute_dtype(DTYPES[args.dtype]).eval().requires_grad_(False).to(device)
    size = spec.unet.image_size
    diffusion = GaussianDiffusion.from_prior(spec, respacing="100")
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {args.preset} {size}x{size}, {args.dtype}, {hw}, torch {torch.__version__}")
    print("| task | batch | UNet forward, ms/image | GDP step, ms/image | ratio |\n|---|---|---|---|---|")
    for task in args.task:
        for batch in args.batch_sizes:
            fwd, stp = measure(unet, diffusion, task, batch, size, device, args.steps, args.rounds)
            print(f"| {task} | {batch} | {fwd:.2f} | {stp:.2f} | {stp / fwd:.3f} |", flush=True)


def measure(unet, diffusion, task, batch, size, device, steps, rounds):
    """Median ms per image of the bare forward and of the GDP step."""
    deg = degradation(task, size).to(device)
    sampler = GDPSampler(unet, diffusion, deg, 1000.0, quality=quality(task))
    x = torch.randn(batch, 3, size, size, device=device)
    deg.init_parameters(batch, size, size, [torch.Generator().manual_seed(i) for i in range(batch)], device)
    with torch.no_grad():
        y = deg(torch.rand(batch, 3, size, size, device=device))
    optimizer = sampler.make_optimizer()
    gens = [torch.Generator(device).manual_seed(i) for i in range(batch)]
    c = sampler.conversion(size, size)
    t = torch.full((batch,), 50, device=device, dtype=torch.long)
    model_t = diffusion.model_timesteps(t)

    def forward():
        with torch.no_grad():
            unet(x, model_t)

    def step():
        with torch.no_grad():
            noise = randn(x.shape, gens, device=device)
            out, *_ = sampler.guided_step(x, t, y, optimizer=optimizer, noise=noise, c=c)
            bool(torch.isfinite(out).all())

    timings = {"forward": [], "step": []}
    for fn in (forward, step):
        fn()
    for _ in range(rounds):
        for name, fn in (("forward", forward), ("step", step)):
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            timings[name].append((time.perf_counter() - start) / steps / batch * 1000)
    return statistics.median(timings["forward"]), statistics.median(timings["step"])


if __name__ == "__main__":
    main()
