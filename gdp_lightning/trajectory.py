"""The TensorBoard view of restorations (:class:`TrajectoryLogger`): per image a labelled panel input | output |
ground truth | error or uncertainty, and inside the sampler x̃0 every k diffusion steps, the loss terms and φ
summaries at every step, and the trajectory grid of the first images."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from .panels import kernel_panel, panel, restoration_panel
from .ranges import to_image
from .sampling.restorer import BatchResult

__all__ = ["TrajectoryLogger"]


class TrajectoryLogger(Callback):
    """Show what happens inside the sampler in TensorBoard.

    For the first ``num_images`` images of the first ``num_batches`` batches (on the first process): x̃0 every
    ``every_n_steps`` diffusion steps under ``x0/<name>`` (the step slider walks the trajectory; start
    TensorBoard with ``--samples_per_plugin images=1000`` to keep every step), the grid of that trajectory
    under ``trajectory/<name>``, and at every step the loss terms (``loss/<name>/<term>``) and φ
    (``phi/<name>/<φ>``: the value of a scalar, the mean of a larger tensor; the maximum of a kernel).
    Not during ``gdp fit``, whose validation logs its own grids (``fit/restoration``, ``fit/samples``).

    :param every_n_steps: x̃0 every this many steps (and the last one).
    :param num_images: images per batch to follow.
    :param num_batches: batches to follow.
    :param scalars: log the loss terms and φ at every step.
    :param panels: images whose panel ``panels/<stage>/<name>`` is logged (the first ones of each process, about
        this many in all): input (enlarged to the output's size) | output | ground truth where known | the
        samples' standard deviation with ``num_samples``, else the absolute error where the truth is known (maps
        ×4, see :mod:`.panels`).
    :param panel_size: the largest side of a panel's tiles (larger outputs are shrunk for TensorBoard).
    """

    def __init__(self, every_n_steps: int = 10, num_images: int = 4, num_batches: int = 1, scalars: bool = True,
                 panels: int = 16, panel_size: int = 512):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.num_images = every_n_steps, num_images
        self.num_batches, self.scalars = num_batches, scalars
        self.panels, self.panel_size = panels, panel_size
        self._frames: Dict[str, List[Tuple[str, torch.Tensor]]] = {}
        self._panels_logged = 0
        self._panel_writer = None  # the event file of a process other than the first (see setup)

    # ------------------------------------------------------------------ panels
    def setup(self, trainer: "L.Trainer", pl_module, stage: str) -> None:
        """Under many processes each one logs the panels of the images it restores: the first into the
        logger's event file, the others into their own event files in the same folder (TensorBoard reads them as
        one run). The first process tells the others the folder here (every process calls setup)."""
        self._panel_writer = None
        logger = self._tensorboard(trainer)
        if trainer.world_size <= 1 or stage == "fit" or logger is None:
            return
        log_dir = trainer.strategy.broadcast(logger.log_dir if trainer.is_global_zero else None)
        if not trainer.is_global_zero and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._panel_writer = SummaryWriter(log_dir, filename_suffix=f".rank{trainer.global_rank}")

    def teardown(self, trainer: "L.Trainer", pl_module, stage: str) -> None:
        if self._panel_writer is not None:
            self._panel_writer.close()
            self._panel_writer = None

    def _start(self) -> None:
        self._panels_logged = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        self._start()

    def on_test_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log_panels(trainer, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log_panels(trainer, outputs, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log_panels(trainer, outputs, batch)

    def _log_panels(self, trainer: "L.Trainer", outputs, batch) -> None:
        """The panels of a restored batch (runs before the writer, which then lets go of the images)."""
        share = math.ceil(self.panels / max(1, trainer.world_size))  # about ``panels`` over all processes
        if self._panels_logged >= share or not isinstance(outputs, BatchResult):
            return
        experiment = None
        if trainer.state.fn != "fit":
            experiment = self._experiment(trainer) if trainer.is_global_zero else self._panel_writer
        if experiment is None:
            return
        stage, names = trainer.state.fn.value, list(batch["name"])
        for item in outputs.items:
            if self._panels_logged >= share:
                break
            b = names.index(item.name)
            truth = batch["x"][b] if "x" in batch else None
            for result in item.results:
                if result.image is None:
                    continue
                suffix = f"_s{result.scale:g}" if len(item.results) > 1 else ""
                picture = restoration_panel(batch["y"][b], result.image, truth, result.std, self.panel_size)
                experiment.add_image(f"panels/{stage}/{item.name}{suffix}", picture, global_step=0)
                kernels = [v for k, v in result.phi.items() if k.split(".")[-1] == "kernel" and v.numel() > 1]
                if kernels:  # a learned kernel, beside the true one where the synthetic observation had one
                    true_kernels = batch.get("true_kernel")
                    true = true_kernels[b] if true_kernels is not None else None
                    experiment.add_image(f"kernels/{stage}/{item.name}{suffix}", kernel_panel(kernels[0], true),
                                         global_step=0)
            self._panels_logged += 1

    @staticmethod
    def _tensorboard(trainer: "L.Trainer"):
        return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)

    def _experiment(self, trainer: "L.Trainer"):
        logger = self._tensorboard(trainer)
        return logger.experiment if logger is not None else None

    def on_diffusion_step(self, trainer, pl_module, info, context) -> None:
        if context.batch_idx >= self.num_batches or not trainer.is_global_zero or self.num_images <= 0:
            return
        if trainer.state.fn == "fit":
            return
        experiment = self._experiment(trainer)
        if experiment is None:
            return
        count = min(self.num_images, len(context.names))
        suffix = f"_s{context.scale:g}" if context.multi_scale else ""
        keep = (info.step - 1) % self.every_n_steps == 0 or info.step == info.total
        phi = info.degradation.phi() if self.scalars else {}
        for b in range(count):
            tag = f"{context.stage}/{context.names[b]}{suffix}"
            if keep:
                x0 = to_image(info.pred_xstart[b].detach().float()).clamp(0, 1).cpu()
                experiment.add_image(f"x0/{tag}", x0, global_step=info.step)
                self._frames.setdefault(tag, []).append((str(info.step), x0))
            if self.scalars:
                for term, values in info.losses.items():
                    value = float(values[b])
                    experiment.add_scalar(f"loss/{tag}/{term}", value, global_step=info.step)
                    if value > 0:  # the terms fall by decades: their log10 reads at every step
                        experiment.add_scalar(f"loss_log10/{tag}/{term}", math.log10(value), global_step=info.step)
                for key, value in phi.items():
                    v = value[b] if value.shape[0] == len(context.names) else value[0]
                    name = f"{key}_peak" if key.endswith("kernel") and v.numel() > 1 else key
                    experiment.add_scalar(f"phi/{tag}/{name}", _phi_scalar(key, v), global_step=info.step)
            if info.step == info.total and tag in self._frames:  # the frames side by side, each under its step
                experiment.add_image(f"trajectory/{tag}", panel(self._frames.pop(tag), max_side=4096),
                                     global_step=0)
        if info.step == info.total:
            experiment.flush()


def _phi_scalar(key: str, value: torch.Tensor) -> float:
    if value.numel() == 1:
        return float(value)
    if key.endswith("kernel"):
        return float(value.max())
    return float(value.float().mean())
