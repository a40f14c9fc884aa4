"""Divergence that stays finite: a restoration whose data term ends far from explaining the observation.

A guided sample that overshoots does not always turn into NaN: it can run off to a finite white or striped
image. Each image's data term D (the mean squared error between A(x̃0) and y on the [0, 1] scale, as the
sampler reports it every step, and that of the final image) is compared with three bounds; the image is
flagged when the final image's D exceeds ``floor`` and any of

* ``ratio`` times the lowest D of the earlier steps (it ran off from where it was),
* the D of a flat mid-gray image (it explains the observation no better than no image at all),
* D* + ``absolute`` + 4σ² (σ: the observation's noise; D* the data term of the best explanation of y a
  least-squares solve finds among images in [0, 1]): an RMS error above ``√absolute`` beyond twice the noise and
  beyond what any image can explain, which no restoration that follows its data reaches (it never got there).
  D* is about 0 for observations the operator made; a real photo follows the model only approximately (a sharp
  photo given to a deblurring task has no exact deconvolution in [0, 1]), and is held to what can be explained.
  Only where the forward model is exact (a linear operator with known parameters); a learned model of a real
  camera (low-light's y = f·x + M, HDR's clipped highlights) may legitimately end farther from its data.

The step reported is the first step of the run of steps, reaching to the end, whose D exceeded those bounds.
A sample that becomes non-finite is flagged at that step.

Defaults: ``ratio`` 25 (an RMS error five times the best the sample reached), ``absolute`` (10/255)² (ten gray
levels RMS; the official rule's own results on 64×64 crops stay below 3 on average) and ``floor`` (2/255)²
(two gray levels RMS, the least D ever flagged).
"""

from __future__ import annotations

from typing import List, Optional

import torch

__all__ = ["DivergenceMonitor", "DIVERGENCE_RATIO", "DIVERGENCE_FLOOR", "DIVERGENCE_ABSOLUTE"]

DIVERGENCE_RATIO = 25.0
DIVERGENCE_FLOOR = (2 / 255) ** 2
DIVERGENCE_ABSOLUTE = (10 / 255) ** 2


class DivergenceMonitor:
    """Follows the data term of ``n`` images along the sampling steps (see the module docstring)."""

    def __init__(self, n: int, noise_sigma: float = 0.0, ratio: float = DIVERGENCE_RATIO,
                 floor: float = DIVERGENCE_FLOOR, absolute: Optional[float] = DIVERGENCE_ABSOLUTE):
        """``absolute=None``: no absolute bound (a forward model that may not fit its data exactly)."""
        if ratio <= 1 or floor < 0 or (absolute is not None and absolute < floor):
            raise ValueError("the divergence ratio must be > 1, the floor >= 0 and the absolute bound >= the floor")
        self.ratio, self.floor = float(ratio), float(floor)
        self.absolute = float("inf") if absolute is None else float(absolute) + 4 * float(noise_sigma) ** 2
        self.best = [float("inf")] * n
        self.onset: List[Optional[int]] = [None] * n
        self.non_finite: List[Optional[int]] = [None] * n
        self.reference: List[float] = [float("inf")] * n
        self.explained: List[float] = [0.0] * n

    def bound(self, reference: torch.Tensor) -> None:
        """An absolute bound per image (``(n,)``): a final data term above it is flagged whatever the running
        minimum (the data term of a flat mid-gray image: a result that explains the observation no better than
        that is no restoration, even one that was never better during sampling)."""
        self.reference = reference.detach().float().cpu().tolist()

    def explainable(self, best: torch.Tensor) -> None:
        """D* per image (``(n,)``): the data term of the best explanation of each observation (see the module
        docstring); the absolute bound is that much higher."""
        self.explained = [max(0.0, v) for v in best.detach().float().cpu().tolist()]

    def update(self, step: int, data: torch.Tensor, finite: Optional[torch.Tensor] = None) -> None:
        """The data term of every image after ``step`` (``(n,)``); ``finite``: whether each sample is finite."""
        values = data.detach().float().cpu().tolist()
        ok = [True] * len(values) if finite is None else finite.cpu().tolist()
        for b, (d, fine) in enumerate(zip(values, ok)):
            if self.non_finite[b] is not None:
                continue
            if not fine or d != d or d in (float("inf"), float("-inf")):
                self.non_finite[b] = step
                continue
            absolute = self.absolute + self.explained[b]
            over = d > max(min(self.ratio * self.best[b], self.reference[b], absolute), self.floor)
            if not over:
                self.onset[b] = None
            elif self.onset[b] is None:
                self.onset[b] = step
            self.best[b] = min(self.best[b], d)

    def diverged_at(self) -> List[Optional[int]]:
        """Per image: the step where it diverged, or ``None`` (call after the final image's update)."""
        return [nf if nf is not None else on for nf, on in zip(self.non_finite, self.onset)]
