"""The diffusion core: schedules, respacing, x0/mean/variance, DDPM and DDIM steps, the training loss.

Knows nothing of tasks or Lightning.
"""

from .gaussian import GaussianDiffusion, MeanVariance, StepOutput, randn
from .losses import discretized_gaussian_log_likelihood, normal_kl
from .schedules import betas_for_alpha_bar, named_beta_schedule, respacing_string, space_timesteps
from .settings import DiffusionSettings

__all__ = [
    "DiffusionSettings",
    "GaussianDiffusion",
    "MeanVariance",
    "StepOutput",
    "betas_for_alpha_bar",
    "discretized_gaussian_log_likelihood",
    "named_beta_schedule",
    "normal_kl",
    "randn",
    "respacing_string",
    "space_timesteps",
]
