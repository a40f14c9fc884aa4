"""The sampler's options (:class:`SamplerOptions`, each documented once) and the command's settings around them
(:class:`SamplerSettings`, ``--model.sampler.*``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Union

from ..diffusion.schedules import respacing_string
from ..errors import ConfigError

__all__ = ["SamplerOptions", "SamplerSettings"]


@dataclass(frozen=True)
class SamplerOptions:
    """How :class:`~gdp_lightning.sampling.GDPSampler` guides, with the official GDP code's defaults (the
    command's :class:`SamplerSettings` adds the steps and scales and changes two defaults).

    :param scale_convention: ``paper`` (the scale means the same at any step count and size: the paper's value
        for 1000 steps on a 256×256 image, converted) or ``raw`` (the official per-step value).
    :param variant: ``x0`` (GDP-x0: the loss on the predicted clean image x̃0) or ``xt`` (on x_t).
    :param method: ``ddpm`` or ``ddim``.
    :param eta: DDIM stochasticity.
    :param data_loss: ``mse`` or ``l1``.
    :param phi_optimizer: ``adam`` or ``sgd`` (plain gradient descent; lr 1 is the official update) for the
        degradation parameters φ, or ``lstsq``: φ moves by the operator's own least-squares solver towards the
        minimiser of its data term for the step's x̃0 (a blind blur's kernel, warm-started from the last step's).
    :param phi_lr: learning rate of φ.
    :param phi_steps: optimiser steps on φ per diffusion step.
    :param phi_update: ``before`` (guide with φ before its update, as the official code) or ``after``.
    :param phi_start: φ is updated from this fraction of the steps on (0: from the first; x̃0 is a blurry mean at
        high noise, which a least-squares fit explains with too narrow a kernel).
    :param tile_size: tile side for images larger than the prior (default: the prior's image size).
    :param tile_overlap: overlap of neighbouring tiles in pixels, or below 1 a fraction of the tile (default: a
        quarter tile; 0.5 is the official stride of half a tile).
    :param tile_batch: tiles per UNet forward (memory against speed).
    :param whole_image: run the UNet on the whole image instead of tiles (sides must be multiples of its
        downsampling factor).
    :param clip_denoised: clamp x̃0 to [-1, 1].
    :param guidance: how the data term guides: ``gradient`` (GDP's push −s·∇ of the data term on the step's mean,
        the official rule), ``proximal`` (x̃0 is replaced by the exact data-consistency solution,
        :class:`~gdp_lightning.sampling.consistency.DataConsistency`: no scale, the same at any step count; linear
        operators without learnable φ only) or ``auto`` (proximal where it applies, else gradient). Quality terms
        are gradient pushes under every rule.
    :param guidance_substeps: each step's gradient push in this many gradient steps, each where the previous
        moved the image (1: the official single push; 0: ``round(1000 / steps)``, which keeps few-step runs from
        overshooting at scales that suit 1000: blind deblurring at 10 steps diverged on every tuning crop with one
        push and none with 100; no extra UNet forward).
    :param noise_sigma: the observation's noise σ on the [0, 1] scale for the data-consistency step (default: the
        task's GaussianNoise σ, else 0); it stops fitting at that level.
    :param quantization: step of the observation's values (1/255: 8-bit files; 0: exact float values); their
        rounding error is the least noise assumed.
    :param confidence: the data-consistency step's trust in the prior's x̃0 (its error as a fraction of the
        step's noise level).
    :param prox_iterations: conjugate-gradient iterations of the data-consistency step at most.
    """

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
    guidance: str = "gradient"
    guidance_substeps: int = 1
    noise_sigma: Optional[float] = None
    quantization: float = 1 / 255
    confidence: float = 0.5
    prox_iterations: int = 50


@dataclass(frozen=True)
class SamplerSettings(SamplerOptions):
    """How GDP samples: the sampler's options (see :class:`SamplerOptions`) with the project's defaults for
    ``guidance`` (``auto``: the exact data-consistency step where the operator is linear and known, GDP's gradient
    elsewhere) and ``guidance_substeps`` (0: ``1000 / steps`` pushes a step), and what runs around the sampler.

    :param steps: number of diffusion steps (``100``) or guided-diffusion's respacing string (``"ddim50"``,
        ``"10,10,10"``); the paper uses 1000.
    :param scale: guidance scale s (with ``scale_convention: paper``: the value for 1000 steps on a 256×256
        image, converted to this run's steps and size); at least 0, and 0 turns the data guidance off (the
        prior's own samples, beside the quality terms). Not used by the data-consistency rule.
    :param scales: try several scales on the same images (one output per scale and a side-by-side grid);
        replaces ``scale``.
    :param on_divergence: ``flag``: an image whose restoration diverged (see
        :mod:`gdp_lightning.sampling.divergence`) is recorded as such, without an output, and the run's exit
        status is 3; ``retry``: it is restored again at half the scale, up to ``max_retries`` times, before it is
        flagged; ``keep``: its output is written and scored all the same, its record says it diverged.
    :param max_retries: restarts of a diverged image with ``on_divergence: retry``.
    :param num_samples: posterior samples per input (K, restored together in one batch of K times the images):
        the output is their mean, ``<name>.std.png`` their per-pixel standard deviation; 1: one sample, as without.
    :param save_samples: with ``num_samples`` above 1, also write each sample (``<name>.sample<j>.png``).
    """

    steps: Union[int, str] = "100"
    scale: float = 8000.0
    scales: Optional[List[float]] = None
    guidance: str = "auto"
    guidance_substeps: int = 0
    on_divergence: str = "flag"
    max_retries: int = 2
    num_samples: int = 1
    save_samples: bool = False

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
        if self.num_samples < 1:
            raise ConfigError(f"--model.sampler.num_samples must be >= 1, got {self.num_samples}")

    def options(self) -> SamplerOptions:
        """The sampler's options these settings hold."""
        return SamplerOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplerOptions)})

    def scale_list(self) -> List[float]:
        return [float(s) for s in self.scales] if self.scales else [float(self.scale)]

    def scale_suffixes(self) -> List[str]:
        """The suffix of each scale's metric names and files: ``/s<scale>`` in a sweep, else none."""
        scales = self.scale_list()
        return [f"/s{s:g}" for s in scales] if len(scales) > 1 else [""]
