"""The command's callbacks, in one place: :class:`~gdp_lightning.writer.RestorationWriter` (outputs, φ, failed
inputs, resume; :mod:`gdp_lightning.writer`), the run record (:mod:`gdp_lightning.run_record`) and
:class:`~gdp_lightning.trajectory.TrajectoryLogger` (TensorBoard; :mod:`gdp_lightning.trajectory`)."""

from __future__ import annotations

from .run_record import checkpoint_sha256, restoration_settings, sha256
from .trajectory import TrajectoryLogger
from .writer import RestorationWriter, phi_summary

__all__ = ["RestorationWriter", "TrajectoryLogger", "phi_summary", "sha256", "checkpoint_sha256",
           "restoration_settings"]
