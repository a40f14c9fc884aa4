"""Beta schedules and timestep respacing, as guided-diffusion defines them (float64)."""

from __future__ import annotations

import math
from typing import Callable, List, Sequence, Set, Union

import numpy as np
import torch

__all__ = ["named_beta_schedule", "betas_for_alpha_bar", "space_timesteps"]


def named_beta_schedule(name: str, num_steps: int) -> torch.Tensor:
    """The ``linear`` (Ho et al., scaled to ``num_steps``) or ``cosine`` (Nichol & Dhariwal) betas, float64."""
    if num_steps < 1:
        raise ValueError(f"the number of diffusion steps must be positive, got {num_steps}")
    if name == "linear":
        scale = 1000 / num_steps
        # numpy's linspace, as the reference, so the float64 values agree to the last bit
        return torch.from_numpy(np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64))
    if name == "cosine":
        return betas_for_alpha_bar(num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ValueError(f"unknown noise schedule {name!r}; use 'linear' or 'cosine'")


def betas_for_alpha_bar(num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise a continuous ``alpha_bar(t)``, ``t`` in [0, 1], each clipped to ``max_beta``."""
    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def space_timesteps(num_timesteps: int, section_counts: Union[str, int, Sequence[int]]) -> Set[int]:
    """The timesteps of a ``num_timesteps`` diffusion kept by a respacing (guided-diffusion semantics).

    ``section_counts`` is ``"100"`` (100 evenly spread steps), ``"10,10,10"``
    (the process split into equal sections, each strided to its count),
    ``"ddim50"`` (the fixed integer stride of the DDIM paper), an int, a
    sequence of ints, or ``""`` (every step).
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec == "":
            return set(range(num_timesteps))
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(f"respacing {section_counts!r}: expected 'ddimN' with an integer N") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"respacing {section_counts!r}: no integer stride gives exactly {desired} of {num_timesteps} steps"
            )
        try:
            section_counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"respacing {section_counts!r}: expected a step count like '100', sections like '10,10,10', or 'ddim50'"
            ) from None
    counts: List[int] = list(section_counts)
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"respacing {section_counts!r}: every section needs at least one step")
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: List[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"respacing {section_counts!r}: cannot take {count} steps from a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return set(steps)


def respacing_string(value) -> str:
    """A step count given as a number (``50`` in YAML) or a respacing string, as the string; ``ValueError`` for
    anything else (checks the form only: the diffusion checks the counts against its own steps)."""
    spec = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    counts = spec[len("ddim"):] if spec.startswith("ddim") else spec
    try:
        numbers = [int(c) for c in counts.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1 or sum(numbers) < 2 or (counts != spec and len(numbers) > 1):
        raise ValueError(f"{value!r}: give a step count >= 2 like 100, sections like '10,10,10', or 'ddim50'")
    return spec
