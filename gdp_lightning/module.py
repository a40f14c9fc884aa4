"""The LightningModule of restoration: ``gdp predict``, ``validate`` and ``test`` (:class:`GDPModule`).

A batch (see :class:`gdp_lightning.data.GDPDataModule`) holds observations ``y`` in [0, 1], their names and
indices, and, in synthetic mode, the ground truth ``x``. Every step hands the batch to the pure-torch
:class:`~gdp_lightning.sampling.Restorer` and returns its :class:`~gdp_lightning.sampling.BatchResult`;
:class:`gdp_lightning.writer.RestorationWriter` writes it; ``validate`` and ``test`` also log the metrics' means.
This module owns what Lightning adds: the prior's weights (from ``prior.checkpoint`` or ``--ckpt_path``), the
devices, the step hooks of the callbacks, SIGTERM and the logs. ``gdp fit`` uses
:class:`gdp_lightning.finetune.FinetuneModule`, which extends it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from .degradations import Degradation
from .diffusion import GaussianDiffusion
from .errors import ConfigError, note
from .metrics import ImageMetrics
from .precision import PRECISION_OPTIONS, PRECISIONS, resolve_precision
from .prior import PriorSpec, load_prior_weights, merge_low_rank, state_dict_mismatches
from .resources import available_bytes, format_seconds
from .sampling import (
    BatchResult,
    ClassLabels,
    GuidanceDivergedError,
    QualityTerm,
    Restorer,
    SamplerSettings,
    StepContext,
    StepInfo,
)

__all__ = ["GDPModule", "SamplerSettings", "StepContext", "PRECISIONS"]



class GDPModule(L.LightningModule):
    """GDP restoration with a pretrained diffusion prior (Fei et al., CVPR 2023).

    :param prior: the prior: guided-diffusion UNet flags, the diffusion it was trained with and its weights
        (``configs/prior/*.yaml``; ``--model.prior.checkpoint FILE`` points at the weights).
    :param degradation: the task's forward model A_φ (``class_path`` of a
        :mod:`gdp_lightning.degradations` operator and its ``init_args``); its learnable φ are optimised per image.
    :param sampler: the sampler settings (steps, guidance scale, variant, φ optimiser, tiling).
    :param quality: quality losses added to the guidance (exposure control, colour constancy, ...).
    :param seed: image i's noise and φ initialisation come from (seed, i): results do not depend on the
        batch size or the number of devices.
    :param class_label: class-conditional priors: one class for every image.
    :param labels_file: class-conditional priors: a text file of ``name label`` lines (or ``name,label``).
    :param random_labels: class-conditional priors: a random class per image, seeded by (seed, i).
    :param precision: UNet compute precision: ``auto`` (the fastest that keeps quality on the device: ``bf16``
        on GPUs and CPUs that compute bfloat16, ``fp16`` on older GPUs, else ``fp32``; see
        :mod:`gdp_lightning.precision`), ``fp32``, ``bf16`` or ``fp16``.
    :param compile: ``torch.compile`` the UNet (faster on a GPU after the first batch).
    :param small_images: images smaller than the prior: ``pad`` (pad the observation, restore, crop back) or
        ``error``.
    :param metrics: metrics to compute: ``psnr``, ``ssim``, ``lpips``, ``fid`` (need the ground truth),
        ``consistency`` (MSE between A(x̂) and y on the 0–255 scale), ``loe`` (low-light); on the 8-bit outputs.
    :param lpips_net: backbone of LPIPS (``alex``, ``vgg``, ``squeeze``).
    :param fid_feature_extractor: FID with a TorchScript feature extractor instead of Inception.
    :param trust_checkpoint: allow a checkpoint that needs arbitrary pickles (``torch.load(weights_only=False)``).
    :param progress: show the diffusion steps of each batch.
    """

    def __init__(
        self,
        prior: PriorSpec,
        degradation: Degradation,
        sampler: SamplerSettings = SamplerSettings(),  # noqa: B008 - a frozen default; jsonargparse shows it
        quality: Optional[List[QualityTerm]] = None,
        seed: int = 0,
        class_label: Optional[int] = None,
        labels_file: Optional[str] = None,
        random_labels: bool = False,
        precision: str = "auto",
        compile: bool = False,
        small_images: str = "pad",
        metrics: List[str] = ["psnr", "ssim", "consistency"],  # noqa: B006 - jsonargparse shows the default
        lpips_net: str = "alex",
        fid_feature_extractor: Optional[str] = None,
        trust_checkpoint: bool = False,
        progress: bool = True,
    ):
        super().__init__()
        if isinstance(prior, dict):
            prior = PriorSpec.from_dict(prior)
        if isinstance(sampler, dict):
            sampler = SamplerSettings(**sampler)
        precision = "auto" if precision is None else precision  # checkpoints of earlier versions
        if precision not in PRECISION_OPTIONS:
            raise ConfigError(f"--model.precision must be one of {', '.join(PRECISION_OPTIONS)}, got {precision!r}")
        if small_images not in ("pad", "error"):
            raise ConfigError(f"--model.small_images must be 'pad' or 'error', got {small_images!r}")
        # kept in checkpoints; TensorBoard's HParams get the run's settings and metrics from the writer instead
        self.save_hyperparameters(ignore=["degradation", "quality"], logger=False)
        # plain values only, so that checkpoints load with torch.load(weights_only=True)
        self.hparams.update(prior=prior.to_dict(), sampler=dataclasses.asdict(sampler))
        self.prior = prior
        self.settings = sampler
        self.unet = prior.build_unet()
        self.degradation = degradation
        self.quality = list(quality or [])
        self.quality_losses = nn.ModuleList([q.loss for q in self.quality])
        try:
            self.diffusion = GaussianDiffusion.from_prior(prior, respacing=str(sampler.steps))
        except ValueError as e:  # more steps than the prior was trained with
            raise ConfigError(f"--model.sampler.steps: {e} (the prior has "
                              f"{prior.diffusion.diffusion_steps} diffusion steps)") from None
        self.seed = int(seed)
        self.labels = ClassLabels(self.unet.num_classes, class_label, labels_file, random_labels)
        self.precision_name, self.compile_unet = precision, compile
        #: the precision the UNet restores in (``precision`` with ``auto`` resolved by :meth:`setup`)
        self.precision_used: Optional[str] = None
        self.small_images = small_images
        self.metric_names = list(metrics)
        self.lpips_net, self.fid_feature_extractor = lpips_net, fid_feature_extractor
        self.trust_checkpoint, self.progress = trust_checkpoint, progress
        self.weights_loaded = False
        #: the stage the last :meth:`setup` prepared (``None`` before, and again after :meth:`set_task`)
        self.prepared_stage: Optional[str] = None
        #: restores the batches (made by :meth:`setup`)
        self.restorer: Optional[Restorer] = None
        self._metrics: Optional[ImageMetrics] = None
        self.eval_means = nn.ModuleDict()

    def set_task(self, degradation: Optional[Degradation] = None, quality: Optional[List[QualityTerm]] = None) -> None:
        """Replace the degradation and/or the quality terms (Python objects instead of config entries)."""
        if degradation is not None:
            self.degradation = degradation
        if quality is not None:
            self.quality = list(quality)
            self.quality_losses = nn.ModuleList([q.loss for q in self.quality])
        self.prepared_stage = None

    # ------------------------------------------------------------------ set-up
    def load_weights(self) -> None:
        """Load the prior's weights from ``prior.checkpoint`` (once). Without one, the weights must come from the
        trainer's ``--ckpt_path`` (checked when the stage starts)."""
        if self.weights_loaded or not self.prior.checkpoint:
            return
        load_prior_weights(self.unet, self.prior, self.prior.checkpoint, trust_checkpoint=self.trust_checkpoint)
        self.weights_loaded = True

    def _require_weights(self) -> None:
        if not self.weights_loaded:
            raise ConfigError("the prior has no weights: give the checkpoint file with --model.prior.checkpoint FILE "
                              "(or a gdp fit checkpoint with --ckpt_path FILE)")

    def setup(self, stage: str) -> None:
        self.load_weights()
        self._prepare_unet(stage)
        self.labels.load()
        self._metrics = ImageMetrics(self.metric_names, lpips_net=self.lpips_net,
                                     fid_feature_extractor=self.fid_feature_extractor,
                                     groups=self.settings.scale_suffixes())
        self.restorer = self.build_restorer()
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        self.labels.require([item.name for item in getattr(datamodule, "items", None) or []])
        keys = [f"{m}{suffix}" for suffix in self.settings.scale_suffixes() for m in [*self.metric_names, "diverged"]
                if m != "fid"]
        self.eval_means = nn.ModuleDict({k: MeanMetric() for k in keys})
        self.prepared_stage = stage

    def build_restorer(self) -> Restorer:
        """The :class:`Restorer` of this module's prior, task and settings."""
        return Restorer(self.sampling_unet, self.diffusion, self.degradation, self.settings, quality=self.quality,
                        seed=self.seed, labels=self.labels, small_images=self.small_images, metrics=self._metrics,
                        progress=self._show_progress())

    def _prepare_unet(self, stage: str) -> None:
        """The prior restores: its compute precision, no gradients, compiled in place when asked."""
        self.precision_used = resolve_precision(self.precision_name, self._target_device())
        self.unet.set_compute_dtype(PRECISIONS[self.precision_used])
        self.unet.requires_grad_(False)
        self.unet.eval()
        if self.compile_unet:
            self.unet.compile()  # in place: the state dict keeps its keys

    def _target_device(self) -> torch.device:
        """Where this module will run: the trainer's device (the module moves there after :meth:`setup`), else
        where it is."""
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else self.device

    @property
    def sampling_unet(self) -> nn.Module:
        """The UNet that restores (:class:`~gdp_lightning.finetune.FinetuneModule`: its EMA weights)."""
        return self.unet

    def make_sampler(self, scale: float):
        """The :class:`~gdp_lightning.sampling.GDPSampler` of this module's settings at ``scale``."""
        return (self.restorer or self.build_restorer()).make_sampler(scale)

    def _show_progress(self) -> bool:
        if not self.progress:
            return False
        trainer = self._trainer
        if trainer is None:
            return True
        return trainer.is_global_zero and trainer.progress_bar_callback is not None

    # -------------------------------------------------------------- batches
    @staticmethod
    def require_gradients() -> None:
        """GDP needs autograd for the guidance and φ: stop with a clear message under inference mode."""
        if torch.is_inference_mode_enabled():
            raise ConfigError(
                "GDP needs gradients (guidance and degradation parameters), but Lightning runs this stage under "
                "torch.inference_mode: set --trainer.inference_mode false (the shipped configs do)"
            )

    def restore_batch(self, batch: Dict[str, Any], batch_idx: int = 0, stage: str = "predict") -> BatchResult:
        """Restore one batch at every scale (see :meth:`Restorer.restore`)."""
        self.require_gradients()
        return self.restorer.restore(batch, stage, batch_idx, self._on_step)

    def forward(self, y: torch.Tensor, indices: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Restore observations ``y`` (``(N, C, H, W)`` in [0, 1]) at the first scale; images in [0, 1]."""
        n = y.shape[0]
        indices = list(range(n)) if indices is None else list(indices)
        batch = {"y": y, "name": [str(i) for i in indices], "index": torch.tensor(indices)}
        out = self.restore_batch(batch)
        failed = [f"{item.name} (step {item.results[0].diverged_step})" for item in out.items
                  if item.results[0].image is None]
        if failed:
            raise GuidanceDivergedError(f"the restoration of {', '.join(failed)} diverged: use a smaller scale or "
                                        "on_divergence 'retry'")
        return torch.stack([item.results[0].image for item in out.items])

    def _on_step(self, info: StepInfo, context: StepContext) -> None:
        if info.step == 1:  # a long restoration says how long it will take
            self._announce_duration(time.monotonic() - context.started, info, context, context.size)
        trainer = self._trainer
        if trainer is None:
            return
        if trainer.received_sigterm:  # Lightning's predict loop never looks; a restoration can take hours
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException()
        for cb in trainer.callbacks:
            hook = getattr(cb, "on_diffusion_step", None)
            if hook is not None:
                hook(trainer, self, info, context)

    @staticmethod
    def _announce_duration(first: float, info: StepInfo, context: StepContext, size: Tuple[int, int]) -> None:
        """One line when the batch will take more than two minutes (from its first step's time)."""
        total = first * info.total
        if total < 120:
            return
        names = ", ".join(context.names[:3]) + (" ..." if len(context.names) > 3 else "")
        note(f"{names} ({size[1]}x{size[0]}): step 1 of {info.total} took {format_seconds(first)}; "
                       f"this restoration needs about {format_seconds(total)}")

    def _check_memory(self) -> None:
        """Warn before the first restoration when the largest batch would need more memory than is free."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "check_memory"):
            weights = sum(p.numel() * p.element_size() for p in self.unet.parameters())
            datamodule.check_memory(weights, available_bytes(self.device))

    # ------------------------------------------------------------ Lightning
    def predict_step(self, batch: Dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> BatchResult:
        self.require_gradients()
        return self.restorer.restore_or_fail(batch, "predict", batch_idx, self._on_step)

    def _eval_step(self, batch: Dict[str, Any], batch_idx: int, stage: str) -> BatchResult:
        self.require_gradients()
        out = self.restorer.restore_or_fail(batch, stage, batch_idx, self._on_step)
        for k, suffix in enumerate(self.settings.scale_suffixes()):
            for item in out.items:
                result = item.results[k]
                values = {**result.metrics, "diverged": float(result.diverged_step is not None)}
                for name, value in values.items():
                    key = f"{name}{suffix}"
                    if key in self.eval_means and math.isfinite(value):
                        self.eval_means[key].update(torch.tensor(value, dtype=torch.float32))
        return out

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> BatchResult:
        return self._eval_step(batch, batch_idx, "validate")

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> BatchResult:
        return self._eval_step(batch, batch_idx, "test")

    def epoch_metrics(self, stage: str) -> Dict[str, Any]:
        """The means of this epoch's metrics and the dataset metrics (FID), by logged name; resets them. Every
        process computes every metric in the same order: the synchronisation inside ``compute()`` matches up."""
        values: Dict[str, Any] = {}
        for key in sorted(self.eval_means):
            metric = self.eval_means[key]
            value = metric.compute() if metric.update_called or self.trainer.world_size > 1 else None
            if value is not None and torch.isfinite(value):
                values[f"{stage}/{key}"] = value
            metric.reset()
        dataset = {} if self._metrics is None else self._metrics.dataset(synchronize=self.trainer.world_size > 1)
        values.update({f"{stage}/{key}": value for key, value in dataset.items()})
        if self._metrics is not None:
            self._metrics.reset()
        return values

    def publish(self, values: Dict[str, Any]) -> None:
        """The means of a restoration stage: in the trainer's results (``self.log``) and to the loggers at step 0,
        without the ``epoch`` series Lightning would add (a restoration has no epochs)."""
        for name, value in values.items():
            self.log(name, value, rank_zero_only=True, logger=False)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({name: float(value) for name, value in values.items()}, step=0)

    def on_validation_epoch_end(self) -> None:
        self.publish(self.epoch_metrics("validate"))

    def on_test_epoch_end(self) -> None:
        self.publish(self.epoch_metrics("test"))

    def _start_restoring(self) -> None:
        self._require_weights()
        self.require_gradients()
        self._check_memory()
        if self._metrics is not None:  # LPIPS and FID networks run where the model runs
            self._metrics.to(self.device)

    def on_predict_start(self) -> None:
        self._start_restoring()

    def on_test_start(self) -> None:
        self._start_restoring()

    def on_validation_start(self) -> None:
        self._start_restoring()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """A ``gdp fit`` checkpoint restores with its EMA weights (its training state is dropped)."""
        state = checkpoint.get("state_dict", {})
        merged = merge_low_rank(state)  # a fit with low-rank adapters: its weights as the plain UNet's
        state.clear()
        state.update(merged)
        ema = {k[len("ema_unet."):]: v for k, v in state.items() if k.startswith("ema_unet.")}
        state.update({"unet." + k: v for k, v in ema.items()})
        self._keep_own_training_state(state)
        self._check_checkpoint_fits(checkpoint)
        self.weights_loaded = True

    def _keep_own_training_state(self, state: Dict[str, Any]) -> None:
        """Drop the checkpoint's EMA and timestep-sampler entries this module has no place for."""
        own = set(self.state_dict())
        for key in [k for k in state if k not in own and k.startswith(("ema_unet.", "timestep_sampler."))]:
            del state[key]

    def _check_checkpoint_fits(self, checkpoint: Dict[str, Any]) -> None:
        """One line, before Lightning's strict loading lists every tensor, when the ``--ckpt_path`` checkpoint's
        weights are not this model's: another prior's architecture, or a fit with other trained parts or adapters."""
        state, own = checkpoint.get("state_dict", {}), self.state_dict()
        problems = state_dict_mismatches(own, state)
        if not problems:
            return
        recorded = (checkpoint.get("hyper_parameters") or {}).get("prior") or {}
        ran_with = f" (it records prior '{recorded['name']}')" if isinstance(recorded, dict) and recorded.get("name") \
            else ""
        where = getattr(getattr(self, "_trainer", None), "ckpt_path", None) or "the checkpoint"
        if any(k in state and tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()):
            advice = f"give the prior config the fit ran with{ran_with}"
        else:  # the same prior, trained in other parts or with other adapters
            advice = ("give the prior config and the --model.training settings (trainable, lora_rank, lora_targets) "
                      f"the fit ran with{ran_with}")
        raise ConfigError(f"--ckpt_path {where}: its weights do not fit the model of prior '{self.prior.name}' "
                          f"({'; '.join(problems)}); {advice}")

    def describe(self) -> Dict[str, Any]:
        """What the run record says about the model (beside the resolved config)."""
        return {
            "prior": dataclasses.asdict(self.prior),
            "degradation": repr(self.degradation),
            "quality": [f"{q.name}: weight {q.weight}{' x scale' if q.relative else ''}" for q in self.quality],
            "sampler": dataclasses.asdict(self.settings),
            "seed": self.seed,
            # the UNet's compute precision (``auto`` resolved on this device)
            "precision": self.precision_used or resolve_precision(self.precision_name, self._target_device()),
            "checkpoint": str(Path(self.prior.checkpoint).resolve()) if self.prior.checkpoint else None,
        }
