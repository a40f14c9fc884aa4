"""Fine-tuning the prior: ``gdp fit`` (loss, resume, validation logs, precision), ``gdp export``, the pieces of
:mod:`gdp_lightning.finetune.training`, the fit side of the data module, and the demo config.

The runs use a tiny random prior (32x32) and 3 to 20 training steps in-process.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdp_lightning.benchmark import skimage_crops
from gdp_lightning.callbacks import sha256
from gdp_lightning.cli import main
from gdp_lightning.data import read_image, write_image
from gdp_lightning.data.images import DataError
from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.errors import ConfigError
from gdp_lightning.finetune import FinetuneData, FinetuneModule
from gdp_lightning.panels import LABEL_HEIGHT, MIN_SIDE
from gdp_lightning.prior import (
    PriorSpec,
    create_model,
    merge_low_rank,
    read_checkpoint,
    select_modules,
    select_parameters,
    trainable_summary,
)
from gdp_lightning.prior import unet as unet_module
from gdp_lightning.finetune.training import (
    LossSecondMomentTimesteps,
    TrainingSettings,
    UniformTimesteps,
    denoising_loss,
    ema_decay_at,
    make_timestep_sampler,
    update_ema,
    warmup_factor,
)

from .conftest import REPO, fixture_files
from .helpers import KEEP, TINY, _randomize, _tiny

pytestmark = pytest.mark.usefixtures("cli_argv", "one_thread")

FINETUNE = REPO / "configs" / "finetune.yaml"
SR4 = REPO / "configs" / "task" / "sr4.yaml"
QUIET = ["--model.progress", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """Six clean 64x64 photos to train on and two held out."""
    crops = skimage_crops(8, size=64, seed=5)
    train, held = tmp_path_factory.mktemp("train"), tmp_path_factory.mktemp("held")
    for i, crop in enumerate(crops):
        write_image((train if i < 6 else held) / f"p{i}.png", crop)
    return {"train": train, "held": held}


def prior_config(folder: Path, flags: dict, state_dict: dict, name: str = "tiny") -> Path:
    weights = folder / f"{name}.pt"
    torch.save(state_dict, weights)
    config = folder / f"{name}.yaml"
    spec = {"name": name, "unet": flags, "diffusion": {"diffusion_steps": 1000}, "checkpoint": str(weights)}
    config.write_text(yaml.safe_dump({"model": {"prior": spec, "sampler": KEEP}}))
    return config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return prior_config(tmp_path_factory.mktemp("tiny"), TINY, _tiny().state_dict())


def fit(capfd, prior: Path, logs: Path, photos: dict, *options: str, steps: int = 8, validate: bool = False,
        epoch_size: int = 16, stderr: Optional[list] = None):
    """``gdp fit`` on the tiny prior: batches of 4 crops, 4 steps an epoch; returns the checkpoint folder (and
    appends what the run wrote on stderr to ``stderr``)."""
    argv = ["fit", "--config", str(prior), "--config", str(SR4), "--config", str(FINETUNE),
            "--data.input_dir", str(photos["train"]), "--data.batch_size", "4", "--data.epoch_size", str(epoch_size),
            "--trainer.max_steps", str(steps), "--model.sampler.steps", "3", "--model.sampler.scale", "1000",
            "--model.training.val_samples", "3", "--model.training.val_sample_steps", "3",
            "--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.version", "run", *QUIET]
    if validate:
        argv += ["--data.val_dir", str(photos["held"])]
    else:
        argv += ["--trainer.limit_val_batches", "0"]
    rc = main(argv + list(options))
    err = capfd.readouterr().err
    assert rc == 0, err
    if stderr is not None:
        stderr.append(err)
    return logs / "finetune" / "run" / "checkpoints"


def fixed_loss(weights: dict, flags: dict, photos: dict) -> float:
    """The hybrid loss of a UNet on fixed crops, timesteps and noise."""
    model = create_model(**flags)
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    model.eval()
    from gdp_lightning.data import TrainingCrops

    crops = TrainingCrops(sorted(photos["train"].glob("*.png")), flags["image_size"], 16, seed=99)
    x = torch.stack([crops[i]["x"] for i in range(16)]) * 2 - 1
    diffusion = GaussianDiffusion.from_prior(PriorSpec.from_dict({"unet": flags}))
    t = torch.linspace(0, 999, 16).long()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return float(diffusion.training_losses(model, x, t, noise=noise)["loss"].mean())


def state(path: Path) -> dict:
    return read_checkpoint(path)


def events(folder: Path) -> List[EventAccumulator]:
    """The TensorBoard event files under ``folder``, oldest first, loaded."""
    accumulators = []
    for path in sorted(folder.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        accumulators.append(acc)
    return accumulators


@pytest.fixture()
def fitted(monkeypatch) -> List[FinetuneModule]:
    """The modules ``gdp fit`` ran in this test, as they were at the end of fit."""
    modules: List[FinetuneModule] = []
    monkeypatch.setattr(FinetuneModule, "on_fit_end", lambda self: modules.append(self))
    return modules


@pytest.fixture()
def checkpoint_calls(monkeypatch) -> list:
    """Every gradient-checkpointed call the UNet's blocks make (torch.utils.checkpoint.checkpoint, as the UNet
    calls it): ``(grad enabled, function)`` per call."""
    calls = []
    original = unet_module.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append((torch.is_grad_enabled(), fn))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting)
    return calls


# ------------------------------------------------------------------------------------------------ gdp fit
def test_fit_lowers_the_loss_and_export_holds_the_ema(tiny, photos, tmp_path, capfd):
    before = torch.load(yaml.safe_load(tiny.read_text())["model"]["prior"]["checkpoint"], weights_only=True)
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--model.training.lr", "3e-3",
                      "--model.training.warmup_steps", "2", steps=30)
    ckpt = state(checkpoints / "last.ckpt")
    assert ckpt["global_step"] == 30
    exported = tmp_path / "prior.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(exported)]) == 0
    assert "EMA weights" in capfd.readouterr().out
    after = torch.load(exported, weights_only=True)
    # the export is the EMA, which differs from the trained weights and from the start
    ema = {k[len("ema_unet."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema_unet.")}
    trained = {k[len("unet."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("unet.")}
    assert list(after) == list(before) == list(ema)
    assert all(torch.equal(after[k], ema[k]) for k in after)
    assert any(not torch.equal(ema[k], trained[k]) for k in ema)
    # --weights trained: the trained weights themselves
    raw = tmp_path / "raw.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(raw), "--weights", "trained"]) == 0
    assert "trained weights" in capfd.readouterr().out
    raw_weights = torch.load(raw, weights_only=True)
    assert list(raw_weights) == list(before) and all(torch.equal(raw_weights[k], trained[k]) for k in trained)
    assert main(["export", str(exported), str(tmp_path / "no.pt"), "--weights", "trained"]) == 2
    assert "--weights trained needs a gdp fit checkpoint" in capfd.readouterr().err
    assert not (tmp_path / "no.pt").exists()
    loss_before, loss_after = fixed_loss(before, TINY, photos), fixed_loss(after, TINY, photos)
    loss_trained = fixed_loss(trained, TINY, photos)
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
    assert loss_trained < 0.7 * loss_before, (loss_before, loss_trained)


@pytest.mark.parametrize("options", [[], ["--model.training.lora_rank", "2", "--model.training.trainable", "[norm]",
                                          "--data.replay_fraction", "0.5"]], ids=["full", "adapters"])
def test_resume_continues_the_same_run(tiny, photos, tmp_path, capfd, options):
    if options:  # adapters beside trained norms, and half the crops from a replay folder
        options = options + ["--data.replay_dir", str(photos["held"])]
    straight = fit(capfd, tiny, tmp_path / "a", photos, *options, steps=12)
    first = fit(capfd, tiny, tmp_path / "b", photos, *options, steps=8)
    assert state(first / "last.ckpt")["global_step"] == 8
    resumed = fit(capfd, tiny, tmp_path / "b", photos, *options, "--ckpt_path", str(first / "last.ckpt"), steps=12)
    a, b = state(straight / "last.ckpt"), state(resumed / "last.ckpt")
    assert b["global_step"] == 12
    assert b["optimizer_states"][0]["state"][0]["step"].item() == 12
    assert set(a["state_dict"]) == set(b["state_dict"])
    assert any(k.startswith("ema_unet.") for k in b["state_dict"])
    # seeded crops, timesteps, noise and dropout per step: the resumed run is the uninterrupted one
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=0, atol=1e-6, msg=key)


def test_a_fresh_run_into_the_same_folder_replaces_last_ckpt(tiny, photos, tmp_path, capfd):
    first = fit(capfd, tiny, tmp_path / "logs", photos, steps=2)
    again = fit(capfd, tiny, tmp_path / "logs", photos, steps=1)
    assert again == first and state(first / "last.ckpt")["global_step"] == 1  # not a stale last.ckpt
    assert not list(first.glob("last-v*.ckpt"))  # configs/finetune.yaml: enable_version_counter false


def test_make_demo_prior_starts_from_an_empty_run_folder():
    if shutil.which("make") is None:
        pytest.skip("no make")
    out = subprocess.run(["make", "-n", "demo-prior"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = [line.strip() for line in out.replace("\\\n", " ").splitlines()]
    fit_line = next(i for i, line in enumerate(lines) if "gdp fit" in line)
    export = next(line for line in lines if "gdp export" in line)
    assert "--trainer.logger.init_args.version demo_prior" in lines[fit_line]
    # the demo prior learns from the training pages only: the tuning and held-out crops never reach gdp fit
    assert "--data.input_dir data/documents/train" in lines[fit_line]
    configs = [REPO / arg for arg in lines[fit_line].split() if arg.endswith(".yaml")]
    assert REPO / "configs" / "finetune_documents.yaml" in configs
    # fit validates with the task of the demo that uses the prior
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["model"]["degradation"]
    tasks = [path for path in configs if path.parent.name == "task"]
    assert len(tasks) == 1 and yaml.safe_load(tasks[0].read_text())["model"]["degradation"] == demo
    for text in [lines[fit_line]] + [path.read_text() for path in configs]:
        assert "documents/heldout" not in text and "documents/tune" not in text
    assert lines.index("rm -rf logs/finetune/demo_prior") < fit_line
    assert "logs/finetune/demo_prior/checkpoints/last.ckpt" in export


def test_fit_validation_logs_a_baseline_samples_restorations_and_psnr(tiny, photos, tmp_path, capfd, fitted):
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--trainer.log_every_n_steps", "1", validate=True,
                      steps=4)
    # the baseline is the sanity check over the whole validation set (the command sets it for a fresh run)
    assert fitted[0].trainer.num_sanity_val_steps == float("inf")
    # resumed (into the same folder: a second event file), with Lightning's sanity check on: no second baseline
    fit(capfd, tiny, tmp_path / "logs", photos, "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps",
        "1", "--ckpt_path", str(checkpoints / "last.ckpt"), validate=True, steps=8)
    first, resumed = events(tmp_path / "logs")
    # the baseline: the starting prior validated at step 0 before training, then a validation every epoch (4 steps)
    for tag in ("validate/psnr", "validate/ssim", "validate/denoising_loss", "validate/denoising_mse"):
        assert [e.step for e in first.Scalars(tag)] == [0, 4], tag
        assert [e.step for e in resumed.Scalars(tag)] == [8], tag
    for tag in ("fit/samples", "fit/restoration"):
        assert [e.step for e in first.Images(tag)] == [0, 4], tag
        assert [e.step for e in resumed.Images(tag)] == [8], tag
    assert min(e.step for e in first.Scalars("train/loss")) == 0 and len(first.Scalars("train/loss")) == 4
    restoration = first.Images("fit/restoration")[0]
    # one labelled panel per held-out image (input | output | ground truth | |error|), the prior's 32x32 shown 4x
    tile = 32 * math.ceil(MIN_SIDE / 32)
    assert restoration.height == 2 * (tile + LABEL_HEIGHT) + 2 and restoration.width == 4 * tile + 3 * 2
    assert {"train/loss", "train/mse", "train/vb", "train/lr"} <= set(first.Tags()["scalars"])
    assert "step" not in first.Tags()["scalars"]  # the step of the validation metrics, not a metric
    denoising = [e.value for acc in (first, resumed) for e in acc.Scalars("validate/denoising_loss")]
    assert len(denoising) == 3 and all(0 < v < 10 for v in denoising) and len(set(denoising)) == 3
    psnr = [e.value for acc in (first, resumed) for e in acc.Scalars("validate/psnr")]
    assert len(psnr) == 3 and all(5 < v < 60 for v in psnr)
    # the panels' label bands are drawn (yellow text on black) above each row
    picture = torch.from_numpy(np.asarray(Image.open(io.BytesIO(restoration.encoded_image_string))).copy())
    assert picture[:LABEL_HEIGHT, :, 0].float().max() > 200 and picture[:LABEL_HEIGHT, :, 2].float().max() < 60
    lr = [e.value for e in first.Scalars("train/lr")]
    assert lr[0] == pytest.approx(1e-4 / 50) and lr == sorted(lr)  # the warm-up of configs/finetune.yaml


def test_fit_reports_its_progress_and_what_it_changed(tiny, photos, tmp_path, capfd):
    """Without a terminal (no progress bar) a fit says where it is and what each validation measured, and at the
    end what changed and where the checkpoints are: the numbers are those it logs to TensorBoard."""
    stderr: list = []
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--trainer.log_every_n_steps", "1", validate=True,
                      steps=8, stderr=stderr)
    lines = [line for line in stderr[0].splitlines() if line.startswith("gdp: ")]
    (run,) = events(tmp_path / "logs")
    psnr = {e.step: e.value for e in run.Scalars("validate/psnr")}
    ssim = {e.step: e.value for e in run.Scalars("validate/ssim")}
    denoising = {e.step: e.value for e in run.Scalars("validate/denoising_loss")}
    loss = {e.step: e.value for e in run.Scalars("train/loss")}
    assert sorted(psnr) == [0, 4, 8] and sorted(loss) == list(range(8))

    def validated(step: int) -> str:
        return f"psnr {psnr[step]:.2f}, ssim {ssim[step]:.4f}, denoising_loss {denoising[step]:.4f}"

    steps = [line for line in lines if re.match(r"gdp: step \d+ of 8: ", line)]
    assert len(steps) == 8  # a line every max_steps // 10 steps, at least every step
    for k, line in enumerate(steps, start=1):  # the loss of the step's batch (logged at the step before it)
        assert line.startswith(f"gdp: step {k} of 8: loss {loss[k - 1]:.4f}, "), line
        assert (" of training left" in line) == (k < 8), line
    assert [line for line in lines if line.startswith("gdp: validate at step")] == [
        f"gdp: validate at step {step}: {validated(step)}" for step in (0, 4, 8)]
    done = lines.index(next(line for line in lines if line.startswith("gdp: fit done: step 8 of 8 in ")))
    assert lines[done + 1] == ("gdp: validate from step 0 to 8: " + ", ".join(
        f"{name} {fmt.format(values[0])} -> {fmt.format(values[8])}"
        for name, fmt, values in (("psnr", "{:.2f}", psnr), ("ssim", "{:.4f}", ssim),
                                  ("denoising_loss", "{:.4f}", denoising))))
    assert lines[done + 2] == (f"gdp: checkpoints in {checkpoints}; the EMA weights as a plain guided-diffusion state "
                               f"dict: gdp export {checkpoints / 'last.ckpt'} prior.pt")
    assert lines[done + 3] == f"gdp: TensorBoard: tensorboard --logdir {checkpoints.parent}"


def test_fit_report_shows_the_loss_of_whole_steps_when_batches_accumulate(capfd):
    """With 2 batches accumulated into a step Lightning hands the callbacks each batch's loss halved: the line shows
    the mean of the batches' own losses, once a step."""
    from types import SimpleNamespace

    from gdp_lightning.finetune.report import FitReport

    trainer = SimpleNamespace(global_step=0, max_steps=4, accumulate_grad_batches=2, progress_bar_callback=None,
                              num_training_batches=8)
    report = FitReport()
    report.on_fit_start(trainer, None)
    losses = [0.5, 0.7, 0.2, 0.4]
    for index, loss in enumerate(losses):
        trainer.global_step = (index + 1) // 2  # the optimizer steps after the second batch of each pair
        report.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss / 2)}, None, index)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("gdp: step")]
    assert [line.split(", ")[0] for line in lines] == ["gdp: step 1 of 4: loss 0.6000", "gdp: step 2 of 4: loss 0.3000"]


def test_bf16_mixed_keeps_float32_weights_and_float64_schedule(tiny, photos, tmp_path, capfd, monkeypatch,
                                                                 checkpoint_calls):
    seen = {}
    original = FinetuneModule.training_step

    def spy(self, batch, batch_idx):
        before = len(checkpoint_calls)
        loss = original(self, batch, batch_idx)
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["weights"] = {p.dtype for p in self.unet.parameters()}
        seen["tables"] = {v.dtype for v in self._train_diffusion._tables.values()}
        seen["loss"] = loss.dtype
        seen.setdefault("checkpointed", []).append(len(checkpoint_calls) - before)
        return loss

    monkeypatch.setattr(FinetuneModule, "training_step", spy)
    fit(capfd, tiny, tmp_path / "logs", photos, "--trainer.precision", "bf16-mixed",
        "--model.training.gradient_checkpointing", "true", steps=2)
    # --model.training.gradient_checkpointing true: each of the tiny UNet's 14 blocks is checkpointed in each step
    assert seen.pop("checkpointed") == [14, 14]
    assert seen == {"autocast": True, "weights": {torch.float32}, "tables": {torch.float64}, "loss": torch.float32}


@pytest.mark.parametrize("option, native, expected, told", [
    ("auto", False, "32-true", "fit computes in 32-true (--trainer.precision auto: this CPU has no native bfloat16"),
    ("auto", True, "bf16-mixed", "fit computes in bf16-mixed (--trainer.precision auto: this CPU computes bfloat16"),
    ("bf16-mixed", False, "bf16-mixed", "--trainer.precision bf16-mixed on a CPU without native bfloat16"),
    ("bf16-mixed", True, "bf16-mixed", None),
])
def test_trainer_precision_auto_follows_the_cpu(tiny, photos, tmp_path, capfd, monkeypatch, option, native, expected,
                                                 told):
    from gdp_lightning import precision
    from gdp_lightning.finetune import module as finetune_module

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(finetune_module, "cpu_has_bf16", lambda: native)
    seen = {}
    original = FinetuneModule.training_step

    def spy(self, batch, batch_idx):
        seen["precision"], seen["autocast"] = str(self.trainer.precision), torch.is_autocast_enabled("cpu")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(FinetuneModule, "training_step", spy)
    argv = ["fit", "--config", str(tiny), "--config", str(SR4), "--config", str(FINETUNE), "--data.input_dir",
            str(photos["train"]), "--data.batch_size", "2", "--data.epoch_size", "2", "--trainer.max_steps", "1",
            "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu", "--trainer.precision", option,
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *QUIET]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert seen == {"precision": expected, "autocast": expected == "bf16-mixed"}
    notes = [line for line in err.splitlines()  # (the lines naming the run's folders have the test's name)
             if ("precision" in line or "computes in" in line) and str(tmp_path) not in line]
    assert [told in line for line in notes] == ([True] if told else []), err


def test_training_precision_by_device(monkeypatch):
    from lightning.pytorch.accelerators import CPUAccelerator

    from gdp_lightning import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [precision.accelerator_device(a).type for a in ("auto", "cpu", "gpu", "cuda", CPUAccelerator())] == \
        ["cpu", "cpu", "cuda", "cuda", "cpu"]
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.training_precision("auto")[0] == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, name in ((True, "bf16-mixed"), (False, "16-mixed")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert precision.training_precision("auto")[0] == name
        assert precision.training_precision("gpu")[0] == name
    assert precision.training_precision("cpu")[0] == "32-true"


@pytest.mark.parametrize("path", fixture_files("unet_golden"), ids=lambda p: p.name)
def test_export_has_the_reference_keys_and_reloads_to_the_same_outputs(path, photos, tmp_path, capfd, fitted):
    fixture = torch.load(path, weights_only=True)
    flags = {k: v for k, v in fixture["flags"].items()}
    prior = prior_config(tmp_path, flags, fixture["state_dict"], name="golden")
    options = ["--model.class_label", "0"] if flags.get("class_cond") else []
    checkpoints = fit(capfd, prior, tmp_path / "logs", photos, "--model.training.lr", "1e-3", *options, steps=2)
    exported = tmp_path / "exported.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(exported)]) == 0
    sd = torch.load(exported, weights_only=True)
    # the keys, their order and shapes of the reference's create_model for these flags
    assert list(sd) == list(fixture["state_dict"])
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in fixture["state_dict"].items()}
    assert any(not torch.equal(sd[k], fixture["state_dict"][k]) for k in sd)  # it was fine-tuned
    reloaded = create_model(**flags)
    reloaded.load_state_dict(sd, strict=True)
    # the strict reload computes what the fitted module's own EMA UNet computes
    ema_unet = fitted[-1].ema_unet.eval()
    kwargs = {"y": fixture["y"]} if fixture.get("y") is not None else {}
    with torch.no_grad():
        a = reloaded.eval()(fixture["x"], fixture["t"], **kwargs)
        b = ema_unet(fixture["x"], fixture["t"], **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, fixture["out"])  # and the fine-tuned weights compute something else than the start


@pytest.mark.parametrize("labels", [["--model.class_label", "3"], ["--model.random_labels", "true"]],
                         ids=["class_label", "random_labels"])
def test_class_conditional_fp16_prior_fits_validates_samples_and_exports(labels, photos, tmp_path, capfd, fitted,
                                                                          monkeypatch):
    flags = {**TINY, "class_cond": True, "use_fp16": True}
    prior = prior_config(tmp_path, flags, _tiny(class_cond=True).state_dict(), name="tiny_cond")
    seen = []  # (training, the class labels) of every UNet forward: training, restorations, samples
    forward = unet_module.UNetModel.forward

    def spy(self, x, timesteps, y=None):
        seen.append((torch.is_grad_enabled() and self.training, y))
        return forward(self, x, timesteps, y)

    monkeypatch.setattr(unet_module.UNetModel, "forward", spy)
    # 2 steps an epoch: the baseline at step 0, then a validation at step 2
    checkpoints = fit(capfd, prior, tmp_path / "logs", photos, *labels, "--model.training.lr", "1e-3",
                      validate=True, steps=2, epoch_size=8)
    module = fitted[0]
    assert module.unet.compute_dtype == torch.float32  # use_fp16 prior, trained in float32
    assert any(training for training, _ in seen) and any(not training for training, _ in seen)
    assert all(y is not None and y.dtype == torch.long for _, y in seen)
    labels_seen = set(torch.cat([y for _, y in seen]).tolist())
    if "--model.class_label" in labels:
        assert labels_seen == {3}
    else:
        assert len(labels_seen) > 4 and all(0 <= v < 1000 for v in labels_seen)
    (acc,) = events(tmp_path / "logs")
    assert [e.step for e in acc.Images("fit/samples")] == [0, 2]
    psnr = [e.value for e in acc.Scalars("validate/psnr")]
    assert [e.step for e in acc.Scalars("validate/psnr")] == [0, 2] and all(5 < v < 60 for v in psnr)
    # the export: float32 reference keys; reloaded as the reference would (use_fp16: the body in float16) and in
    # float32, it computes what the fitted EMA UNet computes
    exported = tmp_path / "exported.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(exported)]) == 0
    sd = torch.load(exported, weights_only=True)
    assert "label_emb.weight" in sd and {v.dtype for v in sd.values()} == {torch.float32}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t, y = torch.tensor([5, 700]), torch.tensor([3, 998])
    with torch.no_grad():
        expected = module.ema_unet.eval()(x, t, y=y)
        for use_fp16 in (False, True):
            reloaded = create_model(**{**flags, "use_fp16": use_fp16})
            reloaded.load_state_dict(sd, strict=True)
            out = reloaded.eval()(x, t, y=y)
            if use_fp16:
                torch.testing.assert_close(out, expected, rtol=0, atol=2e-3)
            else:
                assert torch.equal(out, expected)


def test_fresh_fit_from_a_lightning_checkpoint_starts_from_its_ema(tiny, photos, tmp_path, capfd, monkeypatch):
    checkpoints = fit(capfd, tiny, tmp_path / "a", photos, "--model.training.lr", "1e-3", steps=2)
    sd = state(checkpoints / "last.ckpt")["state_dict"]
    ema = {k[len("ema_unet."):]: v for k, v in sd.items() if k.startswith("ema_unet.")}
    trained = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
    assert any(not torch.equal(ema[k], trained[k]) for k in ema)
    start = {}
    original = FinetuneModule.on_train_start

    def spy(self):
        start["unet"] = {k: v.clone() for k, v in self.unet.state_dict().items()}
        start["ema"] = {k: v.clone() for k, v in self.ema_unet.state_dict().items()}
        start["step"] = self.trainer.global_step
        original(self)

    monkeypatch.setattr(FinetuneModule, "on_train_start", spy)
    fit(capfd, tiny, tmp_path / "b", photos, "--model.prior.checkpoint", str(checkpoints / "last.ckpt"), steps=1)
    assert start["step"] == 0  # a fresh run (not a resume)
    for weights in (start["unet"], start["ema"]):
        assert list(weights) == list(ema)
        assert all(torch.equal(weights[k], ema[k]) for k in ema)


def test_export_in_half_precision_and_its_errors(tiny, photos, tmp_path, capfd):
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, steps=2)
    half = tmp_path / "half.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(half), "--dtype", "float16"]) == 0
    capfd.readouterr()
    assert {v.dtype for v in torch.load(half, weights_only=True).values()} == {torch.float16}
    again = tmp_path / "again.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(again), "--dtype", "float16"]) == 0
    capfd.readouterr()
    assert again.read_bytes() == half.read_bytes()  # the same weights give the same file
    # not a UNet
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    assert main(["export", str(other), str(tmp_path / "x.pt")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gdp: error: ") and "other.pt" in err[-1] and "no guided-diffusion UNet" in err[-1]
    assert not (tmp_path / "x.pt").exists()
    # weights that do not fit the prior the checkpoint records
    ckpt = torch.load(checkpoints / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["prior"]["unet"]["num_channels"] = 64
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    assert main(["export", str(bad), str(tmp_path / "y.pt")]) == 2
    assert "does not fit the UNet" in capfd.readouterr().err
    assert not (tmp_path / "y.pt").exists()


def test_export_blends_with_the_starting_prior(tiny, photos, tmp_path, capfd):
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--model.training.lr", "1e-3", steps=3)
    plain = tmp_path / "ema.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(plain)]) == 0
    ema, base = torch.load(plain, weights_only=True), _prior_weights(tiny)
    assert any(not torch.equal(ema[k], base[k]) for k in ema)  # the fit moved the weights
    for share, how in ((0.25, []), (1.0, []), (0.5, ["--base", str(yaml.safe_load(tiny.read_text())["model"]["prior"]
                                                                    ["checkpoint"])])):
        out = tmp_path / f"blend{share}.pt"
        assert main(["export", str(checkpoints / "last.ckpt"), str(out), "--base_weight", str(share), *how]) == 0
        assert f"EMA weights blended with {share:g} of " in capfd.readouterr().out
        blend = torch.load(out, weights_only=True)
        assert list(blend) == list(ema)
        for k in ema:
            torch.testing.assert_close(blend[k], (1 - share) * ema[k] + share * base[k], rtol=0, atol=1e-6)
        if share == 1.0:
            assert all(torch.equal(blend[k], base[k]) for k in base)
    # errors: a share outside [0, 1], a base of another architecture, a missing one, a plain state dict with no
    # record of the prior it came from; nothing is written
    other = tmp_path / "other.pt"
    torch.save(create_model(**{**TINY, "num_channels": 2 * TINY["num_channels"]}).state_dict(), other)
    cases = [(["--base_weight", "1.5"], "--base_weight 1.5: give the starting prior's share"),
             (["--base_weight", "0.5", "--base", str(other)], "other.pt: is not the UNet of"),
             (["--base_weight", "0.5", "--base", str(tmp_path / "nope.pt")], "nope.pt: no such checkpoint file")]
    for options, message in cases:
        assert main(["export", str(checkpoints / "last.ckpt"), str(tmp_path / "x.pt"), *options]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gdp: error: ") and message in err[0], err
    assert main(["export", str(plain), str(tmp_path / "x.pt"), "--base_weight", "0.5"]) == 2
    assert "records no starting prior to blend with; give its weights with --base" in capfd.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_predict_with_a_fit_checkpoint_uses_its_ema(tiny, photos, tmp_path, capfd):
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--model.training.lr", "1e-3", steps=4)
    outputs = {}
    for how, options in (("prior", ["--model.prior.checkpoint", str(checkpoints / "last.ckpt")]),
                         ("ckpt_path", ["--ckpt_path", str(checkpoints / "last.ckpt")])):
        out = tmp_path / how
        rc = main(["predict", "--config", str(tiny), "--config", str(SR4), "--data.input_dir", str(photos["held"]),
                   "--data.mode", "synthetic", "--data.crop_size", "32", "--model.sampler.steps", "3",
                   "--model.sampler.scale", "1000", "--writer.output_dir", str(out), *QUIET,
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "plogs"), *options])
        assert rc == 0, capfd.readouterr().err
        outputs[how] = [p.read_bytes() for p in sorted(out.glob("p*.png"))]
    assert len(outputs["prior"]) == 2 and outputs["prior"] == outputs["ckpt_path"]
    # the options given win over the hyper-parameters the checkpoint stores (its fit ran 3 steps at scale 1000),
    # and the record names the weights really used
    out = tmp_path / "options"
    rc = main(["predict", "--config", str(tiny), "--config", str(SR4), "--data.input_dir", str(photos["held"]),
               "--data.mode", "synthetic", "--data.crop_size", "32", "--writer.output_dir", str(out), *QUIET,
               "--trainer.logger.init_args.save_dir", str(tmp_path / "plogs"), "--ckpt_path",
               str(checkpoints / "last.ckpt"), "--model.sampler.steps", "7", "--model.sampler.scale", "12345",
               "--model.sampler.guidance", "gradient"])
    assert rc == 0, capfd.readouterr().err
    model = json.loads((out / "run.json").read_text())["model"]
    assert model["sampler"]["steps"] == "7" and model["sampler"]["scale"] == 12345.0
    assert model["sampler"]["guidance"] == "gradient"
    assert model["checkpoint_sha256"] == sha256(checkpoints / "last.ckpt")
    assert model["weights"] == str((checkpoints / "last.ckpt").resolve())
    assert all(json.loads(p.read_text())["results"][0]["scale"] == 12345.0 for p in out.glob("p*.json"))
    assert len(list(out.glob("p*.json"))) == 2


def test_a_fit_checkpoint_that_does_not_fit_the_model_is_one_line(tiny, photos, tmp_path, capfd):
    """--ckpt_path of another prior's architecture (predict), or of a fit without the adapters a resumed fit asks for:
    one line naming the checkpoint, what differs and the prior the fit ran with, not Lightning's list of tensors."""
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, steps=1, epoch_size=4)
    ckpt = checkpoints / "last.ckpt"
    wider = prior_config(tmp_path, {**TINY, "num_channels": 64}, _tiny(num_channels=64).state_dict(), name="wider")
    rc = main(["predict", "--config", str(wider), "--config", str(SR4), "--data.input_dir", str(photos["held"]),
               "--writer.output_dir", str(tmp_path / "out"), *QUIET, "--trainer.logger.init_args.save_dir",
               str(tmp_path / "plogs"), "--ckpt_path", str(ckpt)])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"gdp: error: --ckpt_path {ckpt}: its weights do not fit the model of prior 'wider' (")
    assert re.search(r"\(\d+ keys with wrong shapes \(unet\.time_embed\.0\.weight: checkpoint \[128, 32\] vs model "
                     r"\[256, 64\], ", lines[0]), lines[0]
    assert lines[0].endswith("give the prior config the fit ran with (it records prior 'tiny')")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))
    rc = main(["fit", "--config", str(tiny), "--config", str(SR4), "--config", str(FINETUNE), "--data.input_dir",
               str(photos["train"]), "--trainer.logger.init_args.save_dir", str(tmp_path / "flogs"), *QUIET,
               "--model.training.lora_rank", "2", "--ckpt_path", str(ckpt)])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and lines[-1].startswith(f"gdp: error: --ckpt_path {ckpt}: its weights do not fit"), lines
    assert re.search(r"\(\d+ missing keys \(unet\.", lines[-1]) and "lora_rank" in lines[-1], lines[-1]


def _prior_weights(tiny: Path) -> dict:
    return torch.load(yaml.safe_load(tiny.read_text())["model"]["prior"]["checkpoint"], weights_only=True)


def test_fit_trains_only_the_parts_it_names(tiny, photos, tmp_path, capfd, fitted):
    before = _prior_weights(tiny)
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--model.training.trainable", "[attention, out]",
                      "--model.training.lr", "1e-3", steps=3)
    ckpt = state(checkpoints / "last.ckpt")
    trained = {k[len("unet."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("unet.")}
    chosen = set(select_parameters(_tiny(), ["attention", "out"]))
    assert chosen and list(trained) == list(before)
    for key, value in before.items():
        assert torch.equal(trained[key], value) == (key not in chosen), key
    assert len(ckpt["optimizer_states"][0]["state"]) == len(chosen)  # AdamW holds the trained parts only
    unet = fitted[-1].unet
    assert trainable_summary(unet)[0] == sum(p.numel() for n, p in unet.named_parameters() if n in chosen)


@pytest.mark.parametrize("ema", ["0.9999", "0"])
def test_fit_with_low_rank_adapters_trains_them_alone_and_exports_plain_weights(tiny, photos, tmp_path, capfd, ema):
    before = _prior_weights(tiny)
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--model.training.lora_rank", "4",
                      "--model.training.lr", "1e-2", "--model.training.warmup_steps", "2",
                      "--model.training.ema_decay", ema, steps=20)
    sd = state(checkpoints / "last.ckpt")["state_dict"]
    adapted = select_modules(_tiny(), ["1x1"])
    mark = ".parametrizations.weight."
    for layer in adapted:  # the adapted weights stay frozen; only their adapters moved
        assert torch.equal(sd[f"unet.{layer}{mark}original"], before[f"{layer}.weight"])
        assert sd[f"unet.{layer}{mark}0.up"].abs().max() > 0
    for key, value in sd.items():
        if key.startswith("unet.") and mark not in key:
            assert torch.equal(value, before[key[len("unet."):]]), key
    exported = tmp_path / "prior.pt"
    assert main(["export", str(checkpoints / "last.ckpt"), str(exported)]) == 0
    capfd.readouterr()
    after = torch.load(exported, weights_only=True)
    assert list(after) == list(before)  # a plain guided-diffusion state dict
    source = ({k[len("ema_unet."):]: v for k, v in sd.items() if k.startswith("ema_unet.")} if ema != "0" else
              merge_low_rank({k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}))
    assert all(torch.equal(after[k], source[k]) for k in after)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"{layer}.weight" for layer in adapted}
    assert fixed_loss(after, TINY, photos) < fixed_loss(before, TINY, photos)
    # gdp predict restores with those weights from the fit checkpoint as from the export
    outputs = {}
    for how, options in (("export", ["--model.prior.checkpoint", str(exported)]),
                         ("ckpt_path", ["--ckpt_path", str(checkpoints / "last.ckpt")])):
        out = tmp_path / how
        rc = main(["predict", "--config", str(tiny), "--config", str(SR4), "--data.input_dir", str(photos["held"]),
                   "--data.mode", "synthetic", "--data.crop_size", "32", "--model.sampler.steps", "3",
                   "--writer.output_dir", str(out), *QUIET, "--trainer.logger.init_args.save_dir",
                   str(tmp_path / "plogs"), *options])
        assert rc == 0, capfd.readouterr().err
        outputs[how] = [p.read_bytes() for p in sorted(out.glob("p*.png"))]
    assert len(outputs["export"]) == 2 and outputs["export"] == outputs["ckpt_path"]


# ----------------------------------------------------------------------------------------- the pieces
def test_warmup_and_ema_decay():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    assert ema_decay_at(0, 0.9999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.9999, True) == pytest.approx(91 / 100)
    assert ema_decay_at(10**7, 0.9999, True) == 0.9999
    assert ema_decay_at(0, 0.99, False) == 0.99


def test_update_ema_is_the_exponential_average():
    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.75)
    for e, s, m in zip(ema.parameters(), start, model.parameters()):
        torch.testing.assert_close(e, 0.75 * s + 0.25 * m.detach())


def test_uniform_timesteps_have_unit_weights():
    sampler = UniformTimesteps(1000)
    t, w = sampler.sample([torch.Generator().manual_seed(i) for i in range(4096)], torch.device("cpu"))
    assert t.min() >= 0 and t.max() < 1000 and torch.all(w == 1)
    assert abs(t.float().mean().item() - 499.5) < 15


def test_timestep_range_restricts_the_draws():
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(4096)]  # noqa: E731
    t, w = UniformTimesteps(1000, (0, 200)).sample(generators(), torch.device("cpu"))
    assert t.min() >= 0 and t.max() < 200 and torch.all(w == 1)
    assert abs(t.float().mean().item() - 99.5) < 4
    t, _ = UniformTimesteps(1000, (900, 1000)).sample(generators(), torch.device("cpu"))
    assert t.min() >= 900
    # the whole range draws what the sampler without one draws
    whole, _ = UniformTimesteps(1000, (0, 1000)).sample(generators(), torch.device("cpu"))
    assert torch.equal(whole, UniformTimesteps(1000).sample(generators(), torch.device("cpu"))[0])
    # importance sampling within the range: warmed up once the allowed timesteps have their losses
    sampler = LossSecondMomentTimesteps(6, history=1, uniform_prob=0.0, timesteps=(2, 4))
    sampler.update(torch.tensor([2, 3]), torch.tensor([1.0, 3.0]))
    assert sampler.warmed_up()
    torch.testing.assert_close(sampler.weights(), torch.tensor([0, 0, 0.25, 0.75, 0, 0], dtype=torch.float64))
    t, w = sampler.sample([torch.Generator().manual_seed(i) for i in range(400)], torch.device("cpu"))
    assert set(t.tolist()) == {2, 3}
    torch.testing.assert_close(w[t == 3][0], torch.tensor(1 / (2 * 0.75)))
    with pytest.raises(ConfigError, match=r"--model.training.timesteps \[0, 2000\] is not a range"):
        make_timestep_sampler("uniform", 1000, (0, 2000))


def test_fit_on_a_timestep_range(tiny, photos, tmp_path, capfd):
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--model.training.timestep_sampler",
                      "loss-second-moment", "--model.training.timesteps", "[0, 10]", steps=2)
    counts = state(checkpoints / "last.ckpt")["state_dict"]["timestep_sampler.loss_counts"]
    assert int(counts[:10].sum()) == 8 and int(counts[10:].sum()) == 0  # 2 steps of 4 losses, all below 10


def test_loss_second_moment_sampler():
    sampler = LossSecondMomentTimesteps(4, history=2, uniform_prob=0.0)
    sampler.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0, 1.0]))
    assert not sampler.warmed_up() and torch.all(sampler.weights() == 1)
    # t=3 gets losses 4 and 4, the others 1 and 1: then t=0 gets 3 (drops its oldest 1)
    sampler.update(torch.tensor([0, 1, 2, 3, 3]), torch.tensor([1.0, 1.0, 1.0, 4.0, 4.0]))
    assert sampler.warmed_up()
    torch.testing.assert_close(sampler.weights(), torch.tensor([1, 1, 1, 4], dtype=torch.float64) / 7)
    sampler.update(torch.tensor([0]), torch.tensor([3.0]))
    assert sampler.loss_history[0].tolist() == [1.0, 3.0]
    expected = torch.tensor([5 ** 0.5, 1, 1, 4], dtype=torch.float64)
    torch.testing.assert_close(sampler.weights(), expected / expected.sum())
    t, w = sampler.sample([torch.Generator().manual_seed(i) for i in range(5000)], torch.device("cpu"))
    share = (t == 3).float().mean().item()
    assert abs(share - 4 / expected.sum().item()) < 0.02
    # importance weights keep the loss unbiased: weight = 1 / (T p(t))
    torch.testing.assert_close(w[t == 3][0], torch.tensor(1 / (4 * 4 / expected.sum().item()), dtype=torch.float32))
    # the history is a buffer: it is saved in checkpoints and restored on resume
    copy = LossSecondMomentTimesteps(4, history=2, uniform_prob=0.0)
    copy.load_state_dict(sampler.state_dict())
    assert torch.equal(copy.weights(), sampler.weights())


def test_fit_with_importance_sampling(tiny, photos, tmp_path, capfd):
    checkpoints = fit(capfd, tiny, tmp_path / "logs", photos, "--model.training.timestep_sampler",
                      "loss-second-moment", steps=3)
    sd = state(checkpoints / "last.ckpt")["state_dict"]
    assert int(sd["timestep_sampler.loss_counts"].sum()) == 12  # 3 steps of 4 losses each


def test_denoising_loss_is_per_image_and_seeded():
    model = _tiny()
    diffusion = GaussianDiffusion.from_prior(PriorSpec.from_dict({"unet": TINY}))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    terms = denoising_loss(diffusion, model, x, [torch.Generator().manual_seed(i) for i in range(3)])
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (3,)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    # image 1 alone, with its own generator, gets the value it had in the batch
    alone = denoising_loss(diffusion, model, x[1:2], [torch.Generator().manual_seed(1)])
    torch.testing.assert_close(alone["loss"], terms["loss"][1:2], rtol=1e-5, atol=1e-6)
    other = denoising_loss(diffusion, model, x[1:2], [torch.Generator().manual_seed(7)])
    assert not torch.equal(other["loss"], alone["loss"])


def test_gradient_checkpointing_gives_the_same_gradients(checkpoint_calls):
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    grads, calls = [], []
    for enabled in (False, True):
        model = _tiny().train()
        model.set_gradient_checkpointing(enabled)
        blocks = [m for m in model.modules() if m is not model and hasattr(m, "use_checkpoint")]
        torch.manual_seed(1)
        start = len(checkpoint_calls)
        model(x, t).square().mean().backward()
        calls.append(len(checkpoint_calls) - start)
        grads.append([p.grad.clone() for p in model.parameters()])
        with torch.no_grad():  # nothing to recompute without gradients
            start = len(checkpoint_calls)
            model(x, t)
            assert len(checkpoint_calls) == start
    # checkpointing is really used: every residual and attention block goes through torch's checkpoint
    assert calls == [0, len(blocks)] and len(blocks) == 14
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ({"lr": 0}, "--model.training.lr"),
    ({"warmup_steps": -1}, "--model.training.warmup_steps"),
    ({"timestep_sampler": "importance"}, "--model.training.timestep_sampler"),
    ({"timesteps": (200, 100)}, "--model.training.timesteps"),
    ({"timesteps": (-1, 100)}, "--model.training.timesteps"),
    ({"ema_decay": 1.0}, "--model.training.ema_decay"),
    ({"lora_rank": -1}, "--model.training.lora_rank"),
    ({"lora_rank": 4, "lora_alpha": 0}, "--model.training.lora_alpha"),
    ({"lora_rank": 4, "lora_targets": []}, "--model.training.lora_targets"),
    ({"trainable": []}, "nothing would train"),
])
def test_bad_training_settings(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainingSettings(**bad)


def test_fit_errors_are_one_line(tiny, photos, tmp_path, capfd):
    base = ["fit", "--config", str(tiny), "--config", str(SR4), "--config", str(FINETUNE), *QUIET,
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    weights = tmp_path / "prior.pt"  # a plain state dict: a prior's weights, not a fit checkpoint
    torch.save({"out.2.weight": torch.zeros(3, 4, 3, 3)}, weights)
    cases = [
        (["--data.input_dir", str(tmp_path / "nowhere")], "nowhere"),
        (["--data.input_dir", str(photos["train"]), "--data.val_split", "6"], "--data.val_split"),
        (["--data.input_dir", str(photos["train"]), "--data.train_scales", "[0.5, 0.25]"], "--data.train_scales"),
        (["--data.input_dir", str(photos["train"]), "--model.training.trainable", "[nothing]"],
         "--model.training.trainable: 'nothing' names no parameter"),
        (["--data.input_dir", str(photos["train"]), "--model.training.lora_rank", "2",
          "--model.training.lora_targets", "[nothing]"], "--model.training.lora_targets"),
        (["--data.input_dir", str(photos["train"]), "--data.replay_fraction", "0.25"], "--data.replay_dir"),
        (["--data.input_dir", str(photos["train"]), "--data.replay_dir", str(tmp_path / "gone"),
          "--data.replay_fraction", "0.25"], f"--data.replay_dir {tmp_path / 'gone'}: no such folder"),
        (["--data.input_dir", str(photos["train"]), "--data.val_dir", str(tmp_path / "gone")],
         "--data.val_dir"),
        (["--data.input_dir", str(photos["train"]), "--data.val_split", "2", "--data.val_scale", "0"],
         "--data.val_scale 0.0: give the scale to validate at"),
        (["--data.input_dir", str(photos["train"]), "--ckpt_path", str(tmp_path / "gone.ckpt")],
         f"--ckpt_path {tmp_path / 'gone.ckpt'}: no such checkpoint file"),
        (["--data.input_dir", str(photos["train"]), "--ckpt_path", str(weights)],
         f"--ckpt_path {weights}: not a checkpoint of gdp fit (a Lightning checkpoint such as "),
        (["--data.input_dir", str(photos["train"]), "--ckpt_path", str(photos["train"] / "p0.png")],
         "not a PyTorch checkpoint (it is a PNG image); give the last.ckpt of a gdp fit run"),
    ]
    for options, needle in cases:
        assert main(base + options) == 2
        lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert lines[-1].startswith("gdp: error: ") and needle in lines[-1], lines[-1]
    assert not (tmp_path / "finetune").exists()  # none of them left a version folder (or its logger's folder)


# ---------------------------------------------------------------------------------------- data module
def _fit_data(photos, **options) -> FinetuneData:
    class Trainer:  # what the data module asks of the trainer in fit: the step (to resume the crops)
        global_step, accumulate_grad_batches, world_size = 0, 1, 1

    data = FinetuneData(input_dir=str(photos["train"]), batch_size=2, epoch_size=6, image_size=32, **options)
    data.trainer = Trainer()
    return data


def test_fit_data_holds_out_a_seeded_split(photos):
    data = _fit_data(photos, val_split=2, seed=3)
    from gdp_lightning.degradations import SuperResolution

    data.degradation = SuperResolution(4)
    data.setup("fit")
    held = [item.name for item in data.items]
    assert len(held) == 2 and len(data.train_paths) == 4
    assert not {Path(p).stem for p in data.train_paths} & set(held)
    again = _fit_data(photos, val_split=1 / 3, seed=3)
    again.degradation = SuperResolution(4)
    again.setup("fit")
    assert [item.name for item in again.items] == held  # a fraction of 6 = 2: the same seeded choice
    batch = next(iter(data.train_dataloader()))
    assert batch["x"].shape == (2, 3, 32, 32) and len(batch["name"]) == 2
    val = next(iter(data.val_dataloader()))
    assert val["x"].shape == (2, 3, 32, 32) and val["y"].shape == (2, 3, 8, 8)


def test_fit_validates_whole_images_or_crops_at_a_scale(photos):
    """--data.val_scale: the held-out images are validated as central crops at that scale (1: the pixels as they
    are, the scale of training crops at train_scales [1, 1]) instead of whole, their short side resized to the
    prior's size; the same held-out images either way."""
    from gdp_lightning.data import read_image
    from gdp_lightning.degradations import SuperResolution

    batches = {}
    for scale in (None, 1.0, 0.5):
        data = _fit_data(photos, val_split=2, seed=3, val_scale=scale)
        data.degradation = SuperResolution(4)
        data.setup("fit")
        batches[scale] = next(iter(data.val_dataloader()))
        assert batches[scale]["x"].shape == (2, 3, 32, 32) and batches[scale]["y"].shape == (2, 3, 8, 8)
    assert batches[None]["name"] == batches[1.0]["name"] == batches[0.5]["name"]
    source = next(p for p in photos["train"].glob("*.png") if p.stem == batches[1.0]["name"][0])
    pixels = read_image(source).pixels
    height, width = pixels.shape[-2:]
    top, left = (height - 32) // 2, (width - 32) // 2
    assert torch.allclose(batches[1.0]["x"][0], pixels[:, top : top + 32, left : left + 32], atol=1e-6)
    assert not torch.allclose(batches[None]["x"], batches[1.0]["x"], atol=0.05)
    assert torch.equal(batches[0.5]["x"], batches[None]["x"])  # a region of 64 = the whole 64 x 64 photo, halved
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(DataError, match="--data.val_scale"):
            _fit_data(photos, val_split=2, val_scale=bad)


def test_replay_mixes_a_seeded_share_of_other_images_into_the_crops(photos, tmp_path):
    from gdp_lightning.data import TrainingCrops

    train = sorted(photos["train"].glob("*.png"))
    replay = sorted(photos["held"].glob("*.png"))
    mixed = TrainingCrops(train, 32, 400, replay=replay, replay_fraction=0.25, seed=1)
    names = [mixed[i]["name"] for i in range(400)]
    share = sum(name in {p.stem for p in replay} for name in names) / len(names)
    assert abs(share - 0.25) < 0.06 and {p.stem for p in train} <= set(names)
    again = TrainingCrops(train, 32, 400, replay=replay, replay_fraction=0.25, seed=1)
    assert torch.equal(again[17]["x"], mixed[17]["x"]) and again[17]["name"] == names[17]
    # at fraction 0 nothing more is drawn: the crops are those of a run without replay
    plain, zero = TrainingCrops(train, 32, 50, seed=1), TrainingCrops(train, 32, 50, seed=1, replay=replay)
    assert all(torch.equal(plain[i]["x"], zero[i]["x"]) for i in range(10))
    for bad, message in (({"replay": replay, "replay_fraction": 1.0}, "--data.replay_fraction 1.0"),
                         ({"replay_fraction": 0.3}, "--data.replay_dir")):
        with pytest.raises(DataError, match=message):
            TrainingCrops(train, 32, 10, **bad)
    data = _fit_data(photos, replay_dir=str(photos["held"]), replay_fraction=0.5)
    data.setup("fit")
    assert data.training_set.replay == replay and data.training_set.replay_fraction == 0.5
    with pytest.raises(DataError, match="go together"):
        _fit_data(photos, replay_dir=str(photos["held"]))


def test_fit_data_without_model_is_refused(photos):
    data = FinetuneData(input_dir=str(photos["train"]))
    with pytest.raises(DataError, match="image size"):
        data.setup("fit")


# ------------------------------------------------------------------------------------------------- demo
def test_demo_config_runs_end_to_end(tmp_path, capfd, monkeypatch):
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    checkpoint = REPO / config["model"]["prior"]["checkpoint"]
    inputs = REPO / config["data"]["input_dir"]
    assert checkpoint.is_file() and checkpoint.stat().st_size <= 25_000_000  # the 25 MB
    names: List[str] = sorted(p.stem for p in inputs.glob("*.png"))
    assert len(names) >= 4
    # make demo's command from the repository root, its relative paths as shipped: only fewer diffusion steps, and
    # the logs (the outputs go into the logger's folder) in tmp_path instead of logs/
    monkeypatch.chdir(REPO)
    logs = tmp_path / "logs"
    rc = main(["predict", "--config", "configs/demo.yaml", "--model.sampler.steps", "3",
               "--trainer.logger.init_args.save_dir", str(logs)])
    assert rc == 0, capfd.readouterr().err
    out = logs / config["trainer"]["logger"]["init_args"]["name"] / "outputs"
    assert sorted(p.stem for p in out.glob("*.png") if "." not in p.stem) == names  # beside <name>.kernel.png
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("name") and "psnr" in rows[0] and len(rows) == len(names) + 1
    assert list(logs.rglob("events.out.tfevents.*"))


def _benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_document_training_tuning_and_heldout_sets_are_disjoint_by_construction():
    """The document domain (data/documents): the training pages, the tuning crops (settings are compared on them)
    and the held-out crops (the chosen recipe is scored on them) are set from three disjoint groups of passages,
    file by file; no two groups share a run of five words, and no crop is a region of a training page."""
    docs = _benchmark("document_data")
    groups = {"train": docs.TRAIN_TEXTS, "tune": docs.TUNE_TEXTS, "heldout": docs.HELDOUT_TEXTS}
    assert sum(len(g) for g in groups.values()) == len(set().union(*groups.values())) == len(docs.TEXTS)

    def passage(path: Path, texts) -> str:
        return next(name for name in texts if path.stem.startswith(name + "_"))

    files = {split: sorted((REPO / "data" / "documents" / split).glob("*.png")) for split in groups}
    assert len(files["train"]) == len(docs.TRAIN_TEXTS) * docs.TRAIN_PAGES_PER_TEXT
    for split in ("tune", "heldout"):
        assert len(files[split]) == len(groups[split]) * docs.HELDOUT_PAGES_PER_TEXT * docs.CROPS_PER_PAGE
    for split, texts in groups.items():
        assert {passage(p, texts) for p in files[split]} == set(texts)

    def runs(names) -> set:
        words = [w.strip(".,;:?").lower() for name in names for w in docs.TEXTS[name].split()]
        return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}

    for a, b in (("train", "tune"), ("train", "heldout"), ("tune", "heldout")):
        assert not runs(groups[a]) & runs(groups[b]), (a, b)
    # and no tuning or held-out crop is a region of a training page: no crop's first row is a row segment of a page
    # at any position (and where one were, the whole window is compared)
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in files["tune"] + files["heldout"]]
    first_rows = {c[0].tobytes(): i for i, c in enumerate(crops)}
    size = crops[0].shape[0]
    for path in files["train"]:
        page = np.asarray(Image.open(path).convert("RGB"))
        for y in range(page.shape[0] - size + 1):
            row = page[y].tobytes()
            for x in range(page.shape[1] - size + 1):
                i = first_rows.get(row[3 * x:3 * (x + size)])
                assert i is None or not np.array_equal(page[y:y + size, x:x + size], crops[i]), path


def test_document_data_rewrites_the_shipped_domain_and_writes_variants_elsewhere(tmp_path, monkeypatch):
    """benchmarks/document_data.py with its defaults sets the pixels of data/documents again (make demo-prior
    rebuilds from them); ``--out`` with other ``--font-sizes`` writes a variant of the three sets there, set in larger
    type, and leaves data/demo alone."""
    pytest.importorskip("matplotlib")
    docs = _benchmark("document_data")
    demo = {p.name: p.read_bytes() for p in (REPO / "data" / "demo").glob("*.png")}

    def write(*args: str) -> None:
        monkeypatch.setattr("sys.argv", ["document_data.py", *args])
        docs.main()

    def pixels(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))

    write("--out", str(tmp_path / "same"))
    for split in ("train", "tune", "heldout"):
        shipped = sorted((REPO / "data" / "documents" / split).glob("*.png"))
        again = sorted((tmp_path / "same" / split).glob("*.png"))
        assert [p.name for p in again] == [p.name for p in shipped]
        for a, b in zip(again, shipped):
            assert np.array_equal(pixels(a), pixels(b)), a.name
    write("--font-sizes", "16", "24", "--out", str(tmp_path / "large"))
    assert {p.name: p.read_bytes() for p in (REPO / "data" / "demo").glob("*.png")} == demo

    def stroke_length(folder: Path) -> float:
        """the mean length of the vertical runs of ink (pixels darker than two thirds of the paper) in a set"""
        ink = runs = 0
        for path in folder.glob("*.png"):
            image = pixels(path)
            dark = np.pad(image.mean(-1) < 0.67 * np.median(image), ((1, 0), (0, 0)))
            ink += dark.sum()
            runs += (np.diff(dark.astype(np.int8), axis=0) == 1).sum()  # where a run starts
        return ink / runs

    for split in ("train", "tune", "heldout"):
        assert len(list((tmp_path / "large" / split).glob("*.png"))) == \
            len(list((REPO / "data" / "documents" / split).glob("*.png")))
        # about twice the type size: vertical ink runs 1.6 to 1.7 times as long (the same type: 1)
        ratio = stroke_length(tmp_path / "large" / split) / stroke_length(REPO / "data" / "documents" / split)
        assert 1.3 < ratio < 3.0, (split, ratio)


def test_imagenet256_finetune_config_resolves(capfd):
    with pytest.raises(SystemExit) as done:  # --print_config prints and exits
        main(["fit", "--config", str(REPO / "configs/prior/imagenet256.yaml"), "--config",
              str(REPO / "configs/task/sr4.yaml"), "--config", str(REPO / "configs/finetune_imagenet256.yaml"),
              "--data.input_dir", str(REPO / "data" / "documents" / "train"), "--print_config"])
    out = capfd.readouterr().out
    assert done.value.code == 0
    config = yaml.safe_load(out)
    assert config["trainer"]["precision"] == "auto" and config["trainer"]["accumulate_grad_batches"] == 4
    assert config["model"]["training"]["gradient_checkpointing"] is True and config["data"]["batch_size"] == 8
    assert config["model"]["prior"]["unet"]["image_size"] == 256


def test_finetune_sweep_runs_each_variant_with_its_own_settings(tmp_path, monkeypatch, capfd):
    """benchmarks/finetune_sweep.py's fits, resolved by the CLI as it would run them: ``demo`` is the recipe of
    configs/finetune_documents.yaml as it stands (crops at the scale they are restored at), ``demo-scales0.5`` the
    same with regions of 1 to 2 times the prior's size, and the reference and its variants keep the reference's
    settings (lr 1e-4, EMA 0.9999 with warm-up, train_scales [0.5, 1]) beside the one they change; all train in
    fp32 on every machine, as the measured priors were."""
    sweep = _benchmark("finetune_sweep")
    runs = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda argv, **kwargs: runs.append(argv))
    names = ["demo", "demo400", "demo-scales0.5", "recipe", "lr3e-5"]
    for name in names:
        sweep.fit(name, tmp_path)
    resolved = {}
    monkeypatch.chdir(REPO)  # the recipe's configs are named relative to the repository
    for name, argv in zip(names, runs):
        assert argv[1] == "fit" and argv[argv.index("--trainer.logger.init_args.version") + 1] == name
        with pytest.raises(SystemExit) as done:
            main([*argv[1:], "--print_config"])
        assert done.value.code == 0
        config = yaml.safe_load(capfd.readouterr().out)
        resolved[name] = (config["data"]["train_scales"], config["model"]["training"]["lr"],
                          config["model"]["training"]["ema_decay"], config["trainer"]["max_steps"],
                          config["data"]["epoch_size"], config["trainer"]["precision"])
    assert resolved == {"demo": ([1.0, 1.0], 2e-4, 0.9975, 320, 1280, "32-true"),
                        "demo400": ([1.0, 1.0], 2e-4, 0.9975, 400, 1600, "32-true"),
                        "demo-scales0.5": ([0.5, 1.0], 2e-4, 0.9975, 400, 1600, "32-true"),
                        "recipe": ([0.5, 1.0], 1e-4, 0.9999, 1400, 1600, "32-true"),
                        "lr3e-5": ([0.5, 1.0], 3e-5, 0.9999, 1000, 1600, "32-true")}


def test_finetune_gain_bar():
    """The bar benchmarks/finetune_gain.py ends with: at least 0.5 dB on two tasks, no loss beyond 0.1 dB; the
    boundaries count as cleared."""
    verdict = _benchmark("finetune_gain").verdict
    assert verdict({"sr4": -0.07, "deblur": 1.17, "inpaint": 0.78, "colorize": 3.46}).startswith(
        "pays: 3 of 4 tasks gain at least 0.5 dB (colorize, deblur, inpaint; 2 needed), the worst is sr4 at -0.07 dB")
    assert verdict({"sr4": -0.1, "deblur": 0.5, "inpaint": 0.5, "colorize": 0.0}).startswith("pays: 2 of 4")
    assert verdict({"sr4": -0.51, "deblur": 0.70, "inpaint": 0.39, "colorize": 3.38}).startswith(
        "does not pay: 2 of 4 tasks gain at least 0.5 dB (colorize, deblur; 2 needed), the worst is sr4 at -0.51 dB")
    assert verdict({"sr4": 0.2, "deblur": 0.49, "inpaint": 0.3, "colorize": 3.0}).startswith("does not pay: 1 of 4")


@pytest.mark.slow
def test_finetune_gain_restores_both_priors_with_the_same_seeds(tmp_path, monkeypatch, capsys, skimage64_checkpoint):
    """benchmarks/finetune_gain.py end to end on two held-out document crops: the base prior scored against itself
    gains exactly nothing (same observation, same seeds, same sampler settings for both priors), the demo prior
    scores otherwise, and the figure holds observation, both restorations and the ground truth per crop."""
    gain = _benchmark("finetune_gain")
    crops = tmp_path / "crops"
    crops.mkdir()
    for path in sorted((REPO / "data" / "documents" / "heldout").glob("*.png"))[:2]:
        shutil.copy(path, crops / path.name)

    def run(tuned: Path, *extra: str) -> List[str]:
        monkeypatch.setattr("sys.argv", ["finetune_gain.py", "--tuned", str(tuned), "--base", str(skimage64_checkpoint),
                                         "--crops", str(crops), "--steps", "2", "--samples", "2", *extra])
        gain.main()
        return capsys.readouterr().out.splitlines()

    figure = tmp_path / "gain.png"
    lines = run(skimage64_checkpoint, "--tasks", "deblur", "sr4", "--figure", str(figure))
    rows = [line.split(" | ") for line in lines if line.startswith(("| deblur", "| sr4"))]
    assert [r[0] for r in rows] == ["| deblur", "| sr4"]
    for row in rows:
        assert row[1] == row[2] and row[3] == "+0.00 ± 0.00", row
    assert lines[-2].startswith("does not pay: 0 of 2 tasks") and "figure:" in lines[-1]
    with Image.open(figure) as image:  # 2 tasks x 2 crops, 4 rows of 64x64 at zoom 2 with 2-pixel gaps
        assert image.size == (2 * (4 * 64 + 3 * 2), 2 * (4 * 64 + 3 * 2))
    row = next(line for line in run(REPO / "data" / "demo_prior.pt", "--tasks", "deblur") if line.startswith("| deblur"))
    base, tuned, difference = row.split(" | ")[1:4]
    assert base == rows[0][1] and tuned != base and difference != "+0.00 ± 0.00"


@pytest.mark.slow
def test_finetune_gain_tuned_below_splits_the_prior_by_timestep(tmp_path, monkeypatch, capsys, skimage64_checkpoint):
    """finetune_gain.py --tuned-below T: the tuned weights below T and the base ones from T up. At 2 steps the
    timesteps are 999 and 0: T = 0 is the base prior, T = 1000 the tuned one, T = 500 neither."""
    gain = _benchmark("finetune_gain")
    crops = tmp_path / "crops"
    crops.mkdir()
    for path in sorted((REPO / "data" / "documents" / "heldout").glob("*.png"))[:2]:
        shutil.copy(path, crops / path.name)

    def run(*extra: str) -> List[List[str]]:
        monkeypatch.setattr("sys.argv", ["finetune_gain.py", "--tuned", str(REPO / "data" / "demo_prior.pt"),
                                         "--base", str(skimage64_checkpoint), "--crops", str(crops), "--steps", "2",
                                         "--samples", "1", "--tasks", "deblur", *extra])
        gain.main()
        lines = capsys.readouterr().out.splitlines()
        return [line.split(" | ") for line in lines if line.startswith("| deblur")], lines

    (whole,), _ = run()
    rows, lines = run("--tuned-below", "0", "500", "1000")
    assert [r[0] for r in rows] == ["| deblur, tuned below t=0", "| deblur, tuned below t=500",
                                    "| deblur, tuned below t=1000"]
    assert all(r[1] == whole[1] for r in rows)  # one base restoration, the same as without the split
    assert rows[0][2] == whole[1] and rows[0][3] == "+0.00 ± 0.00"
    assert rows[2][2] == whole[2] and rows[2][3] == whole[3]
    assert rows[1][2] not in (whole[1], whole[2])
    assert not any(line.startswith(("pays", "does not pay")) for line in lines)  # the bar is for whole priors


def test_finetune_gain_scores_fine_tunes_of_any_prior_config(tmp_path, monkeypatch, capsys):
    """finetune_gain.py --prior CONFIG: both weights in the architecture of a user's prior config (a tiny one here,
    its 32×32 tiles over 64×64 crops); without --base the base weights are the config's checkpoint."""
    gain = _benchmark("finetune_gain")
    config = prior_config(tmp_path, TINY, _tiny().state_dict(), name="base")  # base.pt and base.yaml
    torch.save(_randomize(_tiny(), seed=1).state_dict(), tmp_path / "tuned.pt")
    crops = tmp_path / "crops"
    for i, image in enumerate(skimage_crops(2, size=64, seed=3)):
        write_image(crops / f"c{i}.png", image)

    def run(tuned: str, *extra: str) -> List[str]:
        monkeypatch.setattr("sys.argv", ["finetune_gain.py", "--prior", str(config), "--tuned",
                                         str(tmp_path / tuned), "--crops", str(crops), "--steps", "2", "--samples",
                                         "1", "--tasks", "deblur", *extra])
        gain.main()
        lines = capsys.readouterr().out.splitlines()
        return [line.split(" | ") for line in lines if line.startswith("| deblur")]

    (itself,) = run("base.pt")
    assert itself[1] == itself[2] and itself[3] == "+0.00 ± 0.00", itself
    (other,) = run("tuned.pt", "--base", str(tmp_path / "base.pt"))
    assert other[1] == itself[1] and other[2] != itself[2], other
    below = run("tuned.pt", "--tuned-below", "0", "1000")
    assert below[0][2] == itself[1] and below[1][2] == other[2], below


def test_finetune_gain_cuts_held_out_images_as_fit_validates_them(tmp_path):
    """finetune_gain.py --size/--scale: images of any sizes cut as gdp fit's validation cuts them; without them the
    crops are scored as they are."""
    gain = _benchmark("finetune_gain")
    big, small = torch.rand(3, 100, 150), torch.rand(3, 64, 64)
    write_image(tmp_path / "big.png", big)
    write_image(tmp_path / "small.png", small)
    big, small = (read_image(tmp_path / f"{name}.png").pixels for name in ("big", "small"))  # as 8-bit PNGs hold them
    crops, changed = gain.read_crops(tmp_path, 64)
    assert crops.shape == (2, 3, 64, 64) and changed == 1
    assert torch.equal(crops[1], small)  # a crop of the size: as it is
    resized = torch.nn.functional.interpolate(big[None], size=(64, 96), mode="bicubic", antialias=True)[0]
    assert torch.allclose(crops[0], resized.clamp(0, 1)[:, :, 16:80], atol=1e-5)  # short side to 64, the centre
    crops, changed = gain.read_crops(tmp_path, 64, 1.0)
    assert changed == 1 and torch.equal(crops[0], big[:, 18:82, 43:107]) and torch.equal(crops[1], small)
    crops, changed = gain.read_crops(tmp_path, 32, 0.5)  # the central 64x64, halved
    assert changed == 2 and crops.shape == (2, 3, 32, 32)
    expected = torch.nn.functional.interpolate(small[None], size=(32, 32), mode="bicubic", antialias=True)[0]
    assert torch.allclose(crops[1], expected.clamp(0, 1), atol=1e-5)
    (tmp_path / "big.png").unlink()
    crops, changed = gain.read_crops(tmp_path)
    assert changed == 0 and torch.equal(crops[0], small)


def test_finetune_gain_says_in_one_line_what_to_give(tmp_path, monkeypatch, capsys):
    """finetune_gain.py's user errors: one line that names the option, before anything is restored."""
    gain = _benchmark("finetune_gain")
    crops = tmp_path / "crops"
    write_image(crops / "a.png", torch.rand(3, 64, 64))
    write_image(crops / "b.png", torch.rand(3, 64, 48))
    (tmp_path / "empty").mkdir()
    (tmp_path / "nameless.yaml").write_text(yaml.safe_dump({"model": {"prior": {"name": "x", "unet": TINY}}}))
    tuned = str(REPO / "data" / "demo_prior.pt")
    tiny = prior_config(tmp_path, TINY, _tiny().state_dict())  # tiny.pt, tiny.yaml
    cases = {
        ("--crops", str(tmp_path / "empty")): "--crops " + str(tmp_path / "empty") + ": no images in it",
        ("--crops", str(tmp_path / "none")): ": no such folder; give a folder of clean images",
        ("--crops", str(crops)): "b.png is 48x64, a.png 64x64; give crops of one size",
        ("--tuned", str(tmp_path / "t.pt")): "--tuned " + str(tmp_path / "t.pt") + ": no such file",
        ("--base", str(tmp_path / "b.pt")): "--base " + str(tmp_path / "b.pt") + ": no such file",
        ("--prior", str(tmp_path / "no.yaml")): str(tmp_path / "no.yaml") + ": cannot read the config",
        ("--prior", "nope"): "unknown prior 'nope'; presets:",
        ("--prior", str(tmp_path / "nameless.yaml")): "names no checkpoint; give the base prior's weights with --base",
        ("--tuned", str(REPO / "README.md")): "--tuned " + str(REPO / "README.md") + ": not a PyTorch checkpoint",
        ("--prior", str(tiny)): (f"--tuned {tuned}: not the UNet of --prior {tiny}: ",
                                 "; they are the UNet of preset 'skimage64': give --prior skimage64"),
        ("--base", str(tmp_path / "tiny.pt")): (f"--base {tmp_path / 'tiny.pt'}: not the UNet of --prior skimage64: ",
                                                "; give the weights of a prior with the UNet --prior describes"),
    }
    for extra, message in cases.items():
        monkeypatch.setattr("sys.argv", ["finetune_gain.py", "--tuned", tuned, *extra])
        with pytest.raises(SystemExit) as stop:
            gain.main()
        line = str(stop.value.code)
        parts = message if isinstance(message, tuple) else (message,)
        assert line.startswith("finetune_gain.py: error: ") and "\n" not in line, (extra, line)
        assert all(part in line for part in parts), (extra, line)
        assert capsys.readouterr().out == ""
    for option in ("--size", "--scale", "--steps", "--samples"):
        monkeypatch.setattr("sys.argv", ["finetune_gain.py", "--tuned", tuned, option, "0"])
        with pytest.raises(SystemExit) as stop:
            gain.main()
        assert stop.value.code == 2 and f"error: {option} must be positive, got 0" in capsys.readouterr().err
