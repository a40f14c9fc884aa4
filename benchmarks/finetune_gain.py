"""What fine-tuning gains: the base prior against a fine-tuned one on held-out crops of the new domain, for each
linear task, at equal sampler settings.

    .venv/bin/python benchmarks/finetune_gain.py --tuned data/demo_prior.pt [--crops data/documents/heldout]
        [--steps 25] [--samples 4] [--tasks sr4 deblur inpaint colorize] [--figure docs/finetune_gain.png]
        [--guidance gradient --scale-factors 0.5 1 2] [--tuned-below 200 400]
        [--prior configs/prior/imagenet256.yaml --base 256x256_diffusion_uncond.pt] [--size 256 [--scale 1.0]]

Each task of ``configs/task`` (SR×4, deblurring, inpainting with 25 % missing, colorization) degrades every held-out
crop with its operator (8-bit observation) and restores the batch with both priors (the architecture of ``--prior``,
a preset name or a prior config, skimage64 by default; the base weights ``--base``, by default the prior config's
checkpoint, and ``--tuned``), the task's settings, ``--steps`` and the same seeds. Prints per task the mean PSNR and
SSIM of each prior and the PSNR difference with its spread (the standard error of the per-crop differences); a bad
option or input (a weights file that is not the UNet of ``--prior``, too) stops with one line before anything is
restored. The crops are scored as they are, all of one size, or with ``--size N`` each cut to ``N × N`` as ``gdp
fit`` cuts its validation images (``--scale``: its ``--data.val_scale``). ``--guidance gradient`` restores with
GDP's gradient rule instead of the data-consistency rule, at each of ``--scale-factors`` times the task's scale of
``GRADIENT_SCALES`` (paper convention). ``--tuned-below T`` asks at which noise levels the fine-tune gains or loses:
the tuned prior's restorations use its weights at the timesteps below T (of the prior's 1000) and the base weights
from T up, one run per T (``T`` 0: the base prior throughout; 1000: the tuned one). ``--figure`` writes, for the
first crops, the observation, both restorations and the ground truth of SR×4 and deblurring.

The defaults are the settings of the README's before/after table (25 steps, the mean of 4 samples). With every
task at one scale the run ends with the bar a fine-tune has to clear to pay: a gain of at least ``GAIN`` dB on at
least ``GAINING`` tasks and a loss of no more than ``LOSS`` dB on any (the means; :func:`verdict`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from gdp_lightning.api import build_module, prior_options
from gdp_lightning.benchmark import GRADIENT_SCALES, LINEAR_TASKS, psnr, restore_crops, save_columns, ssim
from gdp_lightning.data import read_image, resize_and_center_crop
from gdp_lightning.data.datasets import IMAGE_EXTENSIONS
from gdp_lightning.errors import ConfigError, GDPError, InputError
from gdp_lightning.prior import (CheckpointError, PriorSpec, extract_unet_state_dict, matching_presets, read_checkpoint,
                                 state_dict_mismatches)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO.parent / "shared" / "priors" / "skimage64.pt"
GAIN, GAINING, LOSS = 0.5, 2, 0.1
WEIGHTS = {"--tuned": "the fine-tuned prior's weights (gdp export CKPT OUT.pt writes them)",
           "--base": "the base prior's weights"}


def verdict(gains: dict) -> str:
    """One line: whether the mean PSNR gains per task (dB) clear the bar (at least ``GAIN`` on ``GAINING`` tasks,
    no loss beyond ``LOSS``)."""
    gaining = sorted(task for task, gain in gains.items() if gain >= GAIN)
    task, worst = min(gains.items(), key=lambda item: item[1])
    holds = len(gaining) >= GAINING and worst >= -LOSS
    return (f"{'pays' if holds else 'does not pay'}: {len(gaining)} of {len(gains)} tasks gain at least {GAIN} dB "
            f"({', '.join(gaining) or 'none'}; {GAINING} needed), the worst is {task} at {worst:+.2f} dB "
            f"(at least {-LOSS:+.1f} needed)")


def shown(observation: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(observation[:, :3], size=size, mode="nearest") if observation.shape[-2:] != size \
        else observation[:, :3]


def base_prior(prior: str, weights) -> nn.Module:
    """The UNet of ``prior`` (preset or config) holding ``weights`` (``None``: the config's), set up to restore."""
    module = build_module("sr4", prior, weights, progress=False)  # any task: only the prior is kept
    module.setup("predict")
    return module.unet


def tuned_below(base: nn.Module, first: int):
    """A ``restore_crops`` hook: the module's prior answers with ``base`` at the timesteps from ``first`` up and
    with its own weights below."""
    def prepare(module) -> None:
        own = module.unet.forward

        def forward(x, timesteps, *args, **kwargs):
            high = timesteps >= first
            if not bool(high.any()):
                return own(x, timesteps, *args, **kwargs)
            if bool(high.all()):
                return base(x, timesteps, *args, **kwargs)
            mix = high.view(-1, *[1] * (x.ndim - 1))
            return torch.where(mix, base(x, timesteps, *args, **kwargs), own(x, timesteps, *args, **kwargs))

        module.unet.forward = forward
    return prepare


def config_checkpoint(spec: PriorSpec, prior: str) -> Path:
    """The checkpoint that the prior preset's or config's spec names (``skimage64``: the shared one)."""
    if prior == "skimage64":
        return BASE
    if not spec.checkpoint:
        raise ConfigError(f"--prior {prior} names no checkpoint; give the base prior's weights with --base FILE")
    return Path(spec.checkpoint)


def prior_spec(prior: str) -> PriorSpec:
    """The :class:`PriorSpec` of a prior preset or config."""
    try:
        return PriorSpec.from_dict(prior_options(prior).get("prior") or {})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--prior {prior}: not a valid prior config: {e}") from None


def check_weights(expected: dict, prior: str, option: str, path: Path) -> None:
    """Stop before restoring anything when the weights file ``path`` (given as ``option``) does not hold the UNet
    whose state dict (shapes) is ``expected`` (``--prior prior``'s), naming the ``--prior`` it does hold where it is
    a preset's."""
    try:
        weights = extract_unet_state_dict(read_checkpoint(path), source=str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{option} {e}") from None
    problems = state_dict_mismatches(expected, weights)
    if problems:
        fits = matching_presets(weights)
        hint = (f"they are the UNet of preset {fits[0]!r}: give --prior {fits[0]}" if fits else
                "give the weights of a prior with the UNet --prior describes (the one the fine-tune started from)")
        raise CheckpointError(f"{option} {path}: not the UNet of --prior {prior}: {'; '.join(problems)}; {hint}")


def read_crops(folder: Path, size: Optional[int] = None, scale: Optional[float] = None) -> Tuple[torch.Tensor, int]:
    """The clean images of ``folder`` (every image file, by name) as one ``(N, 3, H, W)`` batch, and how many of
    them were resized or cut. Without ``size`` the images are taken as they are (all of one size); with it each is
    cut to ``size × size`` as ``gdp fit`` cuts its validation images (``scale``: its ``--data.val_scale``;
    :func:`~gdp_lightning.data.resize_and_center_crop`)."""
    if not folder.is_dir():
        raise InputError(f"--crops {folder}: no such folder; give a folder of clean images held out of the "
                         f"training data")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"--crops {folder}: no images in it ({', '.join(IMAGE_EXTENSIONS)}); give a folder of "
                         f"clean images held out of the training data")
    crops, changed = [], 0
    for path in files:
        image = read_image(path).pixels
        crop = image if size is None else resize_and_center_crop(image, size, scale)
        changed += not torch.equal(crop, image)  # (False for tensors of two shapes)
        if crops and crop.shape != crops[0].shape:
            raise InputError(f"--crops {folder}: {path.name} is {crop.shape[-1]}x{crop.shape[-2]}, {files[0].name} "
                             f"{crops[0].shape[-1]}x{crops[0].shape[-2]}; give crops of one size (they restore as "
                             f"one batch), or --size N to cut each as gdp fit cuts its validation images")
        crops.append(crop)
    return torch.stack(crops), changed


def compare(args: argparse.Namespace) -> None:
    """Score both priors on every task of ``args`` and print the table (and the bar, the figure)."""
    spec = prior_spec(args.prior)
    if args.base is None:
        args.base = config_checkpoint(spec, args.prior)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = spec.build_unet().state_dict()
    for option, path in (("--tuned", args.tuned), ("--base", args.base)):
        if not path.is_file():
            raise InputError(f"{option} {path}: no such file; give {WEIGHTS[option]}")
        check_weights(expected, args.prior, option, path)
    size = spec.unet.image_size if args.size is None and args.scale is not None else args.size
    clean, changed = read_crops(args.crops, size, args.scale)
    priors = {"base": args.base, "tuned": args.tuned}
    cut = f", {changed} of them cut to {size}x{size} as gdp fit validates" if changed else ""
    print(f"{len(clean)} crops of {args.crops}{cut}, {args.steps} steps, {args.samples} sample(s), guidance "
          f"{args.guidance}; prior {args.prior}: base {args.base}, tuned {args.tuned}")
    print("| task | base PSNR / SSIM | tuned PSNR / SSIM | PSNR gain (dB) ± s.e. | s |")
    print("|---|---|---|---|---|")
    columns, gains, base_results = {}, {}, {}
    base_unet = base_prior(args.prior, args.base) if args.tuned_below else None
    runs = [(task, factor, first) for task in args.tasks for factor in args.scale_factors
            for first in args.tuned_below or [None]]
    for task, factor, first in runs:
        start = time.perf_counter()
        sampler, label = {}, task
        if args.guidance == "gradient":
            sampler = {"guidance": "gradient", "scale": factor * GRADIENT_SCALES[task]}
            label = f"{task}, scale {sampler['scale']:g}"
        if first is not None:
            label += f", tuned below t={first}"
        results, observation = {}, None
        for name, weights in priors.items():
            if name == "base" and (task, factor) in base_results:  # the same restoration as the run before
                results[name], observation = base_results[task, factor]
                continue
            hook = tuned_below(base_unet, first) if name == "tuned" and first is not None else None
            results[name], observation = restore_crops(task, weights, clean, steps=args.steps, samples=args.samples,
                                                       observation=observation, preset=args.prior, prepare=hook,
                                                       **sampler)
            if name == "base":
                base_results[task, factor] = results[name], observation
        scores = {name: (psnr(images, clean), ssim(images, clean)) for name, images in results.items()}
        diff = scores["tuned"][0] - scores["base"][0]
        gains[label] = float(diff.mean())
        error = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        cells = [f"{float(p.mean()):.2f} / {float(s.mean()):.3f}" for p, s in scores.values()]
        print(f"| {label} | {cells[0]} | {cells[1]} | {gains[label]:+.2f} ± {error:.2f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
        if task in ("sr4", "deblur") and factor == args.scale_factors[0] and task not in columns:
            columns[task] = (shown(observation, clean.shape[-2:]), results["base"], results["tuned"])
    if len(args.scale_factors) == 1 and not args.tuned_below:
        print(verdict(gains))
    if args.figure is not None and columns:
        k = min(args.figure_crops, len(clean))
        cols = []
        for task, (obs, base, tuned) in columns.items():
            cols += [[obs[i], base[i], tuned[i], clean[i]] for i in range(k)]
        save_columns(cols, args.figure)
        print(f"figure: {args.figure} (columns: crops; rows: observation, base, tuned, ground truth; "
              f"{', '.join(columns)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", type=Path, required=True, help="the fine-tuned prior's weights")
    parser.add_argument("--prior", default="skimage64",
                        help="the architecture both weights are for: a preset name or a prior config (YAML)")
    parser.add_argument("--base", type=Path, default=None,
                        help="the base prior's weights (default: the prior config's checkpoint)")
    parser.add_argument("--crops", type=Path, default=REPO / "data" / "documents" / "heldout")
    parser.add_argument("--size", type=int, default=None,
                        help="cut each image to N x N as gdp fit cuts its validation images (default: the images "
                             "as they are, of one size; with --scale alone: the prior's image size)")
    parser.add_argument("--scale", type=float, default=None,
                        help="with --size: cut each image as gdp fit's --data.val_scale does (default: its short "
                             "side resized to --size, then the centre; 1.0: the centre of the pixels as they are)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--samples", type=int, default=4, help="posterior samples per crop (their mean is scored)")
    parser.add_argument("--tasks", nargs="+", default=list(LINEAR_TASKS), choices=list(LINEAR_TASKS))
    parser.add_argument("--guidance", choices=["auto", "gradient"], default="auto",
                        help="the tasks' default (data consistency) or GDP's gradient rule")
    parser.add_argument("--scale-factors", type=float, nargs="+", default=[1.0],
                        help="with --guidance gradient: multiples of the task's scale (GRADIENT_SCALES)")
    parser.add_argument("--tuned-below", type=int, nargs="+", default=None, metavar="T",
                        help="restore with the tuned weights at the timesteps below T only, the base ones above")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--figure-crops", type=int, default=4)
    args = parser.parse_args()
    for option in ("size", "scale", "steps", "samples"):
        if getattr(args, option) is not None and getattr(args, option) <= 0:
            parser.error(f"--{option} must be positive, got {getattr(args, option)}")
    if args.guidance == "auto" and args.scale_factors != [1.0]:
        parser.error("--scale-factors needs --guidance gradient (the data-consistency rule has no scale)")
    try:
        compare(args)
    except GDPError as error:
        sys.exit(f"finetune_gain.py: error: {error}")


if __name__ == "__main__":
    main()
