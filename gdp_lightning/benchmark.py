"""The synthetic benchmark protocol: clean crops, 8-bit observations, metrics on 8-bit outputs."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .metrics import psnr, ssim  # noqa: F401 - PSNR and SSIM per image of the 8-bit values, for the protocol
from .metrics import to_8bit as quantize

__all__ = ["skimage_crops", "quantize", "psnr", "ssim", "observe", "restore_crops", "save_columns", "SKIMAGE_PHOTOS",
           "LINEAR_TASKS", "GRADIENT_SCALES"]

#: the linear tasks of ``configs/task`` and the options the benchmarks restore them with (``build_module``
#: options: inpainting with 25 % of the pixels missing, drawn per image)
LINEAR_TASKS = {"sr4": {}, "deblur": {}, "inpaint": {"degradation": {"init_args": {"mask": "random:0.25"}}},
                "colorize": {}}

#: the scales (paper convention) the linear tasks shipped with under GDP's gradient rule, before the data-consistency
#: rule became their default: the benchmarks' ``guidance: gradient`` comparisons
GRADIENT_SCALES = {"sr4": 8000.0, "deblur": 24000.0, "inpaint": 16000.0, "colorize": 10000.0}

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


def restore_crops(task: str, weights, clean: torch.Tensor, *, steps: int, samples: int = 1,
                  observation: Optional[torch.Tensor] = None, preset: str = "skimage64",
                  prepare: Optional[Callable] = None, **sampler):
    """``(restored, observation)``: clean ``(N, 3, H, W)`` crops observed by the linear task ``task`` of
    :data:`LINEAR_TASKS` (8 bits; or the ``observation`` given) and restored in one batch with the prior ``preset``
    holding ``weights``, at ``steps`` steps, the mean of ``samples`` posterior samples, as 8-bit values; a diverged
    restoration is kept (and scored). Further ``sampler`` options override the task's; ``prepare(module)`` is
    called on the :class:`~gdp_lightning.module.GDPModule` before it restores."""
    from .api import build_module, restore
    from .resources import keep_freed_memory

    keep_freed_memory()
    module = build_module(task, preset, weights, progress=False,
                          sampler={"steps": str(steps), "on_divergence": "keep", "num_samples": samples, **sampler},
                          **LINEAR_TASKS[task])
    if prepare is not None:
        prepare(module)
    if observation is None:
        observation = observe(module.degradation, clean)
    out = restore(observation, task, module=module, details=True)
    return quantize(torch.stack([r["image"] for r in out])), observation


def save_columns(columns, path, zoom: int = 2, gap: int = 2) -> None:
    """A PNG of images in columns (a list of columns, each a list of ``(3, H, W)`` images of one size in [0, 1]),
    on white with ``gap`` pixels between them, enlarged ``zoom`` times by pixel repetition."""
    from torchvision.utils import make_grid, save_image

    rows = len(columns[0])
    images = torch.stack([columns[c][r] for r in range(rows) for c in range(len(columns))]).clamp(0, 1)
    grid = make_grid(images, nrow=len(columns), padding=gap, pad_value=1.0)[:, gap:-gap, gap:-gap]
    save_image(F.interpolate(grid[None], scale_factor=zoom, mode="nearest")[0], path)
