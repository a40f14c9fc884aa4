"""Blur: convolution with a known kernel, or with a per-image kernel learned during sampling (blind)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .base import Degradation, per_image, set_phi
from .kernels import gaussian_kernel, kernel_from_spec, kernel_offset

__all__ = ["Blur", "KernelOperator", "center_kernels", "convolve", "conv_adjoint", "kernel_least_squares",
           "project_to_simplex"]

PADDINGS = ("valid", "zeros", "reflect", "replicate", "circular")


def _pads(kh: int, kw: int) -> Tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) that keep the size ("same" output)."""
    return (kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2


def convolve(x: torch.Tensor, kernel: torch.Tensor, padding: str = "valid", stride: int = 1) -> torch.Tensor:
    """Per-channel 2-D convolution (the kernel is flipped, as in the mathematical definition).

    :param x: ``(N, C, H, W)``.
    :param kernel: ``(Kh, Kw)``, ``(1 or N, 1, Kh, Kw)`` (one per image) or ``(1 or N, C, Kh, Kw)``.
    :param padding: ``"valid"`` (output ``H-Kh+1``) or a padding mode keeping the size: ``"zeros"``,
        ``"reflect"``, ``"replicate"``, ``"circular"``.
    :param stride: keep every ``stride``-th output sample (downsampling).
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    n, c, h, w = x.shape
    if kernel.ndim == 2:
        kernel = kernel[None, None]
    kb, kc, kh, kw = kernel.shape
    if kb not in (1, n) or kc not in (1, c):
        raise ValueError(f"a kernel of shape {tuple(kernel.shape)} does not fit images of shape {tuple(x.shape)}")
    if padding != "valid":
        x = F.pad(x, _pads(kh, kw), mode="constant" if padding == "zeros" else padding)
    elif kh > h or kw > w:
        raise ValueError(f"a {kh}x{kw} kernel does not fit in a {h}x{w} image with valid padding")
    weight = kernel.flip(-1, -2).to(x.dtype).expand(n, c, kh, kw).reshape(n * c, 1, kh, kw)
    out = F.conv2d(x.reshape(1, n * c, *x.shape[-2:]), weight, stride=stride, groups=n * c)
    return out.reshape(n, c, *out.shape[-2:])


def conv_adjoint(
    y: torch.Tensor, kernel: torch.Tensor, padding: str, size: Tuple[int, int], stride: int = 1
) -> torch.Tensor:
    """The adjoint of :func:`convolve` (``size``: the image size), exact for every padding mode."""
    n, c = y.shape[:2]
    if kernel.ndim == 2:
        kernel = kernel[None, None]
    kh, kw = kernel.shape[-2:]
    if padding == "valid":
        ph, pw = size
    else:
        left, right, top, bottom = _pads(kh, kw)
        ph, pw = size[0] + top + bottom, size[1] + left + right
    weight = kernel.flip(-1, -2).to(y.dtype).expand(n, c, kh, kw).reshape(n * c, 1, kh, kw)
    out_h = (y.shape[-2] - 1) * stride + kh
    out_w = (y.shape[-1] - 1) * stride + kw
    z = F.conv_transpose2d(
        y.reshape(1, n * c, *y.shape[-2:]), weight, stride=stride, groups=n * c,
        output_padding=(ph - out_h, pw - out_w),
    ).reshape(n, c, ph, pw)
    if padding == "valid":
        return z
    return pad_adjoint(z, _pads(kh, kw), padding, size)


def pad_adjoint(z: torch.Tensor, pads: Tuple[int, int, int, int], padding: str, size: Tuple[int, int]) -> torch.Tensor:
    """The adjoint of ``F.pad(x, pads, mode)`` for ``x`` of ``size`` (``padding``: ``"zeros"`` or a mode)."""
    left, right, top, bottom = pads
    if padding == "zeros":
        return z[..., top : top + size[0], left : left + size[1]]
    # reflect / replicate / circular padding is a linear map P; its adjoint comes from autograd
    probe = torch.zeros(*z.shape[:2], *size, dtype=z.dtype, device=z.device, requires_grad=True)
    with torch.enable_grad():
        padded = F.pad(probe, (left, right, top, bottom), mode=padding)
        (grad,) = torch.autograd.grad(padded, probe, grad_outputs=z)
    return grad


class KernelOperator(Degradation):
    """A degradation with one kernel per image, fixed (a buffer) or learned (softmax over logits: non-negative,
    summing to one; logits start at log(max(k, 1e-4)) so that no entry starts too small to grow).

    Subclasses set ``self.learnable`` and call :meth:`_init_kernel` with the starting kernel.
    """

    learnable: bool = False
    correlate: bool = False  # kernels are given as correlation-based code applies them (see Blur)

    def _init_kernel(self, kernel: torch.Tensor) -> None:
        self.register_buffer("initial_kernel", kernel / kernel.sum(), persistent=False)
        self._set_kernel(self.initial_kernel[None, None])

    def _set_kernel(self, kernel: torch.Tensor) -> None:
        if self.learnable:
            set_phi(self, "kernel_logits", torch.log(kernel.clamp_min(1e-4)), learnable=True)
        else:
            set_phi(self, "kernel_values", kernel, learnable=False)

    def kernel(self) -> torch.Tensor:
        """The current kernel(s), ``(1 or N, 1, Kh, Kw)``, non-negative, summing to one."""
        if self.learnable:
            logits = self.kernel_logits
            return torch.softmax(logits.flatten(1), dim=1).reshape(logits.shape)
        return self.kernel_values

    @property
    def kernel_size(self) -> Tuple[int, int]:
        given = getattr(self, "_batch_kernels", None)
        return tuple((self.initial_kernel if given is None else given).shape[-2:])

    def _set_inputs(self, kernel: Union[torch.Tensor, Sequence[Optional[torch.Tensor]], None] = None) -> None:
        """``kernel``: the kernel(s) to start from, read as the configured one is (``correlate`` rotates them):
        ``(K, K)``, ``(N, 1, K, K)`` or a list with one per image, where ``None`` stands for the configured
        kernel; every one is normalised to sum one. ``None`` returns to the configured kernel."""
        if kernel is None:
            self._batch_kernels = None
            self._set_kernel(self.initial_kernel[None, None])
            return
        given = list(kernel) if isinstance(kernel, (list, tuple)) else [torch.as_tensor(kernel)]
        stack = [self.initial_kernel if k is None else self._as_given(k) for k in given]
        if len({tuple(k.shape[-2:]) for k in stack}) > 1:
            raise ValueError("the kernels of one batch differ in size")
        kernels = torch.cat([k.reshape(-1, 1, *k.shape[-2:]) for k in stack])
        self._batch_kernels = kernels / kernels.sum((-1, -2), keepdim=True)
        self._set_kernel(self._batch_kernels.to(self.initial_kernel.device))

    def _as_given(self, kernel: torch.Tensor) -> torch.Tensor:
        kernel = torch.as_tensor(kernel, dtype=torch.float32)
        return kernel.flip(-1, -2) if self.correlate else kernel

    def init_parameters(self, batch_size, height, width, generators=None, device=None) -> None:
        given = getattr(self, "_batch_kernels", None)
        source = self.initial_kernel[None, None] if given is None else given
        start = per_image(source, batch_size, 4)
        self._set_kernel(start.to(device or self.initial_kernel.device))

    def _phi_tensors(self) -> Dict[str, torch.Tensor]:
        return {"kernel": self.kernel()}


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of each row of ``v`` (``(N, K)``) onto {k ≥ 0, Σ k = 1}."""
    u, _ = torch.sort(v, dim=1, descending=True)
    cumulative = u.cumsum(1) - 1
    index = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    last = ((u - cumulative / index) > 0).to(v.dtype).cumsum(1).argmax(1, keepdim=True)
    theta = cumulative.gather(1, last) / (last + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def center_kernels(kernels: torch.Tensor) -> torch.Tensor:
    """Shift each kernel of ``(N, 1, Kh, Kw)`` by whole pixels so that its centre of mass is within half a pixel of
    the grid's centre (entries shifted off the grid are dropped, the rest renormalised to sum to one)."""
    n, _, kh, kw = kernels.shape
    out = kernels.clone()
    for i in range(n):
        k = kernels[i, 0]
        if k.sum() <= 0:
            continue
        dy, dx = (int(round(d)) for d in kernel_offset(k))
        if dy == 0 and dx == 0:
            continue
        shifted = torch.zeros_like(k)
        shifted[max(-dy, 0) : kh - max(dy, 0), max(-dx, 0) : kw - max(dx, 0)] = \
            k[max(dy, 0) : kh - max(-dy, 0), max(dx, 0) : kw - max(-dx, 0)]
        total = shifted.sum()
        out[i, 0] = shifted / total if total > 0 else k
    return out


def _difference_gram(kh: int, kw: int) -> torch.Tensor:
    """DᵀD for D the horizontal and vertical differences of neighbouring entries of a Kh×Kw kernel (flattened)."""
    rows = []
    for i in range(kh):
        for j in range(kw):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < kh and j + dj < kw:
                    r = torch.zeros(kh * kw, dtype=torch.float64)
                    r[i * kw + j], r[(i + di) * kw + j + dj] = 1.0, -1.0
                    rows.append(r)
    d = torch.stack(rows)
    return d.T @ d


def kernel_least_squares(x: torch.Tensor, y: torch.Tensor, size: Tuple[int, int], padding: str,
                         start: torch.Tensor, iterations: int = 200, rows: int = 64,
                         smoothness: float = 0.0) -> torch.Tensor:
    """``iterations`` projected-gradient steps from ``start`` (``(N, 1, Kh, Kw)``) towards the kernel k ≥ 0, Σ k = 1
    minimising ‖k ⊛ x − y‖² per image (``x``: ``(N, C, H, W)``, ``y`` the blurred observation with ``padding``).
    Natural images make the problem ill-conditioned: a few hundred steps move a kernel a long way, the exact
    minimiser takes tens of thousands (the sampler warm-starts each step from the last kernel, so over the
    steps it converges while x̃0 sharpens). The normal equations (a Kh·Kw square matrix per image) are
    accumulated over bands of ``rows`` output rows, so memory does not grow with the image; an image whose
    system is degenerate (a flat image) keeps its start. ``smoothness`` λ adds λ·(tr G / Kh·Kw)·‖∇k‖² (G the
    normal matrix, so λ does not depend on the image's size or contrast): a prior against noisy kernels."""
    n, c = x.shape[:2]
    kh, kw = size
    if padding != "valid":
        x = F.pad(x, _pads(kh, kw), mode="constant" if padding == "zeros" else padding)
    out_h = x.shape[-2] - kh + 1
    gram = x.new_zeros(n, kh * kw, kh * kw, dtype=torch.float64)
    rhs = x.new_zeros(n, kh * kw, dtype=torch.float64)
    for top in range(0, out_h, rows):
        band = x[..., top : top + min(rows, out_h - top) + kh - 1, :]
        patches = F.unfold(band.reshape(n * c, 1, *band.shape[-2:]), (kh, kw)).double()  # (N·C, Kh·Kw, P)
        patches = patches.reshape(n, c, kh * kw, -1).transpose(1, 2).reshape(n, kh * kw, -1)
        target = y[..., top : top + band.shape[-2] - kh + 1, :].double().reshape(n, -1)
        gram += patches @ patches.transpose(1, 2)
        rhs += (patches @ target[:, :, None])[..., 0]
    if smoothness > 0:  # symmetric under the flip below, so it can be added to the flipped unknowns' system
        scale = torch.diagonal(gram, dim1=1, dim2=2).mean(1)[:, None, None]
        gram = gram + smoothness * scale * _difference_gram(kh, kw).to(gram.device)
    # convolution flips the kernel: the unknowns are the flipped kernel's entries
    k = start.double().reshape(n, -1).flip(-1)
    lipschitz = torch.linalg.eigvalsh(gram)[:, -1:].clamp_min(1e-12)
    for _ in range(iterations):
        k = project_to_simplex(k - ((gram @ k[..., None])[..., 0] - rhs) / lipschitz)
    fitted = k.flip(-1).reshape(n, 1, kh, kw).to(start.dtype)
    good = torch.isfinite(fitted).flatten(1).all(1) & (torch.diagonal(gram, dim1=1, dim2=2).sum(1) > 0)
    return torch.where(good[:, None, None, None], fitted, start)


class Blur(KernelOperator):
    """y = k ⊛ x per channel, with a known kernel or a learned one (``learnable=True``, blind deblurring).

    Linear in x for the current kernel (blind or not), so it has an adjoint.

    :param kernel: ``(K, K)`` kernel, a named spec (``"gaussian:9:2"``, ``"gdp:9:2"``, ``"uniform:5"``,
        ``"motion:15:30"``) or a kernel file (see :mod:`.kernels`); or ``None`` with ``learnable`` and
        ``kernel_size``.
    :param padding: ``"valid"`` (GDP: the observation is smaller by K-1) or a size-keeping mode
        (``"reflect"`` suits real photos).
    :param learnable: optimise a per-image kernel during sampling. It is kept non-negative and summing to
        one by a softmax over logits; it starts at ``kernel`` if given, else at a Gaussian of
        ``init_sigma`` pixels (logits start at log(max(k, 1e-4)): an entry that starts far smaller would
        have a vanishing gradient and could never grow).
    :param correlate: the kernel is applied as correlation-based code applies it (the official GDP code, most
        deep-learning code: ``conv2d`` without a flip), i.e. it is rotated 180° here. This operator is a true
        convolution, so a motion kernel taken from such code without ``correlate`` comes out rotated 180°
        (a symmetric kernel is the same either way).
    :param smoothness: blind fits by least squares add λ‖∇k‖² (relative to the data term's scale, see
        :func:`kernel_least_squares`): a prior against noisy kernels (0: none).
    :param center: blind fits by least squares (``phi_optimizer: lstsq``) keep the kernel's centre of mass on the
        grid's centre (an integer shift after each fit): a kernel and an image shifted the other way explain the
        observation equally, and without it the kernel can drift off-centre and the image with it.
    """

    linear = True
    inputs = ("kernel",)

    def __init__(
        self,
        kernel: Union[str, Path, torch.Tensor, None] = None,
        padding: str = "valid",
        learnable: bool = False,
        kernel_size: Optional[int] = None,
        init_sigma: float = 1.0,
        correlate: bool = False,
        center: bool = True,
        smoothness: float = 0.0,
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if kernel is None:
            if not kernel_size:
                raise ValueError("give a kernel, or kernel_size for a learnable one")
            kernel = gaussian_kernel(kernel_size, init_sigma)
        kernel = kernel_from_spec(kernel)
        if kernel.ndim != 2:
            raise ValueError(f"a blur kernel must be 2-D, got shape {tuple(kernel.shape)}")
        if correlate:
            kernel = kernel.flip(0, 1)
        self.padding = padding
        self.learnable, self.center, self.correlate = learnable, center, correlate
        self.smoothness = float(smoothness)
        self._init_kernel(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(x, self.kernel(), self.padding)

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return conv_adjoint(y, self.kernel(), self.padding, size or self.input_size(*y.shape[-2:]))

    def fit_parameters(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Blind: the kernel moves towards the least-squares kernel of ``x`` and ``y`` (non-negative, summing to
        one; 200 projected-gradient steps from the current kernel, see :func:`kernel_least_squares`)."""
        if not self.learnable:
            return False
        with torch.no_grad():
            start = self.kernel().detach().expand(x.shape[0], 1, *self.kernel_size)
            kernel = kernel_least_squares(x.detach(), y, self.kernel_size, self.padding, start,
                                          smoothness=self.smoothness)
            if self.center:
                kernel = center_kernels(kernel)
            self.kernel_logits.copy_(torch.log(kernel.clamp_min(1e-12)))
        return True

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        if self.padding == "valid":
            kh, kw = self.kernel_size
            return height - kh + 1, width - kw + 1
        return height, width

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        if self.padding == "valid":
            kh, kw = self.kernel_size
            return height + kh - 1, width + kw - 1
        return height, width

    def extra_repr(self) -> str:
        kh, kw = self.kernel_size
        return f"kernel={kh}x{kw}, padding={self.padding}, learnable={self.learnable}"

