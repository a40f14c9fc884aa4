"""Super-resolution: ×k downsampling by block averaging (GDP), bicubic, or a (learnable) kernel."""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .base import Degradation
from .blur import PADDINGS, KernelOperator, conv_adjoint, convolve
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
    """y = (k ⊛ x)↓s: blur with a kernel, then keep every s-th pixel; the kernel can be learned per image.

    :param factor: integer scale s; the observation is ``ceil(H/s) × ceil(W/s)``.
    :param kernel: the downsampling kernel (a tensor, a named spec such as ``"gaussian:13:2"`` or a file, see
        :class:`.Blur`), or ``None``: a Gaussian of ``init_sigma`` (default
        ``0.5 · factor`` pixels, close to bicubic's low-pass) on a ``kernel_size`` grid.
    :param learnable: optimise a per-image kernel (blind super-resolution); non-negative and summing to
        one through a softmax over logits, starting from ``kernel`` (logits at log(max(k, 1e-4))).
    :param padding: padding mode of the blur (size-keeping): ``"reflect"``, ``"zeros"``, ...
    """

    linear = True

    def __init__(
        self,
        factor: int,
        kernel: Union[torch.Tensor, str, None] = None,
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
            size = kernel_size or (4 * self.factor + 1)
            kernel = gaussian_kernel(size, init_sigma or 0.5 * self.factor)
        self._init_kernel(kernel_from_spec(kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(x, self.kernel(), self.padding, stride=self.factor)

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        size = size or self.input_size(*y.shape[-2:])
        return conv_adjoint(y, self.kernel(), self.padding, size, stride=self.factor)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        return math.ceil(height / self.factor), math.ceil(width / self.factor)

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        return height * self.factor, width * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}, kernel={tuple(self.initial_kernel.shape)}, learnable={self.learnable}"
