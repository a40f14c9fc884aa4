"""The interface every degradation (forward model A_φ) follows, and their composition.

Conventions:

* images are float ``(N, C, H, W)`` tensors in [0, 1]; so are observations;
* ``forward(x)`` is the noiseless model A_φ(x); ``observe(x)`` adds what a camera
  adds on top (noise, see :class:`GaussianNoise`) to make a synthetic observation;
* degradation parameters φ are per image: each has a leading batch dimension and
  is (re)created for a batch by :meth:`Degradation.init_parameters`; learnable
  ones are ``nn.Parameter`` with ``requires_grad``, fixed ones are buffers;
* linear operators provide :meth:`Degradation.adjoint` (A^T);
* per-batch inputs (a mask, a kernel read from a side file, φ values) go in through one method,
  :meth:`Degradation.set_inputs`; each operator names the ones it takes in ``inputs``;
* ``num_observations`` is the number of observations stacked along the channels
  (several exposures of HDR); the data term sums over them.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["Degradation", "Compose", "GaussianNoise", "Identity", "per_image", "set_phi"]

Generators = Optional[Sequence[torch.Generator]]


class Degradation(nn.Module):
    """Base class of forward models A_φ acting on [0, 1] images."""

    linear: bool = False
    num_observations: int = 1
    #: its observations are gray (colorization): a gray input is what it expects, not a wish for a gray output
    gray_observations: bool = False
    #: the per-batch inputs :meth:`set_inputs` takes (``"mask"``, ``"kernel"``, φ names such as ``"f"``)
    inputs: Tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """A^T y for linear operators; ``size`` is the image size (default: :meth:`input_size` of y's)."""
        raise NotImplementedError(f"{type(self).__name__} is not linear and has no adjoint")

    def observe(self, x: torch.Tensor, generators: Generators = None) -> torch.Tensor:
        """A synthetic observation of ``x``: A(x) plus the model's noise, if any."""
        return self(x)

    def restrict_observation(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        """A real observation cut down to what the model observes, or ``None`` where that is all of it.

        A photo with holes still has content in them; inpainting keeps its observed pixels (m ⊙ y, as a
        synthetic observation is), so the data term does not count the holes against A(x̂) = m ⊙ x̂.
        """
        return None

    # ---------------------------------------------------------------- sizes
    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """Spatial size of A(x) for an image of ``height × width``."""
        return height, width

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        """Spatial size of the image that an observation of ``height × width`` is of."""
        return height, width

    def output_channels(self, channels: int) -> int:
        return channels

    def output_numel(self, height: int, width: int, channels: int = 3) -> int:
        """Number of values in one image's observation (what the data term averages over)."""
        h, w = self.output_size(height, width)
        return self.output_channels(channels) * h * w

    # ---------------------------------------------------------- parameters φ
    def takes(self, name: str) -> bool:
        """Whether :meth:`set_inputs` takes ``name`` (here or, for a composition, in one of its parts)."""
        return name in self.inputs

    def set_inputs(self, **inputs: object) -> None:
        """Give the operator per-batch inputs: side files' contents (``mask``, ``kernel``: one per image, or one
        for all) or φ values (``f``, ``M``); ``None`` leaves an input as configured. An input the operator does
        not take is an error."""
        unknown = [name for name in inputs if not self.takes(name)]
        if unknown:
            takes = ", ".join(self.inputs) or "no per-batch inputs"
            raise ValueError(f"{type(self).__name__} takes no {unknown[0]!r} (it takes {takes})")
        self._set_inputs(**inputs)

    def _set_inputs(self, **inputs: object) -> None:
        """What :meth:`set_inputs` does with inputs named in ``inputs`` (operators that take some override it)."""

    def init_parameters(
        self,
        batch_size: int,
        height: int,
        width: int,
        generators: Generators = None,
        device: Optional[torch.device] = None,
    ) -> None:
        """Create this batch's per-image parameters for images of ``height × width`` (no-op without φ)."""

    def learnable_parameters(self) -> Dict[str, nn.Parameter]:
        """The φ that the sampler optimises, by name."""
        return {k: p for k, p in self.named_parameters() if p.requires_grad}

    def phi(self) -> Dict[str, torch.Tensor]:
        """Every per-image parameter (learned or given), detached copies on the CPU, for saving and logging."""
        return {k: v.detach().cpu().clone() for k, v in self._phi_tensors().items()}

    def _phi_tensors(self) -> Dict[str, torch.Tensor]:
        return dict(self.named_parameters())

    def regularization(self) -> Optional[torch.Tensor]:
        """A per-image penalty on φ, shape ``(N,)``, added to φ's objective (e.g. smoothness), or ``None``."""
        return None

    def noise_sigma(self) -> float:
        """Standard deviation of the noise :meth:`observe` adds, on the [0, 1] scale (0: none)."""
        return 0.0

    def fit_parameters(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Move the learnable φ towards the minimiser of the data term ‖A_φ(x) − y‖² for images ``x`` (in [0, 1])
        by the operator's own solver, where it has one; ``False`` where it has none (φ unchanged)."""
        return False


def per_image(value: torch.Tensor, batch_size: int, ndim: int) -> torch.Tensor:
    """Broadcast a given parameter to a leading batch dimension of ``batch_size``."""
    value = torch.as_tensor(value, dtype=torch.float32)
    while value.ndim < ndim:
        value = value.unsqueeze(0)
    if value.shape[0] not in (1, batch_size):
        raise ValueError(f"a parameter for {value.shape[0]} images does not fit a batch of {batch_size}")
    return value.expand(batch_size, *value.shape[1:]).clone()


def set_phi(module: nn.Module, name: str, value: torch.Tensor, learnable: bool) -> None:
    """(Re)register a per-image φ as a parameter (learnable) or a buffer (given)."""
    if name in module._parameters:
        del module._parameters[name]
    if name in module._buffers:
        del module._buffers[name]
    if learnable:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value, persistent=False)


class Identity(Degradation):
    """A = I (plain denoising when composed with noise)."""

    linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return y


class GaussianNoise(Degradation):
    """Additive white Gaussian noise of standard deviation ``sigma`` on the [0, 1] scale: DPS quotes σ on the
    [-1, 1] scale (its 0.05 is ``GaussianNoise(0.025)``); DDRM's and DDNM's ``sigma_0`` are on the [0, 1] scale, as
    here (they double it for their [-1, 1] images).

    Its ``forward`` is the identity (the guidance compares noiseless predictions with
    the observation); ``observe`` adds the noise, from the per-image generators if given.
    """

    linear = True

    def __init__(self, sigma: float):
        super().__init__()
        if sigma < 0:
            raise ValueError(f"noise sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return y

    def noise_sigma(self) -> float:
        return self.sigma

    def observe(self, x: torch.Tensor, generators: Generators = None) -> torch.Tensor:
        if self.sigma == 0:
            return x
        if generators is None:
            noise = torch.randn_like(x)
        else:
            noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device) for g in generators])
        return x + self.sigma * noise

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class Compose(Degradation):
    """Operators applied in order (``Compose([Blur(k), SuperResolution(4), GaussianNoise(0.01)])``).

    Every learnable φ of every part is optimised jointly; their names are prefixed
    with the part's index (``"0.kernel"``). Only the last part may stack several observations.
    """

    def __init__(self, operators: Iterable[Degradation]):
        super().__init__()
        self.operators = nn.ModuleList(list(operators))
        if not len(self.operators):
            raise ValueError("Compose needs at least one operator")
        if any(op.num_observations != 1 for op in list(self.operators)[:-1]):
            raise ValueError("only the last operator of a composition may stack several observations (HDR)")
        self.linear = all(op.linear for op in self.operators)
        self.gray_observations = any(op.gray_observations for op in self.operators)
        self.num_observations = self.operators[-1].num_observations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.operators:
            x = op(x)
        return x

    def adjoint(self, y: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if not self.linear:
            return super().adjoint(y, size)
        size = size or self.input_size(*y.shape[-2:])
        sizes = [tuple(size)]
        for op in list(self.operators)[:-1]:
            sizes.append(op.output_size(*sizes[-1]))
        for op, s in zip(reversed(self.operators), reversed(sizes)):
            y = op.adjoint(y, s)
        return y

    def observe(self, x: torch.Tensor, generators: Generators = None) -> torch.Tensor:
        for op in self.operators:
            x = op.observe(x, generators)
        return x

    def restrict_observation(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        # the last operator that is not the identity or plain noise decides (a mask followed by noise still
        # masks y; a mask followed by a blur does not: the blur spreads content into the holes)
        for op in reversed(self.operators):
            if isinstance(op, (GaussianNoise, Identity)):
                continue
            return op.restrict_observation(y)
        return None

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        for op in self.operators:
            height, width = op.output_size(height, width)
        return height, width

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        for op in reversed(self.operators):
            height, width = op.input_size(height, width)
        return height, width

    def output_channels(self, channels: int) -> int:
        for op in self.operators:
            channels = op.output_channels(channels)
        return channels

    def init_parameters(self, batch_size, height, width, generators=None, device=None) -> None:
        for op in self.operators:
            op.init_parameters(batch_size, height, width, generators, device)
            height, width = op.output_size(height, width)

    def takes(self, name: str) -> bool:
        return any(op.takes(name) for op in self.operators)

    def _set_inputs(self, **inputs: object) -> None:
        # each input goes to the first part that takes it
        for name, value in inputs.items():
            next(op for op in self.operators if op.takes(name)).set_inputs(**{name: value})

    def learnable_parameters(self) -> Dict[str, nn.Parameter]:
        return {f"{i}.{k}": p for i, op in enumerate(self.operators) for k, p in op.learnable_parameters().items()}

    def _phi_tensors(self) -> Dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, op in enumerate(self.operators) for k, v in op._phi_tensors().items()}

    def regularization(self) -> Optional[torch.Tensor]:
        terms: List[torch.Tensor] = [r for r in (op.regularization() for op in self.operators) if r is not None]
        return sum(terms) if terms else None

    def noise_sigma(self) -> float:
        # noise added before later operators is transformed by them; its σ is counted as it was added
        return sum(op.noise_sigma() ** 2 for op in self.operators) ** 0.5
