"""Before and after fine-tuning: the held-out denoising loss and SR ×4 of the held-out crops, with skimage64 and
with the demo prior.

    .venv/bin/python benchmarks/finetune_eval.py            # after `make demo-prior` (or benchmarks/demo_data.py)

First the denoising loss of each prior on the held-out crops (:func:`gdp_lightning.finetune.training.denoising_loss`: the
improved-DDPM training loss, ε MSE plus the variational-bound term, at 8 evenly spread timesteps with seeded
noise, as ``gdp fit``'s validation logs it: how well the prior models the domain).
Then ``gdp validate`` (synthetic mode: each 64×64 held-out crop of ``logs/finetune/heldout`` is reduced 4× by
block averaging, stored as 8 bits and restored; PSNR and SSIM on the 8-bit outputs) once per prior, with the same
seeds, steps and scales; prints the mean PSNR and SSIM per prior and scale, over all crops and split into the
grayscale photos and the HDR scene; and writes ``docs/demo_finetune.png``: for the demo crops, the observation
(nearest-neighbour ×4), the restorations of both priors and the ground truth.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
import yaml

from gdp_lightning.benchmark import save_columns, sr4_observation
from gdp_lightning.cli import main as gdp
from gdp_lightning.data import read_image
from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.prior import PriorSpec, load_prior
from gdp_lightning.finetune.training import denoising_loss

REPO = Path(__file__).resolve().parents[1]
PRIORS = {
    "skimage64": ["--config", str(REPO / "configs/prior/skimage64.yaml")],
    "demo_prior": ["--config", str(REPO / "configs/demo.yaml")],
}


def held_out_loss(name: str, heldout: Path) -> dict:
    """The prior's denoising loss on the held-out crops, crop i's noise drawn from seed i."""
    config = yaml.safe_load(Path(PRIORS[name][1]).read_text())["model"]["prior"]
    spec = PriorSpec.from_dict(config)
    model = load_prior(spec, REPO / spec.checkpoint)
    x = torch.stack([read_image(p).pixels for p in sorted(heldout.glob("*.png"))]) * 2 - 1
    terms = denoising_loss(GaussianDiffusion.from_prior(spec), model, x,
                           [torch.Generator().manual_seed(i) for i in range(len(x))])
    return {key: value.mean().item() for key, value in terms.items()}


def evaluate(name: str, heldout: Path, out: Path, steps: int, scales: list) -> list:
    start = time.perf_counter()
    rc = gdp(["validate", *PRIORS[name], "--config", str(REPO / "configs/task/sr4.yaml"),
              "--data.input_dir", str(heldout), "--data.mode", "synthetic", "--data.batch_size", "8",
              "--model.sampler.steps", str(steps), "--model.sampler.guidance", "gradient", "--model.sampler.scales", str(scales),
              "--model.metrics", "[psnr, ssim]", "--writer.output_dir", str(out / name), "--writer.overwrite", "true",
              "--trainer.logger.init_args.save_dir", str(out / "logs"), "--trainer.logger.init_args.name", name,
              "--model.progress", "false", "--trainer.enable_progress_bar", "false"])
    if rc != 0:
        raise SystemExit(f"gdp validate failed for {name}")
    with open(out / name / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"{name}: {len(rows)} crops in {time.perf_counter() - start:.0f} s")
    return rows


def summary(rows: list, scale: float, subset) -> str:
    chosen = [r for r in rows if float(r["scale"]) == scale and subset(r["name"])]
    psnr = statistics.mean(float(r["psnr"]) for r in chosen)
    ssim = statistics.mean(float(r["ssim"]) for r in chosen)
    return f"{psnr:.2f} / {ssim:.3f} ({len(chosen)})"


def figure(heldout: Path, out: Path, names: list, scale: float, path: Path) -> None:
    columns = []
    for name in names:
        clean = read_image(heldout / f"{name}_0.png").pixels[None]
        restored = [read_image(out / prior / f"{name}_0_s{scale:g}.png").pixels for prior in PRIORS]
        columns.append([sr4_observation(clean)[0], *restored, clean[0]])
    save_columns(columns, path)
    print(f"wrote {path}: rows observation (x4 nearest), skimage64, demo prior, ground truth; columns {names}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", default=str(REPO / "logs/finetune/heldout"))
    parser.add_argument("--out", default=str(REPO / "logs/finetune_eval"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--scales", type=float, nargs="+", default=[8000.0, 16000.0])
    parser.add_argument("--figure", default=str(REPO / "docs/demo_finetune.png"))
    parser.add_argument("--figure-names", nargs="+", default=["brick", "coins", "gravel", "text"])
    parser.add_argument("--denoising-only", action="store_true", help="only the held-out denoising loss")
    args = parser.parse_args()
    heldout, out = Path(args.heldout), Path(args.out)
    print("| prior | held-out denoising loss | ε MSE | VB term |")
    print("|---|---|---|---|")
    for name in PRIORS:
        d = held_out_loss(name, heldout)
        print(f"| {name} | {d['loss']:.5f} | {d['mse']:.5f} | {d['vb']:.5f} |")
    if args.denoising_only:
        return
    results = {name: evaluate(name, heldout, out, args.steps, args.scales) for name in PRIORS}
    print("| prior | scale | all held-out crops | grayscale photos | HDR scene |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        for scale in args.scales:
            print(f"| {name} | {scale:g} | {summary(rows, scale, lambda n: True)} | "
                  f"{summary(rows, scale, lambda n: not n.startswith('hdr'))} | "
                  f"{summary(rows, scale, lambda n: n.startswith('hdr'))} |")
    figure(heldout, out, args.figure_names, args.scales[-1], Path(args.figure))


if __name__ == "__main__":
    cli()
