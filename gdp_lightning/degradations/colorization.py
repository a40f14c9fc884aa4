"""Colorization: the observation is the gray level of the image."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .base import Degradation

__all__ = ["Colorization"]

WEIGHTS = {
    "mean": (1 / 3, 1 / 3, 1 / 3),  # GDP: r/3 + g/3 + b/3
    "luma": (0.299, 0.587, 0.114),  # ITU-R BT.601
}


class Colorization(Degradation):
    """y = Σ_c w_c x_c, repeated on ``channels`` channels.

    :param weights: ``"mean"`` (GDP) or ``"luma"`` (BT.601 luminance).
    :param channels: 3 (GDP: the gray image replicated, so the loss compares three equal channels) or 1.
    """

    linear = True
    gray_observations = True

    def __init__(self, weights: str = "mean", channels: int = 3):
        super().__init__()
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.weights, self.channels = weights, channels
        self.register_buffer("w", torch.tensor(WEIGHTS[weights]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError(f"colorization needs RGB images, got {x.shape[1]} channels")
        w = self.w.to(x.dtype)
        gray = w[:, 0] * x[:, 0] + w[:, 1] * x[:, 1] + w[:, 2] * x[:, 2]
        return gray[:, None].expand(-1, self.channels, -1, -1)

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return y.sum(1, keepdim=True) * self.w.to(y.dtype)

    def output_channels(self, channels: int) -> int:
        return self.channels

    def extra_repr(self) -> str:
        return f"weights={self.weights}, channels={self.channels}"
