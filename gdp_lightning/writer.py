"""The writer of restored images and learned φ (:class:`RestorationWriter`, a Lightning callback).

It writes every restored batch's files as they come (see :mod:`.outputs`: ``<name>.png``, ``<name>.phi.pt``,
pictures of kernels and maps, ``<name>.json``), records inputs that failed, tells the data module which inputs an
earlier run restored (a killed run resumes), writes each image on one process only (the data module gives every
batch to exactly one process), holds the output folder for the run (see :mod:`.run_folder`), and keeps a record of
the run (``run.json``, see :mod:`.run_record`) and a summary of the metrics (``metrics.csv``, ``metrics.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from . import __version__
from .errors import InputError, note
from .io import atomic_path
from .metrics import DATASET_METRICS
from .outputs import (
    Failure,
    json_dump,
    metrics_table,
    phi_summary,
    run_summary,
    summarize_records,
    write_failure_record,
    write_record,
)
from .resources import format_seconds
from .run_folder import FolderLock, check_output_folder, remove_temporary_files
from .run_record import model_record, restoration_settings, run_hparams
from .sampling.restorer import BatchResult, ImageResult, InputFailure

__all__ = ["RestorationWriter", "Failure", "phi_summary", "input_folders"]

RESERVED = ("run", "metrics")


def input_folders(datamodule: Any, items: List[Any]) -> List[Path]:
    """The folders the inputs come from: the data module's input folder and every input file's folder."""
    folders = {Path(p).parent for it in items for p in getattr(it, "paths", [])}
    for attribute in ("input_dir", "val_dir"):
        value = getattr(datamodule, attribute, None)
        if value:
            folders.add(Path(value))
    return sorted(folders)


class RestorationWriter(Callback):
    """Write every restored image, its learned φ and its metrics; resume where a run stopped.

    :param output_dir: where the outputs go (default: ``outputs`` in the logger's folder,
        e.g. ``logs/sr4/outputs``: the same for every run of a task, so a rerun resumes).
    :param overwrite: restore and write inputs whose outputs exist (default: skip them).
    :param save_phi: write the learned φ (``<name>.phi.pt`` and pictures of kernels and maps).
    """

    def __init__(self, output_dir: Optional[str] = None, overwrite: bool = False, save_phi: bool = True):
        self.output_dir = Path(output_dir) if output_dir else None
        self.overwrite, self.save_phi = overwrite, save_phi
        self._dir: Optional[Path] = None
        self._rank = 0
        self._summarized = False
        self._skipped, self._batches_written, self._started = 0, 0, time.monotonic()
        self._earlier: List[str] = []
        self._lock: Optional[FolderLock] = None
        #: what the run record says of the run: the command and its resolved config (see :meth:`describe_run`)
        self.run_command: Optional[List[str]] = None
        self.run_config: Optional[str] = None
        #: the inputs of the last summary without output (first process only)
        self.failures: List[Failure] = []

    @property
    def failed(self) -> List[str]:
        """:attr:`failures` as ``"name (why)"``."""
        return [str(f) for f in self.failures]

    def describe_run(self, command: Optional[List[str]], config: Optional[str]) -> None:
        """The command line of the run and its resolved config (YAML), for ``run.json`` and ``run.yaml``."""
        self.run_command = list(command) if command is not None else None
        self.run_config = config

    # ---------------------------------------------------------------- where
    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the writer is not set up")
        return self._dir

    def resolve_directory(self, trainer: "L.Trainer") -> Path:
        if self.output_dir is not None:
            return self.output_dir
        logger = trainer.logger
        if logger is not None and getattr(logger, "root_dir", None):
            return Path(logger.root_dir) / "outputs"
        return Path(trainer.default_root_dir) / "outputs"

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage == "fit":  # fine-tuning writes checkpoints, not restorations
            return
        self._dir = self.resolve_directory(trainer)
        self._rank = trainer.global_rank
        datamodule = trainer.datamodule
        items = getattr(datamodule, "items", None) or []
        clash = [it.name for it in items if it.name in RESERVED]
        if clash:
            raise InputError(f"an input named {clash[0]!r} would overwrite the run's {clash[0]}.json in "
                             f"{self._dir}; rename it")
        # the folder is checked and locked by the first process; every process stops on its answer
        problem = None
        if trainer.is_global_zero:
            try:
                check_output_folder(self._dir, input_folders(datamodule, items))
                self._lock = FolderLock(self._dir, self.run_command)
                self._lock.acquire()
                removed = remove_temporary_files(self._dir)
                if removed:
                    note(f"removed {len(removed)} half-written file(s) of an earlier, interrupted run "
                                   f"from {self._dir}")
            except InputError as e:
                problem = str(e)
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise InputError(problem)
        self._summarized = False
        self._earlier = []
        self._batches_written, self._started = 0, time.monotonic()
        done = [it.name for it in items if self.is_done(it.name)]
        self._skipped = len(done)
        if done:
            self._check_resume(trainer, pl_module)
        skip_done = getattr(datamodule, "skip_done", None)
        if skip_done is not None:  # the data module leaves them out of predict (it is told, it never asks)
            skip_done(done)

    def _check_resume(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """A rerun skips the inputs already restored: only when the earlier run restored them the same way.
        Checked on every process (each reads the record), so all stop together."""
        path = self.directory / "run.json"
        if getattr(pl_module, "describe", None) is None or not path.is_file():
            return
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        model = model_record(trainer, pl_module)
        if "checkpoint_sha256" not in model and (model.get("weights") or model.get("checkpoint")):
            return  # a missing weights file: loading it says so, in its own words
        now = restoration_settings(json.loads(json.dumps(model)))  # as a record stores it
        before = restoration_settings(earlier.get("model", {}))
        changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        if changed:
            key = changed[0]
            raise InputError(
                f"{self.directory} holds outputs of a run with other settings ({key}: {before.get(key)!r} then, "
                f"{now.get(key)!r} now); resuming would mix them: use another --writer.output_dir, or "
                "--writer.overwrite true to restore everything again"
            )
        self._earlier = list(earlier.get("earlier_starts", [])) + [earlier.get("started", "?")]

    def _start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        # after the model's setup (weights loaded) and never under inference mode (the model stops then):
        # a run that fails before it starts leaves the record of the run that made the outputs
        if trainer.is_global_zero and not torch.is_inference_mode_enabled():
            self.write_run_record(trainer, pl_module, stage)
            self._record_rejected(trainer)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "predict")

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._start(trainer, pl_module, "validate")

    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        # with every input done the loop has no batch and Lightning skips on_predict_end: summarise here
        try:
            if stage == "predict" and not self._summarized and trainer.world_size == 1 and self._dir is not None \
                    and self._lock is not None and self._lock.held:
                self.summarize(trainer, pl_module)
        finally:
            self._release()

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._release()  # Lightning skips teardown after an error

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def is_done(self, name: str) -> bool:
        """Whether ``name`` was restored by an earlier run (its record, written last, exists and does not say it
        failed: a rerun restores the images that diverged again)."""
        if self.overwrite or self._dir is None:
            return False
        path = self._dir / f"{name}.json"
        if not path.is_file():
            return False
        try:
            return not json.loads(path.read_text()).get("failed", False)
        except (OSError, ValueError):
            return False

    # ---------------------------------------------------------------- record
    def write_run_record(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        model = model_record(trainer, pl_module)
        record = {
            "stage": stage,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.run_command or sys.argv,
            "gdp_lightning": __version__,
            "torch": torch.__version__,
            "lightning": L.__version__,
            "python": platform.python_version(),
            "devices": trainer.world_size,
            "model": model,
        }
        if self._earlier:  # a resumed run: when the runs that made the other outputs started
            record["earlier_starts"] = self._earlier
        config = self.run_config
        if config:
            record["config"] = config
            with atomic_path(self.directory / "run.yaml") as tmp:
                tmp.write_text(config)
        json_dump(self.directory / "run.json", record)

    # ---------------------------------------------------------------- write
    def _write(self, outputs: Optional[BatchResult]) -> None:
        if not isinstance(outputs, BatchResult):
            return
        for failure in outputs.failed:
            self.write_failure(failure)
        for item in outputs.items:
            self.write_item(item)
        # the loop keeps what predict_step returned: keep it small on long runs
        outputs.items = [dataclasses.replace(item, results=[], alpha=None) for item in outputs.items]

    def write_failure(self, failure: InputFailure) -> None:
        """The record of an input that could not be restored (a rerun tries it again)."""
        write_failure_record(self.directory, failure, self._rank)

    def write_item(self, item: ImageResult) -> None:
        write_record(self.directory, item, self._rank, self.save_phi)

    def _record_rejected(self, trainer: "L.Trainer") -> None:
        """Inputs the data module left out (a file that cannot be used): recorded as failed, unless an earlier
        run restored them."""
        for item, problem in getattr(trainer.datamodule, "rejected", None) or []:
            if not self.is_done(item.name):
                self.write_failure(InputFailure(item.name, item.index, str(item.paths[0]), problem))

    # ---------------------------------------------------------------- hooks
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._progress(trainer, outputs)
        self._write(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._progress(trainer, outputs)
        self._write(outputs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.state.fn == "validate":  # not the validation inside fit
            self._progress(trainer, outputs)
            self._write(outputs)

    def _progress(self, trainer: "L.Trainer", outputs: Optional[BatchResult]) -> None:
        """Without a progress bar (a log file), one line per batch: its images, how far the run is, the time."""
        if trainer.progress_bar_callback is not None or not isinstance(outputs, BatchResult):
            return
        names = [item.name for item in outputs.items] + [f"{f.name} (failed)" for f in outputs.failed]
        if not names:
            return
        self._batches_written += 1
        counts = {"predict": trainer.num_predict_batches, "test": trainer.num_test_batches,
                  "validate": trainer.num_val_batches}.get(trainer.state.fn.value, [])
        total = sum(int(n) for n in counts if math.isfinite(n)) or "?"
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        where = " on this process" if trainer.world_size > 1 else ""
        note(f"{shown}: batch {self._batches_written} of {total}{where} done, "
             f"{format_seconds(time.monotonic() - self._started)} in all")

    def on_predict_end(self, trainer, pl_module) -> None:
        self.summarize(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self.summarize(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self.summarize(trainer, pl_module)

    # ---------------------------------------------------------------- summary
    def summarize(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """``metrics.csv`` (one row per image and scale) and ``metrics.json`` (means) from the records of every
        input of the data module: also those restored by an earlier, interrupted run."""
        self._summarized = True
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        items = getattr(datamodule, "items", None)
        names = [it.name for it in items] if items is not None else None
        if names is None:
            names = sorted(p.relative_to(self.directory).with_suffix("").as_posix()
                           for p in self.directory.rglob("*.json") if p.parent != self.directory
                           or p.stem not in RESERVED)
        # the dataset metrics (FID) as the module logged them: "test/fid", "test/fid/s500"
        prefix = f"{trainer.state.stage.value}/" if trainer.state.stage is not None else None
        dataset = {key[len(prefix):]: float(value) for key, value in trainer.callback_metrics.items()
                   if prefix and key.startswith(prefix) and key[len(prefix):].split("/")[0] in DATASET_METRICS}
        rows, self.failures, means = summarize_records(self.directory, names, dataset)
        self._log_means(trainer, means)
        self._log_run(trainer, pl_module, means, dataset, rows)
        for line in run_summary(rows, means, self._skipped, self.directory, getattr(trainer.logger, "log_dir", None)):
            note(line)

    def _log_run(self, trainer: "L.Trainer", pl_module: "L.LightningModule", means: Dict[str, Dict[str, float]],
                 dataset: Dict[str, float], rows: List[Dict[str, Any]]) -> None:
        """TensorBoard's HParams of the run (task, sampler, prior and checkpoint, data; see :func:`run_hparams`)
        with its real metrics (the means, per scale in a sweep, and the dataset metrics), the per-image metrics as a
        table (``<stage>/metrics``) and the resolved config as text (``run/config``)."""
        stage = trainer.state.fn.value
        params = run_hparams(model_record(trainer, pl_module), getattr(trainer.datamodule, "hparams_for_log", None))
        metrics = {f"hparams/{k}{'' if len(means) == 1 else f'/s{scale}'}": v for scale, mean in means.items()
                   for k, v in mean.items()}
        metrics.update({f"hparams/{k}": v for k, v in dataset.items()})
        for logger in trainer.loggers:
            logger.log_hyperparams({"stage": stage, **params}, metrics=metrics or {"hparams/images": 0.0})
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text(f"{stage}/metrics", metrics_table(rows))  # per image, by name
                if self.run_config:  # four spaces: a code block in Markdown
                    experiment.add_text("run/config", "\n".join("    " + line for line in self.run_config.splitlines()))

    @staticmethod
    def _log_means(trainer: "L.Trainer", means: Dict[str, Dict[str, float]]) -> None:
        """To the loggers (TensorBoard): predict's means as ``predict/<metric>`` (``/s<scale>`` in a sweep), named as
        validate's and test's (their module logs them); per image they are in the ``<stage>/metrics`` table. A scale
        sweep of any stage also gets ``sweep/<stage>/<metric>`` with the scale as the step: the metric against the
        scale in one chart."""
        stage = trainer.state.fn.value
        sweep = len(means) > 1
        for scale, mean in means.items():
            for logger in trainer.loggers:
                if stage == "predict":
                    suffix = f"/s{scale}" if sweep else ""
                    logger.log_metrics({f"predict/{k}{suffix}": v for k, v in mean.items()}, step=0)
                if sweep:
                    logger.log_metrics({f"sweep/{stage}/{k}": v for k, v in mean.items()},
                                       step=int(round(float(scale))))
