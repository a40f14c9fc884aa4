"""How the degradation parameters φ move at each diffusion step (:class:`PhiUpdate`): ``phi_steps`` optimiser steps
(Adam, or SGD whose lr 1 is the official update) on φ's data term plus its regularisation, or the operator's own
least-squares solve (``lstsq``), from ``phi_start`` of the steps on."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..degradations import Degradation
from ..ranges import to_image
from .settings import SamplerOptions

__all__ = ["PhiUpdate"]


class PhiUpdate:
    """φ's update for one sampler.

    :param degradation: the operator whose learnable φ move.
    :param data_terms: the per-image data term D_b of an image in [-1, 1] and the observation.
    :param options: the sampler's options (``phi_*`` and ``scale_convention``).
    :param tile_size: the prior's tile side (the paper convention's per-tile step of per-pixel maps).
    """

    def __init__(self, degradation: Degradation, data_terms: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 options: SamplerOptions, tile_size: Optional[int]):
        self.degradation, self.data_terms = degradation, data_terms
        self.method, self.lr, self.steps = options.phi_optimizer, options.phi_lr, options.phi_steps
        self.start, self.scale_convention, self.tile_size = float(options.phi_start), options.scale_convention, tile_size

    def __call__(self, image: torch.Tensor, y: torch.Tensor, optimizer: Optional[torch.optim.Optimizer],
                 progress: float = 1.0) -> None:
        """``phi_steps`` optimiser steps of φ on its data term plus its regularisation (image detached), or its
        least-squares solver (``lstsq``); none before ``phi_start`` (``progress``: the fraction of the steps done)."""
        if progress < self.start:
            return
        if self.method == "lstsq":
            if self.degradation.learnable_parameters():
                self.degradation.fit_parameters(to_image(image.detach()).clamp(0, 1), y)
            return
        if optimizer is None:
            return
        image = image.detach()
        for _ in range(self.steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                objective = self.data_terms(image, y).sum()
                reg = self.degradation.regularization()
                if reg is not None:
                    objective = objective + reg.sum()
                objective.backward()
            self._official_map_step(y)
            optimizer.step()

    def _official_map_step(self, y: torch.Tensor) -> None:
        """Paper convention: the official code takes φ's step on the mean data term of each prior-size tile, so a
        per-pixel map (an illumination M) moves by the tile's mean, not the whole image's: its gradient is
        multiplied by (pixels of y) / (pixels of a tile), at least 1. Scalars (f, a kernel) are unchanged (the mean
        over the image is the mean of the tiles' means)."""
        if self.scale_convention != "paper" or not self.tile_size:
            return
        pixels = y.shape[-2] * y.shape[-1]
        factor = max(pixels / float(self.tile_size) ** 2, 1.0)
        if factor == 1.0:
            return
        for p in self.degradation.learnable_parameters().values():
            if p.grad is not None and p.ndim >= 2 and tuple(p.shape[-2:]) == tuple(y.shape[-2:]):
                p.grad.mul_(factor)

    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        """The optimiser of this batch's φ (``None``: nothing to optimise, or the least-squares solve)."""
        params = list(self.degradation.learnable_parameters().values())
        if not params or self.steps == 0 or self.method == "lstsq":
            return None
        if self.method == "sgd":
            return torch.optim.SGD(params, lr=self.lr)
        return torch.optim.Adam(params, lr=self.lr)
