"""The LightningModule: GDP restoration of batches in ``predict``, ``validate`` and ``test``; fine-tuning of the
prior in ``fit``.

A batch (see :class:`gdp_lightning.data.GDPDataModule`) holds observations ``y`` in [0, 1], their names and
indices, and, in synthetic mode, the ground truth ``x``. Every step restores the batch with
:class:`~gdp_lightning.sampling.GDPSampler` (one run per guidance scale when several are tried) and returns one
entry per image: the restored image (8-bit values), the learned φ, the final loss terms and the metrics.
:class:`gdp_lightning.writer.RestorationWriter` writes them; ``validate`` and ``test`` also log the metrics.

``fit`` trains the UNet on batches of clean crops (``{"x": (B, 3, S, S) in [0, 1], "name", "index"}``) with the
improved-DDPM loss and keeps an EMA of its weights (see :mod:`gdp_lightning.training`); its validation restores
held-out images with the task's operator through the EMA weights (PSNR and a preview grid to TensorBoard) and
draws a grid of unconditional samples.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import MeanMetric

from .degradations import Blur, Colorization, Degradation, Inpainting, KernelOperator, kernel_error, kernel_width
from .diffusion import GaussianDiffusion, randn
from .diffusion.schedules import respacing_string
from .errors import ConfigError, GDPError, InputError, warn
from .metrics import ImageMetrics, to_8bit
from .prior import PriorSpec, load_prior_weights
from .resources import available_bytes, estimate_bytes, format_bytes, format_seconds
from .sampling import GDPResult, GDPSampler, GuidanceDivergedError, QualityTerm, StepInfo
from .seeds import DENOISING, LABEL, SAMPLER, generator, stream_seed
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

__all__ = ["GDPModule", "SamplerSettings", "StepContext"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class SamplerSettings:
    """How GDP samples (see :class:`gdp_lightning.sampling.GDPSampler` for the details).

    :param steps: number of diffusion steps (``100``) or guided-diffusion's respacing string (``"ddim50"``,
        ``"10,10,10"``); the paper uses 1000.
    :param scale: guidance scale s (with ``scale_convention: paper``: the value for 1000 steps on a 256×256
        image, converted to this run's steps and size); at least 0, and 0 turns the data guidance off (the
        prior's own samples, beside the quality terms). Not used by the data-consistency rule.
    :param scales: try several scales on the same images (one output per scale and a side-by-side grid);
        replaces ``scale``.
    :param scale_convention: ``paper`` (scale means the same at any step count and size) or ``raw`` (the
        official per-step value).
    :param variant: ``x0`` (GDP-x0: the loss on the predicted clean image) or ``xt`` (on x_t).
    :param method: ``ddpm`` or ``ddim``.
    :param eta: DDIM stochasticity.
    :param data_loss: ``mse`` or ``l1``.
    :param phi_optimizer: ``adam`` or ``sgd`` for the degradation parameters φ, or ``lstsq``: the operator's
        own least-squares solver for the step's x̃0 (a blind blur's kernel).
    :param phi_lr: learning rate of φ.
    :param phi_steps: optimiser steps on φ per diffusion step.
    :param phi_update: ``before`` (guide with φ before its update, as the official code) or ``after``.
    :param phi_start: φ is updated from this fraction of the steps on (0: from the first).
    :param tile_size: tile side for images larger than the prior (default: the prior's image size).
    :param tile_overlap: overlap of neighbouring tiles in pixels, or below 1 a fraction of the tile (default: a
        quarter tile; 0.5 is the official stride of half a tile).
    :param tile_batch: tiles per UNet forward (memory against speed).
    :param whole_image: run the UNet on the whole image instead of tiles (sides must be multiples of its
        downsampling factor).
    :param clip_denoised: clamp x̃0 to [-1, 1].
    :param guidance_substeps: each step's gradient push in this many gradient steps, each where the previous
        moved the image (1: the official single push; 0, the default: ``1000 / steps`` of them, which keeps
        few-step runs from overshooting at scales that suit 1000: blind deblurring at 10 steps diverged on every
        tuning crop with one push and none with 100; no extra UNet forward).
    :param guidance: ``auto`` (the exact data-consistency step where the operator is linear and known: no
        scale needed, the same at any step count; the GDP gradient elsewhere), ``proximal`` (that step, or an
        error) or ``gradient`` (GDP's push −s·∇ everywhere, the official rule).
    :param noise_sigma: the observation's noise σ on the [0, 1] scale (default: the task's GaussianNoise σ, else 0);
        the data-consistency step stops fitting at that level.
    :param quantization: step of the observation's values (1/255: 8-bit files; 0: exact float values); their
        rounding error is the least noise assumed.
    :param confidence: the data-consistency step's trust in the prior's x̃0 (its error as a fraction of the
        step's noise level).
    :param prox_iterations: conjugate-gradient iterations of the data-consistency step at most.
    :param on_divergence: ``flag``: an image whose restoration diverged (see
        :mod:`gdp_lightning.sampling.divergence`) is recorded as such, without an output, and the run's exit
        status is 3; ``retry``: it is restored again at half the scale, up to ``max_retries`` times, before it is
        flagged; ``keep``: its output is written and scored all the same, its record says it diverged.
    :param max_retries: restarts of a diverged image with ``on_divergence: retry``.
    """

    steps: Union[int, str] = "100"
    scale: float = 8000.0
    scales: Optional[List[float]] = None
    scale_convention: str = "paper"
    variant: str = "x0"
    method: str = "ddpm"
    eta: float = 0.0
    data_loss: str = "mse"
    phi_optimizer: str = "adam"
    phi_lr: float = 0.02
    phi_steps: int = 1
    phi_update: str = "before"
    phi_start: float = 0.0
    tile_size: Optional[int] = None
    tile_overlap: Optional[float] = None
    tile_batch: int = 16
    whole_image: bool = False
    clip_denoised: bool = True
    guidance_substeps: int = 0
    guidance: str = "auto"
    noise_sigma: Optional[float] = None
    quantization: float = 1 / 255
    confidence: float = 0.5
    prox_iterations: int = 50
    on_divergence: str = "flag"
    max_retries: int = 2

    def __post_init__(self) -> None:
        try:  # frozen: a number from YAML or the command line is kept as its string
            object.__setattr__(self, "steps", respacing_string(self.steps))
        except ValueError as e:
            raise ConfigError(f"--model.sampler.steps {e}") from None
        for name, values in (("scale", [self.scale]), ("scales", self.scales or [])):
            bad = [v for v in values if not math.isfinite(float(v)) or float(v) < 0]
            if bad:
                raise ConfigError(f"--model.sampler.{name} {bad[0]:g}: give a scale >= 0 (a negative scale pushes "
                                  "away from the observation; 0 turns the data guidance off)")
        if self.on_divergence not in ("flag", "retry", "keep"):
            raise ConfigError("--model.sampler.on_divergence must be 'flag', 'retry' or 'keep', got "
                              f"{self.on_divergence!r}")
        if self.max_retries < 0:
            raise ConfigError(f"--model.sampler.max_retries must be >= 0, got {self.max_retries}")

    def sampler_options(self) -> Dict[str, Any]:
        """The keyword arguments of :class:`GDPSampler` these settings hold."""
        options = dataclasses.asdict(self)
        for key in ("steps", "scale", "scales", "on_divergence", "max_retries"):
            del options[key]
        return options

    def scale_list(self) -> List[float]:
        return [float(s) for s in self.scales] if self.scales else [float(self.scale)]


@dataclass
class StepContext:
    """What a callback's ``on_diffusion_step(trainer, module, info, context)`` knows about the running batch."""

    stage: str
    batch_idx: int
    names: List[str]
    indices: List[int]
    scale: float
    multi_scale: bool


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
    :param precision: UNet compute precision: ``fp32``, ``fp16`` or ``bf16`` (default: the prior's
        ``use_fp16`` flag).
    :param compile: ``torch.compile`` the UNet (faster on a GPU after the first batch).
    :param small_images: images smaller than the prior: ``pad`` (pad the observation, restore, crop back) or
        ``error``.
    :param metrics: metrics to compute: ``psnr``, ``ssim``, ``lpips``, ``fid`` (need the ground truth),
        ``consistency`` (MSE between A(x̂) and y on the 0–255 scale), ``loe`` (low-light); on the 8-bit outputs.
    :param lpips_net: backbone of LPIPS (``alex``, ``vgg``, ``squeeze``).
    :param fid_feature_extractor: FID with a TorchScript feature extractor instead of Inception.
    :param trust_checkpoint: allow a checkpoint that needs arbitrary pickles (``torch.load(weights_only=False)``).
    :param progress: show the diffusion steps of each batch.
    :param training: ``gdp fit``: how the prior is fine-tuned (learning rate, warm-up, timestep sampler, EMA,
        gradient checkpointing, validation samples); the degradation is the task the validation restores.
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
        precision: Optional[str] = None,
        compile: bool = False,
        small_images: str = "pad",
        metrics: List[str] = ["psnr", "ssim", "consistency"],  # noqa: B006 - jsonargparse shows the default
        lpips_net: str = "alex",
        fid_feature_extractor: Optional[str] = None,
        trust_checkpoint: bool = False,
        progress: bool = True,
        training: TrainingSettings = TrainingSettings(),  # noqa: B008 - a frozen default; jsonargparse shows it
    ):
        super().__init__()
        if isinstance(prior, dict):
            prior = PriorSpec.from_dict(prior)
        if isinstance(sampler, dict):
            sampler = SamplerSettings(**sampler)
        if isinstance(training, dict):
            training = TrainingSettings(**training)
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"--model.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if small_images not in ("pad", "error"):
            raise ConfigError(f"--model.small_images must be 'pad' or 'error', got {small_images!r}")
        self.save_hyperparameters(ignore=["degradation", "quality"])
        # plain values only, so that checkpoints load with torch.load(weights_only=True)
        self.hparams.update(prior=prior.to_dict(), sampler=dataclasses.asdict(sampler),
                            training=dataclasses.asdict(training))
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
        self.class_label, self.labels_file, self.random_labels = class_label, labels_file, random_labels
        self.precision_name, self.compile_unet = precision, compile
        self.small_images = small_images
        self.metric_names = list(metrics)
        self.lpips_net, self.fid_feature_extractor = lpips_net, fid_feature_extractor
        self.trust_checkpoint, self.progress = trust_checkpoint, progress
        self.training_settings = training
        #: fit: the EMA of the UNet's weights (sampling, validation and export use it); ``None`` otherwise
        self.ema_unet: Optional[nn.Module] = None
        #: fit: draws the training timesteps (a module: the importance sampler's history is saved in checkpoints)
        self.timestep_sampler: Optional[UniformTimesteps] = None
        self._train_diffusion: Optional[GaussianDiffusion] = None
        self._ema_step = -1
        self._baseline_sanity_steps: Optional[float] = None  # fit: the trainer's own, while the baseline replaces it
        self._val_preview: Optional[Dict[str, torch.Tensor]] = None
        self.val_denoising = nn.ModuleDict()
        self.weights_loaded = False
        #: the stage the last :meth:`setup` prepared (``None`` before, and again after :meth:`set_task`)
        self.prepared_stage: Optional[str] = None
        self._labels: Optional[Dict[str, int]] = None
        self._metrics: Optional[ImageMetrics] = None
        self._unet_fn: Optional[nn.Module] = None
        self.eval_means = nn.ModuleDict()
        self.dataset_metrics: Dict[str, float] = {}
        self._check_labels()

    def set_task(self, degradation: Optional[Degradation] = None, quality: Optional[List[QualityTerm]] = None) -> None:
        """Replace the degradation and/or the quality terms (Python objects instead of config entries)."""
        if degradation is not None:
            self.degradation = degradation
        if quality is not None:
            self.quality = list(quality)
            self.quality_losses = nn.ModuleList([q.loss for q in self.quality])
        self.prepared_stage = None

    # ------------------------------------------------------------------ set-up
    def _check_labels(self) -> None:
        conditional = self.unet.num_classes is not None
        given = [n for n, v in (("class_label", self.class_label), ("labels_file", self.labels_file),
                                ("random_labels", self.random_labels or None)) if v is not None]
        if not conditional and given:
            raise ConfigError(f"--model.{given[0]} is set but the prior is unconditional; remove it")
        if len(given) > 1:
            raise ConfigError(f"give one of --model.class_label, --model.labels_file, --model.random_labels, not {given}")
        if self.class_label is not None and not 0 <= self.class_label < self.unet.num_classes:
            raise ConfigError(f"--model.class_label must be in 0..{self.unet.num_classes - 1}, got {self.class_label}")

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
        if stage == "fit":
            self._setup_fit()
        else:
            if self.precision_name is not None:
                self.unet.set_compute_dtype(PRECISIONS[self.precision_name])
            self.unet.requires_grad_(False)
            self.unet.eval()
        # not a submodule: the state dict (and every checkpoint) holds the UNet once, under "unet."
        object.__setattr__(self, "_unet_fn", torch.compile(self.unet) if self.compile_unet and stage != "fit" else None)
        if self.labels_file is not None:
            self._labels = read_labels(self.labels_file)
        self._check_inputs()
        if stage != "fit":  # the sampler's options are checked before the first restoration
            self._check_sweep(self.make_sampler(self.settings.scale_list()[0]))
        self._metrics = ImageMetrics(self.metric_names, lpips_net=self.lpips_net,
                                     fid_feature_extractor=self.fid_feature_extractor, groups=self._scale_suffixes())
        keys = [f"{m}{suffix}" for suffix in self._scale_suffixes() for m in [*self.metric_names, "diverged"]
                if m != "fid"]
        self.eval_means = nn.ModuleDict({k: MeanMetric() for k in keys})
        self.prepared_stage = stage

    def _check_sweep(self, sampler: GDPSampler) -> None:
        """A scale sweep must sweep something: under the data-consistency rule only relative quality weights
        depend on the scale."""
        if len(self.settings.scale_list()) < 2 or any(q.relative for q in self.quality):
            return
        if sampler.proximal:
            raise ConfigError(
                "--model.sampler.scales: this task's data term is the exact data-consistency step (guidance "
                f"{self.settings.guidance!r}), which has no scale, so every scale would give the same images; "
                "set --model.sampler.guidance gradient to sweep GDP's scale"
            )

    def _check_inputs(self) -> None:
        """What the data module found must fit the task: checked before the first restoration."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        items = getattr(datamodule, "items", None) or []
        if self._labels is not None:
            self._require_labels([it.name for it in items])
        has_inpainting, has_blur = bool(self._operators(Inpainting)), bool(self._operators(Blur))
        for it in items:
            if getattr(it, "mask", None) is not None and not has_inpainting:
                raise InputError(f"{it.mask}: a mask file, but the task has no inpainting operator; remove it or "
                                 "use an inpainting task")
            if getattr(it, "kernel", None) is not None and not has_blur:
                raise InputError(f"{it.kernel}: a kernel file, but the task has no blur operator; remove it or use "
                                 "a deblurring task")

    def _operators(self, kind: type) -> List[nn.Module]:
        """The parts of the degradation that are ``kind`` (itself, or inside a composition)."""
        return [m for m in self.degradation.modules() if isinstance(m, kind)]

    def _require_labels(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self._labels]
        if missing:
            raise InputError(f"--model.labels_file {self.labels_file}: no label for {missing[0]!r}; add a line "
                             f"'{missing[0]} <class>'")

    def _scale_suffixes(self) -> List[str]:
        scales = self.settings.scale_list()
        return [f"/s{s:g}" for s in scales] if len(scales) > 1 else [""]

    @property
    def sampling_unet(self) -> nn.Module:
        """The UNet that samples and restores: the EMA weights while fitting, else the (compiled) prior."""
        if self.ema_unet is not None:
            return self.ema_unet
        return self._unet_fn if self._unet_fn is not None else self.unet

    def make_sampler(self, scale: float) -> GDPSampler:
        options = self.settings.sampler_options()
        options["tile_size"] = options["tile_size"] or self.unet.image_size
        try:
            return GDPSampler(self.sampling_unet, self.diffusion, self.degradation, scale, quality=self.quality,
                              progress=self._show_progress(), **options)
        except ValueError as e:  # an option the sampler refuses: one line naming it
            raise ConfigError(f"--model.sampler: {e}") from None

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

    def seeds_for(self, indices: Sequence[int]) -> List[int]:
        """Image i's sampler seed: a function of (seed, i) only."""
        return [stream_seed(self.seed, i, SAMPLER) for i in indices]

    def labels_for(self, names: Sequence[str], seeds: Sequence[int]) -> Optional[torch.Tensor]:
        num_classes = self.unet.num_classes
        if num_classes is None:
            return None
        if self.class_label is not None:
            labels = [self.class_label] * len(names)
        elif self._labels is not None:
            self._require_labels(names)
            labels = [self._labels[n] for n in names]
        elif self.random_labels:
            labels = self._random_labels(seeds)
        else:
            raise ConfigError(
                "the prior is class-conditional: give --model.class_label N, --model.labels_file FILE or "
                "--model.random_labels true"
            )
        return torch.tensor(labels, dtype=torch.long, device=self.device)

    def _random_labels(self, seeds: Sequence[int]) -> List[int]:
        """A class per seed: image i's comes from (seed, i) only."""
        return [int(torch.randint(self.unet.num_classes, (1,), generator=generator(s + LABEL)))
                for s in seeds]

    def _observation(self, batch: Dict[str, Any]) -> torch.Tensor:
        y = batch["y"].to(self.device, torch.float32)
        expected = self.degradation.output_channels(3)
        if y.shape[1] == expected:
            return y
        if expected == 1:
            return y.mean(1, keepdim=True)
        exposures = self.degradation.num_observations
        if exposures > 1:
            raise InputError(
                f"{batch['name'][0]}: the task expects {exposures} exposures, the input has {y.shape[1] // 3}; put "
                "each scene's exposures in a sub-folder of the input folder (--data.exposure_folders true)"
            )
        raise InputError(f"{batch['name'][0]}: the task expects {expected} channels, the input has {y.shape[1]}")

    def _side_inputs(self, batch: Dict[str, Any], pad: tuple) -> None:
        """Per-image masks and kernels from side files go into the operators that use them."""
        inpainting = self._operators(Inpainting)
        kernel_ops = self._operators(KernelOperator)
        mask = batch.get("mask")
        if mask is not None:
            if not inpainting:
                raise InputError(f"{batch['name'][0]}: a mask file was given but the task has no inpainting operator")
            mask = mask.to(self.device, torch.float32)
            if any(pad):
                mask = F.pad(mask, (0, pad[1], 0, pad[0]), value=0.0)
            for op in inpainting:
                op.set_mask(mask)
        kernels = batch.get("kernel")
        for op in kernel_ops:
            op.use_kernels(None)
        if kernels is not None and any(k is not None for k in kernels):
            blurs = self._operators(Blur)
            if not blurs:
                raise InputError(f"{batch['name'][0]}: a kernel file was given but the task has no blur operator")
            base = blurs[0].initial_kernel
            stack = [base if k is None else torch.as_tensor(k, dtype=torch.float32) for k in kernels]
            if len({tuple(k.shape) for k in stack}) > 1:
                raise InputError(
                    f"{batch['name'][0]}: the kernels of one batch differ in size; use --data.batch_size 1"
                )
            blurs[0].use_kernels(torch.stack(stack)[:, None])

    def _padding(self, oh: int, ow: int, name: str) -> tuple:
        """Rows and columns to add to an observation so that its image is at least one prior tile."""
        if self.settings.whole_image:
            return (0, 0)
        tile = self.settings.tile_size or self.unet.image_size
        h, w = self.degradation.input_size(oh, ow)
        if h >= tile and w >= tile:
            return (0, 0)
        if self.small_images == "error":
            raise InputError(
                f"{name}: restores to {h}x{w}, smaller than the prior's {tile}x{tile}; use --model.small_images pad"
            )
        ph = pw = 0
        while self.degradation.input_size(oh + ph, ow)[0] < tile:
            ph += 1
        while self.degradation.input_size(oh, ow + pw)[1] < tile:
            pw += 1
        return (ph, pw)

    def restore_batch(self, batch: Dict[str, Any], batch_idx: int = 0, stage: str = "predict") -> Dict[str, Any]:
        """Restore one batch for every scale; returns ``{"items": [...], "stage": stage}`` (one dict per image)."""
        self.require_gradients()
        names = list(batch["name"])
        if not names:  # the empty batch of a process with nothing to do (see ShardSampler), or all failed
            return {"items": [], "failed": list(batch.get("failed", [])), "stage": stage}
        indices = [int(i) for i in batch["index"]]
        y = self._observation(batch)
        oh, ow = y.shape[-2:]
        pad = self._padding(oh, ow, names[0])
        if any(pad):
            y = F.pad(y, (0, pad[1], 0, pad[0]), mode="replicate")
        self._side_inputs(batch, pad)
        with torch.no_grad():
            restricted = self.degradation.restrict_observation(y)
        y = y if restricted is None else restricted
        base_h, base_w = self.degradation.input_size(oh, ow)
        seeds = self.seeds_for(indices)
        labels = self.labels_for(names, seeds)
        gt = batch.get("x")
        gt = None if gt is None else gt.to(self.device, torch.float32)
        # synthetic: the restoration has the clean image's size (SR×4 of 66 rows: 17, not 68), plus any padding
        out_h, out_w = (base_h, base_w) if gt is None else gt.shape[-2:]
        full_h, full_w = self.degradation.input_size(oh + pad[0], ow + pad[1])
        size = (full_h - base_h + out_h, full_w - base_w + out_w)
        scales = self.settings.scale_list()
        gray_out = [m in ("L", "LA") for m in batch.get("mode", ["RGB"] * len(names))]
        if self._operators(Colorization):
            gray_out = [False] * len(names)
        items: List[Dict[str, Any]] = [
            {"name": n, "index": i, "seed": s, "path": p, "bits": b, "alpha": a, "gray": g, "results": []}
            for n, i, s, p, b, a, g in zip(
                names, indices, seeds, batch.get("path", [None] * len(names)), batch.get("bits", [8] * len(names)),
                batch.get("alpha", [None] * len(names)), gray_out)
        ]
        if labels is not None:  # a class-conditional prior: the class each image was restored as
            for item, label in zip(items, labels.tolist()):
                item["label"] = label
        blind_spot: Optional[List[bool]] = None
        for scale, suffix in zip(scales, self._scale_suffixes()):
            context = StepContext(stage, batch_idx, names, indices, scale, len(scales) > 1)
            result, retries, used = self._restore_with_retries(y, seeds, labels, scale, context, size)
            full = to_8bit(result.images)
            if any(gray_out):  # metrics of what the file holds: one channel, the mean of the three
                gray = torch.tensor(gray_out, device=full.device)[:, None, None, None]
                full = torch.where(gray, to_8bit(result.images.mean(1, keepdim=True)).expand_as(full), full)
            with torch.no_grad():
                ax = self.degradation(full)[..., :oh, :ow]
            if blind_spot is None:  # once a batch, after the sampler set φ up: pixels the operator never observes
                blind_spot = self._blind_spot(full, oh, ow, names)
            low = y[:, :3, :oh, :ow] if (out_h, out_w) == (oh, ow) else None
            kept = self.settings.on_divergence == "keep"
            keep = [b for b, d in enumerate(result.diverged) if d is None or kept]  # diverged: not scored
            values: Dict[str, torch.Tensor] = {}
            if self._metrics is not None and keep:
                pick = lambda v: None if v is None else v[keep]  # noqa: E731
                scored = self._metrics.per_image(full[keep][..., :out_h, :out_w], gt=pick(gt), ax=ax[keep],
                                                 y=y[keep][..., :oh, :ow], low=pick(low), group=suffix)
                values = {k: torch.full((len(items),), float("nan"), dtype=v.dtype).index_copy_(
                    0, torch.tensor(keep), v) for k, v in scored.items()}
            restored = result.images[..., :out_h, :out_w]  # full precision: 16-bit outputs keep it
            phi = result.phi
            if any(pad):  # per-pixel φ (an illumination map M) was made at the padded size: crop it as the image
                padded = tuple(result.images.shape[-2:])
                phi = {k: v[..., :out_h, :out_w] if v.ndim >= 2 and tuple(v.shape[-2:]) == padded else v
                       for k, v in phi.items()}
            total = self.diffusion.num_timesteps
            blind = any(k.split(".")[-1].startswith("kernel") for k in self.degradation.learnable_parameters())
            kernel_scores = blind_kernel_scores(phi, batch.get("true_kernel") if blind else None, len(items))
            for b, item in enumerate(items):
                entry = {
                    "scale": scale,
                    "image": restored[b].cpu(),
                    "phi": {k: v[b] if v.shape[0] == len(items) else v[0] for k, v in phi.items()},
                    "losses": {k: float(v[b]) for k, v in result.losses.items()},
                    "metrics": {**{k: float(v[b]) for k, v in values.items()
                                   if not (blind_spot[b] and k.startswith("consistency"))}, **kernel_scores[b]},
                    "diverged": None,
                }
                if retries[b]:
                    entry.update(retries=retries[b], scale_used=used[b])
                if result.diverged[b] is not None:  # the record says where it went wrong
                    entry["diverged"] = {"step": result.diverged[b], "of": total}
                    if not kept:  # no output
                        entry.update(image=None, metrics={})
                item["results"].append(entry)
        return {"items": items, "failed": list(batch.get("failed", [])), "stage": stage}

    def _blind_spot(self, full: torch.Tensor, oh: int, ow: int, names: Sequence[str]) -> List[bool]:
        """Per image: whether its operator observes no pixel (an all-black mask). Its output is the prior's
        invention and gets no consistency score; a warning says so."""
        with torch.no_grad():
            blind = (self.degradation(torch.ones_like(full))[..., :oh, :ow] == 0).flatten(1).all(1).tolist()
        unseen = [n for n, b in zip(names, blind) if b]
        if unseen:
            warn(f"{', '.join(unseen[:3])}{' and more' if len(unseen) > 3 else ''}: the mask observes no pixel; "
                 "the output is the prior's invention and gets no consistency score")
        return blind

    def _restore_or_fail(self, batch: Dict[str, Any], batch_idx: int, stage: str) -> Dict[str, Any]:
        """:meth:`restore_batch`, where a problem of these inputs (an :class:`InputError`: kernels of different
        sizes in one batch, ...) fails them alone: they are recorded as failed and the run goes on."""
        try:
            return self.restore_batch(batch, batch_idx, stage)
        except InputError as e:
            reason = " ".join(str(e).split())
            failed = list(batch.get("failed", [])) + [
                {"name": n, "index": int(i), "path": p, "error": reason}
                for n, i, p in zip(batch["name"], batch["index"], batch.get("path", [None] * len(batch["name"])))]
            return {"items": [], "failed": failed, "stage": stage}

    def _restore_with_retries(self, y: torch.Tensor, seeds: List[int], labels: Optional[torch.Tensor], scale: float,
                              context: "StepContext", size: Optional[Tuple[int, int]] = None) -> tuple:
        """Restore the batch at ``scale``; with ``on_divergence: retry``, restore the diverged images again at half
        the scale (the whole batch runs, the others' results are kept: each image's result depends on its seed
        only), up to ``max_retries`` times. Returns the result and, per image, its retries and the scale used."""
        n = y.shape[0]
        clock = time.monotonic()

        def on_step(info: StepInfo) -> None:
            if info.step == 1:  # a long restoration says how long it will take
                self._announce_duration(time.monotonic() - clock, info, context, tuple(size or y.shape[-2:]))
            self._on_step(info, context)

        result = self.make_sampler(scale).restore(y, seeds=seeds, labels=labels, image_size=size, on_step=on_step)
        retries, used = [0] * n, [scale] * n
        attempt, current = 0, scale
        while self.settings.on_divergence == "retry" and attempt < self.settings.max_retries:
            redo = [b for b, d in enumerate(result.diverged) if d is not None]
            if not redo:
                break
            attempt, current = attempt + 1, current / 2
            again = self.make_sampler(current).restore(y, seeds=seeds, labels=labels, image_size=size)
            result = merge_results(result, again, redo)
            for b in redo:
                retries[b], used[b] = attempt, current
        return result, retries, used

    @staticmethod
    def _announce_duration(first: float, info: StepInfo, context: StepContext, size: Tuple[int, int]) -> None:
        """One line when the batch will take more than two minutes (from its first step's time)."""
        total = first * info.total
        if total < 120:
            return
        from lightning.pytorch.utilities import rank_zero_info

        names = ", ".join(context.names[:3]) + (" ..." if len(context.names) > 3 else "")
        rank_zero_info(f"{names} ({size[1]}x{size[0]}): step 1 of {info.total} took {format_seconds(first)}; "
                       f"this restoration needs about {format_seconds(total)}")

    def _check_memory(self) -> None:
        """Warn before the first restoration when the largest batch would need more memory than is free."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        batches, sizes = getattr(datamodule, "batches", None), getattr(datamodule, "sizes", None)
        restored = getattr(datamodule, "restored_size", None)
        if not batches or not sizes or restored is None:
            return
        pixels = [sum(math.prod(restored(*sizes[p])) for p in batch) for batch in batches]
        largest = max(range(len(batches)), key=pixels.__getitem__)
        weights = sum(p.numel() * p.element_size() for p in self.unet.parameters())
        need, free = estimate_bytes(pixels[largest], model_bytes=weights), available_bytes(self.device)
        if free is None or need <= free:
            return
        item = datamodule.items[batches[largest][0]]
        height, width = restored(*sizes[batches[largest][0]])
        warn(f"{item.paths[0]} ({width}x{height}{', with its batch' if len(batches[largest]) > 1 else ''}) needs "
             f"about {format_bytes(need)} to restore and {format_bytes(free)} is free: the run may be killed for "
             "memory; give --data.max_pixels to leave such inputs out, or a smaller --data.batch_size")

    def _on_step(self, info: StepInfo, context: StepContext) -> None:
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

    # ------------------------------------------------------------ Lightning
    def forward(self, y: torch.Tensor, indices: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Restore observations ``y`` (``(N, C, H, W)`` in [0, 1]) at the first scale; images in [0, 1]."""
        n = y.shape[0]
        indices = list(range(n)) if indices is None else list(indices)
        batch = {"y": y, "name": [str(i) for i in indices], "index": torch.tensor(indices)}
        out = self.restore_batch(batch)
        failed = [f"{item['name']} (step {item['results'][0]['diverged']['step']})" for item in out["items"]
                  if item["results"][0]["image"] is None]
        if failed:
            raise GuidanceDivergedError(f"the restoration of {', '.join(failed)} diverged: use a smaller scale or "
                                        "on_divergence 'retry'")
        return torch.stack([item["results"][0]["image"] for item in out["items"]])

    def predict_step(self, batch: Dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        return self._restore_or_fail(batch, batch_idx, "predict")

    def _eval_step(self, batch: Dict[str, Any], batch_idx: int, stage: str) -> Dict[str, Any]:
        out = self._restore_or_fail(batch, batch_idx, stage)
        suffixes = self._scale_suffixes()
        for k, suffix in enumerate(suffixes):
            for item in out["items"]:
                result = item["results"][k]
                values = {**result["metrics"], "diverged": float(result.get("diverged") is not None)}
                for name, value in values.items():
                    key = f"{name}{suffix}"
                    if key in self.eval_means and math.isfinite(value):
                        self.eval_means[key].update(torch.tensor(value, dtype=torch.float32))
        return out

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, Any]:
        out = self._eval_step(batch, batch_idx, "validate")
        if self.trainer.state.fn == "fit":
            self._remember_preview(batch, out, batch_idx)
            self._denoising_loss(batch)
        return out

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, Any]:
        return self._eval_step(batch, batch_idx, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        # every rank computes every metric in the same order: the synchronisation inside compute() matches up
        for key in sorted(self.eval_means):
            metric = self.eval_means[key]
            value = metric.compute() if metric.update_called or self.trainer.world_size > 1 else None
            if value is not None and torch.isfinite(value):
                self.log(f"{stage}/{key}", value, sync_dist=False, rank_zero_only=True)
            metric.reset()
        self.dataset_metrics = {} if self._metrics is None else self._metrics.dataset(
            synchronize=self.trainer.world_size > 1)
        for key, value in self.dataset_metrics.items():
            self.log(f"{stage}/{key}", value, rank_zero_only=True)
        if self._metrics is not None:
            self._metrics.reset()

    def on_validation_epoch_end(self) -> None:
        fitting = self.trainer.state.fn == "fit"
        # fit's baseline runs as the sanity check, whose self.log values Lightning discards: they go to the
        # loggers at step 0 here
        baseline = fitting and self.trainer.sanity_checking and self._baseline_sanity_steps is not None
        with self._recording_logs(baseline) as logged:
            self._eval_epoch_end("validate")
            if fitting:
                for key, metric in self.val_denoising.items():
                    if metric.update_called or self.trainer.world_size > 1:
                        self.log(f"validate/denoising_{key}", metric.compute(), rank_zero_only=True)
                    metric.reset()
                # the loggers' step of fit's validation metrics: the optimizer steps done, as the images' (else
                # Lightning uses the step of the last training batch, one less); the baseline's is 0
                self.log("step", float(self.trainer.global_step))
        if baseline and self.trainer.is_global_zero:
            values = {k: float(v) for k, v in logged.items() if k != "step"}
            for logger in self.loggers:
                logger.log_metrics(values, step=self.trainer.global_step)
        if fitting and (baseline or not self.trainer.sanity_checking):
            self._log_fit_validation()

    @contextlib.contextmanager
    def _recording_logs(self, enabled: bool) -> Iterator[Dict[str, Any]]:
        """While ``enabled``, what ``self.log`` logs is also collected in the dict this yields (name: value)."""
        logged: Dict[str, Any] = {}
        if not enabled:
            yield logged
            return
        log = self.log

        def record(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            logged[name] = value
            log(name, value, *args, **kwargs)

        self.__dict__["log"] = record  # shadows the method for this instance only
        try:
            yield logged
        finally:
            del self.__dict__["log"]

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

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

    # ------------------------------------------------------------ fine-tuning
    def _setup_fit(self) -> None:
        settings = self.training_settings
        # the weights train in float32 (AdamW on float16 weights loses its small updates); --trainer.precision
        # bf16-mixed runs the UNet in bfloat16 under autocast. The diffusion's tables stay float64.
        self.unet.set_compute_dtype(torch.float32)
        self.unet.set_gradient_checkpointing(settings.gradient_checkpointing)
        self.unet.requires_grad_(True)
        self.degradation.requires_grad_(False)
        if self._train_diffusion is None:
            self._train_diffusion = GaussianDiffusion.from_prior(self.prior)
        if self.timestep_sampler is None:
            self.timestep_sampler = make_timestep_sampler(settings.timestep_sampler,
                                                          self._train_diffusion.num_timesteps)
        # held-out denoising loss of the sampling weights: the prior's fit to the domain, at fixed timesteps and noise
        self.val_denoising = nn.ModuleDict({k: MeanMetric() for k in ("loss", "mse")})
        if settings.ema_decay > 0 and self.ema_unet is None:
            self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
            self.ema_unet.set_gradient_checkpointing(False)

    def configure_optimizers(self) -> Dict[str, Any]:
        settings = self.training_settings
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=settings.lr, betas=tuple(settings.betas),
                                      weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_factor(step, settings.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        self._require_weights()
        self._ema_step = self.trainer.global_step
        # the baseline (training.baseline_validation): a fresh run validates the starting prior on the whole
        # validation set, as Lightning's sanity check (at step 0, before training); a resumed run does not
        if self.training_settings.baseline_validation and self.trainer.ckpt_path is None:
            self._baseline_sanity_steps = self.trainer.num_sanity_val_steps
            self.trainer.num_sanity_val_steps = float("inf")

    def _end_baseline(self) -> None:
        """The trainer's own sanity-check setting again (the baseline is over, or the run resumes)."""
        if self._baseline_sanity_steps is not None:
            self.trainer.num_sanity_val_steps = self._baseline_sanity_steps
            self._baseline_sanity_steps = None

    def on_train_start(self) -> None:
        self._end_baseline()

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The improved-DDPM loss of a batch of clean crops; sample i's timestep and noise come from (seed, i)."""
        x = batch["x"].to(self.device, torch.float32) * 2 - 1
        n = x.shape[0]
        indices = [int(i) for i in batch["index"]]
        generators = [sample_generator(self.seed, i) for i in indices]
        t, weights = self.timestep_sampler.sample(generators, self.device)
        noise = randn(x.shape, generators).to(self.device)
        # dropout draws from the global generator: seed it per step, so that a resumed run is the same run
        torch.manual_seed(dropout_seed(self.seed, self.trainer.global_step, self.global_rank))
        kwargs = {}
        if self.unet.num_classes is not None:
            kwargs["y"] = self.labels_for(list(batch["name"]), self.seeds_for(indices))
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
        """Fit resumes the EMA and the timestep history; the other stages restore with the EMA weights."""
        state = checkpoint.get("state_dict", {})
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        ema = {k[len("ema_unet."):]: v for k, v in state.items() if k.startswith("ema_unet.")}
        own = set(self.state_dict())
        if fitting:
            self._end_baseline()  # a resumed run (restored after on_fit_start by some strategies)
            if self.ema_unet is not None and not ema:  # resuming a run without EMA: start the EMA from its weights
                state.update({"ema_unet." + k[len("unet."):]: v for k, v in list(state.items())
                              if k.startswith("unet.")})
        elif ema:
            state.update({"unet." + k: v for k, v in ema.items()})
        for key in [k for k in state if k not in own and k.startswith(("ema_unet.", "timestep_sampler."))]:
            del state[key]
        self.weights_loaded = True

    def on_validation_epoch_start(self) -> None:
        self._val_preview = None

    def _remember_preview(self, batch: Dict[str, Any], out: Dict[str, Any], batch_idx: int) -> None:
        if batch_idx != 0 or self._val_preview is not None or "x" not in batch:
            return
        restored = [item["results"][0]["image"] for item in out["items"]]
        if not restored or len(restored) != len(batch["x"]) or any(r is None for r in restored):
            return
        self._val_preview = {"x": batch["x"].cpu(), "y": batch["y"][:, :3].cpu(), "restored": torch.stack(restored)}

    def _denoising_loss(self, batch: Dict[str, Any]) -> None:
        """The held-out denoising loss of the sampling weights (:func:`~gdp_lightning.training.denoising_loss`,
        image i's noise from (seed, i)): comparable from one validation to the next."""
        if "x" not in batch or self._train_diffusion is None:
            return
        x = batch["x"].to(self.device, torch.float32) * 2 - 1
        if tuple(x.shape[-2:]) != (self.unet.image_size, self.unet.image_size):
            return
        indices = [int(i) for i in batch["index"]]
        seeds = self.seeds_for(indices)
        kwargs = {}
        if self.unet.num_classes is not None:
            kwargs["y"] = self.labels_for(list(batch["name"]), seeds)
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
            size = p["restored"].shape[-2:]
            y = F.interpolate(p["y"], size=size, mode="nearest") if p["y"].shape[-2:] != size else p["y"]
            rows = torch.cat([p["x"], y, p["restored"]]).clamp(0, 1)
            experiment.add_image("fit/restoration", make_grid(rows, nrow=len(p["x"]), padding=1), step)
        if self.training_settings.val_samples > 0:
            samples = self.draw_samples(self.training_settings.val_samples, self.training_settings.val_sample_steps)
            nrow = max(1, int(math.ceil(math.sqrt(len(samples)))))
            experiment.add_image("fit/samples", make_grid(samples, nrow=nrow, padding=1), step)

    @torch.no_grad()
    def draw_samples(self, num: int, steps: str = "50", batch_size: int = 16) -> torch.Tensor:
        """``num`` unconditional samples of the sampling UNet in [0, 1] (sample i seeded by (seed, i))."""
        diffusion = GaussianDiffusion.from_prior(self.prior, respacing=steps)
        unet = self.sampling_unet
        size = self.unet.image_size
        out = []
        for start in range(0, num, batch_size):
            indices = list(range(start, min(num, start + batch_size)))
            seeds = self.seeds_for(indices)
            generators = [generator(s) for s in seeds]
            kwargs = {}
            if self.unet.num_classes is not None:  # the one class, else a random class per sample
                labels = [self.class_label] * len(seeds) if self.class_label is not None else self._random_labels(seeds)
                kwargs["y"] = torch.tensor(labels, dtype=torch.long, device=self.device)
            noise = randn((len(indices), 3, size, size), generators).to(self.device)
            x = diffusion.sample(unet, noise=noise, generator=generators, model_kwargs=kwargs)
            out.append(((x + 1) / 2).clamp(0, 1).float().cpu())
        return torch.cat(out)

    def describe(self) -> Dict[str, Any]:
        """What the run record says about the model (beside the resolved config)."""
        return {
            "prior": dataclasses.asdict(self.prior),
            "degradation": repr(self.degradation),
            "quality": [f"{q.name}: weight {q.weight}{' x scale' if q.relative else ''}" for q in self.quality],
            "sampler": dataclasses.asdict(self.settings),
            "seed": self.seed,
            # the UNet's compute precision: the option's, else the prior's own (use_fp16)
            "precision": self.precision_name or ("fp16" if self.prior.unet.use_fp16 else "fp32"),
            "checkpoint": str(Path(self.prior.checkpoint).resolve()) if self.prior.checkpoint else None,
        }


def blind_kernel_scores(phi: Dict[str, torch.Tensor], truths: Optional[List[Optional[torch.Tensor]]],
                        n: int) -> List[Dict[str, float]]:
    """Per image: how the learned kernel (φ ``kernel`` of a blind operator) compares with the true one, when the
    synthetic observation's operator had one: ``kernel_error`` (‖k̂ − k‖/‖k‖), ``kernel_width`` and
    ``true_kernel_width`` (RMS radius in pixels, see :func:`~gdp_lightning.degradations.kernel_width`)."""
    learned = [v for k, v in phi.items() if k.split(".")[-1] == "kernel"]
    if not truths or not learned:
        return [{} for _ in range(n)]
    kernels = learned[0]
    out: List[Dict[str, float]] = []
    for b in range(n):
        truth = truths[b]
        if truth is None:
            out.append({})
            continue
        estimate = kernels[b if kernels.shape[0] == n else 0]
        out.append({"kernel_error": kernel_error(estimate, truth), "kernel_width": kernel_width(estimate),
                    "true_kernel_width": kernel_width(truth)})
    return out


def merge_results(first: GDPResult, second: GDPResult, take: Sequence[int]) -> GDPResult:
    """``first`` with images ``take`` (their image, φ, losses and divergence) replaced by ``second``'s."""
    n = first.images.shape[0]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[list(take)] = True

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.ndim == 0 or a.shape[0] != n:  # shared by the batch
            return a
        m = mask.to(a.device).reshape(-1, *([1] * (a.ndim - 1)))
        return torch.where(m, b.to(a.device), a)

    return GDPResult(
        images=pick(first.images, second.images),
        phi={k: pick(v, second.phi[k]) for k, v in first.phi.items()},
        losses={k: pick(v, second.losses[k]) for k, v in first.losses.items()},
        trajectory=first.trajectory,
        diverged=[second.diverged[b] if mask[b] else d for b, d in enumerate(first.diverged)],
    )


def read_labels(path: str) -> Dict[str, int]:
    """``name label`` (or ``name,label``) per line; ``#`` comments and blank lines ignored."""
    labels: Dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise InputError(f"--model.labels_file {path}: cannot read it ({e.strerror or e})") from None
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            name, label = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise InputError(f"--model.labels_file {path}:{number}: write 'name label', got {line!r}") from None
        labels[Path(name).with_suffix("").as_posix() if Path(name).suffix else name] = label
    return labels
