"""Inpainting: y = m ⊙ x with a mask m (1 = observed, 0 = missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from ..errors import InputError
from .base import Degradation
from .masks import box_mask, load_mask, random_mask

__all__ = ["Inpainting"]


SPECS = ("random:<missing fraction>[:<seed>]", "box:<missing fraction>")


class Inpainting(Degradation):
    """Keep the observed pixels.

    :param mask: ``(H, W)`` (every image and channel), ``(N, 1 or C, H, W)`` (per image), the path of a mask
        file (see :func:`.masks.load_mask`: ``.npy`` of the GDP/DDRM protocol, PNG white = observed), a spec made
        at the image's size when first used: ``"random:0.25"`` (25 % of the pixels missing, the same pixels
        for every image of a size; ``"random:0.25:7"`` another draw) or ``"box:0.25"`` (a centred missing
        square of a quarter of the area); or ``None``: every batch brings its masks (``set_inputs(mask=...)``, e.g.
        from ``<name>_mask.png`` files).
    """

    linear = True
    inputs = ("mask",)

    def __init__(self, mask: Union[str, Path, torch.Tensor, None] = None):
        super().__init__()
        self.spec: Optional[str] = None
        if isinstance(mask, str) and mask.split(":", 1)[0] in ("random", "box") and ":" in mask:
            self.spec = mask
            self._parse_spec(mask)  # fail early on a malformed spec
            mask = None
        self.register_buffer("mask", None if mask is None else self._as_mask(mask), persistent=False)

    @staticmethod
    def _parse_spec(spec: str):
        kind, *args = spec.split(":")
        try:
            missing = float(args[0])
            seed = int(args[1]) if len(args) > 1 else 0
        except (IndexError, ValueError):
            raise ValueError(f"mask {spec!r}: write it as one of {SPECS}") from None
        if not 0.0 <= missing <= 1.0:
            raise ValueError(f"mask {spec!r}: the missing fraction must be in [0, 1]")
        return kind, missing, seed

    def _mask_for(self, height: int, width: int) -> torch.Tensor:
        kind, missing, seed = self._parse_spec(self.spec)
        if kind == "random":
            return random_mask(height, width, missing, torch.Generator().manual_seed(seed))
        side_h, side_w = round(height * missing**0.5), round(width * missing**0.5)
        return box_mask(height, width, (height - side_h) // 2, (width - side_w) // 2, side_h, side_w)

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

    def _set_inputs(self, mask: Union[torch.Tensor, str, Path, None] = None) -> None:
        """``mask``: replace the mask (e.g. one per image of the next batch, from ``<name>_mask`` files)."""
        if mask is None:
            return
        device = self.mask.device if self.mask is not None else None
        self.mask = self._as_mask(mask).to(device)

    def _check(self, x: torch.Tensor) -> None:
        if self.spec is not None and (self.mask is None or tuple(self.mask.shape[-2:]) != tuple(x.shape[-2:])):
            self.mask = self._mask_for(*x.shape[-2:])[None, None].to(x.device)
        if self.mask is None:
            raise InputError(
                "inpainting has no mask: put <name>_mask.png beside each image, or give one with "
                "--model.degradation.init_args.mask FILE (or random:0.25)"
            )
        if tuple(x.shape[-2:]) != tuple(self.mask.shape[-2:]):
            raise InputError(
                f"the inpainting mask is {self.mask.shape[-2]}x{self.mask.shape[-1]} but the image is "
                f"{x.shape[-2]}x{x.shape[-1]}; give a mask of the image's size"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x * self.mask.to(x.dtype)

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return self(y)

    def restrict_observation(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        return self(y)

    def observed_fraction(self) -> float:
        return float("nan") if self.mask is None else float(self.mask.mean())

    def _phi_tensors(self) -> Dict[str, torch.Tensor]:
        return {}

    def extra_repr(self) -> str:
        if self.mask is None:
            return f"mask={self.spec or 'per batch'}"
        return f"mask={tuple(self.mask.shape)}, observed={self.observed_fraction():.3f}"
