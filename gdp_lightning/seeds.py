"""Every random stream of the project, derived in one place from the run's seed and an index.

A result must depend on (seed, index) only, never on the batch, the number of processes or a resume: each
stream's seed is ``seed · STRIDE + index`` plus the stream's own offset. Torch's CPU generator uses only the low 32
bits of a seed, so the offsets differ there: an input's streams never share a seed whatever the seed, and no two
streams share one while ``seed · STRIDE + index`` stays below 2³⁰ (seeds below 1073 with up to a million inputs).
The values are part of the results (changing one changes every output of that stream), so they are fixed here once:

==================  =====================================================  ==============================
stream              what it draws                                          seed (mod 2⁶³)
==================  =====================================================  ==============================
``DATA``            input i's synthetic degradation; the held-out split     seed·STRIDE + i
``SAMPLER``         input i's restoration noise (the sampler's seed s)      2³⁰ + seed·STRIDE + i
``TRAINING``        training sample i's timestep and noise                  2·2³⁰ + seed·STRIDE + i
``CROPS``           training sample i's crop                                3·2³⁰ + seed·STRIDE + i
dropout             the global generator at a training step of a process   ((seed·STRIDE + step)·1009 + rank + 2⁴³) mod 2⁶³
==================  =====================================================  ==============================

A sampler seed s has sub-streams: φ's initialisation (s + ``PHI``), a random class label (s + ``LABEL``), the
held-out denoising loss's noise (s + ``DENOISING``). They are small offsets, so they meet the sampler seeds of
other images (image i's denoising noise is image i + 208's restoration noise): never two draws of one image.
Posterior sample j of a sampler seed s (``num_samples``) has seed s + j · ``SAMPLES``: sample 0 is the single
restoration; ``SAMPLES`` moves the low 32 bits (two samples of one run meet only across more than a billion
images).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["STRIDE", "DATA", "SAMPLER", "TRAINING", "CROPS", "PHI", "LABEL", "DENOISING", "SAMPLES", "stream_seed",
           "sample_seed", "dropout_seed", "generator"]

STRIDE = 1_000_003
DATA = 0
SAMPLER = 1 << 30
TRAINING = 2 << 30
CROPS = 3 << 30
DROPOUT = 1 << 43
PHI = 0x5EED
LABEL = 0x1ABE1
DENOISING = 0xD0
SAMPLES = 0x9E37_79B1  # odd and about 0.62·2³²: it moves the low 32 bits, which are all a CPU generator uses

def stream_seed(seed: int, index: int, stream: int = DATA) -> int:
    """The seed of item ``index`` of a stream (see the table above)."""
    return (stream + seed * STRIDE + int(index)) % 2**63


def sample_seed(seed: int, sample: int) -> int:
    """Sample ``sample`` of a sampler seed (posterior samples, ``num_samples``): the seed itself for sample 0, so
    one sample is the restoration of a run without ``num_samples``."""
    return int(seed) + int(sample) * SAMPLES


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the global generator (dropout) at a training step of a process."""
    return ((seed * STRIDE + step) * 1_009 + rank + DROPOUT) % 2**63


def generator(seed: int, device: Optional[Union[str, torch.device]] = None) -> torch.Generator:
    """A generator seeded with ``seed`` (on ``device``, default the CPU)."""
    return (torch.Generator(device) if device is not None else torch.Generator()).manual_seed(int(seed))
