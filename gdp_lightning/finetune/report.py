"""What ``gdp fit`` tells its user: where it is and how its validation moves while it runs (in a log file, where no
progress bar shows it), and at the end what the fit changed, where its checkpoints are and how to use them.

Lines go to stderr through :func:`gdp_lightning.errors.note` (the first process only)::

    gdp: validate at step 0: psnr 20.16, ssim 0.8010, denoising_loss 0.0665
    gdp: step 32 of 320: loss 0.0536, 3 min in all, about 24 min of training left
    ...
    gdp: fit done: step 320 of 320 in 28 min
    gdp: validate from step 0 to 320: psnr 20.16 -> 20.93, ssim 0.8010 -> 0.8670, denoising_loss 0.0665 -> 0.0322
    gdp: checkpoints in logs/finetune/demo_prior/checkpoints; the EMA weights as a plain guided-diffusion state
         dict: gdp export logs/finetune/demo_prior/checkpoints/last.ckpt prior.pt
    gdp: TensorBoard: tensorboard --logdir logs/finetune/demo_prior
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import lightning as L
import torch

from ..errors import note
from ..resources import format_seconds

__all__ = ["FitReport", "REPORTED"]

#: the validation metrics the lines show, in this order (when the validation computes them)
REPORTED = ("psnr", "ssim", "denoising_loss")

#: lines during training without a progress bar: about this many over a run of known length
LINES_PER_RUN = 10


def _format(name: str, value: float) -> str:
    return f"{value:.2f}" if name == "psnr" else f"{value:.4f}"


def _values(shown: Dict[str, float]) -> str:
    return ", ".join(f"{name} {_format(name, value)}" for name, value in shown.items())


class FitReport(L.Callback):
    """The progress and summary lines of a fit (see the module docstring); :meth:`validated` is told each
    validation's means by the module."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._first_step = 0
        self._loss_sum: Optional[torch.Tensor] = None
        self._loss_count = 0
        self._shown_step = -1
        self._validating_since: Optional[float] = None
        self._validating = 0.0  # seconds spent validating, left out of the estimate of the time left
        self.validations: List[Tuple[int, Dict[str, float]]] = []

    # ------------------------------------------------------------------ during the run
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()
        self._first_step = trainer.global_step
        self._loss_sum, self._loss_count = None, 0
        self._shown_step = self._first_step
        self._validating_since, self._validating = None, 0.0
        self.validations = []

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validating_since = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validating_since is not None:
            self._validating += time.monotonic() - self._validating_since
            self._validating_since = None

    def _interval(self, trainer: L.Trainer) -> int:
        if trainer.max_steps and trainer.max_steps > 0:
            return max(1, trainer.max_steps // LINES_PER_RUN)
        per_epoch = trainer.num_training_batches
        if isinstance(per_epoch, (int, float)) and per_epoch != float("inf") and per_epoch > 0:
            return max(1, int(per_epoch) // max(1, trainer.accumulate_grad_batches))
        return 100

    def _total(self, trainer: L.Trainer) -> Optional[int]:
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        return None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # Lightning divides it by the batches accumulated into a step
            loss = loss.detach().float() * max(1, trainer.accumulate_grad_batches)
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        step = trainer.global_step
        if trainer.progress_bar_callback is not None or step == self._shown_step or step % self._interval(trainer):
            return
        self._shown_step = step  # once a step (several batches make one when gradients accumulate)
        total = self._total(trainer)
        facts = [f"loss {float(self._loss_sum) / self._loss_count:.4f}"] if self._loss_count else []
        elapsed = time.monotonic() - self._started
        facts.append(f"{format_seconds(elapsed)} in all")
        if total and self._first_step < step < total:
            left = (elapsed - self._validating) / (step - self._first_step) * (total - step)
            facts[-1] += f", about {format_seconds(left)} of training left"
        note(f"step {step}" + (f" of {total}" if total else "") + ": " + ", ".join(facts))
        self._loss_sum, self._loss_count = None, 0

    def validated(self, trainer: L.Trainer, values: Dict[str, Any]) -> None:
        """One validation's means (``validate/<name>`` to value), at the optimizer steps done."""
        shown = {}
        for name in REPORTED:
            value = values.get(f"validate/{name}")
            if value is not None:
                value = float(value)
                if value == value:  # not NaN
                    shown[name] = value
        if not shown:
            return
        step = trainer.global_step
        if self.validations and self.validations[-1][0] == step:  # a validation run twice at one step: the last
            self.validations.pop()
        self.validations.append((step, shown))
        if trainer.progress_bar_callback is None:
            note(f"validate at step {step}: {_values(shown)}")

    # ------------------------------------------------------------------ at the end
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = self._total(trainer)
        note(f"fit done: step {trainer.global_step}" + (f" of {total}" if total else "") +
             f" in {format_seconds(time.monotonic() - self._started)}")
        if len(self.validations) > 1:
            (first, before), (last, after) = self.validations[0], self.validations[-1]
            changes = [f"{k} {_format(k, before[k])} -> {_format(k, after[k])}" for k in after if k in before]
            if changes:
                note(f"validate from step {first} to {last}: " + ", ".join(changes))
        elif self.validations:
            step, shown = self.validations[0]
            note(f"validate at step {step}: {_values(shown)}")
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if folder:
            last = Path(folder) / "last.ckpt"
            note(f"checkpoints in {folder}" + (f"; the EMA weights as a plain guided-diffusion state dict: gdp export "
                                               f"{last} prior.pt" if last.is_file() else ""))
        logger = trainer.logger
        log_dir = getattr(logger, "log_dir", None) if logger is not None else None
        if log_dir and type(logger).__name__ == "TensorBoardLogger":
            note(f"TensorBoard: tensorboard --logdir {log_dir}")
