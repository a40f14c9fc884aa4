"""Fine-tuning the prior (``gdp fit``): :class:`FinetuneModule`, its settings, timestep samplers, the EMA of the
weights and the learning-rate rules (:mod:`.training`)."""

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
