"""Super-resolution: ×k downsampling by block averaging (GDP), bicubic, or a (learnable) kernel."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .base import Degradation
from .blur import PADDINGS, KernelOperator, conv_adjoint, convolve, pad_adjoint
from .kernels import gaussian_kernel, kernel_from_spec

__all__ = ["SuperResolution", "KernelSuperResolution"]


def _block_sizes(n: int, k: int, device) -> torch.Tensor:
    """Length of each of the ceil(n/k) blocks of size k along one axis (the last may be shorter)."""
    idx = torch.arange(math.ceil(n / k), device=device)
    return torch.clamp(n - idx * k, max=k).float()


def _upsample_nearest(y: torch.Tensor, k: int, size: Tuple[int, int]) -> torch.Tensor:
    return y.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)[..., : size[0], : size[1]]


class SuperResolution(Degradation):
    """×``factor`` downsampling.

    :param factor: integer scale k.
    :param method: ``"average"``: the mean of each k×k block (GDP; the last row and column of blocks
        average what is there when the size is not a multiple of k); ``"bicubic"``: bicubic resampling with
        antialiasing (the usual synthetic SR benchmark degradation).
    :param output: ``"low"``: the ``ceil(H/k) × ceil(W/k)`` observation; ``"full"``: shown back at the
        image's size with nearest-neighbour upsampling (GDP's ``H⁺H x``: the loss then weighs every
        high-resolution pixel).
    """

    linear = True

    def __init__(self, factor: int, method: str = "average", output: str = "low"):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"the super-resolution factor must be a positive integer, got {factor}")
        if method not in ("average", "bicubic"):
            raise ValueError(f"method must be 'average' or 'bicubic', got {method!r}")
        if output not in ("low", "full"):
            raise ValueError(f"output must be 'low' or 'full', got {output!r}")
        self.factor, self.method, self.output = int(factor), method, output

    def _low_size(self, h: int, w: int) -> Tuple[int, int]:
        return math.ceil(h / self.factor), math.ceil(w / self.factor)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        k = self.factor
        if self.method == "average":
            return F.avg_pool2d(x, k, stride=k, ceil_mode=True)
        return F.interpolate(x, size=self._low_size(*x.shape[-2:]), mode="bicubic", antialias=True, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.downsample(x)
        if self.output == "full":
            return _upsample_nearest(low, self.factor, x.shape[-2:])
        return low

    def _downsample_adjoint(self, y: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if self.method == "average":
            area = _block_sizes(size[0], self.factor, y.device)[:, None] * _block_sizes(size[1], self.factor, y.device)
            return _upsample_nearest(y / area, self.factor, size)
        probe = torch.zeros(*y.shape[:2], *size, dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.downsample(probe), probe, grad_outputs=y)
        return grad

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        size = tuple(size or self.input_size(*y.shape[-2:]))
        if self.output == "full":  # adjoint of nearest upsampling: sum over each block
            k = self.factor
            padded = F.pad(y, (0, (-size[1]) % k, 0, (-size[0]) % k))
            y = F.avg_pool2d(padded, k, stride=k) * k * k
        return self._downsample_adjoint(y, size)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        return (height, width) if self.output == "full" else self._low_size(height, width)

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        return (height, width) if self.output == "full" else (height * self.factor, width * self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, method={self.method}, output={self.output}"


class KernelSuperResolution(KernelOperator):
    """y = (k ⊛ x)↓s: blur with a kernel, then sample at the centre of each s × s cell; the kernel can be learned
    per image.

    Low-resolution pixel i stands for the cell [s·i, s·i + s) of the image, as in block averaging, so the kernel is
    centred on the cell's centre s·i + (s − 1)/2 (between two pixels for an even s). For that, a kernel's side has
    the parity of s (odd for odd s, even for even s): a given kernel of the other parity is resampled half a pixel
    by a 2 × 2 box (one pixel larger), a Gaussian made here is drawn on a grid of the right parity, and a kernel
    smaller than s is padded with zeros to s.

    :param factor: integer scale s; the observation is ``ceil(H/s) × ceil(W/s)``.
    :param kernel: the downsampling kernel (a tensor, a named spec such as ``"gaussian:13:2"`` or a file, see
        :class:`.Blur`), or ``None``: a Gaussian of ``init_sigma`` (default ``0.5 · factor`` pixels, close to
        bicubic's low-pass) on a ``kernel_size`` grid (default 4·s, or 4·s + 1 for an odd s; rounded up to the
        parity of s).
    :param learnable: optimise a per-image kernel (blind super-resolution); non-negative and summing to
        one through a softmax over logits, starting from ``kernel`` (logits at log(max(k, 1e-4))).
    :param padding: how the image is extended past its border for the kernel: ``"reflect"``, ``"zeros"``, ...
    """

    linear = True

    def __init__(
        self,
        factor: int,
        kernel: Union[str, Path, torch.Tensor, None] = None,
        learnable: bool = True,
        kernel_size: Optional[int] = None,
        init_sigma: Optional[float] = None,
        padding: str = "reflect",
    ):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"the super-resolution factor must be a positive integer, got {factor}")
        if padding not in PADDINGS or padding == "valid":
            raise ValueError(f"padding must keep the size: one of {PADDINGS[1:]}, got {padding!r}")
        self.factor, self.learnable, self.padding = int(factor), learnable, padding
        if kernel is None:
            size = kernel_size or 4 * self.factor
            size += (size - self.factor) % 2
            kernel = gaussian_kernel(size, init_sigma or 0.5 * self.factor)
        self._init_kernel(centred_kernel(kernel_from_spec(kernel), self.factor))

    def _pads(self, height: int, width: int) -> Tuple[int, int, int, int]:
        """F.pad amounts putting output i's kernel centre on the cell centre s·i + (s − 1)/2."""
        s = self.factor

        def axis(n: int, k: int) -> Tuple[int, int]:
            before = (k - s) // 2  # the kernel's centre (k − 1)/2 lands on (s − 1)/2: k − s is even and ≥ 0
            return before, s * (math.ceil(n / s) - 1) + k - n - before

        kh, kw = self.kernel().shape[-2:]
        top, bottom = axis(height, kh)
        left, right = axis(width, kw)
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._pads(*x.shape[-2:])
        padded = F.pad(x, pads, mode="constant" if self.padding == "zeros" else self.padding)
        return convolve(padded, self.kernel(), "valid", stride=self.factor)

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        size = size or self.input_size(*y.shape[-2:])
        left, right, top, bottom = pads = self._pads(*size)
        padded = (size[0] + top + bottom, size[1] + left + right)
        z = conv_adjoint(y, self.kernel(), "valid", padded, stride=self.factor)
        return pad_adjoint(z, pads, self.padding, size)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        return math.ceil(height / self.factor), math.ceil(width / self.factor)

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        return height * self.factor, width * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}, kernel={tuple(self.initial_kernel.shape)}, learnable={self.learnable}"


def centred_kernel(kernel: torch.Tensor, factor: int) -> torch.Tensor:
    """``kernel`` (``(Kh, Kw)``) on a grid whose sides have the parity of ``factor`` and are at least ``factor``:
    a side of the other parity is resampled half a pixel by a 2-tap box, a side shorter than ``factor`` padded
    with zeros on both ends."""
    dtype, kernel = kernel.dtype, kernel.to(torch.float64)
    if (kernel.shape[0] - factor) % 2:
        kernel = F.pad(kernel, (0, 0, 1, 1))
        kernel = (kernel[1:] + kernel[:-1]) / 2
    if (kernel.shape[1] - factor) % 2:
        kernel = F.pad(kernel, (1, 1, 0, 0))
        kernel = (kernel[:, 1:] + kernel[:, :-1]) / 2
    grow_h, grow_w = max(factor - kernel.shape[0], 0) // 2, max(factor - kernel.shape[1], 0) // 2
    return F.pad(kernel, (grow_w, grow_w, grow_h, grow_h)).to(dtype)
