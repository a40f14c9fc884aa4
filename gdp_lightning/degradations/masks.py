"""Inpainting masks: 1 = observed pixel, 0 = missing. Float32 ``(H, W)`` tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import InputError, warn
from .files import read_array

__all__ = ["random_mask", "box_mask", "load_mask", "permutation_mask"]


def random_mask(
    height: int, width: int, missing: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Exactly ``round(missing · H · W)`` pixels missing, chosen uniformly (the same pixels in every channel)."""
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"the missing fraction must be in [0, 1], got {missing}")
    n = height * width
    order = torch.randperm(n, generator=generator)
    mask = torch.ones(n)
    mask[order[: round(missing * n)]] = 0
    return mask.reshape(height, width)


def box_mask(height: int, width: int, top: int, left: int, box_height: int, box_width: int) -> torch.Tensor:
    """A missing rectangle (clipped to the image)."""
    mask = torch.ones(height, width)
    mask[max(top, 0) : max(top + box_height, 0), max(left, 0) : max(left + box_width, 0)] = 0
    return mask


def permutation_mask(path: Union[str, Path], missing: float = 0.25, size: int = 256) -> torch.Tensor:
    """The GDP/DDRM random-inpainting protocol: the first ``missing`` fraction of a stored permutation of the
    ``size × size`` flat pixel indices are missing (``random_permutation_256.txt``: 25 %, 16384 pixels)."""
    return _mask_from_permutation(_read_permutation(Path(path)), Path(path), missing, size)


def _read_permutation(path: Path) -> np.ndarray:
    try:
        return np.loadtxt(path).astype(np.int64).reshape(-1)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read a pixel permutation ({e})") from None


def _mask_from_permutation(order: np.ndarray, path: Path, missing: float, size: int) -> torch.Tensor:
    if sorted(order.tolist()) != list(range(size * size)):
        raise InputError(f"{path}: not a permutation of 0..{size * size - 1}")
    mask = torch.ones(size * size)
    mask[torch.from_numpy(order[: round(missing * size * size)])] = 0
    return mask.reshape(size, size)


PERMUTATION_SUFFIXES = (".txt", ".np")


def load_mask(path: Union[str, Path]) -> torch.Tensor:
    """A mask from ``.npy`` (non-zero = observed, as the GDP/DDRM protocol masks), ``.pt``, an image
    (white = observed, black = missing; a colour image is averaged, an alpha channel ignored), or a text file of a
    pixel permutation (``.txt`` or ``.np``: the official GDP ``inp_masks/mask.np`` and DDRM's
    ``random_permutation_256.txt``, one flat index per line): its first quarter are the missing pixels, the
    protocol's 25 % (see :func:`permutation_mask`)."""
    path = Path(path)
    if path.suffix.lower() in PERMUTATION_SUFFIXES:
        if not path.is_file():
            raise InputError(f"{path}: no such mask file")
        order = _read_permutation(path)
        side = int(round(order.size**0.5))
        if side * side != order.size:
            raise InputError(f"{path}: a permutation mask needs H·W = side² indices, one per line; got {order.size} lines")
        return _mask_from_permutation(order, path, 0.25, side)
    m = read_array(path, "an inpainting mask", "mask", dtype=torch.float32, image_mode="L", image_scale=1 / 255.0)
    if m.ndim == 3:  # channels first or last: observed where the mean is at least half
        m = m.mean(0 if m.shape[0] <= 4 else -1)
    if m.ndim != 2:
        raise InputError(f"{path}: an inpainting mask must be 2-D, got shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise InputError(f"{path}: the inpainting mask holds NaN or infinite values")
    fraction = m.max() <= 1
    mask = (m >= 0.5 if fraction else m > 0).float()
    if fraction:
        between = int(((m > 0) & (m < 1)).sum())
        if between:
            warn(f"{path}: the mask is not black and white ({between} of {m.numel()} pixels in between); pixels at "
                 "least half white count as observed")
    if not bool(mask.any()):
        warn(f"{path}: the mask observes no pixel (all black: white = observed); the restoration will be the "
             "prior's invention")
    return mask
