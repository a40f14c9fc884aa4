"""The GDP sampling loop (pure torch): guidance, φ optimisation, scale conventions, tiling.

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
from .tiling import Tiler, tile_starts

__all__ = [
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
