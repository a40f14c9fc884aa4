"""From a batch of observations to typed results (pure torch): :class:`Restorer`.

A batch is what :class:`gdp_lightning.data.GDPDataModule` serves: ``y`` (observations in [0, 1]), ``name``,
``index``, and optionally ``x`` (ground truth, synthetic mode), ``mask`` and ``kernel`` (side files), ``path``,
``bits``, ``alpha``, ``mode``, ``true_kernel`` and ``failed`` (inputs that could not be read). The restorer pads
observations smaller than the prior, gives the operator its side inputs, restores every guidance scale with
:class:`~gdp_lightning.sampling.GDPSampler` (restarting diverged images at half the scale when asked), crops back,
keeps gray inputs gray, scores the 8-bit results and returns a :class:`BatchResult`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..degradations import Degradation, kernel_error, kernel_width
from ..diffusion import GaussianDiffusion
from ..errors import ConfigError, InputError, warn
from ..metrics import ImageMetrics, to_8bit
from ..seeds import SAMPLER, sample_seed, stream_seed
from .gdp import GDPResult, GDPSampler, QualityTerm, StepInfo
from .labels import ClassLabels
from .settings import SamplerSettings

__all__ = ["Restorer", "BatchResult", "ImageResult", "ScaleResult", "InputFailure", "StepContext", "merge_results",
           "blind_kernel_scores"]


@dataclass
class ScaleResult:
    """One image restored at one guidance scale."""

    scale: float
    #: ``(C, H, W)`` in [0, 1] at full precision; ``None`` when the restoration diverged (and is not kept)
    image: Optional[torch.Tensor]
    phi: Dict[str, torch.Tensor]
    losses: Dict[str, float]
    metrics: Dict[str, float]
    #: the step at which the restoration diverged, of ``steps``; ``None`` when it did not
    diverged_step: Optional[int] = None
    steps: int = 0
    #: ``on_divergence: retry``: restarts at half the scale, and the scale the result was made at
    retries: int = 0
    scale_used: Optional[float] = None
    #: ``num_samples`` above 1: the samples' per-pixel standard deviation ``(C, H, W)`` (``image`` is their mean),
    #: and with ``save_samples`` the samples ``(K, C, H, W)``
    std: Optional[torch.Tensor] = None
    samples: Optional[torch.Tensor] = None


@dataclass
class ImageResult:
    """One input and its results (one per scale), with what writing it needs."""

    name: str
    index: int
    seed: int
    path: Optional[str] = None
    bits: int = 8
    alpha: Optional[torch.Tensor] = None
    gray: bool = False
    label: Optional[int] = None
    results: List[ScaleResult] = field(default_factory=list)


@dataclass
class InputFailure:
    """An input that could not be restored, and why."""

    name: str
    index: Optional[int]
    path: Optional[str]
    error: str


@dataclass
class BatchResult:
    stage: str
    items: List[ImageResult]
    failed: List[InputFailure]


@dataclass
class StepContext:
    """What an ``on_step(info, context)`` hook knows about the running batch."""

    stage: str
    batch_idx: int
    names: List[str]
    indices: List[int]
    scale: float
    multi_scale: bool
    #: ``time.monotonic()`` when the restoration started, and the size it restores to
    started: float = 0.0
    size: Tuple[int, int] = (0, 0)


StepHook = Callable[[StepInfo, StepContext], None]


def batch_failures(batch: Dict[str, Any]) -> List[InputFailure]:
    """The batch's inputs that the data module could not read."""
    return [f if isinstance(f, InputFailure) else InputFailure(f["name"], f.get("index"), f.get("path"), f["error"])
            for f in batch.get("failed", [])]


class Restorer:
    """GDP restoration of batches with one prior, operator and sampler settings.

    :param unet: the prior's UNet (in eval mode, gradients off).
    :param diffusion: the respaced diffusion of the run's steps.
    :param degradation: the task's operator; it takes each batch's side inputs (``mask``, ``kernel``).
    :param settings: the sampler settings.
    :param quality: quality terms added to the guidance.
    :param seed: image i's noise and φ come from (seed, i).
    :param labels: the classes of a class-conditional prior.
    :param small_images: ``pad`` (pad, restore, crop back) or ``error``.
    :param metrics: scores the results (``None``: none).
    :param progress: show the diffusion steps.
    """

    def __init__(self, unet: nn.Module, diffusion: GaussianDiffusion, degradation: Degradation,
                 settings: SamplerSettings, *, quality: Sequence[QualityTerm] = (), seed: int = 0,
                 labels: Optional[ClassLabels] = None, small_images: str = "pad",
                 metrics: Optional[ImageMetrics] = None, progress: bool = False):
        self.unet, self.diffusion, self.degradation, self.settings = unet, diffusion, degradation, settings
        self.quality, self.seed = list(quality), int(seed)
        self.labels = labels or ClassLabels(getattr(unet, "num_classes", None))
        self.small_images, self.metrics, self.progress = small_images, metrics, progress
        self.check_sweep()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def make_sampler(self, scale: float) -> GDPSampler:
        try:
            return GDPSampler(self.unet, self.diffusion, self.degradation, scale, self.settings.options(),
                              quality=self.quality, progress=self.progress)
        except ValueError as e:  # an option the sampler refuses: one line naming it
            raise ConfigError(f"--model.sampler: {e}") from None

    def check_sweep(self) -> None:
        """A scale sweep must sweep something: under the data-consistency rule only relative quality weights
        depend on the scale."""
        sampler = self.make_sampler(self.settings.scale_list()[0])
        if len(self.settings.scale_list()) < 2 or any(q.relative for q in self.quality):
            return
        if sampler.proximal:
            raise ConfigError(
                "--model.sampler.scales: this task's data term is the exact data-consistency step (guidance "
                f"{self.settings.guidance!r}), which has no scale, so every scale would give the same images; "
                "set --model.sampler.guidance gradient to sweep GDP's scale"
            )

    def seeds_for(self, indices: Sequence[int]) -> List[int]:
        """Image i's sampler seed: a function of (seed, i) only."""
        return [stream_seed(self.seed, i, SAMPLER) for i in indices]

    # ---------------------------------------------------------------- one batch
    def restore_or_fail(self, batch: Dict[str, Any], stage: str = "predict", batch_idx: int = 0,
                        on_step: Optional[StepHook] = None) -> BatchResult:
        """:meth:`restore`, where a problem of these inputs (an :class:`InputError`: kernels of different sizes in
        one batch, ...) fails them alone: they are recorded as failed and the run goes on."""
        try:
            return self.restore(batch, stage, batch_idx, on_step)
        except InputError as e:
            reason = " ".join(str(e).split())
            paths = batch.get("path", [None] * len(batch["name"]))
            failed = batch_failures(batch) + [InputFailure(n, int(i), p, reason)
                                              for n, i, p in zip(batch["name"], batch["index"], paths)]
            return BatchResult(stage, [], failed)

    def restore(self, batch: Dict[str, Any], stage: str = "predict", batch_idx: int = 0,
                on_step: Optional[StepHook] = None) -> BatchResult:
        """Restore one batch at every scale."""
        names = list(batch["name"])
        if not names:  # the empty batch of a process with nothing to do (see ShardSampler), or all failed
            return BatchResult(stage, [], batch_failures(batch))
        indices = [int(i) for i in batch["index"]]
        y = self._observation(batch)
        oh, ow = y.shape[-2:]
        pad = self._padding(oh, ow, names[0])
        if any(pad):
            y = F.pad(y, (0, pad[1], 0, pad[0]), mode="replicate")
        self._side_inputs(batch, pad, (oh, ow))
        with torch.no_grad():
            restricted = self.degradation.restrict_observation(y)
        y = y if restricted is None else restricted
        base_h, base_w = self.degradation.input_size(oh, ow)
        seeds = self.seeds_for(indices)
        labels = self.labels.for_images(names, seeds, self.device)
        gt = batch.get("x")
        gt = None if gt is None else gt.to(self.device, torch.float32)
        # synthetic: the restoration has the clean image's size (SR×4 of 66 rows: 17, not 68), plus any padding
        out_h, out_w = (base_h, base_w) if gt is None else gt.shape[-2:]
        full_h, full_w = self.degradation.input_size(oh + pad[0], ow + pad[1])
        size = (full_h - base_h + out_h, full_w - base_w + out_w)
        scales = self.settings.scale_list()
        # gray inputs give gray outputs, except where the operator expects gray observations (colorization)
        colorizes = self.degradation.gray_observations
        gray_out = [m in ("L", "LA") and not colorizes for m in batch.get("mode", ["RGB"] * len(names))]
        items = [ImageResult(n, i, s, p, b, a, g) for n, i, s, p, b, a, g in zip(
            names, indices, seeds, batch.get("path", [None] * len(names)), batch.get("bits", [8] * len(names)),
            batch.get("alpha", [None] * len(names)), gray_out)]
        if labels is not None:  # a class-conditional prior: the class each image was restored as
            for item, label in zip(items, labels.tolist()):
                item.label = label
        blind_spot: Optional[List[bool]] = None
        for scale, suffix in zip(scales, self.settings.scale_suffixes()):
            context = StepContext(stage, batch_idx, names, indices, scale, len(scales) > 1, time.monotonic(),
                                  tuple(size))
            result, retries, used, spread = self._restore_samples(y, seeds, labels, scale, context, on_step)
            full = to_8bit(result.images)
            if any(gray_out):  # metrics of what the file holds: one channel, the mean of the three
                gray = torch.tensor(gray_out, device=full.device)[:, None, None, None]
                full = torch.where(gray, to_8bit(result.images.mean(1, keepdim=True)).expand_as(full), full)
            with torch.no_grad():
                ax = self._operator(full)[..., :oh, :ow]
            if blind_spot is None:  # once a batch, after the sampler set φ up: pixels the operator never observes
                blind_spot = self._blind_spot(full, oh, ow, names)
            low = y[:, :3, :oh, :ow] if (out_h, out_w) == (oh, ow) else None
            kept = self.settings.on_divergence == "keep"
            keep = [b for b, d in enumerate(result.diverged) if d is None or kept]  # diverged: not scored
            values: Dict[str, torch.Tensor] = {}
            if self.metrics is not None and keep:
                pick = lambda v: None if v is None else v[keep]  # noqa: E731
                scored = self.metrics.per_image(full[keep][..., :out_h, :out_w], gt=pick(gt), ax=ax[keep],
                                                y=y[keep][..., :oh, :ow], low=pick(low), group=suffix)
                values = {k: torch.full((len(items),), float("nan"), dtype=v.dtype).index_copy_(
                    0, torch.tensor(keep), v) for k, v in scored.items()}
            restored = result.images[..., :out_h, :out_w]  # full precision: 16-bit outputs keep it
            phi = result.phi
            if any(pad):  # per-pixel φ (an illumination map M) was made at the padded size: crop it as the image
                padded = tuple(result.images.shape[-2:])
                phi = {k: v[..., :out_h, :out_w] if v.ndim >= 2 and tuple(v.shape[-2:]) == padded else v
                       for k, v in phi.items()}
            blind = any(k.split(".")[-1].startswith("kernel") for k in self.degradation.learnable_parameters())
            kernel_scores = blind_kernel_scores(phi, batch.get("true_kernel") if blind else None, len(items))
            for b, item in enumerate(items):
                entry = ScaleResult(
                    scale=scale,
                    image=restored[b].cpu(),
                    phi={k: v[b] if v.shape[0] == len(items) else v[0] for k, v in phi.items()},
                    losses={k: float(v[b]) for k, v in result.losses.items()},
                    metrics={**{k: float(v[b]) for k, v in values.items()
                                if not (blind_spot[b] and k.startswith("consistency"))}, **kernel_scores[b]},
                    steps=self.diffusion.num_timesteps,
                )
                if spread is not None:  # posterior samples: their spread, and each sample when asked
                    entry.std = spread["std"][b][..., :out_h, :out_w].cpu()
                    if self.settings.save_samples:
                        entry.samples = spread["samples"][b][..., :out_h, :out_w].cpu()
                if retries[b]:
                    entry.retries, entry.scale_used = retries[b], used[b]
                if result.diverged[b] is not None:  # the record says where it went wrong
                    entry.diverged_step = result.diverged[b]
                    if not kept:  # no output
                        entry.image, entry.metrics = None, {}
                item.results.append(entry)
        return BatchResult(stage, items, batch_failures(batch))

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

    def _side_inputs(self, batch: Dict[str, Any], pad: Tuple[int, int], size: Tuple[int, int]) -> None:
        """The batch's side files (``mask``, ``kernel``) go to the operator; a kernel not given is the configured
        one; maps of the observation's size are padded as it was (with zeros: not observed)."""
        inputs: Dict[str, Any] = {}
        for kind in ("mask", "kernel"):
            value = batch.get(kind)
            given = value is not None and (torch.is_tensor(value) or any(v is not None for v in value))
            if given and not self.degradation.takes(kind):
                raise InputError(f"{batch['name'][0]}: a {kind} file was given but the task's operator takes no "
                                 f"{kind}")
            if torch.is_tensor(value):
                value = value.to(self.device, torch.float32)
                if any(pad) and tuple(value.shape[-2:]) == tuple(size):
                    value = F.pad(value, (0, pad[1], 0, pad[0]), value=0.0)
            if given:
                inputs[kind] = value if torch.is_tensor(value) else [
                    None if v is None else torch.as_tensor(v, dtype=torch.float32) for v in value]
            elif self.degradation.takes(kind) and kind == "kernel":
                inputs[kind] = None  # back to the configured kernel after a batch with kernel files
        try:
            self.degradation.set_inputs(**inputs)
        except ValueError as e:
            raise InputError(f"{batch['name'][0]}: {e}; use --data.batch_size 1") from None

    def _padding(self, oh: int, ow: int, name: str) -> Tuple[int, int]:
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

    def _operator(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) with the φ the sampler left: with ``num_samples`` K above 1 it holds one φ per sample, so each
        image goes through its K samples' operators and the results are averaged (one operator for a known one)."""
        k = self.settings.num_samples
        if k == 1:
            return self.degradation(x)
        out = self.degradation(x.repeat_interleave(k, 0))
        return out.reshape(x.shape[0], k, *out.shape[1:]).mean(1)

    def _blind_spot(self, full: torch.Tensor, oh: int, ow: int, names: Sequence[str]) -> List[bool]:
        """Per image: whether its operator observes no pixel (an all-black mask). Its output is the prior's
        invention and gets no consistency score; a warning says so."""
        with torch.no_grad():
            blind = (self._operator(torch.ones_like(full))[..., :oh, :ow] == 0).flatten(1).all(1).tolist()
        unseen = [n for n, b in zip(names, blind) if b]
        if unseen:
            warn(f"{', '.join(unseen[:3])}{' and more' if len(unseen) > 3 else ''}: the mask observes no pixel; "
                 "the output is the prior's invention and gets no consistency score")
        return blind

    def _restore_samples(self, y: torch.Tensor, seeds: List[int], labels: Optional[torch.Tensor], scale: float,
                         context: StepContext, on_step: Optional[StepHook]) -> tuple:
        """:meth:`_restore_with_retries`; with ``num_samples`` K above 1, K samples of every image in one batch
        (sample j of image i seeded by ``sample_seed(seed_i, j)``), combined: the image is the mean of the samples
        that did not diverge (all of them with ``on_divergence: keep``), φ and the losses their means; an image
        diverged when all its samples did. Returns the result, retries and scales per image, and the samples'
        ``{"std": (N, C, H, W), "samples": (N, K, C, H, W)}`` (``None`` for one sample)."""
        k = self.settings.num_samples
        if k == 1:
            return (*self._restore_with_retries(y, seeds, labels, scale, context, on_step), None)
        n = y.shape[0]
        many = [sample_seed(s, j) for s in seeds for j in range(k)]
        context = dataclasses.replace(context, names=[f"{name}/sample{j}" for name in context.names for j in range(k)],
                                      indices=[i for i in context.indices for _ in range(k)])
        result, retries, used = self._restore_with_retries(
            y.repeat_interleave(k, 0), many, None if labels is None else labels.repeat_interleave(k, 0), scale,
            context, on_step)
        samples = result.images.reshape(n, k, *result.images.shape[1:])
        kept = self.settings.on_divergence == "keep"
        ok = torch.tensor([d is None or kept for d in result.diverged], device=samples.device).reshape(n, k)
        weights = ok.to(samples.dtype) / ok.sum(1, keepdim=True).clamp_min(1).to(samples.dtype)
        w = weights.reshape(n, k, *([1] * (samples.ndim - 2)))
        mean = (samples * w).sum(1)
        std = ((samples - mean[:, None]) ** 2 * w).sum(1).sqrt()

        def per_image(v: torch.Tensor) -> torch.Tensor:
            if v.ndim == 0 or v.shape[0] != n * k:  # shared by the batch
                return v
            grouped = v.reshape(n, k, *v.shape[1:])
            return (grouped * weights.to(v.device, v.dtype).reshape(n, k, *([1] * (v.ndim - 1)))).sum(1)

        diverged = [next((d for d in result.diverged[i * k:(i + 1) * k] if d is not None), None)
                    if not bool(ok[i].any()) else None for i in range(n)]
        combined = GDPResult(images=mean, phi={key: per_image(v) for key, v in result.phi.items()},
                             losses={key: per_image(v) for key, v in result.losses.items()},
                             trajectory=result.trajectory, diverged=diverged)
        grouped_retries = [max(retries[i * k:(i + 1) * k]) for i in range(n)]
        grouped_used = [min(used[i * k:(i + 1) * k]) for i in range(n)]
        return combined, grouped_retries, grouped_used, {"std": std, "samples": samples}

    def _restore_with_retries(self, y: torch.Tensor, seeds: List[int], labels: Optional[torch.Tensor], scale: float,
                              context: StepContext, on_step: Optional[StepHook]) -> tuple:
        """Restore the batch at ``scale``; with ``on_divergence: retry``, restore the diverged images again at half
        the scale (the whole batch runs, the others' results are kept: each image's result depends on its seed
        only), up to ``max_retries`` times. Returns the result and, per image, its retries and the scale used."""
        n = y.shape[0]
        hook = None if on_step is None else (lambda info: on_step(info, context))
        result = self.make_sampler(scale).restore(y, seeds=seeds, labels=labels, image_size=context.size,
                                                  on_step=hook)
        retries, used = [0] * n, [scale] * n
        attempt, current = 0, scale
        while self.settings.on_divergence == "retry" and attempt < self.settings.max_retries:
            redo = [b for b, d in enumerate(result.diverged) if d is not None]
            if not redo:
                break
            attempt, current = attempt + 1, current / 2
            again = self.make_sampler(current).restore(y, seeds=seeds, labels=labels, image_size=context.size)
            result = merge_results(result, again, redo)
            for b in redo:
                retries[b], used[b] = attempt, current
        return result, retries, used


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
