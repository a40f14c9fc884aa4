"""The GDP sampler (Fei et al., CVPR 2023): diffusion sampling guided by a degradation model.

At every reverse step:

1. one UNet forward (in tiles of the prior's size when the image is larger) gives
   μ, log Σ and x̃0 (clamped), averaged over tile overlaps;
2. the guidance objective ``c·(s·Σ_b D_b + Σ_q w_q·Σ_b Q_q,b)`` is differentiated with respect to the
   detached x̃0 (GDP-x0) or x_t (GDP-xt); D_b = mean over channels and pixels of
   dist(A_φ((x̃0+1)/2), y) (summed over the observations of HDR), Q_q the quality losses;
   nothing is back-propagated through the UNet;
3. φ takes ``phi_steps`` optimiser steps on Σ_b D_b + Σ_b R_b(φ) (its data term and its own
   regularisation, not multiplied by s, without the quality terms);
4. DDPM: x_{t-1} = μ − ∇ + σ·z; DDIM: the guided x̃0' = x̃0 − ∇/k_η(t) enters the DDIM update, k_η the
   DDIM mean's coefficient of x̃0, so that the DDIM mean moves by ∇ as DDPM's does (at η = 1, k₁ = c₁, the
   posterior-mean coefficient, and the step equals the DDPM one).

Order of 2 and 3: ``phi_update="before"`` (default, the official code) guides with φ as it was before
this step's update; ``"after"`` updates φ first.

``guidance="proximal"`` (or ``"auto"`` where it applies: a linear operator with known parameters) replaces the
data term's gradient in 2 by the exact data-consistency step x̃0 → x̂0 of :mod:`.consistency` (the push on μ is
c₁·(x̃0 − x̂0)); the quality terms keep their gradient. Every image is followed by :mod:`.divergence`: one that
turns non-finite or runs off is flagged in :attr:`GDPResult.diverged`, the batch goes on.

Scale conventions: ``"raw"`` uses ``scale`` as is per step (the official code); ``"paper"`` (default)
reads ``scale`` as the paper's value for 1000 steps on a 256×256 image and multiplies every guidance term
by ``c = (1000 / steps) · numel(y) / numel(y of a 256×256 image)``, so that the push per pixel per unit
of diffusion time does not change with the number of steps, the image size or the prior's size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..degradations import Degradation
from ..diffusion import GaussianDiffusion, randn
from ..errors import GDPError
from ..losses import RECONSTRUCTION, QualityLoss
from ..ranges import to_image, to_model
from ..seeds import PHI, generator
from .consistency import DataConsistency, supports_consistency
from .divergence import DIVERGENCE_ABSOLUTE, DivergenceMonitor
from .phi import PhiUpdate
from .settings import SamplerOptions
from .tiling import TiledPrior

__all__ = ["GDPSampler", "GDPResult", "QualityTerm", "StepInfo", "TrajectoryPoint", "GuidanceDivergedError", "PAPER_STEPS", "PAPER_SIZE"]

PAPER_STEPS = 1000
PAPER_SIZE = 256


class GuidanceDivergedError(GDPError, FloatingPointError):
    """Restorations diverged (non-finite, or a data term far past its lowest value): the guidance was too strong."""


@dataclass
class QualityTerm:
    """A quality loss in the guidance objective.

    :param loss: the loss module (e.g. :class:`~gdp_lightning.losses.ExposureControl`).
    :param weight: its weight.
    :param relative: the weight multiplies the guidance scale s (the paper's low-light weights:
        exposure s/100, colour s/200); else it is absolute (the official colorization's 500).
    :param name: name in logs.
    """

    loss: QualityLoss
    weight: float
    relative: bool = False
    name: Optional[str] = None

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = type(self.loss).__name__


@dataclass
class TrajectoryPoint:
    """The state after one step, for logging: x̃0 in [0, 1] of the first images, loss terms, φ."""

    step: int
    timestep: int
    x0: torch.Tensor
    losses: Dict[str, torch.Tensor]
    phi: Dict[str, torch.Tensor]


@dataclass
class StepInfo:
    """What :meth:`GDPSampler.restore` passes to its ``on_step`` hook after every step (tensors on the device,
    not copied: read, do not keep). ``step`` counts from 1 to ``total``."""

    step: int
    total: int
    timestep: int
    x: torch.Tensor
    pred_xstart: torch.Tensor
    losses: Dict[str, torch.Tensor]
    degradation: Degradation


@dataclass
class GDPResult:
    """Restored images in [0, 1], the final φ, the final loss terms per image, the trajectory, and per image the
    step at which it diverged (``None``: it did not; see :mod:`.divergence`). A diverged image's values are
    not a restoration (zeros where the sample became non-finite)."""

    images: torch.Tensor
    phi: Dict[str, torch.Tensor]
    losses: Dict[str, torch.Tensor]
    trajectory: List[TrajectoryPoint] = field(default_factory=list)
    diverged: List[Optional[int]] = field(default_factory=list)


class GDPSampler:
    """GDP restoration with a pretrained diffusion prior and a degradation model.

    :param unet: the prior (any callable ``unet(x, t, y=None)``; usually a :class:`~gdp_lightning.prior.UNetModel`).
    :param diffusion: the (respaced) diffusion the sampler walks.
    :param degradation: the forward model A_φ; its learnable φ are optimised per image.
    :param scale: guidance scale s (see the scale conventions above).
    :param options: how it guides (:class:`~gdp_lightning.sampling.SamplerOptions`; default: the official code's
        rules); keyword ``overrides`` replace single options (``GDPSampler(..., phi_lr=0.1)``).
    :param quality: quality terms added to the guidance objective.
    :param trajectory_every: record the state every this many steps (0: never; the last step is
        always recorded when > 0).
    :param trajectory_images: how many images of the batch the trajectory keeps.
    :param progress: show a progress bar over the steps.
    """

    def __init__(
        self,
        unet: nn.Module,
        diffusion: GaussianDiffusion,
        degradation: Degradation,
        scale: float,
        options: Optional[SamplerOptions] = None,
        *,
        quality: Sequence[QualityTerm] = (),
        trajectory_every: int = 0,
        trajectory_images: int = 4,
        progress: bool = False,
        **overrides: object,
    ):
        o = dataclasses.replace(options or SamplerOptions(), **overrides)
        for name, value, allowed in (
            ("scale_convention", o.scale_convention, ("paper", "raw")),
            ("variant", o.variant, ("x0", "xt")),
            ("method", o.method, ("ddpm", "ddim")),
            ("data_loss", o.data_loss, tuple(RECONSTRUCTION)),
            ("phi_optimizer", o.phi_optimizer, ("adam", "sgd", "lstsq")),
            ("phi_update", o.phi_update, ("before", "after")),
            ("guidance", o.guidance, ("gradient", "proximal", "auto")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if o.phi_steps < 0 or o.tile_batch < 1 or o.guidance_substeps < 0:
            raise ValueError("phi_steps and guidance_substeps must be >= 0 and tile_batch >= 1")
        if not 0.0 <= o.phi_start <= 1.0:
            raise ValueError(f"phi_start must be in [0, 1], got {o.phi_start}")
        if (o.phi_optimizer == "lstsq" and degradation.learnable_parameters()
                and type(degradation).fit_parameters is Degradation.fit_parameters):
            raise ValueError(f"phi_optimizer 'lstsq' needs an operator with an exact solve of φ (a blind Blur); "
                             f"{type(degradation).__name__} has none: use 'adam'")
        self.options = o
        self.unet, self.diffusion, self.degradation = unet, diffusion, degradation
        self.scale, self.scale_convention = float(scale), o.scale_convention
        self.variant, self.method, self.eta = o.variant, o.method, float(o.eta)
        self.data_loss = RECONSTRUCTION[o.data_loss]
        self.quality = list(quality)
        self.phi_update = o.phi_update
        self.tile_size = o.tile_size or getattr(unet, "image_size", None)
        #: how φ moves at each step (its optimiser, or the operator's least-squares solve)
        self.phi = PhiUpdate(degradation, self.data_terms, o, self.tile_size)
        self.clip_denoised = o.clip_denoised
        #: the prior's μ, log Σ and x̃0 of a whole image (in tiles where it is larger than the prior)
        self.denoiser = TiledPrior(unet, diffusion, self.tile_size, o.tile_overlap, o.tile_batch,
                                o.whole_image or self.tile_size is None, o.clip_denoised)
        self.guidance_substeps = o.guidance_substeps
        self.guidance_rule = o.guidance
        self.data_loss_name = o.data_loss
        self.noise_sigma = float(degradation.noise_sigma() if o.noise_sigma is None else o.noise_sigma)
        self.consistency = DataConsistency(degradation, self.noise_sigma, o.quantization, o.confidence,
                                           o.prox_iterations)
        if o.guidance == "proximal":
            self._check_proximal()
        self.trajectory_every, self.trajectory_images = trajectory_every, trajectory_images
        self.progress = progress

    # ------------------------------------------------------------ rules
    def _check_proximal(self) -> None:
        why = supports_consistency(self.degradation, self.data_loss_name)
        if why is None and self.variant == "xt":
            why = "the GDP-xt variant guides x_t, not x̃0"
        if why is not None:
            raise ValueError(f"guidance 'proximal' needs a linear operator without learnable parameters: {why}; "
                             "use guidance 'gradient' or 'auto'")

    @property
    def proximal(self) -> bool:
        """Whether the data term enters through the proximal step (else through its gradient)."""
        if self.guidance_rule == "gradient":
            return False
        if self.guidance_rule == "proximal":
            return True
        return self.variant == "x0" and supports_consistency(self.degradation, self.data_loss_name) is None

    # ------------------------------------------------------------ scales
    def conversion(self, height: int, width: int, channels: int = 3) -> float:
        """The factor c that multiplies every guidance term (1 for the raw convention)."""
        if self.scale_convention == "raw":
            return 1.0
        deg = self.degradation
        numel = deg.output_numel(height, width, channels)
        reference = deg.output_numel(PAPER_SIZE, PAPER_SIZE, channels)
        return PAPER_STEPS / self.diffusion.num_timesteps * numel / reference

    # ------------------------------------------------------------ pieces
    def data_terms(self, image: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image data term D_b for an image in [-1, 1] (x̃0 or x_t)."""
        pred = self.degradation(to_image(image))
        if pred.shape != y.shape:
            raise ValueError(
                f"the degradation maps the image to {tuple(pred.shape)} but the observation is {tuple(y.shape)}"
            )
        return self.degradation.num_observations * self.data_loss(pred, y)

    def loss_terms(self, image: torch.Tensor, y: torch.Tensor, data: bool = True) -> Dict[str, torch.Tensor]:
        """Every term of the guidance objective, per image (unweighted); ``data=False`` leaves the data term out."""
        terms = {"data": self.data_terms(image, y)} if data else {}
        for q in self.quality:
            terms[q.name] = q.loss(q.loss.prepare(image))
        return terms

    @property
    def substeps(self) -> int:
        """Gradient steps per guidance push (see ``guidance_substeps``)."""
        if self.guidance_substeps:
            return self.guidance_substeps
        return max(1, round(PAPER_STEPS / self.diffusion.num_timesteps))

    def guidance(self, image: torch.Tensor, y: torch.Tensor, c: float, data: bool = True):
        """The push of one step: c times the gradient of the weighted guidance objective with respect to
        ``image`` (in ``substeps`` parts, each at the image moved by the parts before it), and the loss terms at
        ``image``. ``data=False`` leaves the data term out of the push (the proximal rule); it is still reported."""
        if not data and not self.quality:
            with torch.no_grad():
                terms = self.loss_terms(image, y)
            return torch.zeros_like(image), terms
        m = self.substeps
        push, terms = self._gradient(image, y, c / m, data)
        if not data:  # reported, not pushed by: computed once, not in every substep
            with torch.no_grad():
                terms = {"data": self.data_terms(image, y), **terms}
        for _ in range(m - 1):
            part, _ = self._gradient(image - push, y, c / m, data)
            push = push + part
        return push, terms

    def _gradient(self, image: torch.Tensor, y: torch.Tensor, c: float, data: bool = True):
        image = image.detach().requires_grad_(True)
        with torch.enable_grad():
            terms = self.loss_terms(image, y, data)
            objective = self.scale * terms["data"].sum() if data else 0.0
            for q in self.quality:
                weight = q.weight * self.scale if q.relative else q.weight
                objective = objective + weight * terms[q.name].sum()
            (grad,) = torch.autograd.grad(c * objective, image)
        return grad, {k: v.detach() for k, v in terms.items()}

    def update_phi(self, image: torch.Tensor, y: torch.Tensor, optimizer: Optional[torch.optim.Optimizer],
                   progress: float = 1.0) -> None:
        """φ's update at a diffusion step (see :class:`~.phi.PhiUpdate`)."""
        self.phi(image, y, optimizer, progress)

    def make_optimizer(self) -> Optional[torch.optim.Optimizer]:
        return self.phi.optimizer()

    def guided_step(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        *,
        labels: Optional[torch.Tensor] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        noise: Optional[torch.Tensor] = None,
        c: Optional[float] = None,
    ):
        """One reverse step from x_t: returns (x_{t-1}, the guided mean, the unguided MeanVariance, loss terms).

        For DDIM the returned mean is the DDIM update before noise. ``noise=None`` adds none (the last step; with
        DDIM at η = 0 the noise is never used).
        """
        c = self.conversion(*x.shape[-2:], x.shape[1]) if c is None else c
        mv = self.denoiser(x, t, labels)
        target = mv.pred_xstart if self.variant == "x0" else x
        progress = (self.diffusion.num_timesteps - float(t[0])) / self.diffusion.num_timesteps
        if self.phi_update == "after":
            self.update_phi(target, y, optimizer, progress)
        proximal = self.proximal
        grad, terms = self.guidance(target, y, c, data=not proximal)
        if self.phi_update == "before":
            self.update_phi(target, y, optimizer, progress)
        coef1 = self.diffusion._extract("posterior_mean_coef1", t, x.ndim)
        shift = torch.zeros_like(x)  # x̃0 − x̂0 of the data-consistency step
        if proximal:  # x̃0 → x̂0: the posterior mean moves by c₁·(x̂0 − x̃0)
            noise_level = self.diffusion._extract("sqrt_recipm1_alphas_cumprod", t, x.ndim)
            x0_hat = to_model(self.consistency(to_image(target), y, noise_level))
            if self.clip_denoised:
                x0_hat = x0_hat.clamp(-1, 1)
            shift = target - x0_hat
        if noise is None:  # no noise: the last step, or a deterministic call
            noise = torch.zeros_like(x)
        if self.method == "ddpm":
            mean = mv.mean - grad - coef1 * shift
            step = self.diffusion.ddpm_step(mv, x, t, noise, mean=mean)
        else:  # the push moves the DDIM mean as much as DDPM's; the consistency step replaces x̃0 by x̂0
            x0_guided = mv.pred_xstart - grad / self.diffusion.ddim_x0_coefficient(t, x.ndim, self.eta) - shift
            step = self.diffusion.ddim_step(mv, x, t, noise=noise, eta=self.eta, pred_xstart=x0_guided)
        return step.sample, step.mean, mv, terms

    # ------------------------------------------------------------- the loop
    @torch.no_grad()
    def restore(
        self,
        y: torch.Tensor,
        *,
        seeds: Optional[Sequence[int]] = None,
        image_size: Optional[Sequence[int]] = None,
        labels: Optional[torch.Tensor] = None,
        channels: int = 3,
        on_step: Optional[Callable[[StepInfo], None]] = None,
    ) -> GDPResult:
        """Restore a batch of observations ``y`` (``(N, C', H', W')`` in [0, 1]).

        :param seeds: one per image (default ``0..N-1``): image i's noise and φ initialisation come from
            generators seeded by ``seeds[i]``, so its result does not depend on the batch it is in.
        :param image_size: ``(H, W)`` of the restored image (default: the degradation's ``input_size``).
        :param labels: class labels ``(N,)`` for a class-conditional prior.
        :param on_step: called with a :class:`StepInfo` after every step (logging, progress).
        """
        n = y.shape[0]
        device = y.device
        seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} images")
        if getattr(self.unet, "num_classes", None) is not None and labels is None:
            raise ValueError("the prior is class-conditional: give one class label per image (labels=...)")
        h, w = tuple(image_size) if image_size is not None else self.degradation.input_size(*y.shape[-2:])
        noise_gens = [generator(s, device) for s in seeds]
        phi_gens = [generator(s + PHI) for s in seeds]
        self.degradation.init_parameters(n, h, w, phi_gens, device)
        optimizer = self.make_optimizer()
        c = self.conversion(h, w, channels)

        x = randn((n, channels, h, w), noise_gens, device=device)
        steps = range(self.diffusion.num_timesteps - 1, -1, -1)
        if self.progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="GDP", unit="step", leave=False)
        trajectory: List[TrajectoryPoint] = []
        terms: Dict[str, torch.Tensor] = {}
        total = self.diffusion.num_timesteps
        # the absolute bound only where the forward model is exact (linear, known)
        exact = supports_consistency(self.degradation, self.data_loss_name) is None
        monitor = DivergenceMonitor(n, noise_sigma=self.noise_sigma, absolute=DIVERGENCE_ABSOLUTE if exact else None)
        with torch.no_grad():  # the data term of a flat mid-gray image: a bound no restoration should exceed
            gray = torch.zeros(n, channels, h, w, device=device)
            monitor.bound(self.data_terms(gray, y))
            if exact:  # what the best image in [0, 1] leaves unexplained (a real photo: more than its noise)
                far = torch.full((n, 1, 1, 1), 1e3, device=device, dtype=y.dtype)  # ρ → 0: least squares
                best = self.consistency(to_image(gray), y, far).clamp(0, 1)
                monitor.explainable(self.data_terms(to_model(best), y))
        for i in steps:
            t = torch.full((n,), i, device=device, dtype=torch.long)
            noise = randn(x.shape, noise_gens, device=device) if (i > 0 and (self.method == "ddpm" or self.eta > 0)) else None
            x, _, mv, terms = self.guided_step(x, t, y, labels=labels, optimizer=optimizer, noise=noise, c=c)
            finite = torch.isfinite(x).flatten(1).all(1)
            if not bool(finite.all()):  # the others go on; this one is flagged and carried as zeros
                x = torch.where(finite[:, None, None, None], x, torch.zeros_like(x))
            monitor.update(total - i, terms["data"], finite)
            if on_step is not None:
                on_step(StepInfo(total - i, total, int(self.diffusion.model_timesteps(t[:1])), x, mv.pred_xstart,
                                 terms, self.degradation))
            if self.trajectory_every and ((total - 1 - i) % self.trajectory_every == 0 or i == 0):
                k = self.trajectory_images
                trajectory.append(
                    TrajectoryPoint(
                        step=total - i,
                        timestep=int(self.diffusion.model_timesteps(t[:1])),
                        x0=to_image(mv.pred_xstart[:k]).clamp(0, 1).cpu(),
                        losses={name: v.cpu() for name, v in terms.items()},
                        phi={name: v[:k] for name, v in self.degradation.phi().items()},
                    )
                )
        images = to_image(x).clamp(0, 1)
        with torch.no_grad():
            monitor.update(total, self.data_terms(to_model(images), y))  # the final image's data term
        return GDPResult(
            images=images,
            phi=self.degradation.phi(),
            losses={name: v.cpu() for name, v in terms.items()},
            trajectory=trajectory,
            diverged=monitor.diverged_at(),
        )
