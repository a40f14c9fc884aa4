"""Time and memory of GDP steps on the full 1900×1060 HDR example, restored in tiles.

    python benchmarks/tiled_large.py --preset skimage64 --task hdr --steps 1
    python benchmarks/tiled_large.py --preset imagenet256_uncond --task hdr --steps 3 --device cuda --dtype bfloat16

Random weights unless --checkpoint is given (the cost does not depend on them).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdp_lightning.degradations import HDR, LowLight  # noqa: E402
from gdp_lightning.diffusion import GaussianDiffusion, randn  # noqa: E402
from gdp_lightning.prior import get_preset, load_prior  # noqa: E402
from gdp_lightning.sampling import GDPSampler  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hdr_example"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(name: str) -> torch.Tensor:
    with Image.open(DATA / f"{name}.png") as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).float()[None] / 255


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="skimage64")
    p.add_argument("--checkpoint")
    p.add_argument("--task", default="hdr", choices=["hdr", "lowlight"])
    p.add_argument("--steps", type=int, default=1, help="timed steps")
    p.add_argument("--tile-overlap", type=int)
    p.add_argument("--tile-batch", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    device = torch.device(args.device)
    spec = get_preset(args.preset)
    unet = load_prior(spec, args.checkpoint) if args.checkpoint else spec.build_unet(use_fp16=False).eval()
    unet.set_compute_dtype(DTYPES[args.dtype]).requires_grad_(False).to(device)
    if args.task == "hdr":
        deg, y = HDR(3), HDR.stack([load(n) for n in ("short", "medium", "long")])
    else:
        deg, y = LowLight(), load("short")
    y = y.to(device)
    h, w = y.shape[-2:]
    sampler = GDPSampler(unet, GaussianDiffusion.from_prior(spec, respacing="100"), deg.to(device), 20000.0,
                         tile_overlap=args.tile_overlap, tile_batch=args.tile_batch)
    tiler = sampler.tiler(h, w)
    deg.init_parameters(1, h, w, [torch.Generator().manual_seed(0)], device)
    optimizer = sampler.make_optimizer()
    gens = [torch.Generator(device).manual_seed(0)]
    x = randn((1, 3, h, w), gens, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.no_grad():
        for i in range(args.steps + (1 if device.type == "cuda" else 0)):  # one warm-up step on a GPU
            t = torch.full((1,), 60 - i, device=device, dtype=torch.long)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            x, *_ = sampler.guided_step(x, t, y, optimizer=optimizer, noise=randn(x.shape, gens, device=device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    times = times[1:] if device.type == "cuda" else times
    mem = (f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda"
           else f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"{args.preset} ({spec.unet.image_size}px tiles, overlap {tiler.tile - (tiler.boxes[1][1] - tiler.boxes[0][1])}), "
          f"{args.task} {w}x{h}, {tiler.num_tiles} tiles per step, {args.dtype} on {args.device}: "
          f"{sum(times) / len(times):.2f} s per step ({1000 * sum(times) / len(times) / tiler.num_tiles:.1f} ms per tile), {mem}")


if __name__ == "__main__":
    main()
