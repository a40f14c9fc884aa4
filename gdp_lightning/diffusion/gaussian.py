"""Gaussian diffusion: q(x_t | x_0), the model's p(x_{t-1} | x_t), DDPM and DDIM steps, the training loss.

The math and its numbers are guided-diffusion's (``gaussian_diffusion.py`` and
``respace.py``): every schedule is kept in float64 and converted to float32 when
it meets a batch, exactly as the reference does. The schedules are plain
tensors, not module buffers, so no precision setting (``.half()``, Lightning's
``16-true``/``bf16-true``) can change them.

Timesteps ``t`` passed to the methods below are indices into this diffusion's
(possibly respaced) steps, ``0 .. num_timesteps - 1``; the UNet receives
:meth:`GaussianDiffusion.model_timesteps` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .losses import discretized_gaussian_log_likelihood, normal_kl
from .schedules import named_beta_schedule, space_timesteps
from .settings import DiffusionSettings

if TYPE_CHECKING:  # the diffusion does not depend on the priors: a prior's spec only carries its settings
    from ..prior.spec import PriorSpec

__all__ = ["GaussianDiffusion", "MeanVariance", "StepOutput", "randn", "VAR_TYPES", "MEAN_TYPES", "LOSS_TYPES"]

VAR_TYPES = ("learned_range", "fixed_large", "fixed_small")
MEAN_TYPES = ("epsilon", "start_x")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")

Generator = Union[torch.Generator, Sequence[torch.Generator], None]


@dataclass
class MeanVariance:
    """The model's Gaussian p(x_{t-1} | x_t) and its prediction of x_0 (all shaped like x_t)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor


@dataclass
class StepOutput:
    """One reverse step: the new sample x_{t-1}, the x_0 prediction, and the Gaussian it was drawn from."""

    sample: torch.Tensor
    pred_xstart: torch.Tensor
    mean: torch.Tensor
    log_variance: torch.Tensor


def randn(shape: Sequence[int], generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; with a list of generators, sample ``i`` is drawn from ``generator[i]``.

    Per-sample generators make an image's noise independent of the batch it is in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}")
    return torch.stack(
        [torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generators]
    )


class GaussianDiffusion:
    """A Gaussian diffusion process with a fixed beta schedule.

    :param betas: the betas of every step (1-D, any float dtype; stored as float64).
    :param model_var_type: ``"learned_range"`` (the model outputs an
        interpolation between the posterior variance and beta), ``"fixed_large"``
        (beta) or ``"fixed_small"`` (posterior variance).
    :param model_mean_type: ``"epsilon"`` or ``"start_x"``: what the model predicts.
    :param loss_type: ``"mse"``, ``"rescaled_mse"``, ``"kl"`` or ``"rescaled_kl"``.
    :param rescale_timesteps: the model receives timesteps scaled to 0..1000.
    :param timestep_map: for a respaced diffusion, the original timestep of each kept step.
    :param original_num_steps: the number of steps of the diffusion it was respaced from.
    """

    def __init__(
        self,
        betas: Union[torch.Tensor, Sequence[float]],
        *,
        model_var_type: str = "learned_range",
        model_mean_type: str = "epsilon",
        loss_type: str = "mse",
        rescale_timesteps: bool = False,
        timestep_map: Optional[Sequence[int]] = None,
        original_num_steps: Optional[int] = None,
    ):
        if model_var_type not in VAR_TYPES:
            raise ValueError(f"model_var_type must be one of {VAR_TYPES}, got {model_var_type!r}")
        if model_mean_type not in MEAN_TYPES:
            raise ValueError(f"model_mean_type must be one of {MEAN_TYPES}, got {model_mean_type!r}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        self.model_var_type = model_var_type
        self.model_mean_type = model_mean_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D sequence of values in (0, 1]")
        self.num_timesteps = int(betas.shape[0])
        self.timestep_map = torch.as_tensor(
            list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map), dtype=torch.long
        )
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError("timestep_map needs one entry per step")
        self.original_num_steps = original_num_steps or self.num_timesteps

        # float64 tables, computed with numpy in the reference's order of operations so that they agree
        # with it to the last bit; converted to float32 when they meet a batch, as the reference does
        b = betas.numpy()
        alphas = 1.0 - b
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        posterior_variance = b * (1.0 - ac_prev) / (1.0 - ac)
        fixed_large = np.append(posterior_variance[1], b[1:])
        tables = {
            "betas": b,
            "log_betas": np.log(b),
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "one_minus_alphas_cumprod": 1.0 - ac,
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
            "posterior_variance": posterior_variance,
            # the posterior variance is 0 at t = 0: its log is clipped to the value at t = 1
            "posterior_log_variance_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            # fixed-large variance: beta, with the posterior variance at t = 0 for a better decoder likelihood
            "fixed_large_variance": fixed_large,
            "fixed_large_log_variance": np.log(fixed_large),
        }
        self._tables: Dict[str, torch.Tensor] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tables.items()}
        self._device_tables: Dict[Tuple[str, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------ construction
    @classmethod
    def from_settings(
        cls, settings: DiffusionSettings, *, learn_sigma: bool, respacing: Union[str, int, Sequence[int]] = ""
    ) -> "GaussianDiffusion":
        """The diffusion guided-diffusion's ``create_gaussian_diffusion`` builds from the same flags."""
        if settings.use_kl:
            loss_type = "rescaled_kl"
        elif settings.rescale_learned_sigmas:
            loss_type = "rescaled_mse"
        else:
            loss_type = "mse"
        if learn_sigma:
            var_type = "learned_range"
        else:
            var_type = "fixed_small" if settings.sigma_small else "fixed_large"
        base = cls(
            named_beta_schedule(settings.noise_schedule, settings.diffusion_steps),
            model_var_type=var_type,
            model_mean_type="start_x" if settings.predict_xstart else "epsilon",
            loss_type=loss_type,
            rescale_timesteps=settings.rescale_timesteps,
        )
        return base.respace(respacing)

    @classmethod
    def from_prior(cls, spec: PriorSpec, respacing: Union[str, int, Sequence[int]] = "") -> "GaussianDiffusion":
        """The diffusion of a prior (preset or spec), optionally respaced."""
        return cls.from_settings(spec.diffusion, learn_sigma=spec.unet.learn_sigma, respacing=respacing)

    def respace(self, section_counts: Union[str, int, Sequence[int]]) -> "GaussianDiffusion":
        """A diffusion over a subset of this one's steps (``"100"``, ``"ddim50"``, ``"10,10,10"``, ``""`` = all).

        Its betas are chosen so that its cumulative alphas equal this
        diffusion's at the kept steps (guided-diffusion's ``SpacedDiffusion``,
        which ``create_gaussian_diffusion`` applies even when every step is
        kept: the betas are then re-derived from the cumulative alphas, which
        changes them in the last bits, and so does this method).
        """
        use = space_timesteps(self.num_timesteps, section_counts)
        ac = self._tables["alphas_cumprod"].tolist()
        kept = sorted(use)
        new_betas, last = [], 1.0
        for i in kept:
            new_betas.append(1.0 - ac[i] / last)
            last = ac[i]
        return GaussianDiffusion(
            torch.tensor(new_betas, dtype=torch.float64),
            model_var_type=self.model_var_type,
            model_mean_type=self.model_mean_type,
            loss_type=self.loss_type,
            rescale_timesteps=self.rescale_timesteps,
            timestep_map=self.timestep_map[kept].tolist(),
            original_num_steps=self.original_num_steps,
        )

    # --------------------------------------------------------------- schedule
    def table(self, name: str) -> torch.Tensor:
        """A float64 schedule by name (``betas``, ``alphas_cumprod``, ``posterior_variance``, ...), a copy."""
        return self._tables[name].clone()

    @property
    def betas(self) -> torch.Tensor:
        return self.table("betas")

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.table("alphas_cumprod")

    def _extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Values of a schedule at ``t``, float32, shaped ``(N, 1, ..., 1)`` to broadcast over ``ndim`` dims."""
        device = t.device
        key = (name, device)
        table = self._device_tables.get(key)
        if table is None:
            table = self._tables[name]
            # float64 where the device has it; otherwise index on the CPU
            table = table if device.type == "mps" else table.to(device)
            self._device_tables[key] = table
        if table.device != device:
            values = table[t.cpu()].float().to(device)
        else:
            values = table[t].float()
        return values.reshape(values.shape + (1,) * (ndim - values.ndim))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the UNet receives for step indices ``t`` (original timesteps; scaled to 0..1000 if so set)."""
        mapped = self.timestep_map.to(t.device)[t]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    # ------------------------------------------------------------ forward q
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0)."""
        n = x_start.ndim
        mean = self._extract("sqrt_alphas_cumprod", t, n) * x_start
        variance = self._extract("one_minus_alphas_cumprod", t, n).expand_as(x_start)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, n).expand_as(x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) (``noise``: the standard normal draw, sampled if not given)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        n = x_start.ndim
        return self._extract("sqrt_alphas_cumprod", t, n) * x_start + self._extract(
            "sqrt_one_minus_alphas_cumprod", t, n
        ) * noise

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of the posterior q(x_{t-1} | x_t, x_0)."""
        n = x_t.ndim
        mean = self._extract("posterior_mean_coef1", t, n) * x_start + self._extract("posterior_mean_coef2", t, n) * x_t
        variance = self._extract("posterior_variance", t, n).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, n).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n = x_t.ndim
        return self._extract("sqrt_recip_alphas_cumprod", t, n) * x_t - self._extract(
            "sqrt_recipm1_alphas_cumprod", t, n
        ) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        n = x_t.ndim
        return (self._extract("sqrt_recip_alphas_cumprod", t, n) * x_t - pred_xstart) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, n
        )

    # ------------------------------------------------------------ reverse p
    def mean_variance_from_output(
        self,
        model_output: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> MeanVariance:
        """p(x_{t-1} | x_t) and x_0 from a UNet output already computed for ``(x, t)``.

        ``denoised_fn`` is applied to the x_0 prediction before the optional clamp to [-1, 1].
        """
        b, c = x.shape[:2]
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
        model_output = model_output.to(x.dtype)
        n = x.ndim
        if self.model_var_type == "learned_range":
            if model_output.shape != (b, 2 * c, *x.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must output {2 * c} channels, got shape {tuple(model_output.shape)}"
                )
            model_output, var_values = model_output.split(c, dim=1)
            min_log = self._extract("posterior_log_variance_clipped", t, n)
            max_log = self._extract("log_betas", t, n)
            frac = (var_values + 1) / 2  # [-1, 1] -> [posterior variance, beta]
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if model_output.shape != x.shape:
                raise ValueError(
                    f"a fixed-variance model must output {c} channels, got shape {tuple(model_output.shape)}"
                )
            if self.model_var_type == "fixed_large":
                variance = self._extract("fixed_large_variance", t, n).expand_as(x)
                log_variance = self._extract("fixed_large_log_variance", t, n).expand_as(x)
            else:
                variance = self._extract("posterior_variance", t, n).expand_as(x)
                log_variance = self._extract("posterior_log_variance_clipped", t, n).expand_as(x)

        if self.model_mean_type == "start_x":
            pred_xstart = model_output
        else:
            pred_xstart = self.predict_xstart_from_eps(x, t, model_output)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return MeanVariance(mean=mean, variance=variance, log_variance=log_variance, pred_xstart=pred_xstart)

    def p_mean_variance(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        model_kwargs: Optional[dict] = None,
    ) -> MeanVariance:
        """Run the model at ``(x, t)`` and return p(x_{t-1} | x_t) with the x_0 prediction."""
        output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        return self.mean_variance_from_output(output, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    @staticmethod
    def _nonzero_mask(t: torch.Tensor, ndim: int) -> torch.Tensor:
        return (t != 0).float().reshape(-1, *([1] * (ndim - 1)))

    def ddpm_step(
        self, mv: MeanVariance, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, mean: Optional[torch.Tensor] = None
    ) -> StepOutput:
        """Ancestral step x_{t-1} = mean + sigma * noise (no noise at t = 0).

        ``mean`` replaces ``mv.mean`` (e.g. a guided mean).
        """
        mean = mv.mean if mean is None else mean
        sample = mean + self._nonzero_mask(t, x.ndim) * torch.exp(0.5 * mv.log_variance) * noise
        return StepOutput(sample=sample, pred_xstart=mv.pred_xstart, mean=mean, log_variance=mv.log_variance)

    def ddim_sigma(self, t: torch.Tensor, ndim: int, eta: float) -> torch.Tensor:
        """σ_t of a DDIM step with stochasticity ``eta`` (η = 1: the DDPM posterior's)."""
        alpha_bar = self._extract("alphas_cumprod", t, ndim)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, ndim)
        return eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)

    def ddim_x0_coefficient(self, t: torch.Tensor, ndim: int, eta: float) -> torch.Tensor:
        """How far the DDIM mean moves per unit move of x̃0 at fixed x_t (ε re-derived from x̃0):
        √ᾱ_{t−1} − √(1 − ᾱ_{t−1} − σ_t²)·√ᾱ_t/√(1 − ᾱ_t); at η = 1 the DDPM posterior's coefficient c₁."""
        alpha_bar = self._extract("alphas_cumprod", t, ndim)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, ndim)
        sigma = self.ddim_sigma(t, ndim, eta)
        return torch.sqrt(alpha_bar_prev) - torch.sqrt(1 - alpha_bar_prev - sigma**2) * torch.sqrt(
            alpha_bar / (1 - alpha_bar))

    def ddim_step(
        self,
        mv: MeanVariance,
        x: torch.Tensor,
        t: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        eta: float = 0.0,
        pred_xstart: Optional[torch.Tensor] = None,
    ) -> StepOutput:
        """DDIM step (Song et al., eq. 12) with stochasticity ``eta`` (0 = deterministic).

        ``pred_xstart`` replaces ``mv.pred_xstart`` (e.g. a guided x_0); epsilon is re-derived from it.
        """
        x0 = mv.pred_xstart if pred_xstart is None else pred_xstart
        n = x.ndim
        eps = self.predict_eps_from_xstart(x, t, x0)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, n)
        sigma = self.ddim_sigma(t, n, eta)
        mean = x0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        sample = mean
        if eta > 0:
            if noise is None:
                raise ValueError("a DDIM step with eta > 0 needs noise")
            sample = mean + self._nonzero_mask(t, n) * sigma * noise
        log_variance = torch.log(sigma.clamp_min(1e-20) ** 2).expand_as(x)
        return StepOutput(sample=sample, pred_xstart=x0, mean=mean, log_variance=log_variance)

    def p_sample(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        model_kwargs: Optional[dict] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Generator = None,
    ) -> StepOutput:
        """One DDPM ancestral step from x_t (model forward included)."""
        mv = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        if noise is None:
            noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return self.ddpm_step(mv, x, t, noise)

    def ddim_sample(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        eta: float = 0.0,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        model_kwargs: Optional[dict] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Generator = None,
    ) -> StepOutput:
        """One DDIM step from x_t (model forward included)."""
        mv = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        if eta > 0 and noise is None:
            noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return self.ddim_step(mv, x, t, noise=noise, eta=eta)

    def sample_progressive(
        self,
        model: Callable[..., torch.Tensor],
        shape: Optional[Sequence[int]] = None,
        *,
        noise: Optional[torch.Tensor] = None,
        method: str = "ddpm",
        eta: float = 0.0,
        clip_denoised: bool = True,
        model_kwargs: Optional[dict] = None,
        generator: Generator = None,
        device: Union[str, torch.device, None] = None,
        progress: bool = False,
    ) -> Iterator[StepOutput]:
        """Unconditional sampling from pure noise, yielding every step's output (last: t = 0).

        :param method: ``"ddpm"`` (ancestral) or ``"ddim"``.
        :param generator: one generator, or one per sample (see :func:`randn`).
        """
        if method not in ("ddpm", "ddim"):
            raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")
        if noise is None:
            if shape is None:
                raise ValueError("give the sample shape or the initial noise")
            noise = randn(shape, generator, device=device)
        x = noise
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="sampling", unit="step")
        for i in steps:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            with torch.no_grad():
                if method == "ddpm":
                    out = self.p_sample(
                        model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs, generator=generator
                    )
                else:
                    out = self.ddim_sample(
                        model, x, t, eta=eta, clip_denoised=clip_denoised, model_kwargs=model_kwargs, generator=generator
                    )
            yield out
            x = out.sample

    def sample(self, model: Callable[..., torch.Tensor], shape: Optional[Sequence[int]] = None, **kwargs) -> torch.Tensor:
        """The final sample of :meth:`sample_progressive` (same arguments)."""
        out = None
        for out in self.sample_progressive(model, shape, **kwargs):
            pass
        return out.sample

    # ----------------------------------------------------------------- loss
    def vb_terms_bpd(
        self, mv: MeanVariance, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One term of the variational bound in bits per dimension, shape ``(N,)``.

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0; the discretised
        decoder negative log-likelihood of x_0 at t = 0.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, mv.mean, mv.log_variance)
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, means=mv.mean, log_scales=0.5 * mv.log_variance)
        nll = nll.flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor,
        *,
        noise: Optional[torch.Tensor] = None,
        model_kwargs: Optional[dict] = None,
    ) -> Dict[str, torch.Tensor]:
        """The improved-DDPM training loss per sample (``"loss"``, plus ``"mse"`` and ``"vb"`` where they apply).

        With ``mse`` losses and a learned variance this is the hybrid objective:
        the epsilon (or x_0) MSE plus the variational-bound term, whose gradient
        reaches only the variance output (the mean is detached inside it).
        ``rescaled_mse`` multiplies the bound by ``num_timesteps / 1000``;
        ``kl``/``rescaled_kl`` train on the bound alone (the latter scaled by ``num_timesteps``).
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms: Dict[str, torch.Tensor] = {}
        if self.loss_type in ("kl", "rescaled_kl"):
            mv = self.p_mean_variance(model, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)
            terms["loss"] = self.vb_terms_bpd(mv, x_start, x_t, t)
            if self.loss_type == "rescaled_kl":
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {})).to(x_t.dtype)
        c = x_t.shape[1]
        if self.model_var_type == "learned_range":
            mean_out, var_out = output.split(c, dim=1)
            frozen = torch.cat([mean_out.detach(), var_out], dim=1)
            mv = self.mean_variance_from_output(frozen, x_t, t, clip_denoised=False)
            terms["vb"] = self.vb_terms_bpd(mv, x_start, x_t, t)
            if self.loss_type == "rescaled_mse":
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        else:
            mean_out = output
        target = x_start if self.model_mean_type == "start_x" else noise
        terms["mse"] = ((target - mean_out) ** 2).flatten(1).mean(1)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
