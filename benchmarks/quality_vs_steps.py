"""Restoration quality against the number of steps, for every task: the shipped rule and GDP's gradient rule.

    python benchmarks/quality_vs_steps.py                                  # every task, 10 20 50 100 steps
    python benchmarks/quality_vs_steps.py --tasks deblur --steps 1000 --num 4
    python benchmarks/quality_vs_steps.py --tasks sr4 --steps 2 --num 1    # a smoke run
    python benchmarks/quality_vs_steps.py --methods ddpm ddim --tasks sr4 deblur   # DDIM (η = 0) beside DDPM

Crops: the held-out crops of data/heldout (``--crops tuning``: scikit-image's photos, the prior's training
photos). Every task runs its shipped config (``configs/task/<task>.yaml``, ``--model.sampler.steps N``) on
synthetic observations (float values) of the protocol's operator, and, for the linear tasks, the same config with
GDP's gradient rule at the scale it shipped with before (paper convention: SR×4 8000, deblur 24000, inpainting
16000, colorization 10000, one push per step). Blind deblurring restores a Gaussian blur of σ 2 px (13×13 grid,
reflect padding); low-light enhancement an underexposure y = 0.25·x^1.5 (``Darken``), scored against the clean crop
(the LowLight model is not that operator: the PSNR says how close the enhancement lands); HDR three exposures
0.3·x, 0.7·x and 1.6·x clipped (8-bit each), scored against the clean crop. Columns: PSNR of the
8-bit outputs (mean, min), consistency c = MSE(A(x̂), y) on the 0–255 scale (with the operator the sampler
used; blind: its learned kernel), images flagged as diverged (left out of the PSNR), seconds per image.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from versus_diffpir import CHECKPOINT, OPERATORS, load_crops  # noqa: E402

from gdp_lightning.api import build_module, restore  # noqa: E402
from gdp_lightning.benchmark import GRADIENT_SCALES as GDP_SCALES  # noqa: E402
from gdp_lightning.benchmark import psnr, quantize  # noqa: E402
from gdp_lightning.degradations import HDR, Blur, Darken, gaussian_kernel  # noqa: E402
from gdp_lightning.sampling import QualityTerm  # noqa: E402

TASKS = ["sr4", "deblur", "inpaint", "colorize", "blind_deblur", "lowlight", "hdr"]


def observation(task: str, clean: torch.Tensor) -> torch.Tensor:
    if task in OPERATORS:
        return OPERATORS[task]()(clean)
    if task == "blind_deblur":
        return Blur(gaussian_kernel(13, 2.0), padding="reflect")(clean)
    if task == "hdr":  # three exposures of the crop, the longest clipped, each stored as 8 bits
        return HDR.stack([quantize(clean * 0.3), quantize(clean * 0.7), quantize((clean * 1.6).clamp(0, 1))])
    return Darken(0.25, 1.5)(clean)


def rules(task: str):
    """(name, sampler options) of the rules compared for ``task``."""
    shipped = ("shipped", {})
    if task in GDP_SCALES:
        return [shipped, ("GDP gradient", {"guidance": "gradient", "guidance_substeps": 1, "scale": GDP_SCALES[task]})]
    return [shipped]


def quality_term(spec: dict) -> QualityTerm:
    """A quality term from its config form ``{"loss": {"class_path": ..., "init_args": {...}}, "weight": ...}``."""
    module, _, name = spec["loss"]["class_path"].rpartition(".")
    loss = getattr(importlib.import_module(module), name)(**spec["loss"].get("init_args", {}))
    return QualityTerm(loss, float(spec["weight"]), bool(spec.get("relative", False)), spec.get("name"))


def run(task: str, rule: dict, steps: int, clean: torch.Tensor, y: torch.Tensor, checkpoint: str,
        model: Optional[dict] = None):
    model = dict(model or {})
    sampler = {"steps": str(steps), **rule, **model.pop("sampler", {})}
    if "quality" in model:  # the API takes quality terms as objects
        model["quality"] = [quality_term(q) for q in model["quality"]]
    module = build_module(task, "skimage64", checkpoint, sampler=sampler, metrics=[], progress=False, **model)
    if task in OPERATORS:
        module.set_task(degradation=OPERATORS[task]())
    start = time.perf_counter()
    results = restore([y[i : i + 8] for i in range(0, y.shape[0], 8)], module=module, details=True, device="cpu")
    seconds = (time.perf_counter() - start) / clean.shape[0]
    kept = [i for i, r in enumerate(results) if r["image"] is not None]
    if not kept:
        return None, None, len(results), seconds
    out = quantize(torch.stack([results[i]["image"] for i in kept]))
    p = psnr(out, clean[kept])
    c = torch.tensor([r["losses"]["data"] for r in results if r["image"] is not None]) * 255**2
    if task in OPERATORS:  # the 8-bit output against the observation
        c = ((OPERATORS[task]()(out) - y[kept]) * 255).pow(2).flatten(1).mean(1)
    return p, c, len(results) - len(kept), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50, 100])
    ap.add_argument("--crops", choices=["heldout", "tuning"], default="heldout")
    ap.add_argument("--num", type=int, default=0, help="first N crops (0: all)")
    ap.add_argument("--rules", nargs="+", default=["shipped", "GDP gradient"], choices=["shipped", "GDP gradient"])
    ap.add_argument("--methods", nargs="+", default=["ddpm"], choices=["ddpm", "ddim"],
                    help="samplers (ddim: η = 0, the guidance moving its mean as DDPM's)")
    ap.add_argument("--model", type=json.loads, default=None,
                    help='model options merged into every config, JSON: \'{"quality": [...]}\'')
    ap.add_argument("--checkpoint", default=str(CHECKPOINT))
    args = ap.parse_args()
    clean = load_crops(args.crops, args.num)
    print(f"# {args.crops} crops ({clean.shape[0]}), float observations, skimage64, {torch.get_num_threads()} "
          "CPU threads")
    print("| task | rule | steps | PSNR mean (min) | c mean (max) | diverged | s/img |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    for task in args.tasks:
        y = observation(task, clean)
        chosen = [r for r in rules(task) if r[0] in args.rules]
        for name, rule in [(n if m == "ddpm" else f"{n}, DDIM", {**r, "method": m}) for m in args.methods
                           for n, r in chosen]:
            for steps in args.steps:
                p, c, diverged, seconds = run(task, rule, steps, clean, y, args.checkpoint, args.model)
                quality = "–" if p is None else f"{p.mean():.2f} ({p.min():.2f}) | {c.mean():.2f} ({c.max():.2f})"
                if p is None:
                    quality += " | –"
                print(f"| {task} | {name} | {steps} | {quality} | {diverged} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
