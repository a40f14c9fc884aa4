"""Degradations: forward models A_φ on [0, 1] images, one small module per operator.

Knows nothing of diffusion or Lightning. See :mod:`.base` for the interface.
"""

from .base import Compose, Degradation, GaussianNoise, Identity
from .blur import (
    Blur,
    KernelOperator,
    center_kernels,
    conv_adjoint,
    convolve,
    kernel_least_squares,
    project_to_simplex,
)
from .colorization import Colorization
from .illumination import HDR, Darken, Illumination, LowLight
from .inpainting import Inpainting
from .kernels import (
    gaussian_kernel,
    gdp_gaussian_kernel,
    kernel_error,
    kernel_from_spec,
    kernel_offset,
    kernel_width,
    load_kernel,
    motion_kernel,
    uniform_kernel,
)
from .masks import box_mask, load_mask, permutation_mask, random_mask
from .super_resolution import KernelSuperResolution, SuperResolution

__all__ = [
    "Blur",
    "Colorization",
    "Compose",
    "Darken",
    "Degradation",
    "GaussianNoise",
    "HDR",
    "Identity",
    "Illumination",
    "Inpainting",
    "KernelOperator",
    "KernelSuperResolution",
    "LowLight",
    "SuperResolution",
    "box_mask",
    "center_kernels",
    "conv_adjoint",
    "convolve",
    "gaussian_kernel",
    "gdp_gaussian_kernel",
    "kernel_error",
    "kernel_from_spec",
    "kernel_least_squares",
    "kernel_offset",
    "kernel_width",
    "load_kernel",
    "load_mask",
    "motion_kernel",
    "permutation_mask",
    "project_to_simplex",
    "random_mask",
    "uniform_kernel",
]
