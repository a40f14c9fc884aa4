"""Which fine-tuning settings restore the new domain best, and what they cost the prior's own domain: variants of
the demo prior's recipe (``configs/finetune_documents.yaml``) fine-tuned with ``gdp fit`` and scored on the
document tuning crops (``data/documents/tune``, never on the held-out ones) and on held-out photos
(``data/heldout``, forgetting).

    .venv/bin/python benchmarks/finetune_sweep.py [--variants recipe lr3e-5 ...] [--steps 25] [--samples 1]
        [--tasks sr4 deblur inpaint colorize] [--runs logs/finetune_sweep] [--no-photos]

Each variant is one ``gdp fit`` of skimage64 on ``data/documents/train`` with the recipe's settings and the
variant's options, without validations, into ``RUNS/<variant>``; its checkpoints (every 200 steps; ``demo``'s
every 160) at the steps it lists are exported (float16, as the demo prior) and every linear task restores the
crops with them at ``--steps`` steps and ``--samples`` samples, the same seeds for every prior (the photos at 1000
steps and at the fit's last step only). A variant whose fit has finished is not run again, and every score is
kept in ``RUNS/scores.json``: a rerun (or an interrupted run started again) only computes what is missing.
Prints, per evaluated prior, the mean PSNR gain over skimage64 on the tuning crops per task (± the standard error
of the per-crop differences) and the mean PSNR change on the photos.

The variants (``VARIANTS``) change one setting of the reference recipe (``REFERENCE``: the documents recipe with
lr 1e-4, an EMA of decay 0.9999 with warm-up and training crops of regions of 1 to 2 times the prior's size,
``train_scales [0.5, 1]``, an earlier demo prior's): the reference itself for 1400 steps
(evaluated at 200 to 1400 steps; at 1000 steps also exported with its trained weights instead of their EMA),
learning rates 3e-5 and 3e-4, an EMA of decay 0.999 without the warm-up, 25 % and 50 % of the crops replayed
from skimage64's own training photos (``benchmarks/skimage_photos.py`` writes them), training only the attention
blocks and the output head or only the decoder (``output_blocks``) and the head, and rank-8 low-rank adapters on
the 1×1 convolutions or on every convolution and linear layer (learning rate 1e-3). ``demo`` is the demo prior's
recipe as ``configs/finetune_documents.yaml`` has it (320 steps at lr 2e-4, the EMA of decay 0.9975 without
warm-up, training crops at the scale the pages are restored at, ``train_scales [1, 1]``), ``demo400`` the same
run to 400 steps (a checkpoint every 200, as the recipe was before it was cut to fit 30 minutes on a slower day),
``demo-scales0.5`` ``demo400`` with the reference's ``train_scales [0.5, 1]`` (an earlier demo prior's recipe), and
``demo-t200`` ``demo`` trained on the low noise levels only (``--model.training.timesteps [0, 200]``: where
``finetune_gain.py --tuned-below`` finds both its gains and its one-sample SR×4 loss made).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from gdp_lightning.benchmark import LINEAR_TASKS, psnr, restore_crops
from gdp_lightning.data import read_image

REPO = Path(__file__).resolve().parents[1]
BASE = REPO.parent / "shared" / "priors" / "skimage64.pt"
REPLAY = REPO / "data" / "replay" / "skimage"
GDP = Path(sys.executable).parent / "gdp"
RECIPE = ["--config", "configs/prior/skimage64.yaml", "--config", "configs/task/sr4.yaml", "--config",
          "configs/finetune.yaml", "--config", "configs/finetune_documents.yaml",
          "--data.input_dir", "data/documents/train", "--trainer.limit_val_batches", "0",
          "--model.training.baseline_validation", "false", "--trainer.enable_progress_bar", "false"]
#: a checkpoint every 200 steps (1600 crops of batch 8 an epoch), as the runs measured before the demo recipe was cut
#: to 320 steps (a checkpoint every 160) had them
EVERY_200 = ["--data.epoch_size", "1600"]
#: the reference every variant but ``demo`` changes one setting of (the documents recipe before it was shortened)
REFERENCE = ["--model.training.lr", "1e-4", "--model.training.ema_decay", "0.9999", "--model.training.ema_warmup",
             "true", "--data.train_scales", "[0.5, 1.0]", *EVERY_200]
LORA = ["--model.training.lora_rank", "8", "--model.training.lr", "1e-3"]
#: name: (gdp fit options beside REFERENCE's, or for the variants in DEMO beside the recipe as
#: configs/finetune_documents.yaml has it, optimizer steps of the fit, the steps to evaluate)
VARIANTS: Dict[str, tuple] = {
    "demo": ([], 320, (320,)),
    "demo400": (EVERY_200, 400, (400,)),
    "demo-scales0.5": (EVERY_200 + ["--data.train_scales", "[0.5, 1.0]"], 400, (400,)),
    "demo-t200": (["--model.training.timesteps", "[0, 200]"], 320, (320,)),
    "recipe": ([], 1400, (200, 400, 600, 1000, 1400)),
    "lr3e-5": (["--model.training.lr", "3e-5"], 1000, (1000,)),
    "lr3e-4": (["--model.training.lr", "3e-4"], 1000, (1000,)),
    "ema0.999": (["--model.training.ema_decay", "0.999", "--model.training.ema_warmup", "false"], 1000, (1000,)),
    "replay25": (["--data.replay_dir", str(REPLAY), "--data.replay_fraction", "0.25"], 1000, (1000,)),
    "replay50": (["--data.replay_dir", str(REPLAY), "--data.replay_fraction", "0.5"], 1000, (1000,)),
    "attention+out": (["--model.training.trainable", "[attention, out]"], 1000, (1000,)),
    "decoder+out": (["--model.training.trainable", "[output_blocks, out]"], 1000, (1000,)),
    "lora8": (LORA, 1000, (1000,)),
    "lora8-all": (LORA + ["--model.training.lora_targets", "[conv, linear]"], 1000, (1000,)),
}
#: the variants of the demo recipe itself rather than of REFERENCE
DEMO = {"demo", "demo400", "demo-scales0.5", "demo-t200"}
#: the evaluation points that also get their trained weights (not the EMA) exported
TRAINED = {("recipe", 1000)}


def checkpoint_at(run: Path, step: int) -> Path:
    found = sorted(run.glob(f"checkpoints/*step={step}.ckpt"))
    if not found:
        raise SystemExit(f"{run}: no checkpoint at step {step}")
    return found[0]


def fit(name: str, runs: Path) -> float:
    """Run the variant's fit unless its last checkpoint is there; returns its seconds (0 when it was there)."""
    options, steps, _ = VARIANTS[name]
    options = list(options) if name in DEMO else REFERENCE + list(options)
    run = runs / name
    if list(run.glob(f"checkpoints/*step={steps}.ckpt")):
        return 0.0
    if "--data.replay_dir" in options and not any(REPLAY.glob("*.png")):
        raise SystemExit(f"{REPLAY}: no replay photos; write them with benchmarks/skimage_photos.py")
    argv = [str(GDP), "fit", *RECIPE, *options, "--trainer.max_steps", str(steps),
            "--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", ".",
            "--trainer.logger.init_args.version", name]
    recipe = "the demo recipe" if name in DEMO else "the reference"
    print(f"fit {name}: {recipe} {' '.join(options)}, {steps} steps", flush=True)
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True)
    return time.perf_counter() - start


def export(name: str, step: int, weights: str, runs: Path) -> Path:
    out = runs / name / f"step{step}{'' if weights == 'ema' else '-trained'}.pt"
    if not out.exists():
        subprocess.run([str(GDP), "export", str(checkpoint_at(runs / name, step)), str(out), "--dtype", "float16",
                        "--weights", weights], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return out


def crops(folder: Path) -> torch.Tensor:
    return torch.stack([read_image(f).pixels for f in sorted(folder.glob("*.png"))])


class Scores:
    """Per-crop PSNRs, kept in a JSON file (written atomically after every new entry)."""

    def __init__(self, path: Path):
        self.path = path
        self.values = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, compute) -> List[float]:
        if key not in self.values:
            self.values[key] = [float(v) for v in compute()]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.values, indent=1))
            tmp.replace(self.path)
        return self.values[key]


def mean_and_error(diff: Sequence[float]) -> str:
    d = torch.tensor(diff, dtype=torch.float64)
    error = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return f"{float(d.mean()):+.2f} ± {error:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--tasks", nargs="+", default=list(LINEAR_TASKS), choices=list(LINEAR_TASKS))
    parser.add_argument("--steps", type=int, default=25, help="sampling steps of the evaluation")
    parser.add_argument("--samples", type=int, default=1, help="posterior samples per crop (their mean is scored)")
    parser.add_argument("--tune", type=Path, default=REPO / "data" / "documents" / "tune")
    parser.add_argument("--photos", type=Path, default=REPO / "data" / "heldout")
    parser.add_argument("--no-photos", action="store_true", help="skip the forgetting check on the photos")
    parser.add_argument("--runs", type=Path, default=REPO / "logs" / "finetune_sweep")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    sets = {"tune": crops(args.tune)} if args.no_photos else {"tune": crops(args.tune), "photos": crops(args.photos)}
    scores = Scores(args.runs / "scores.json")
    times = json.loads((args.runs / "fit_seconds.json").read_text()) if (args.runs / "fit_seconds.json").exists() \
        else {}

    def score(prior: str, weights: Path, crop_set: str, task: str) -> List[float]:
        key = f"{prior}|{crop_set}|{task}|{args.steps}|{args.samples}"
        clean = sets[crop_set]
        return scores.get(key, lambda: psnr(restore_crops(task, weights, clean, steps=args.steps,
                                                          samples=args.samples)[0], clean))

    base = {(s, t): score("skimage64", BASE, s, t) for s in sets for t in args.tasks}
    rows = []
    for name in args.variants:
        seconds = fit(name, args.runs)
        if seconds:
            times[name] = seconds
            (args.runs / "fit_seconds.json").write_text(json.dumps(times, indent=1))
        for step in VARIANTS[name][2]:
            for weights in ("ema", "trained") if (name, step) in TRAINED else ("ema",):
                prior = f"{name}@{step}" + ("" if weights == "ema" else " (trained weights)")
                path = export(name, step, weights, args.runs)
                cells = []
                for crop_set in sets:
                    for task in args.tasks:
                        if crop_set == "photos" and step not in (1000, VARIANTS[name][1]):
                            cells.append("")
                            continue
                        values = score(prior, path, crop_set, task)
                        cells.append(mean_and_error([a - b for a, b in zip(values, base[(crop_set, task)])]))
                rows.append((prior, cells, times.get(name)))
                print(f"{prior}: {' | '.join(cells)}", flush=True)
    header = [f"{t} ({s})" for s in sets for t in args.tasks]
    print(f"\nPSNR gain over skimage64 (dB ± s.e.), {args.steps} steps, {args.samples} sample(s); "
          f"skimage64 itself: " + ", ".join(f"{t} ({s}) {sum(v) / len(v):.2f}" for (s, t), v in base.items()))
    print("| prior | " + " | ".join(header) + " | fit (min) |")
    print("|---|" + "---|" * (len(header) + 1))
    for prior, cells, seconds in rows:
        print(f"| {prior} | " + " | ".join(cells) + f" | {seconds / 60:.1f} |" if seconds else
              f"| {prior} | " + " | ".join(cells) + " | |")


if __name__ == "__main__":
    main()
