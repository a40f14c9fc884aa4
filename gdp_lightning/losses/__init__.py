"""Losses of the GDP guidance: reconstruction distances and the quality losses of the paper.

Every loss returns one value per image, shape ``(N,)``; the sampler sums over the batch.
Quality losses (Zero-DCE, Guo et al. 2020, as GDP uses them) take images in [0, 1] unless their
``value_range`` says ``"[-1,1]"`` (the official colorization evaluates colour constancy on x̃0 in
[-1, 1]).
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..ranges import to_image

__all__ = [
    "RECONSTRUCTION",
    "mse",
    "l1",
    "ExposureControl",
    "ColorConstancy",
    "IlluminationSmoothness",
    "QualityLoss",
    "total_variation",
]


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over channels and pixels, per image."""
    return (prediction - target).pow(2).flatten(1).mean(1)


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over channels and pixels, per image."""
    return (prediction - target).abs().flatten(1).mean(1)


RECONSTRUCTION: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mse": mse, "l1": l1}


class QualityLoss(nn.Module):
    """A no-reference loss on the restored image.

    :param value_range: the range of the values it is computed on: ``"[0,1]"`` (x̃0 mapped to [0, 1]) or
        ``"[-1,1]"`` (x̃0 itself).
    """

    def __init__(self, value_range: str = "[0,1]"):
        super().__init__()
        if value_range not in ("[0,1]", "[-1,1]"):
            raise ValueError(f"value_range must be '[0,1]' or '[-1,1]', got {value_range!r}")
        self.value_range = value_range

    def prepare(self, x0: torch.Tensor) -> torch.Tensor:
        """x̃0 in [-1, 1] to the values this loss acts on."""
        return to_image(x0) if self.value_range == "[0,1]" else x0


def total_variation(m: torch.Tensor) -> torch.Tensor:
    """GDP's illumination smoothness, per image: 2·(mean squared vertical + mean squared horizontal
    difference) of each map, summed over maps; ``m`` is ``(N, K, H, W)``, the result ``(N,)``."""
    h, w = m.shape[-2:]
    tv = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
    if h > 1:
        tv = tv + (m[..., 1:, :] - m[..., :-1, :]).pow(2).flatten(1).sum(1) / ((h - 1) * w)
    if w > 1:
        tv = tv + (m[..., :, 1:] - m[..., :, :-1]).pow(2).flatten(1).sum(1) / (h * (w - 1))
    return 2 * tv


class ExposureControl(QualityLoss):
    """Zero-DCE exposure control: mean squared distance of the mean gray level of each
    ``patch_size × patch_size`` patch to the well-exposedness level ``target`` (0.6 in Zero-DCE;
    the official GDP HDR script uses patch 8 and 0.3 on [-1, 1] values)."""

    def __init__(self, patch_size: int = 16, target: float = 0.6, value_range: str = "[0,1]"):
        super().__init__(value_range)
        self.patch_size, self.target = int(patch_size), float(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.mean(1, keepdim=True)
        k = min(self.patch_size, gray.shape[-2], gray.shape[-1])
        return (F.avg_pool2d(gray, k) - self.target).pow(2).flatten(1).mean(1)


class ColorConstancy(QualityLoss):
    """Zero-DCE colour constancy: sqrt((μr−μg)⁴ + (μr−μb)⁴ + (μg−μb)⁴) of the channel means.

    ``eps`` inside the square root keeps the gradient finite where the channel means are equal (the
    official form's gradient is infinite there, and its colorization loop returns NaN for gray images).
    """

    def __init__(self, eps: float = 1e-20, value_range: str = "[0,1]"):
        super().__init__(value_range)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3))
        d_rg = (m[:, 0] - m[:, 1]).pow(2)
        d_rb = (m[:, 0] - m[:, 2]).pow(2)
        d_gb = (m[:, 2] - m[:, 1]).pow(2)
        return torch.sqrt(d_rg.pow(2) + d_rb.pow(2) + d_gb.pow(2) + self.eps)


class IlluminationSmoothness(nn.Module):
    """The paper's illumination smoothness: total variation of an illumination map, per image
    (used by :class:`~gdp_lightning.degradations.LowLight` through its ``smoothness`` weight)."""

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return total_variation(m)
