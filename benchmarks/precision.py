"""Speed and quality of the UNet's compute precisions (``--model.precision``) on the machine at hand.

    .venv/bin/python benchmarks/precision.py [--crops 16] [--steps 50] [--precisions fp32 bf16] [--device cpu]

On the held-out crops of ``data/heldout`` (no setting was chosen on them), each linear task of ``configs/task``
(SR×4, deblurring, inpainting with 25 % missing, colorization) degrades the clean crops with the task's operator
(8-bit observation) and restores them in one batch with skimage64 at the task's settings and ``--steps``, once per
precision, with the same seeds. Per task and precision: seconds per image (after one warm-up batch of two steps),
mean PSNR of the 8-bit outputs, and the largest difference to the fp32 output (in 8-bit levels). The first line
says what ``--model.precision auto`` picks here and why.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import gdp_lightning
from gdp_lightning.benchmark import LINEAR_TASKS, observe, psnr, quantize
from gdp_lightning.data import read_image
from gdp_lightning.precision import auto_precision

REPO = Path(__file__).resolve().parents[1]
PRIOR = REPO.parent / "shared" / "priors" / "skimage64.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--tasks", nargs="+", default=list(LINEAR_TASKS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    files = sorted((REPO / "data" / "heldout").glob("*.png"))[: args.crops]
    clean = torch.stack([read_image(f).pixels for f in files])
    choice, reason = auto_precision(device)
    print(f"{len(clean)} held-out 64x64 crops, skimage64, {args.steps} steps, {device}, "
          f"{torch.get_num_threads()} threads; auto picks {choice}: {reason}")
    print("| task | precision | s per image | PSNR (dB) | max diff to fp32 (levels) |")
    print("|---|---|---|---|---|")
    for task in args.tasks:
        options = LINEAR_TASKS[task]
        reference, y = None, None
        for precision in args.precisions:
            module = gdp_lightning.build_module(task, "skimage64", PRIOR, precision=precision,
                                                sampler={"steps": str(args.steps), "on_divergence": "keep"},
                                                progress=False, **options)
            if y is None:  # one observation for every precision
                y = observe(module.degradation, clean)
            warm = gdp_lightning.build_module(task, "skimage64", PRIOR, precision=precision,
                                              sampler={"steps": "2"}, progress=False, **options)
            gdp_lightning.restore(y[:2], task, module=warm, device=device, details=True)
            start = time.perf_counter()
            results = gdp_lightning.restore(y, task, module=module, device=device, details=True)
            seconds = (time.perf_counter() - start) / len(clean)
            images = quantize(torch.stack([r["image"].cpu() for r in results]))
            quality = float(psnr(images, clean).mean())
            if reference is None:
                reference, diff = images, "–"
            else:
                diff = f"{float((images - reference).abs().max() * 255):.0f}"
            print(f"| {task} | {precision} | {seconds:.2f} | {quality:.2f} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
