"""``gdp fit``: fine-tuning the prior (:class:`FinetuneModule`).

It trains the UNet on batches of clean crops (``{"x": (B, 3, S, S) in [0, 1], "name", "index"}``) with the
improved-DDPM loss and keeps an EMA of its weights (see :mod:`.training`). Its validation restores held-out images
with the task's operator through the EMA weights, as :class:`~gdp_lightning.module.GDPModule` restores (PSNR and a
preview grid to TensorBoard), measures their held-out denoising loss and draws a grid of unconditional samples. A
fresh run first validates the starting prior (the baseline, at step 0): the command runs it as Lightning's sanity
check over the whole validation set (``num_sanity_val_steps: -1``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Dict, Optional

import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from ..diffusion import GaussianDiffusion, randn
from ..errors import ConfigError, GDPError, note
from ..module import GDPModule
from ..precision import cpu_has_bf16
from ..panels import restoration_panel, stack
from ..prior import (
    adapter_parameters,
    add_low_rank_adapters,
    has_adapters,
    merge_low_rank,
    select_parameters,
    trainable_summary,
)
from ..ranges import to_model
from ..sample_prior import draw_samples
from ..sampling import BatchResult
from ..seeds import DENOISING, generator
from .report import FitReport
from .training import (
    TrainingSettings,
    UniformTimesteps,
    denoising_loss,
    dropout_seed,
    ema_decay_at,
    make_timestep_sampler,
    sample_generator,
    update_ema,
    warmup_factor,
)

__all__ = ["FinetuneModule"]

#: fit's validation shows this many images of its first batch (input | output | ground truth | error)
PREVIEW_IMAGES = 4


class FinetuneModule(GDPModule):
    """Fine-tune the prior on a new domain; validate by restoring held-out images with the task.

    :param training: how the prior is fine-tuned (learning rate, warm-up, timestep sampler, EMA, gradient
        checkpointing, validation samples); the degradation is the task the validation restores.
    :param kwargs: the restoration's options (see :class:`~gdp_lightning.module.GDPModule`).
    """

    def __init__(self, training: TrainingSettings = TrainingSettings(), **kwargs: Any):  # noqa: B008 - frozen
        super().__init__(**kwargs)
        if isinstance(training, dict):
            training = TrainingSettings(**training)
        self.hparams.update(training=dataclasses.asdict(training))
        self.training_settings = training
        #: the EMA of the UNet's weights (sampling, validation and export use it); ``None`` without EMA
        self.ema_unet: Optional[nn.Module] = None
        #: draws the training timesteps (a module: the importance sampler's history is saved in checkpoints)
        self.timestep_sampler: Optional[UniformTimesteps] = None
        self._train_diffusion: Optional[GaussianDiffusion] = None
        self._ema_step = -1
        self._baseline = False
        self._val_preview: Optional[Dict[str, torch.Tensor]] = None
        self.val_denoising = nn.ModuleDict()

    @property
    def sampling_unet(self) -> nn.Module:
        return self.ema_unet if self.ema_unet is not None else self.unet

    def _prepare_unet(self, stage: str) -> None:
        settings = self.training_settings
        # the weights train in float32 (AdamW on float16 weights loses its small updates); --trainer.precision
        # bf16-mixed runs the UNet in bfloat16 under autocast. The diffusion's tables stay float64.
        self.unet.set_compute_dtype(torch.float32)
        self.precision_used = "fp32"
        self.unet.set_gradient_checkpointing(settings.gradient_checkpointing)
        self.degradation.requires_grad_(False)
        if self._train_diffusion is None:
            self._train_diffusion = GaussianDiffusion.from_prior(self.prior)
        if self.timestep_sampler is None:
            self.timestep_sampler = make_timestep_sampler(settings.timestep_sampler,
                                                          self._train_diffusion.num_timesteps, settings.timesteps)
        # held-out denoising loss of the sampling weights: the prior's fit to the domain, at fixed timesteps and noise
        self.val_denoising = nn.ModuleDict({k: MeanMetric() for k in ("loss", "mse")})
        if settings.ema_decay > 0 and self.ema_unet is None:
            # a plain UNet, also when the trained one carries adapters: the EMA averages the weights they give
            self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
            self.ema_unet.set_gradient_checkpointing(False)
        self._choose_trainable()

    def _choose_trainable(self) -> None:
        """Freeze what does not train: with ``trainable``, every other weight; with ``lora_rank``, add the adapters
        (once) and freeze the weights they adapt."""
        settings = self.training_settings
        if settings.lora_rank and not has_adapters(self.unet):
            try:
                add_low_rank_adapters(self.unet, settings.lora_targets, settings.lora_rank,
                                      settings.lora_alpha or settings.lora_rank)
            except ValueError as e:
                raise ConfigError(f"--model.training.lora_targets: {e}") from None
        parts = settings.trainable if settings.trainable is not None else ([] if settings.lora_rank else ["all"])
        try:
            names = set(select_parameters(self.unet, parts) if parts else [])
        except ValueError as e:
            raise ConfigError(f"--model.training.trainable: {e}") from None
        for name, p in self.unet.named_parameters():
            p.requires_grad_(name in names)
        for p in adapter_parameters(self.unet):
            p.requires_grad_(True)

    def configure_optimizers(self) -> Dict[str, Any]:
        settings = self.training_settings
        trained = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=settings.lr, betas=tuple(settings.betas),
                                      weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_factor(step, settings.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        self._require_weights()
        trained, weights, adapters = trainable_summary(self.unet)
        if adapters:
            note(f"fit trains {trained / 1e6:.3f} M parameters: low-rank adapters on the UNet's {weights / 1e6:.2f} M "
                 f"(export merges them into the weights)")
        elif trained < weights:
            note(f"fit trains {trained / 1e6:.3f} M of the UNet's {weights / 1e6:.2f} M parameters")
        self._note_precision()
        self._ema_step = self.trainer.global_step
        # the baseline: a fresh run's sanity check validates the starting prior (a resumed run's does not count)
        self._baseline = self.training_settings.baseline_validation and self.trainer.ckpt_path is None

    def _note_precision(self) -> None:
        """Say which precision ``--trainer.precision auto`` chose, and when bfloat16 runs emulated on this CPU."""
        precision = str(self.trainer.precision)
        reason = getattr(self.trainer, "precision_reason", None)
        if reason is not None:
            note(f"fit computes in {precision} (--trainer.precision auto: {reason})")
        elif precision.startswith("bf16") and self.device.type == "cpu" and not cpu_has_bf16():
            note(f"--trainer.precision {precision} on a CPU without native bfloat16 (AVX512-BF16/AMX) is emulated "
                 "and trains many times slower than 32-true; --trainer.precision auto picks the fastest")

    # ------------------------------------------------------------ training
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The improved-DDPM loss of a batch of clean crops; sample i's timestep and noise come from (seed, i)."""
        x = to_model(batch["x"].to(self.device, torch.float32))
        n = x.shape[0]
        indices = [int(i) for i in batch["index"]]
        generators = [sample_generator(self.seed, i) for i in indices]
        t, weights = self.timestep_sampler.sample(generators, self.device)
        noise = randn(x.shape, generators).to(self.device)
        # dropout draws from the global generator: seed it per step, so that a resumed run is the same run
        torch.manual_seed(dropout_seed(self.seed, self.trainer.global_step, self.global_rank))
        kwargs = {}
        if self.unet.num_classes is not None:
            kwargs["y"] = self.labels.for_images(list(batch["name"]), self.restorer.seeds_for(indices), self.device)
        terms = self._train_diffusion.training_losses(self.unet, x, t, noise=noise, model_kwargs=kwargs)
        loss = (terms["loss"] * weights).mean()
        if not torch.isfinite(loss):
            raise GDPError(f"the training loss is {loss.item()} at step {self.trainer.global_step}; lower "
                           "--model.training.lr or set --trainer.gradient_clip_val")
        if self.timestep_sampler.uses_losses:
            gathered_t = self.all_gather(t).flatten()
            gathered_loss = self.all_gather(terms["loss"].detach().float()).flatten()
            self.timestep_sampler.update(gathered_t.cpu(), gathered_loss.cpu())
        for name, value in terms.items():
            self.log(f"train/{name}", value.mean().detach(), prog_bar=name == "loss", batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # one EMA update per optimizer step (not per batch when gradients accumulate)
        step = self.trainer.global_step
        if self.ema_unet is None or step <= self._ema_step:
            return
        settings = self.training_settings
        update_ema(self.ema_unet, self.unet, ema_decay_at(step - 1, settings.ema_decay, settings.ema_warmup))
        self._ema_step = step

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """A resumed fit continues the EMA and the timestep history (a checkpoint without EMA starts the EMA from
        its weights)."""
        state = checkpoint.get("state_dict", {})
        if self.ema_unet is not None and not any(k.startswith("ema_unet.") for k in state):
            unet = merge_low_rank({k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")})
            state.update({"ema_unet." + k: v for k, v in unet.items()})
        self._keep_own_training_state(state)
        self._check_checkpoint_fits(checkpoint)
        self.weights_loaded = True

    # ---------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_preview = None

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> BatchResult:
        out = self._eval_step(batch, batch_idx, "validate")
        self._remember_preview(batch, out, batch_idx)
        self._denoising_loss(batch)
        return out

    def on_validation_epoch_end(self) -> None:
        values = self.epoch_metrics("validate")
        for key, metric in self.val_denoising.items():
            if metric.update_called or self.trainer.world_size > 1:
                values[f"validate/denoising_{key}"] = metric.compute()
            metric.reset()
        baseline = self._baseline and self.trainer.sanity_checking
        if baseline:  # Lightning discards what the sanity check logs: the baseline goes to the loggers at step 0
            if self.trainer.is_global_zero:
                for logger in self.loggers:
                    logger.log_metrics({k: float(v) for k, v in values.items()}, step=self.trainer.global_step)
        else:
            for name, value in values.items():
                self.log(name, value, rank_zero_only=True)
            # the loggers' step of these metrics: the optimizer steps done, as the images' (else Lightning uses the
            # step of the last training batch, one less)
            self.log("step", float(self.trainer.global_step))
        if baseline or not self.trainer.sanity_checking:
            self._log_fit_validation()
            for callback in self.trainer.callbacks:
                if isinstance(callback, FitReport):
                    callback.validated(self.trainer, values)

    def configure_callbacks(self) -> list:
        """The progress and summary lines of the fit (:mod:`.report`)."""
        return [FitReport()]

    def _remember_preview(self, batch: Dict[str, Any], out: BatchResult, batch_idx: int) -> None:
        if batch_idx != 0 or self._val_preview is not None or "x" not in batch:
            return
        restored = [item.results[0].image for item in out.items]
        if not restored or len(restored) != len(batch["x"]) or any(r is None for r in restored):
            return
        self._val_preview = {"x": batch["x"].cpu(), "y": batch["y"][:, :3].cpu(), "restored": torch.stack(restored)}

    def _denoising_loss(self, batch: Dict[str, Any]) -> None:
        """The held-out denoising loss of the sampling weights (:func:`.training.denoising_loss`, image i's noise
        from (seed, i)): comparable from one validation to the next."""
        if "x" not in batch or self._train_diffusion is None:
            return
        x = to_model(batch["x"].to(self.device, torch.float32))
        if tuple(x.shape[-2:]) != (self.unet.image_size, self.unet.image_size):
            return
        seeds = self.restorer.seeds_for([int(i) for i in batch["index"]])
        kwargs = {}
        if self.unet.num_classes is not None:
            kwargs["y"] = self.labels.for_images(list(batch["name"]), seeds, self.device)
        terms = denoising_loss(self._train_diffusion, self.sampling_unet, x,
                               [generator(s + DENOISING) for s in seeds], model_kwargs=kwargs)
        for key, metric in self.val_denoising.items():
            metric.update(terms[key])

    def _log_fit_validation(self) -> None:
        """TensorBoard: the first validation batch (ground truth | observation | restored) and unconditional
        samples of the EMA weights (the same noise at every validation, so the grids show the prior change)."""
        experiment = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if experiment is None or not hasattr(experiment, "add_image") or not self.trainer.is_global_zero:
            return
        from torchvision.utils import make_grid

        step = self.trainer.global_step
        if self._val_preview is not None:
            p = self._val_preview
            rows = [restoration_panel(y, restored, x) for x, y, restored in zip(p["x"], p["y"], p["restored"])]
            experiment.add_image("fit/restoration", stack(rows[:PREVIEW_IMAGES]), step)
        if self.training_settings.val_samples > 0:
            samples = self.draw_samples(self.training_settings.val_samples, self.training_settings.val_sample_steps)
            nrow = max(1, int(math.ceil(math.sqrt(len(samples)))))
            experiment.add_image("fit/samples", make_grid(samples, nrow=nrow, padding=1), step)

    def draw_samples(self, num: int, steps: str = "50", batch_size: int = 16) -> torch.Tensor:
        """``num`` unconditional samples of the sampling UNet in [0, 1] (sample i seeded by (seed, i))."""
        seeds = self.restorer.seeds_for(range(num))
        diffusion = GaussianDiffusion.from_prior(self.prior, respacing=steps)
        return draw_samples(self.sampling_unet, diffusion, [generator(s) for s in seeds], self.unet.image_size,
                            labels=self.labels.for_samples(seeds), batch_size=batch_size, device=self.device)
