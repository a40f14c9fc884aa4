"""Blur kernels: Gaussian (plain and GDP's), uniform, motion, and kernels read from files.

Every kernel is a float32 ``(K, K)`` tensor (or ``(Kh, Kw)``) that sums to one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from .files import read_array

__all__ = ["gaussian_kernel", "gdp_gaussian_kernel", "uniform_kernel", "motion_kernel", "load_kernel", "kernel_width",
           "kernel_error", "kernel_offset"]


def _normalized(k: torch.Tensor) -> torch.Tensor:
    return (k / k.sum()).float()


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """Sampled isotropic Gaussian of standard deviation ``sigma`` pixels on a ``size × size`` grid."""
    if size < 1 or sigma <= 0:
        raise ValueError(f"Gaussian kernel needs size >= 1 and sigma > 0, got size={size}, sigma={sigma}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return _normalized(torch.outer(g, g))


def gdp_gaussian_kernel(size: int = 9, nsig: float = 2.0) -> torch.Tensor:
    """GDP's ``gkern(size, nsig)``: the Gaussian's mass over ``size`` bins spanning ±(nsig + half a bin),
    outer product, element-wise square root, normalised (the square root is GDP's, and widens the kernel)."""
    interval = (2 * nsig + 1.0) / size
    edges = np.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, size + 1)
    cdf = np.array([0.5 * (1.0 + math.erf(e / math.sqrt(2.0))) for e in edges])
    mass = np.diff(cdf)
    raw = np.sqrt(np.outer(mass, mass))
    return _normalized(torch.from_numpy(raw / raw.sum()))


def uniform_kernel(size: int) -> torch.Tensor:
    """Box blur of ``size × size`` pixels."""
    if size < 1:
        raise ValueError(f"uniform kernel size must be >= 1, got {size}")
    return torch.full((size, size), 1.0 / size**2)


def motion_kernel(length: int, angle: float = 0.0, size: int | None = None) -> torch.Tensor:
    """Linear motion blur: a line of ``length`` pixels at ``angle`` degrees (counter-clockwise from the
    x axis), drawn with anti-aliasing on a ``size × size`` grid (default: the smallest odd size holding it)."""
    if length < 1:
        raise ValueError(f"motion length must be >= 1, got {length}")
    size = size or (length if length % 2 else length + 1)
    c = (size - 1) / 2
    theta = math.radians(angle)
    dx, dy = math.cos(theta), -math.sin(theta)
    k = torch.zeros(size, size, dtype=torch.float64)
    samples = max(8 * length, 16)
    for i in range(samples):
        s = (i / (samples - 1) - 0.5) * (length - 1)
        x, y = c + s * dx, c + s * dy
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = x - x0, y - y0
        for xi, yi, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                          (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            if 0 <= xi < size and 0 <= yi < size:
                k[yi, xi] += w
    return _normalized(k)


def load_kernel(path: Union[str, Path]) -> torch.Tensor:
    """A kernel from ``.npy``, ``.pt`` (a tensor), ``.txt``/``.csv`` (whitespace or comma separated) or an image
    (``.png``, ``.jpg``: gray levels); normalised to sum one."""
    path = Path(path)
    k = read_array(path, "a blur kernel", "kernel", dtype=torch.float64, image_mode="F", text=True)
    if k.ndim != 2 or k.numel() == 0:
        raise InputError(f"{path}: a blur kernel must be a 2-D array, got shape {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise InputError(f"{path}: the blur kernel holds NaN or infinite values; give finite, non-negative weights")
    if (k < 0).any() or k.sum() <= 0:
        raise InputError(f"{path}: a blur kernel must be non-negative with a positive sum")
    return _normalized(k)


KERNEL_SPECS = {
    "gaussian": "gaussian:<size>:<sigma>",
    "gdp": "gdp:<size>:<nsig>",
    "uniform": "uniform:<size>",
    "motion": "motion:<length>:<angle>",
}


def kernel_from_spec(spec: Union[str, Path, torch.Tensor]) -> torch.Tensor:
    """A kernel from a tensor, a named spec or a file (for configs and the command line).

    Named specs: ``"gaussian:9:2"`` (size, σ), ``"gdp:9:2"`` (GDP's ``gkern(9, nsig=2)``),
    ``"uniform:5"``, ``"motion:15:30"`` (length, angle in degrees); anything else is a file for
    :func:`load_kernel`.
    """
    if isinstance(spec, torch.Tensor):
        return spec.to(torch.float32)
    text = str(spec)
    kind, _, rest = text.partition(":")
    if kind in KERNEL_SPECS and rest:
        args = rest.split(":")
        try:
            if kind == "gaussian":
                return gaussian_kernel(int(args[0]), float(args[1]))
            if kind == "gdp":
                return gdp_gaussian_kernel(int(args[0]), float(args[1]) if len(args) > 1 else 2.0)
            if kind == "uniform":
                return uniform_kernel(int(args[0]))
            return motion_kernel(int(args[0]), float(args[1]) if len(args) > 1 else 0.0)
        except (IndexError, ValueError):
            raise ValueError(f"kernel {text!r}: write it as {KERNEL_SPECS[kind]}") from None
    return load_kernel(text).to(torch.float32)


def kernel_width(kernel: torch.Tensor) -> float:
    """The RMS radius of a kernel per axis, √((var_x + var_y) / 2) of its normalised mass: σ pixels for a Gaussian
    of standard deviation σ (when the grid holds it), whatever the grid's size."""
    k = kernel.detach().double().reshape(kernel.shape[-2:])
    k = k.clamp_min(0) / k.clamp_min(0).sum()
    rows = torch.arange(k.shape[0], dtype=torch.float64)
    cols = torch.arange(k.shape[1], dtype=torch.float64)
    py, px = k.sum(1), k.sum(0)
    var_y = (py * rows**2).sum() - (py * rows).sum() ** 2
    var_x = (px * cols**2).sum() - (px * cols).sum() ** 2
    return float(((var_x + var_y) / 2).sqrt())


def kernel_offset(kernel: torch.Tensor) -> Tuple[float, float]:
    """(rows, columns) from the kernel's grid centre to its centre of mass, in pixels (a drifted kernel)."""
    k = kernel.detach().double().reshape(kernel.shape[-2:])
    mass = k.sum()
    rows = torch.arange(k.shape[0], dtype=torch.float64)
    cols = torch.arange(k.shape[1], dtype=torch.float64)
    return (float((k.sum(1) * rows).sum() / mass) - (k.shape[0] - 1) / 2,
            float((k.sum(0) * cols).sum() / mass) - (k.shape[1] - 1) / 2)


def kernel_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """‖k̂ − k‖ / ‖k‖ of two kernels, centred on a common grid (zero-padded to the larger size)."""
    a, b = (k.detach().double().reshape(k.shape[-2:]) for k in (estimate, truth))
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])

    def pad(k: torch.Tensor) -> torch.Tensor:
        dh, dw = h - k.shape[0], w - k.shape[1]
        return torch.nn.functional.pad(k, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))

    a, b = pad(a / a.sum()), pad(b / b.sum())
    return float((a - b).norm() / b.norm())
