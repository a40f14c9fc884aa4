"""How much an image's restoration depends on its batch mates: the same crops restored one per batch and in
batches of B, with the same per-image seeds (image i's noise comes from (seed, i) in both).

    .venv/bin/python benchmarks/batch_size_effect.py --num 8 --batch-size 4 --steps 100

The sampler treats every image separately (its own noise, φ and data term); only the UNet's float arithmetic
changes with the batch shape (other convolution blockings), by about 1e-7 per forward. The script prints, per
image, how many 8-bit values of the output differ and by how much (levels of 1/255).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from gdp_lightning import build_module
from gdp_lightning.benchmark import quantize, skimage_crops
from gdp_lightning.metrics import to_8bit


def restore_in_batches(module, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for start in range(0, y.shape[0], batch_size):
        part = y[start : start + batch_size]
        indices = torch.arange(start, start + part.shape[0])
        batch = {"y": part, "name": [str(int(i)) for i in indices], "index": indices}
        out += [item.results[0].image for item in module.restore_batch(batch).items]
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", default="100")
    parser.add_argument("--scale", type=float, default=8000.0)
    parser.add_argument("--checkpoint", default="../shared/priors/skimage64.pt")
    parser.add_argument("--seed", type=int, default=11, help="which crops (scikit-image's photos)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    clean = skimage_crops(args.num, seed=args.seed)
    y = quantize(F.avg_pool2d(clean, 4))  # SR x4: GDP's 4x4 block average, 8-bit
    module = build_module("sr4", "skimage64", args.checkpoint, sampler={"steps": args.steps, "scale": args.scale},
                          progress=False)
    module.setup("predict")
    module._start_restoring()
    t0 = time.perf_counter()
    single = to_8bit(restore_in_batches(module, y, 1))
    t1 = time.perf_counter()
    batched = to_8bit(restore_in_batches(module, y, args.batch_size))
    t2 = time.perf_counter()
    levels = ((single - batched) * 255).round().abs()
    print(f"SR x4, skimage64, {args.steps} steps, scale {args.scale:g}: {args.num} crops, batch 1 "
          f"({t1 - t0:.0f} s) against batch {args.batch_size} ({t2 - t1:.0f} s)")
    print("| image | 8-bit values that differ | largest difference (levels) | mean absolute difference (levels) |")
    print("|---|---|---|---|")
    for i in range(args.num):
        d = levels[i]
        print(f"| {i} | {int((d > 0).sum())} of {d.numel()} | {int(d.max())} | {float(d.mean()):.5f} |")
    print(f"all images: mean absolute difference {float(levels.mean()):.5f} levels, "
          f"{int((levels.flatten(1) > 0).any(1).sum())} of {args.num} images not identical")


if __name__ == "__main__":
    main()
