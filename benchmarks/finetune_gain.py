"""What fine-tuning gains: the base prior against a fine-tuned one on held-out crops of the new domain, for each
linear task, at equal sampler settings.

    .venv/bin/python benchmarks/finetune_gain.py --tuned data/demo_prior.pt [--crops data/documents/heldout]
        [--steps 50] [--samples 1] [--tasks sr4 deblur inpaint colorize] [--figure docs/finetune_gain.png]

Each task of ``configs/task`` (SR×4, deblurring, inpainting with 25 % missing, colorization) degrades every
held-out crop with its operator (8-bit observation) and restores the batch with both priors (skimage64 flags; the
base weights ``../shared/priors/skimage64.pt`` and ``--tuned``), the task's settings, ``--steps`` and the same
seeds. Prints per task the mean PSNR and SSIM of each prior and the PSNR difference with its spread (the standard
error of the per-crop differences); ``--figure`` writes, for the first crops, the observation, both restorations
and the ground truth of SR×4 and deblurring.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gdp_lightning
from gdp_lightning.benchmark import LINEAR_TASKS, observe, psnr, quantize, save_columns
from gdp_lightning.data import read_image

REPO = Path(__file__).resolve().parents[1]
BASE = REPO.parent / "shared" / "priors" / "skimage64.pt"


def ssim(images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return torch.stack([structural_similarity_index_measure(a[None], b[None], data_range=1.0)
                        for a, b in zip(images, truth)])


def shown(observation: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(observation[:, :3], size=size, mode="nearest") if observation.shape[-2:] != size \
        else observation[:, :3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", type=Path, required=True, help="the fine-tuned prior's weights")
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--crops", type=Path, default=REPO / "data" / "documents" / "heldout")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1, help="posterior samples per crop (their mean is scored)")
    parser.add_argument("--tasks", nargs="+", default=list(LINEAR_TASKS), choices=list(LINEAR_TASKS))
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--figure-crops", type=int, default=4)
    args = parser.parse_args()
    files = sorted(args.crops.glob("*.png"))
    clean = torch.stack([read_image(f).pixels for f in files])
    priors = {"base": args.base, "tuned": args.tuned}
    print(f"{len(clean)} crops of {args.crops}, {args.steps} steps, {args.samples} sample(s); base {args.base}, "
          f"tuned {args.tuned}")
    print("| task | base PSNR / SSIM | tuned PSNR / SSIM | PSNR gain (dB) ± s.e. | s |")
    print("|---|---|---|---|---|")
    columns = {}
    for task in args.tasks:
        start = time.perf_counter()
        options = LINEAR_TASKS[task]
        results, observation = {}, None
        for name, weights in priors.items():
            module = gdp_lightning.build_module(task, "skimage64", weights, progress=False,
                                                sampler={"steps": str(args.steps), "on_divergence": "keep",
                                                         "num_samples": args.samples},
                                                **options)
            if observation is None:
                observation = observe(module.degradation, clean)
            out = gdp_lightning.restore(observation, task, module=module, details=True)
            results[name] = quantize(torch.stack([r["image"] for r in out]))
        scores = {name: (psnr(images, clean), ssim(images, clean)) for name, images in results.items()}
        diff = scores["tuned"][0] - scores["base"][0]
        error = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        cells = [f"{float(p.mean()):.2f} / {float(s.mean()):.3f}" for p, s in scores.values()]
        print(f"| {task} | {cells[0]} | {cells[1]} | {float(diff.mean()):+.2f} ± {error:.2f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
        if task in ("sr4", "deblur"):
            columns[task] = (shown(observation, clean.shape[-2:]), results["base"], results["tuned"])
    if args.figure is not None and columns:
        k = min(args.figure_crops, len(clean))
        cols = []
        for task, (obs, base, tuned) in columns.items():
            cols += [[obs[i], base[i], tuned[i], clean[i]] for i in range(k)]
        save_columns(cols, args.figure)
        print(f"figure: {args.figure} (columns: crops; rows: observation, base, tuned, ground truth; "
              f"{', '.join(columns)})")


if __name__ == "__main__":
    main()
