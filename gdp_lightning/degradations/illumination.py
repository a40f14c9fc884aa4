"""Illumination models: low-light (y = f·x + M) and HDR from several exposures (y_i = f_i·x + M_i).

GDP's enhancement model: a global gain f (scalar, or one per channel) and an
additive map M (per pixel, shared by the channels; or one scalar), both learned
per image during sampling.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from ..losses import total_variation
from .base import Degradation, set_phi

__all__ = ["Illumination", "LowLight", "HDR", "Darken"]

INITS = ("official", "identity")


class Illumination(Degradation):
    """E observations y_i = f_i·x + M_i of one image, stacked along the channels (E·C channels).

    :param num_exposures: E.
    :param shared: one (f, M) for every exposure (the official HDR code) instead of one per exposure (the
        paper's model).
    :param factor: ``"scalar"`` (one gain per exposure) or ``"channel"`` (one per colour channel).
    :param offset: ``"map"`` (an H×W map shared by the channels), ``"scalar"`` or ``"none"``.
    :param init: ``"official"``: f ~ N(0, 1)/100, M ~ U[0, 1)/10⁴ (drawn from each image's generator);
        ``"identity"``: f = 1, M = 0.
    :param smoothness: weight λ of the total variation of M in φ's objective D + λ·TV(M) (the paper's
        illumination smoothness; 0 = none). A free per-pixel M can explain any gain, so hold it smooth or scalar
        when f itself matters. λ is already relative to the guidance scale s in the sense of the quality terms'
        ``relative=True``: φ's data term D enters with weight 1, which is the paper's weight s divided by s (the
        official φ step is a plain gradient step of D, not multiplied by s), so a weight w·s in the paper's
        objective is λ = w whatever s. The paper's low-light loss s·D + s/100·L_exp + s/200·L_col + s·TV(M)
        therefore gives λ = 1: its gradient in φ divided by s (the exposure and colour terms do not depend on φ).
        Multiplying λ by s itself would tip the balance towards TV as s grows, and plain steps of lr 1 on
        λ·TV(M) diverge for λ above about H·W/16 (4096 at 256×256; the paper's s is 80000).
    :param learnable: optimise f and M during sampling (else they stay at their initial or set values).
    :param saturation: the white level at which the exposures clipped (1.0 for a full-range 8-bit file; the shared
        HDR example clips at 248/255): the model saturates as the sensor did, y_i = min(f_i·x + M_i, saturation),
        so a clipped highlight of a long exposure is explained by any brighter x instead of pulling x darker (no
        gradient where the model is at or past white). ``None`` (default, as the official code): never clipped.
    """

    inputs = ("f", "M")

    def __init__(
        self,
        num_exposures: int = 1,
        shared: bool = False,
        factor: str = "scalar",
        offset: str = "map",
        init: str = "official",
        smoothness: float = 0.0,
        learnable: bool = True,
        saturation: Optional[float] = None,
    ):
        super().__init__()
        if num_exposures < 1:
            raise ValueError(f"num_exposures must be >= 1, got {num_exposures}")
        if factor not in ("scalar", "channel"):
            raise ValueError(f"factor must be 'scalar' or 'channel', got {factor!r}")
        if offset not in ("map", "scalar", "none"):
            raise ValueError(f"offset must be 'map', 'scalar' or 'none', got {offset!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.num_observations = num_exposures
        self.shared, self.factor, self.offset, self.init = shared, factor, offset, init
        self.smoothness, self.learnable = float(smoothness), learnable
        self.saturation = None if saturation is None else float(saturation)
        self._channels = 3

    @property
    def _groups(self) -> int:
        return 1 if self.shared else self.num_observations

    def init_parameters(self, batch_size, height, width, generators=None, device=None) -> None:
        g = self._groups
        nf = g * (self._channels if self.factor == "channel" else 1)
        nm = {"map": (g, height, width), "scalar": (g, 1, 1), "none": None}[self.offset]
        if self.init == "identity":
            f = torch.ones(batch_size, nf, 1, 1)
            m = None if nm is None else torch.zeros(batch_size, *nm)
        else:
            gens = list(generators) if generators is not None else [None] * batch_size
            if len(gens) != batch_size:
                raise ValueError(f"got {len(gens)} generators for a batch of {batch_size}")
            f = torch.stack([torch.randn(nf, 1, 1, generator=gen) / 100 for gen in gens])
            m = None if nm is None else torch.stack([torch.rand(*nm, generator=gen) / 10000 for gen in gens])
        self._set_inputs(f=f.to(device) if device else f, M=None if m is None else (m.to(device) if device else m))

    def _set_inputs(self, f: Optional[torch.Tensor] = None, M: Optional[torch.Tensor] = None) -> None:
        """φ values: f ``(N, groups·(1 or C), 1, 1)`` and M ``(N, groups, H, W)`` or ``(N, groups, 1, 1)``."""
        if f is not None:
            set_phi(self, "f", torch.as_tensor(f, dtype=torch.float32), self.learnable)
        if M is not None and self.offset != "none":
            set_phi(self, "M", torch.as_tensor(M, dtype=torch.float32), self.learnable)

    def _expanded(self, c: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not hasattr(self, "f"):
            raise RuntimeError("call init_parameters (or set_inputs) before applying the illumination model")
        e = self.num_observations
        f = self.f if self.factor == "channel" else self.f.repeat_interleave(c, dim=1)
        m = self.M.repeat_interleave(c, dim=1) if self.offset != "none" else None
        if self.shared and e > 1:
            f = f.repeat(1, e, 1, 1)
            m = None if m is None else m.repeat(1, e, 1, 1)
        return f, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if self.factor == "channel" and c != self._channels:
            raise ValueError(f"per-channel gains were made for {self._channels} channels, the image has {c}")
        f, m = self._expanded(c)
        y = x.repeat(1, self.num_observations, 1, 1) * f.to(x.dtype)
        y = y if m is None else y + m.to(x.dtype)
        return y if self.saturation is None else y.clamp_max(self.saturation)

    def output_channels(self, channels: int) -> int:
        return channels * self.num_observations

    def regularization(self) -> Optional[torch.Tensor]:
        if self.smoothness == 0 or self.offset != "map":
            return None
        return self.smoothness * total_variation(self.M)

    def _phi_tensors(self) -> Dict[str, torch.Tensor]:
        out = {"f": self.f} if hasattr(self, "f") else {}
        if hasattr(self, "M"):
            out["M"] = self.M
        return out

    def extra_repr(self) -> str:
        return (
            f"exposures={self.num_observations}, shared={self.shared}, factor={self.factor}, offset={self.offset}, "
            f"init={self.init}, smoothness={self.smoothness}, saturation={self.saturation}"
        )


class LowLight(Illumination):
    """Low-light enhancement: y = f·x + M (one exposure). See :class:`Illumination` for the options."""

    def __init__(self, factor: str = "scalar", offset: str = "map", init: str = "official",
                 smoothness: float = 0.0, learnable: bool = True, saturation: Optional[float] = None):
        super().__init__(1, False, factor, offset, init, smoothness, learnable, saturation)


class HDR(Illumination):
    """HDR from ``num_exposures`` exposures, each y_i = f_i·x + M_i (``shared=True``: one f and M, as the
    official code). The observation stacks the exposures along the channels, in the order given."""

    def __init__(self, num_exposures: int = 3, shared: bool = False, factor: str = "scalar", offset: str = "map",
                 init: str = "official", smoothness: float = 0.0, learnable: bool = True,
                 saturation: Optional[float] = None):
        if num_exposures < 2:
            raise ValueError("HDR needs at least two exposures; use LowLight for one")
        super().__init__(num_exposures, shared, factor, offset, init, smoothness, learnable, saturation)

    @staticmethod
    def stack(exposures: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack ``(N, C, H, W)`` exposures into one observation ``(N, E·C, H, W)``."""
        return torch.cat(list(exposures), dim=1)


class Darken(Degradation):
    """A fixed exposure change y = gain·x^gamma (no learnable φ): the true operator that makes synthetic
    low-light observations (``gain=0.25, gamma=1.5`` looks like an underexposed photo) for the learned
    :class:`LowLight` model to invert."""

    def __init__(self, gain: float = 0.25, gamma: float = 1.0):
        super().__init__()
        if gain <= 0 or gamma <= 0:
            raise ValueError(f"gain and gamma must be positive, got gain={gain}, gamma={gamma}")
        self.gain, self.gamma = float(gain), float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x.clamp_min(0) ** self.gamma

    def _phi_tensors(self) -> Dict[str, torch.Tensor]:
        return {}

    def extra_repr(self) -> str:
        return f"gain={self.gain}, gamma={self.gamma}"
