"""The synthetic benchmark protocol: clean crops, 8-bit observations, metrics on 8-bit outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import psnr  # noqa: F401 - PSNR per image of the 8-bit values, re-exported for the protocol
from .metrics import to_8bit as quantize

__all__ = ["skimage_crops", "quantize", "psnr", "observe", "save_columns", "SKIMAGE_PHOTOS", "LINEAR_TASKS"]

#: the linear tasks of ``configs/task`` and the options the benchmarks restore them with (``build_module``
#: options: inpainting with 25 % of the pixels missing, drawn per image)
LINEAR_TASKS = {"sr4": {}, "deblur": {}, "inpaint": {"degradation": {"init_args": {"mask": "random:0.25"}}},
                "colorize": {}}

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


def observe(operator, clean: torch.Tensor) -> torch.Tensor:
    """The 8-bit observation ``operator`` makes of clean ``(N, 3, H, W)`` images in [0, 1] (its per-image
    parameters, such as random masks, set up for them first)."""
    operator.init_parameters(len(clean), *clean.shape[-2:])
    return quantize(operator(clean).clamp(0, 1))


def save_columns(columns, path, zoom: int = 2, gap: int = 2) -> None:
    """A PNG of images in columns (a list of columns, each a list of ``(3, H, W)`` images of one size in [0, 1]),
    on white with ``gap`` pixels between them, enlarged ``zoom`` times by pixel repetition."""
    from torchvision.utils import make_grid, save_image

    rows = len(columns[0])
    images = torch.stack([columns[c][r] for r in range(rows) for c in range(len(columns))]).clamp(0, 1)
    grid = make_grid(images, nrow=len(columns), padding=gap, pad_value=1.0)[:, gap:-gap, gap:-gap]
    save_image(F.interpolate(grid[None], scale_factor=zoom, mode="nearest")[0], path)
