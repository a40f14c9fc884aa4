"""Inpainting: y = m ⊙ x with a mask m (1 = observed, 0 = missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from .base import Degradation
from .masks import load_mask

__all__ = ["Inpainting"]


class Inpainting(Degradation):
    """Keep the observed pixels.

    :param mask: ``(H, W)`` (every image and channel), ``(N, 1 or C, H, W)`` (per image), or the path of a
        mask file (see :func:`.masks.load_mask`: ``.npy`` of the GDP/DDRM protocol, PNG white = observed).
    """

    linear = True

    def __init__(self, mask: Union[torch.Tensor, str, Path]):
        super().__init__()
        self.register_buffer("mask", self._as_mask(mask), persistent=False)

    @staticmethod
    def _as_mask(mask) -> torch.Tensor:
        if isinstance(mask, (str, Path)):
            mask = load_mask(mask)
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.ndim == 2:
            mask = mask[None, None]
        if mask.ndim != 4:
            raise ValueError(f"an inpainting mask must be (H, W) or (N, C, H, W), got shape {tuple(mask.shape)}")
        return mask

    def set_mask(self, mask: Union[torch.Tensor, str, Path]) -> None:
        """Replace the mask (e.g. one per image of the next batch)."""
        self.mask = self._as_mask(mask).to(self.mask.device)

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-2:]) != tuple(self.mask.shape[-2:]):
            raise ValueError(
                f"the inpainting mask is {self.mask.shape[-2]}x{self.mask.shape[-1]} but the image is "
                f"{x.shape[-2]}x{x.shape[-1]}; give a mask of the image's size"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x * self.mask.to(x.dtype)

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return self(y)

    def observed_fraction(self) -> float:
        return float(self.mask.mean())

    def _phi_tensors(self) -> Dict[str, torch.Tensor]:
        return {}

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}, observed={self.observed_fraction():.3f}"
