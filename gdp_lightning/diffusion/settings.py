"""The settings of the diffusion a prior was trained with (guided-diffusion's diffusion flags): owned by the
diffusion, used by the priors' specs (:class:`gdp_lightning.prior.PriorSpec`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DiffusionSettings"]


@dataclass
class DiffusionSettings:
    """The diffusion a prior was trained with (guided-diffusion's diffusion flags).

    Whether the variance is learned comes from the UNet's ``learn_sigma``.

    :param diffusion_steps: number of steps T of the training diffusion.
    :param noise_schedule: "linear" or "cosine" beta schedule.
    :param sigma_small: without learned variance, use the posterior variance (fixed small)
        instead of beta (fixed large).
    :param predict_xstart: the model predicts x0 instead of epsilon.
    :param rescale_timesteps: the model receives timesteps scaled to 0..1000.
    :param use_kl: train on the variational bound only.
    :param rescale_learned_sigmas: scale the variational-bound term with T/1000 in training.
    """

    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    sigma_small: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    use_kl: bool = False
    rescale_learned_sigmas: bool = False

    def __post_init__(self) -> None:
        if self.noise_schedule not in ("linear", "cosine"):
            raise ValueError(f"noise_schedule must be 'linear' or 'cosine', got {self.noise_schedule!r}")
        if self.diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be positive, got {self.diffusion_steps}")
