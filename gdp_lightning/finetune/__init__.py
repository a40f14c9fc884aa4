"""Fine-tuning the prior (``gdp fit``): :class:`FinetuneModule`, its data (:class:`FinetuneData`), its settings, timestep samplers, the EMA of the
weights and the learning-rate rules (:mod:`.training`)."""

from .data import FinetuneData
from .module import FinetuneModule
from .training import (
    LossSecondMomentTimesteps,
    TrainingSettings,
    UniformTimesteps,
    denoising_loss,
    ema_decay_at,
    make_timestep_sampler,
    update_ema,
    warmup_factor,
)

__all__ = [
    "FinetuneData",
    "FinetuneModule",
    "LossSecondMomentTimesteps",
    "TrainingSettings",
    "UniformTimesteps",
    "denoising_loss",
    "ema_decay_at",
    "make_timestep_sampler",
    "update_ema",
    "warmup_factor",
]
