"""Guidance scales per task: one ``gdp validate`` scale sweep per task config on held-out 64×64 crops.

    python benchmarks/scale_ranges.py --num 4 --steps 100            # skimage64, every task with ground truth
    python benchmarks/scale_ranges.py --tasks sr4 deblur --scales 2000 8000 32000

Clean crops of scikit-image's photos are degraded on the fly (synthetic mode, 8-bit rounded observations;
inpainting 25 % random pixels; the blind tasks' true blur a Gaussian of σ 1.5 px);
the table gives mean PSNR / SSIM / consistency of the 8-bit outputs per scale (paper convention), under GDP's
gradient rule (``--model.sampler.guidance gradient``: the shipped linear tasks' default rule has no scale).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gdp_lightning.benchmark import skimage_crops
from gdp_lightning.cli import main
from gdp_lightning.data import write_image

REPO = Path(__file__).resolve().parents[1]
TRUE_BLUR = {"class_path": "gdp_lightning.degradations.Blur",
             "init_args": {"kernel": "gaussian:9:1.5", "padding": "reflect"}}
# what synthetic mode needs beyond the task config: a mask for inpainting, the true operator of blind tasks
EXTRA = {
    "inpaint": ["--model.degradation.init_args.mask", "random:0.25"],
    "blind_deblur": ["--data.degradation", json.dumps(TRUE_BLUR)],
    "blur_sr4": ["--data.degradation", json.dumps({
        "class_path": "gdp_lightning.degradations.Compose",
        "init_args": {"operators": [TRUE_BLUR, {"class_path": "gdp_lightning.degradations.SuperResolution",
                                                 "init_args": {"factor": 4}}]}})],
}
SWEEPS = {
    "sr4": [2000, 4000, 8000, 16000, 32000, 64000],
    "deblur": [6000, 12000, 24000, 48000, 96000, 192000],
    "inpaint": [4000, 8000, 16000, 32000],
    "colorize": [2500, 5000, 10000, 20000],
    "blind_deblur": [6000, 12000, 24000, 48000],
    "blur_sr4": [2000, 4000, 8000, 16000],
}


def run(task: str, scales, crops_dir: Path, work: Path, prior: str, steps: int, batch: int) -> dict:
    out = work / task
    args = [
        "validate", "--config", prior, "--config", str(REPO / "configs" / "task" / f"{task}.yaml"),
        "--data.input_dir", str(crops_dir), "--data.mode", "synthetic", "--data.batch_size", str(batch),
        "--model.sampler.steps", str(steps), "--model.sampler.guidance", "gradient", "--model.sampler.scales", json.dumps(list(scales)),
        "--model.metrics", "[psnr, ssim, consistency]", "--model.progress", "false",
        "--writer.output_dir", str(out), "--trainer.logger.init_args.save_dir", str(work / "logs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ] + EXTRA.get(task, [])
    if main(args) != 0:
        raise SystemExit(f"{task}: gdp validate failed")
    return json.loads((out / "metrics.json").read_text())["mean_by_scale"]


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default=str(REPO / "configs" / "prior" / "skimage64.yaml"))
    parser.add_argument("--tasks", nargs="+", default=list(SWEEPS))
    parser.add_argument("--scales", nargs="+", type=float, default=None, help="the same scales for every task")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=123, help="crop seed (held out from the tests' seeds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        crops = work / "clean"
        for i, image in enumerate(skimage_crops(args.num, size=64, seed=args.seed)):
            write_image(crops / f"crop{i}.png", image)
        print(f"| task | scale | PSNR (dB) | SSIM | consistency |  ({args.num} crops, {args.steps} steps)")
        print("|---|---|---|---|---|")
        for task in args.tasks:
            start = time.perf_counter()
            means = run(task, args.scales or SWEEPS[task], crops, work, args.prior, args.steps, args.num)
            for scale, m in means.items():
                print(f"| {task} | {scale} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['consistency']:.2f} |")
            print(f"<!-- {task}: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    cli()
