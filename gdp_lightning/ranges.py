"""The two value ranges of the project and the one way between them.

Images, observations, φ maps and everything a user sees are in [0, 1]; the diffusion prior works in [-1, 1]
(guided-diffusion's convention). Every conversion goes through these two functions, written so that results are
bit-identical to ``x * 2 - 1`` and ``(x + 1) / 2``.
"""

from __future__ import annotations

import torch

__all__ = ["to_model", "to_image"]


def to_model(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] → the prior's [-1, 1]."""
    return image * 2 - 1


def to_image(x: torch.Tensor) -> torch.Tensor:
    """The prior's [-1, 1] → [0, 1] (not clamped)."""
    return (x + 1) / 2
