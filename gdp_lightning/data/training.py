"""The training data of fine-tuning the diffusion prior: seeded random square crops of clean images.

Sample ``i`` of :class:`TrainingCrops` is a function of ``(seed, i)`` only: it depends neither on the worker
processes, nor on the GPUs, nor on the order the samples are asked for. :class:`CropSampler` gives each process its
share of the global sample indices of an epoch, every epoch fresh indices (so fresh crops).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..seeds import CROPS, stream_seed
from .batching import ProcessSampler
from .images import DataError, read_image

__all__ = ["TrainingCrops", "CropSampler", "crop_seed", "region_side"]


def crop_seed(seed: int, index: int) -> int:
    """The seed of training sample ``index``'s crop (the ``CROPS`` stream of :mod:`gdp_lightning.seeds`)."""
    return stream_seed(seed, index, CROPS)


def region_side(size: int, scale: float, height: int, width: int) -> int:
    """The side of the square region that a ``size × size`` crop at ``scale`` (crop side / region side) is cut
    from in an image of ``height × width``: ``round(size / scale)``, at least 1 and at most the short side."""
    return min(max(1, round(size / scale)), height, width)


def _whole(value: Any) -> bool:
    """Whether ``value`` is a whole number (an int, a NumPy integer, ...), not a bool."""
    try:
        return not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        return False


class TrainingCrops(Dataset):
    """Seeded random crops of clean images for fine-tuning: sample i is a function of (seed, i) only.

    Sample ``i`` draws from ``torch.Generator().manual_seed(crop_seed(seed, i))``, in this order: with
    ``replay_fraction`` > 0, whether it is a replay crop (with that probability; at 0 nothing is drawn, so the
    crops are those of a run without replay); the image (uniform over ``paths``, or over ``replay`` for a replay
    crop), the scale ``s`` (log-uniform in ``[lo, hi]``, ``lo = max(min_scale, size / min(H, W))``,
    ``hi = max(max_scale, lo)``: an image whose short side is below ``size`` is upscaled so that the crop fits),
    the position of the square region of side ``round(size / s)`` cut from the image, and whether to flip it
    horizontally (probability 0.5, drawn only when ``flip``). The region is resized to ``size × size`` (bicubic,
    antialiased, clamped to [0, 1]); a region already of side ``size`` (in particular ``s = 1``) is taken as it is.

    Each sample is a dict: ``"x"``: ``(3, size, size)`` float32 in [0, 1] (gray images replicated to three
    channels, alpha dropped), ``"index"``: ``i``, ``"name"``: the image's file name without extension.

    :param paths: the clean image files (PNG, JPEG, ... see :func:`.read_image`), of any sizes.
    :param size: the side of the crops (the prior's image size).
    :param epoch_size: how many samples an epoch has (the dataset's length); :meth:`__getitem__` takes any
        non-negative index, the global sample index (see :class:`CropSampler`).
    :param min_scale: the smallest scale (crop side / region side): 0.25 cuts regions up to 4 × ``size``.
    :param max_scale: the largest scale; 1 = the region is never smaller than the crop.
    :param flip: flip half of the crops horizontally.
    :param seed: the seed of every random choice.
    :param cache: keep the decoded images in memory (per process: each DataLoader worker holds its own).
    :param replay: images of the prior's own domain to mix in against forgetting (cropped the same way).
    :param replay_fraction: the share of samples drawn from ``replay`` (in [0, 1)).
    """

    def __init__(
        self,
        paths: Sequence[Union[str, Path]],
        size: int,
        epoch_size: int,
        *,
        min_scale: float = 0.25,
        max_scale: float = 1.0,
        flip: bool = True,
        seed: int = 0,
        cache: bool = True,
        replay: Sequence[Union[str, Path]] = (),
        replay_fraction: float = 0.0,
    ):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.paths: List[Path] = [Path(p) for p in paths]
        self.replay: List[Path] = [Path(p) for p in replay]
        if not (math.isfinite(replay_fraction) and 0 <= replay_fraction < 1):
            raise DataError(f"--data.replay_fraction {replay_fraction}: give the share of replay crops in [0, 1)")
        if replay_fraction > 0 and not self.replay:
            raise DataError(f"--data.replay_fraction {replay_fraction}: there are no replay images; give them with "
                            "--data.replay_dir")
        self.replay_fraction = float(replay_fraction)
        if not self.paths:
            raise DataError("no training images: give the folder or files of clean images to fine-tune on")
        if not _whole(size) or size < 1:
            raise DataError(f"training crop size {size}: give a positive number of pixels (the prior's image size)")
        if not _whole(epoch_size) or epoch_size < 1:
            raise DataError(f"--data.epoch_size {epoch_size}: give the number of training crops an epoch has (>= 1)")
        if not (math.isfinite(min_scale) and math.isfinite(max_scale) and 0 < min_scale <= max_scale):
            raise DataError(f"--data.train_scales [{min_scale}, {max_scale}]: give two scales 0 < min <= max, "
                            "e.g. [0.25, 1.0]")
        self.size = int(size)
        self.epoch_size = int(epoch_size)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.flip = flip
        self.seed = seed
        self.cache = cache
        self._pixels: Dict[Path, Tensor] = {}

    def __len__(self) -> int:
        return self.epoch_size

    def _image(self, path: Path) -> Tensor:
        pixels = self._pixels.get(path)
        if pixels is None:
            pixels = read_image(path).pixels
            if self.cache:
                self._pixels[path] = pixels
        return pixels

    def scale_range(self, height: int, width: int) -> Tuple[float, float]:
        """``(lo, hi)``: the scales drawn for an image of ``height × width``."""
        lo = max(self.min_scale, self.size / min(height, width))
        return lo, max(self.max_scale, lo)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        i = int(i)
        if i < 0:
            raise IndexError(f"sample index {i}: give a non-negative index")
        generator = torch.Generator().manual_seed(crop_seed(self.seed, i))
        pool = self.paths
        if self.replay_fraction > 0 and float(torch.rand((), generator=generator, dtype=torch.float64)) \
                < self.replay_fraction:
            pool = self.replay
        which = int(torch.randint(len(pool), (1,), generator=generator))
        path = pool[which]
        pixels = self._image(path)
        height, width = pixels.shape[-2:]
        lo, hi = self.scale_range(height, width)
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        scale = lo if hi == lo else math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        side = region_side(self.size, scale, height, width)
        top = int(torch.randint(height - side + 1, (1,), generator=generator))
        left = int(torch.randint(width - side + 1, (1,), generator=generator))
        flipped = self.flip and float(torch.rand((), generator=generator)) < 0.5
        region = pixels[:, top : top + side, left : left + side]
        if side == self.size:
            x = region.clone(memory_format=torch.contiguous_format)  # never a view of the cached image
        else:
            x = F.interpolate(region[None], size=(self.size, self.size), mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp_(0, 1)
        if flipped:
            x = x.flip(-1)
        return {"x": x.to(torch.float32).contiguous(), "index": i, "name": path.stem}


class CropSampler(ProcessSampler):
    """Global sample indices of this process for the current epoch.

    An epoch has ``total = ceil(epoch_size / W) · W`` samples (``W`` processes), numbered from ``epoch · total``:
    rank ``r`` takes ``epoch · total + k`` for ``k = r, r + W, r + 2W, ... < total``, so every process takes the
    same number of samples (DDP training needs that), no two take the same, and no epoch repeats another's. It is a
    :class:`~torch.utils.data.DistributedSampler` on purpose: Lightning keeps it (instead of replacing it by its
    own) and calls :meth:`set_epoch` every epoch.

    With ``consumed``, an iteration starts instead at the global index ``consumed()`` (the samples all processes
    have trained on so far, read when the iteration starts): the data of a training step then depend on the step
    only, also when a run resumes from a checkpoint written in the middle of Lightning's epoch bookkeeping.

    :param epoch_size: the samples an epoch has in all (rounded up to a multiple of the number of processes).
    :param num_replicas: the number of processes (default: the world size of ``torch.distributed``, 1 when it
        is not initialised).
    :param rank: this process's rank (default: from ``torch.distributed``, 0 when it is not initialised).
    :param consumed: returns the number of samples taken so far by all processes (a multiple of ``W``).
    """

    def __init__(self, epoch_size: int, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 consumed: Optional[Callable[[], int]] = None):
        if epoch_size < 1:
            raise DataError(f"--data.epoch_size {epoch_size}: give the number of training crops an epoch has (>= 1)")
        super().__init__(epoch_size, num_replicas, rank)
        self.epoch_size = epoch_size
        self.total_size = math.ceil(epoch_size / self.num_replicas) * self.num_replicas
        self.num_samples = self.total_size // self.num_replicas
        self.consumed = consumed

    def set_epoch(self, epoch: int) -> None:
        """Take the indices of ``epoch`` (Lightning calls this before every epoch)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.total_size if self.consumed is None else int(self.consumed())
        return iter(range(start + self.rank, start + self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
