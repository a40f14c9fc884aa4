"""The GDP sampling loop and the restoration of batches (pure torch): guidance, φ optimisation, scale conventions,
tiling, the sampler's settings, class labels, and :class:`Restorer` (observations in, typed results out).

Knows nothing of Lightning.
"""

from .gdp import (
    PAPER_SIZE,
    PAPER_STEPS,
    GDPResult,
    GDPSampler,
    GuidanceDivergedError,
    QualityTerm,
    StepInfo,
    TrajectoryPoint,
)
from .labels import ClassLabels, read_labels
from .restorer import BatchResult, ImageResult, InputFailure, Restorer, ScaleResult, StepContext
from .settings import SamplerSettings
from .tiling import Tiler, tile_starts

__all__ = [
    "BatchResult",
    "ClassLabels",
    "ImageResult",
    "InputFailure",
    "Restorer",
    "SamplerSettings",
    "ScaleResult",
    "StepContext",
    "read_labels",
    "GDPResult",
    "GDPSampler",
    "GuidanceDivergedError",
    "PAPER_SIZE",
    "PAPER_STEPS",
    "QualityTerm",
    "StepInfo",
    "Tiler",
    "TrajectoryPoint",
    "tile_starts",
]
