"""The saturating HDR model against the unclipped one on the shared HDR exposures.

    python benchmarks/hdr_saturation.py                      # 1/8 size (237×132), 50 steps
    python benchmarks/hdr_saturation.py --scale 4 --figure docs/hdr_saturation.png

The three exposures of ``../shared/data/hdr_example`` (the official GDP example, 1900×1060) are reduced ``--scale``
times (area averaging, which keeps the white level, then 8 bits) and restored with ``configs/task/hdr.yaml`` twice, with the degradation's
``saturation`` off (the official model y_i = f_i·x + M_i) and at the exposures' white level w (y_i =
min(f_i·x + M_i, w); the example's files clip at 248/255, their maximum), the same seed. Reported: the share of
pixels clipped in the longest exposure (any channel at w), the output's mean brightness there and elsewhere, the
learned gains f_i, and the data term over the pixels no exposure clipped (0–255 scale).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gdp_lightning.api import build_module, restore  # noqa: E402
from gdp_lightning.benchmark import quantize, save_columns  # noqa: E402
from gdp_lightning.data import read_image  # noqa: E402
from gdp_lightning.degradations import HDR  # noqa: E402

SHARED = ROOT.parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(SHARED / "data" / "hdr_example"))
    ap.add_argument("--scale", type=int, default=8, help="reduce the exposures this many times")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--checkpoint", default=str(SHARED / "priors" / "skimage64.pt"))
    ap.add_argument("--figure", default=None, help="also write the exposures and both outputs side by side")
    args = ap.parse_args()
    exposures = []
    for name in ("short", "medium", "long"):
        image = read_image(Path(args.folder) / f"{name}.png").pixels[None, :3]
        size = (image.shape[-2] // args.scale, image.shape[-1] // args.scale)
        exposures.append(quantize(F.interpolate(image, size=size, mode="area")))  # no overshoot past white
    y = HDR.stack(exposures)
    white = float(max(e.max() for e in exposures))
    clipped = (exposures[-1] >= white).any(1, keepdim=True)[0, 0]
    unclipped = ~torch.stack([(e >= white).any(1)[0] for e in exposures]).any(0)
    print(f"# {args.folder}, 1/{args.scale} size {tuple(y.shape[-2:])}, {args.steps} steps, configs/task/hdr.yaml; "
          f"white level {white * 255:.0f}/255; {100 * float(clipped.float().mean()):.1f} % of the pixels clipped in the "
          "long exposure")
    print("| model | output mean, clipped region | output mean, elsewhere | gains f (short, medium, long) | "
          "data term, unclipped pixels | s |\n|---|---|---|---|---|---|")
    outputs = {}
    for saturate in (False, True):
        module = build_module("hdr", "skimage64", args.checkpoint, sampler={"steps": str(args.steps)},
                              degradation={"init_args": {"saturation": white if saturate else None}}, metrics=[],
                              progress=False)
        start = time.perf_counter()
        result = restore(y, module=module, details=True, device="cpu")[0]
        seconds = time.perf_counter() - start
        out = result["image"][None]
        outputs[saturate] = out[0]
        gains = result["phi"]["f"].flatten().tolist()
        with torch.no_grad():
            fitted = module.degradation(out)
        residual = ((fitted - y) * 255).pow(2).mean(1)[0][unclipped].mean()
        gray = out.mean(1)[0]
        name = "saturating, min(f·x + M, w)" if saturate else "official, f·x + M"
        print(f"| {name} | {gray[clipped].mean():.3f} | {gray[~clipped].mean():.3f} | "
              f"{', '.join(f'{g:.3f}' for g in gains)} | {residual:.2f} | {seconds:.0f} |", flush=True)
    if args.figure:
        save_columns([[e[0]] for e in exposures] + [[outputs[False]], [outputs[True]]], args.figure, zoom=1)
        print(f"wrote {args.figure}: short, medium, long, official model, saturating model")


if __name__ == "__main__":
    main()
