"""The synthetic benchmark protocol: clean crops, 8-bit observations, metrics on 8-bit outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import psnr  # noqa: F401 - PSNR per image of the 8-bit values, re-exported for the protocol
from .metrics import to_8bit as quantize

__all__ = ["skimage_crops", "quantize", "psnr", "SKIMAGE_PHOTOS"]

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def skimage_crops(n: int = 4, size: int = 64, scale: float = 0.25, seed: int = 0) -> torch.Tensor:
    """``n`` random ``size × size`` crops of scikit-image's colour photos (cycled), each photo first downscaled by
    ``scale`` (bicubic, antialiased), as 8-bit values in [0, 1]. Needs scikit-image."""
    from skimage import data

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = torch.from_numpy(getattr(data, SKIMAGE_PHOTOS[i % len(SKIMAGE_PHOTOS)])())
        img = img.permute(2, 0, 1).float()[None] / 255
        img = F.interpolate(img, scale_factor=scale, mode="bicubic", antialias=True, align_corners=False)
        top = int(torch.randint(0, img.shape[-2] - size + 1, (1,), generator=g))
        left = int(torch.randint(0, img.shape[-1] - size + 1, (1,), generator=g))
        out.append(img[..., top : top + size, left : left + size])
    return quantize(torch.cat(out))
