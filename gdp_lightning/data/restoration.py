"""The dataset of restoration (no Lightning): :class:`RestorationBatches` makes whole batches of one size from the
inputs, real (observations, with their side files) or synthetic (clean images degraded on the fly, the ground truth
kept); and the checks every input passes before anything is restored.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..degradations import Degradation, load_kernel, load_mask
from ..seeds import DATA, stream_seed
from .batching import EMPTY_BATCH
from .datasets import InputItem, check_image, image_size
from .images import DataError, read_image
from .training import region_side

__all__ = ["RestorationBatches", "quantize_observation", "resize_and_center_crop", "item_seed", "check_item",
           "parallel", "keep_batch", "MODES", "QUANTIZATIONS"]

MODES = ("real", "synthetic")
QUANTIZATIONS = ("round", "truncate", "none")


def item_seed(seed: int, index: int) -> int:
    """The seed of input ``index``'s synthetic degradation (the ``DATA`` stream of :mod:`gdp_lightning.seeds`)."""
    return stream_seed(seed, index, DATA)


def quantize_observation(y: Tensor, quantize: str) -> Tensor:
    """Clamp to [0, 1] and store as 8 bits: ``"round"`` (nearest level), ``"truncate"`` (floor, as the official
    GDP code) or ``"none"`` (clamp only)."""
    y = y.clamp(0, 1)
    if quantize == "round":
        return (y * 255).round() / 255
    if quantize == "truncate":
        return (y * 255).floor() / 255
    if quantize == "none":
        return y
    raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")


def resize_and_center_crop(image: Tensor, size: int, scale: Optional[float] = None) -> Tensor:
    """A ``size × size`` crop of the centre of ``(C, H, W)``.

    Without ``scale`` (the benchmark protocol): resize the image so its short side is ``size`` (bicubic,
    antialiased, clamped to [0, 1]) and cut the central ``size × size``; an image whose short side already is
    ``size`` is only cut. With ``scale`` (crop side / region side, as the training crops of ``gdp fit``): cut the
    central square region of side ``round(size / scale)`` (at most the short side) and resize it to ``size``;
    at ``scale = 1`` that is the central ``size × size`` of the image as it is."""
    height, width = image.shape[-2:]
    if scale is not None:
        side = region_side(size, scale, height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[..., top : top + side, left : left + side]
        height = width = side
    if min(height, width) != size:
        factor = size / min(height, width)
        if height <= width:
            new_size = (size, max(size, round(width * factor)))
        else:
            new_size = (max(size, round(height * factor)), size)
        image = F.interpolate(image[None], size=new_size, mode="bicubic", antialias=True, align_corners=False)[0]
        image = image.clamp(0, 1)
        height, width = new_size
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size].contiguous()


def keep_batch(batch: Any) -> Any:
    """The DataLoader's collate function: the dataset already returns whole batches."""
    return batch


def _side_file_error(error: Exception) -> DataError:
    return DataError(" ".join(str(error).split()))


class RestorationBatches(Dataset):
    """Item k is the whole batch k, collated (see :class:`GDPDataModule` for the dict).

    :param items: every input.
    :param batches: positions into ``items``, one list per batch, of inputs of one size.
    :param sizes: each input's ``(H, W)`` (after the crop in synthetic mode), checked against the decoded image.
    :param degradation: synthetic mode: the true operator making the observations; ``None`` = real mode.
    :param crop_size: synthetic mode: the benchmark crop (see :func:`resize_and_center_crop`), or ``None``.
    :param crop_scale: with ``crop_size``: cut the crop at this scale instead (see :func:`resize_and_center_crop`).
    :param quantize: synthetic mode: how observations are stored (see :func:`quantize_observation`).
    :param seed: synthetic mode: input i's randomness comes from ``torch.Generator().manual_seed(item_seed(seed, i))``.
    """

    def __init__(
        self,
        items: Sequence[InputItem],
        batches: Sequence[Sequence[int]],
        sizes: Sequence[Tuple[int, int]],
        degradation: Optional[Degradation] = None,
        crop_size: Optional[int] = None,
        quantize: str = "round",
        seed: int = 0,
        crop_scale: Optional[float] = None,
    ):
        self.items = list(items)
        self.batches = [list(b) for b in batches]
        self.sizes = list(sizes)
        self.degradation = degradation
        self.crop_size = crop_size
        self.crop_scale = crop_scale
        self.quantize = quantize
        self.seed = seed

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, path, expected: Tuple[int, int]):
        image = read_image(path)
        if image.size != tuple(expected):
            raise DataError(f"{path}: decoded as {image.size[0]}x{image.size[1]} but its header said "
                            f"{expected[0]}x{expected[1]}; was the file replaced during the run?")
        return image

    def _real(self, item: InputItem, size: Tuple[int, int]) -> Dict[str, Any]:
        exposures = [self._read(path, size) for path in item.paths]
        return {"y": torch.cat([e.pixels for e in exposures]), "image": exposures[0]}

    def _synthetic(self, item: InputItem, size: Tuple[int, int]) -> Dict[str, Any]:
        image = read_image(item.paths[0])
        x, alpha = image.pixels, image.alpha
        if self.crop_size:
            levels = float(2**image.bits - 1)  # the resized ground truth is stored at the file's bit depth
            x = (resize_and_center_crop(x, self.crop_size, self.crop_scale) * levels).round() / levels
            if alpha is not None:
                alpha = (resize_and_center_crop(alpha, self.crop_size, self.crop_scale) * levels).round() / levels
        if tuple(x.shape[-2:]) != tuple(size):
            raise DataError(f"{item.paths[0]}: decoded as {x.shape[-2]}x{x.shape[-1]} but its header said "
                            f"{size[0]}x{size[1]}; was the file replaced during the run?")
        generator = torch.Generator().manual_seed(item_seed(self.seed, item.index))
        height, width = x.shape[-2:]
        with torch.no_grad():
            self.degradation.init_parameters(1, height, width, [generator], None)
            y = self.degradation.observe(x[None], generators=[generator])[0]
        image.alpha = alpha
        # the true kernel, when the operator blurs: a blind restoration's learned kernel is scored against it
        kernels = [v[0, 0] for k, v in self.degradation.phi().items() if k.split(".")[-1] == "kernel"]
        return {"y": quantize_observation(y.detach().float(), self.quantize), "x": x, "image": image,
                "true_kernel": kernels[0] if kernels else None}

    def _make(self, item: InputItem, size: Tuple[int, int]) -> Dict[str, Any]:
        made = (self._synthetic if self.degradation is not None else self._real)(item, size)
        height, width = made["y"].shape[-2:]
        made["mask"] = None if item.mask is None else _load_mask(item, (height, width))
        made["kernel"] = None if item.kernel is None else _load_kernel(item)
        return made

    def __getitem__(self, batch_index: int) -> Dict[str, Any]:
        if batch_index == EMPTY_BATCH:  # a process with nothing to do (see ShardSampler)
            return {"name": [], "index": torch.zeros(0, dtype=torch.long)}
        positions = self.batches[batch_index]
        items, made, failed = [], [], []
        for p in positions:  # an input that cannot be read now (replaced during the run) fails alone
            item = self.items[p]
            try:
                made.append(self._make(item, self.sizes[p]))
                items.append(item)
            except DataError as e:
                failed.append({"name": item.name, "index": item.index, "path": str(item.paths[0]),
                               "error": " ".join(str(e).split())})
        if not items:
            return {"name": [], "index": torch.zeros(0, dtype=torch.long), "failed": failed}
        batch: Dict[str, Any] = {
            "y": torch.stack([m["y"] for m in made]),
            "name": [item.name for item in items],
            "index": torch.tensor([item.index for item in items], dtype=torch.long),
            "path": [str(item.paths[0]) for item in items],
            "bits": [m["image"].bits for m in made],
            "mode": [m["image"].mode for m in made],
            "alpha": [m["image"].alpha for m in made],
        }
        if failed:
            batch["failed"] = failed
        if self.degradation is not None:
            batch["x"] = torch.stack([m["x"] for m in made])
            if any(m["true_kernel"] is not None for m in made):
                batch["true_kernel"] = [m["true_kernel"] for m in made]
        height, width = batch["y"].shape[-2:]
        if any(m["mask"] is not None for m in made):
            batch["mask"] = torch.stack([torch.ones(1, height, width) if m["mask"] is None else m["mask"][None]
                                         for m in made])
        if any(m["kernel"] is not None for m in made):
            batch["kernel"] = [m["kernel"] for m in made]
        return batch


def _load_mask(item: InputItem, size: Tuple[int, int]) -> Tensor:
    try:
        mask = load_mask(item.mask)
    except (ValueError, OSError) as e:
        raise _side_file_error(e) from None
    if tuple(mask.shape) != tuple(size):
        raise DataError(f"{item.mask}: the mask is {mask.shape[0]}x{mask.shape[1]} but {item.paths[0]} is "
                        f"{size[0]}x{size[1]}; give a mask of the image's size")
    return mask


def _load_kernel(item: InputItem) -> Tensor:
    try:
        return load_kernel(item.kernel)
    except (ValueError, OSError) as e:
        raise _side_file_error(e) from None


def check_item(item: InputItem) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """``(size, None)`` for an input whose files all read (images decoded whole, side files parsed and of the
    image's size), else ``(None, reason)``."""
    try:
        size = image_size(item.paths[0])
        for path in item.paths:
            check_image(path)
        if item.mask is not None:
            _load_mask(item, size)
        if item.kernel is not None:
            _load_kernel(item)
        return size, None
    except DataError as e:
        return None, " ".join(str(e).split())


def parallel(function: Callable, arguments: Sequence) -> list:
    """``[function(a) for a in arguments]`` on a few threads (decoding releases the GIL); the first error in the
    order of ``arguments`` is raised."""
    workers = min(8, os.cpu_count() or 1, max(len(arguments), 1))
    if workers <= 1:
        return [function(a) for a in arguments]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, arguments))
