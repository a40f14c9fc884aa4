"""Labelled side-by-side pictures for judging a restoration at a glance (no Lightning): input | output | ground
truth | error or uncertainty, each tile with its label above it."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["panel", "restoration_panel", "kernel_panel", "stack", "std_map", "LABEL_HEIGHT", "MAP_GAIN", "MIN_SIDE"]

LABEL_HEIGHT = 14
#: panels show images smaller than this many pixels a side enlarged (nearest) by a whole factor
MIN_SIDE = 128
#: error and standard-deviation maps are shown times this gain (white: 0.25 or more on the [0, 1] scale), in
#: TensorBoard and in ``<name>.std.png``
MAP_GAIN = 4.0


def std_map(std: torch.Tensor) -> torch.Tensor:
    """The samples' standard deviation ``(C, H, W)`` as one gray map: its mean over the channels times
    :data:`MAP_GAIN`, clamped to [0, 1]."""
    return (std.float().mean(0, keepdim=True) * MAP_GAIN).clamp(0, 1)


def _rgb(image: torch.Tensor) -> torch.Tensor:
    image = image.detach().float().cpu().clamp(0, 1)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def _resize(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    larger = size[0] >= image.shape[-2]
    return F.interpolate(image[None], size=size, mode="nearest" if larger else "area")[0]


def panel(tiles: Sequence[Tuple[str, torch.Tensor]], max_side: int = 512, min_side: int = MIN_SIDE) -> torch.Tensor:
    """Tiles ``(label, (C, H, W) in [0, 1])`` side by side at the first tile's size (at most ``max_side`` pixels a
    side; a smaller image enlarged by a whole factor to at least ``min_side``, pixels as blocks), 2 pixels apart,
    each under a band with its label; ``(3, H + LABEL_HEIGHT, W)`` in [0, 1]."""
    from PIL import Image, ImageDraw

    height, width = tiles[0][1].shape[-2:]
    longest = max(height, width)
    factor = min(1.0, max_side / longest) if longest >= min_side else float(math.ceil(min_side / longest))
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    gap = 2
    total = len(tiles) * size[1] + gap * (len(tiles) - 1)
    canvas = torch.zeros(3, size[0] + LABEL_HEIGHT, total)
    for k, (_, image) in enumerate(tiles):
        left = k * (size[1] + gap)
        canvas[:, LABEL_HEIGHT:, left:left + size[1]] = _resize(_rgb(image), size)
    picture = Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for k, (label, _) in enumerate(tiles):
        draw.text((k * (size[1] + gap) + 2, 1), label, fill=(255, 255, 0))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255


def restoration_panel(observation: torch.Tensor, output: torch.Tensor, truth: Optional[torch.Tensor] = None,
                      std: Optional[torch.Tensor] = None, max_side: int = 512) -> torch.Tensor:
    """input (the observation's first three channels, enlarged to the output's size) | output | ground truth (when
    known) | the samples' standard deviation (``num_samples``) or else the absolute error (when the truth is known),
    both times :data:`MAP_GAIN`, averaged over the channels."""
    tiles: List[Tuple[str, torch.Tensor]] = [("input", _resize(_rgb(observation), tuple(output.shape[-2:]))),
                                             ("output", output)]
    if truth is not None:
        tiles.append(("ground truth", truth))
    if std is not None:
        tiles.append((f"std x{MAP_GAIN:g}", std_map(std)))
    elif truth is not None:
        error = (_rgb(output) - _rgb(truth)).abs().mean(0, keepdim=True)
        tiles.append((f"|error| x{MAP_GAIN:g}", (error * MAP_GAIN).clamp(0, 1)))
    return panel(tiles, max_side)


def kernel_panel(learned: torch.Tensor, true: Optional[torch.Tensor] = None, side: int = 96) -> torch.Tensor:
    """A learned blur kernel beside the true one (when known), each scaled to its own maximum (white) and enlarged
    to ``side`` pixels (nearest: one block per kernel entry)."""
    def picture(kernel: torch.Tensor) -> torch.Tensor:
        k = kernel.detach().float().cpu().reshape(-1, *kernel.shape[-2:])[0]
        k = k / k.max().clamp_min(1e-12)
        return F.interpolate(k[None, None], size=(side, side), mode="nearest")[0]

    tiles = [("learned", picture(learned))]
    if true is not None:
        tiles.append(("true", picture(torch.as_tensor(true))))
    return panel(tiles, max_side=side, min_side=side)


def stack(panels: Sequence[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """Panels one above the other, ``gap`` pixels apart (left-aligned; black where one is narrower)."""
    width = max(p.shape[-1] for p in panels)
    height = sum(p.shape[-2] for p in panels) + gap * (len(panels) - 1)
    canvas = torch.zeros(3, height, width)
    top = 0
    for p in panels:
        canvas[:, top:top + p.shape[-2], :p.shape[-1]] = p
        top += p.shape[-2] + gap
    return canvas
