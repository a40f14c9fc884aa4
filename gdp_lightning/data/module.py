"""The Lightning data module of restoration: real degraded photos, or clean images degraded on the fly; and of
fine-tuning (``gdp fit``): random crops of clean images, held-out images restored for validation.

Every batch of restoration holds inputs of one size, and its composition depends only on the inputs and
``batch_size``: the dataset's item k is the whole batch k, and the processes share out whole batches
(:class:`.ShardSampler`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..degradations import Degradation, load_kernel, load_mask
from ..errors import warn
from ..seeds import DATA, stream_seed
from .batching import EMPTY_BATCH, ShardSampler, group_batches
from .datasets import InputItem, check_image, find_inputs, image_size
from .images import DataError, read_image
from .training import CropSampler, TrainingCrops

__all__ = ["GDPDataModule", "RestorationBatches", "quantize_observation", "resize_and_center_crop", "item_seed"]

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


def resize_and_center_crop(image: Tensor, size: int) -> Tensor:
    """Resize ``(C, H, W)`` so its short side is ``size`` (bicubic, antialiased, clamped to [0, 1]) and cut the
    central ``size × size`` (the benchmark protocol). An image whose short side already is ``size`` is only cut."""
    height, width = image.shape[-2:]
    if min(height, width) != size:
        scale = size / min(height, width)
        if height <= width:
            new_size = (size, max(size, round(width * scale)))
        else:
            new_size = (max(size, round(height * scale)), size)
        image = F.interpolate(image[None], size=new_size, mode="bicubic", antialias=True, align_corners=False)[0]
        image = image.clamp(0, 1)
        height, width = new_size
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size].contiguous()


def _keep_batch(batch: Any) -> Any:
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
    ):
        self.items = list(items)
        self.batches = [list(b) for b in batches]
        self.sizes = list(sizes)
        self.degradation = degradation
        self.crop_size = crop_size
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
            x = (resize_and_center_crop(x, self.crop_size) * levels).round() / levels
            alpha = None if alpha is None else (resize_and_center_crop(alpha, self.crop_size) * levels).round() / levels
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


def _check_item(item: InputItem) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
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


def _parallel(function: Callable, arguments: Sequence) -> list:
    """``[function(a) for a in arguments]`` on a few threads (decoding releases the GIL); the first error in the
    order of ``arguments`` is raised."""
    workers = min(8, os.cpu_count() or 1, max(len(arguments), 1))
    if workers <= 1:
        return [function(a) for a in arguments]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, arguments))


class GDPDataModule(L.LightningDataModule):
    """The images to restore, in batches of one size, shared out over the processes by whole batches.

    Each batch is a dict:

    * ``"y"``: ``(B, 3·E, h, w)`` float32 in [0, 1], the observations (E exposures of an HDR scene stacked along
      the channels, each 3 channels, in the order of the sorted files; E = 1 otherwise);
    * ``"x"`` (synthetic mode only): ``(B, 3, H, W)`` the ground truth (after the crop);
    * ``"name"``: list of names (outputs are named after them), ``"index"``: ``(B,)`` long, the inputs' positions,
      ``"path"``: list of the (first) files;
    * ``"bits"``: list of 8 / 16, ``"mode"``: list of ``"L"``, ``"LA"``, ``"RGB"``, ``"RGBA"`` (of the input file),
      ``"alpha"``: list of ``(1, h, w)`` alpha channels or ``None`` (never stacked);
    * ``"mask"`` (only when an input of the batch has a ``_mask`` side file): ``(B, 1, h, w)``, 1 = observed (all
      ones for inputs without one);
    * ``"kernel"`` (only when an input of the batch has a ``_kernel`` side file): list of ``(k, k)`` kernels or
      ``None``.

    :param input_dir: the folder of inputs (non-recursive unless ``recursive``); with ``exposure_folders``, the
        folder of HDR scene folders. Side files ``<stem>_mask.png|npy`` (inpainting mask, white = observed) and
        ``<stem>_kernel.png|npy|txt`` (blur kernel) beside an image belong to it (real mode).
    :param files: image files to take instead of a folder (named by their file names without extension).
    :param mode: ``"real"``: the images are degraded photos (observations); ``"synthetic"``: they are clean images,
        degraded on the fly by ``degradation``, and kept as ground truth for metrics.
    :param list_file: a text file naming the inputs to take, in its order, one a line (with or without the
        extension; blank lines and ``#`` comments ignored).
    :param recursive: also take the images of the sub-folders (names keep the sub-path: ``"sub/photo"``).
    :param exposure_folders: HDR: every sub-folder of ``input_dir`` is a scene whose images, sorted by name, are
        its exposures (real mode).
    :param degradation: synthetic mode: the true operator that degrades the clean images. Default: the model's own
        operator (a copy), unless it learns its parameters (blind tasks), which then needs this.
    :param crop_size: synthetic mode: resize the short side to ``crop_size`` (bicubic, antialiased) and cut the
        central ``crop_size × crop_size`` (the benchmark protocol); default: keep the size.
    :param quantize: synthetic mode: the observations are stored as 8 bits, ``"round"`` (nearest level),
        ``"truncate"`` (floor, as the official GDP code) or ``"none"`` (kept as floats).
    :param seed: synthetic mode: input i's degradation randomness (noise, ...) comes from
        ``torch.Generator().manual_seed(seed · 1000003 + i)``, so it depends neither on the batches nor on the
        processes.
    :param batch_size: how many inputs of one size are restored together; ``gdp fit``: crops per training batch
        (and held-out images per validation batch).
    :param num_workers: DataLoader worker processes decoding the images (0 = in the main process).
    :param val_dir: ``gdp fit``: a folder of clean held-out images; validation crops them like synthetic mode
        (``crop_size``, default the prior's size), degrades them with the task's operator and restores them.
    :param val_split: ``gdp fit`` without ``val_dir``: hold out this many images of the input folder (a count
        >= 1, or a fraction < 1; chosen by ``seed``) for validation.
    :param epoch_size: ``gdp fit``: training crops per epoch (checkpoints are written at the end of each epoch).
    :param train_scales: ``gdp fit``: the range of scales of the random crops (crop side / cut region side,
        log-uniform): ``[0.25, 1]`` cuts regions of 1 to 4 times the prior's size and resizes them to it.
    :param flip: ``gdp fit``: flip half of the crops horizontally.
    :param max_pixels: leave out (and record as failed) inputs that restore to more pixels than this (the
        memory of a restoration grows with its pixels: about 240 bytes each, see :mod:`gdp_lightning.resources`;
        without a limit, a batch estimated to need more memory than is free gets a warning before it starts).
    :param task_operator: the task's operator (``gdp`` links the model's): the size an input restores to, the
        exposures a scene needs, the side files it takes, and synthetic mode's true operator unless ``degradation``
        is given.
    :param image_size: the prior's image size (``gdp`` links the model's): ``gdp fit``'s crops.

    In ``gdp fit``, ``input_dir`` (or ``files``) holds the clean training images, of any sizes: each training
    sample is a random crop at the prior's resolution (see :class:`.TrainingCrops`: seeded by ``(seed, sample)``,
    so the data do not depend on the workers or the number of GPUs).
    """

    def __init__(
        self,
        input_dir: Optional[str] = None,
        files: Optional[List[str]] = None,
        mode: str = "real",
        list_file: Optional[str] = None,
        recursive: bool = False,
        exposure_folders: bool = False,
        degradation: Optional[Degradation] = None,
        crop_size: Optional[int] = None,
        quantize: str = "round",
        seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        val_dir: Optional[str] = None,
        val_split: float = 0,
        epoch_size: int = 1000,
        train_scales: Tuple[float, float] = (0.25, 1.0),
        flip: bool = True,
        max_pixels: Optional[int] = None,
        task_operator: Optional[Degradation] = None,
        image_size: Optional[int] = None,
    ):
        super().__init__()
        if max_pixels is not None and max_pixels < 1:
            raise DataError(f"--data.max_pixels {max_pixels}: give a positive pixel count (or leave it unset)")
        self.max_pixels = max_pixels
        if mode not in MODES:
            raise DataError(f"--data.mode {mode!r}: choose one of {', '.join(MODES)}")
        if quantize not in QUANTIZATIONS:
            raise DataError(f"--data.quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
        if batch_size < 1:
            raise DataError(f"--data.batch_size {batch_size}: give at least 1")
        if num_workers < 0:
            raise DataError(f"--data.num_workers {num_workers}: give 0 or more")
        if crop_size is not None and crop_size < 1:
            raise DataError(f"--data.crop_size {crop_size}: give a positive size")
        if val_split < 0:
            raise DataError(f"--data.val_split {val_split}: give a count >= 1, a fraction < 1, or 0")
        if mode == "synthetic" and exposure_folders:
            raise DataError("--data.exposure_folders is for real HDR photos; synthetic mode degrades one clean image "
                            "per input (the operator makes the exposures)")
        self.input_dir = input_dir
        self.files = [files] if isinstance(files, (str, os.PathLike)) else files
        self.mode = mode
        self.list_file = list_file
        self.recursive = recursive
        self.exposure_folders = exposure_folders
        self.degradation = degradation
        self.task_operator, self.image_size = task_operator, image_size
        self.crop_size = crop_size
        self.quantize = quantize
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_dir, self.val_split = val_dir, val_split
        self.epoch_size, self.train_scales, self.flip = epoch_size, tuple(train_scales), flip
        #: ``gdp fit``: the training images, their crops, and the crop of the held-out images
        self.train_paths: List[Any] = []
        self.training_set: Optional[TrainingCrops] = None
        self._fit_crop: Optional[int] = None
        #: every input found, in order (``item.index`` is its position)
        self.items: List[InputItem] = []
        #: the batches to run: positions into :attr:`items` (in predict, without the inputs already done)
        self.batches: List[List[int]] = []
        #: inputs left out because a file of theirs cannot be used, with the reason (see :meth:`_discover`)
        self.rejected: List[Tuple[InputItem, str]] = []
        #: every input's ``(H, W)`` (synthetic: after the crop)
        self.sizes: List[Tuple[int, int]] = []
        self._all_batches: List[List[int]] = []
        self._observation_operator: Optional[Degradation] = None
        self._done: set = set()
        self._prepared = False

    # ------------------------------------------------------------------ setup
    def _resolve_synthetic_operator(self) -> Degradation:
        given = self.degradation is not None
        operator = self.degradation if given else self.task_operator
        if operator is None:
            raise DataError("synthetic mode needs the true operator that degrades the clean images: give "
                            "--data.degradation (or the task's, task_operator)")
        operator = copy.deepcopy(operator).cpu()
        if not given:
            height, width = next((size for size in self.sizes if size != (0, 0)), self.sizes[0])
            generator = torch.Generator().manual_seed(item_seed(self.seed, 0))
            operator.init_parameters(1, height, width, [generator], None)
            if operator.learnable_parameters():
                raise DataError("the task's operator learns its parameters (blind); give the true operator that "
                                "degrades the clean images with --data.degradation")
        return operator

    def _check_exposure_count(self) -> None:
        expected = getattr(self.task_operator, "num_observations", None)
        if self.mode != "real" or not isinstance(expected, int):
            return
        for item in self.items:
            if len(item.paths) != expected:
                if expected > 1 and len(item.paths) == 1:
                    raise DataError(f"{item.paths[0]}: the task's operator takes {expected} exposures per scene; "
                                    "give scene folders with --data.exposure_folders")
                raise DataError(f"{item.paths[0].parent}: {len(item.paths)} exposures but the task's operator takes "
                                f"{expected}; give scenes of {expected} exposures")

    def _check_side_files(self) -> None:
        """A mask or kernel file beside an input needs a task whose operator takes it."""
        if self.task_operator is None:
            return
        for item in self.items:
            for kind in ("mask", "kernel"):
                path = getattr(item, kind, None)
                if path is not None and not self.task_operator.takes(kind):
                    raise DataError(f"{path}: a {kind} file, but the task's operator takes no {kind}; remove it or "
                                    "use a task that does")

    def _discover(self) -> None:
        """Find the inputs and check every one (decoded whole, side files read) before anything is restored. An
        input that fails is left out and listed in :attr:`rejected` with its one-line reason (the writer records
        it as failed, the others are restored); when every input fails, the first reason is raised."""
        synthetic = self.mode == "synthetic"
        self.items = find_inputs(self.input_dir, self.files, recursive=self.recursive,
                                 exposure_folders=self.exposure_folders, list_file=self.list_file,
                                 side_files=not synthetic)
        self._check_side_files()
        checked = _parallel(_check_item, self.items)
        if self.max_pixels is not None:
            checked = [self._check_pixels(item, size) if problem is None else (size, problem)
                       for item, (size, problem) in zip(self.items, checked)]
        self.rejected = [(item, problem) for item, (_, problem) in zip(self.items, checked) if problem is not None]
        if len(self.rejected) == len(self.items):
            raise DataError(self.rejected[0][1] + ("" if len(self.items) == 1 else
                                                   f" (and every other of the {len(self.items)} inputs fails too)"))
        for item, problem in self.rejected[:5]:
            warn(f"{problem}; {item.name} is left out and recorded as failed")
        if len(self.rejected) > 5:
            warn(f"{len(self.rejected) - 5} more inputs fail their check and are left out")
        file_sizes = [size if size is not None else (0, 0) for size, _ in checked]
        self.sizes = [(self.crop_size, self.crop_size) for _ in self.items] if self.crop_size else file_sizes
        good = [p for p, (_, problem) in enumerate(checked) if problem is None]
        # the exposure count is part of the key so that scenes of one size but different counts never share a batch
        keys = [(*self.sizes[p], len(self.items[p].paths)) for p in good]
        self._all_batches = [[good[k] for k in batch] for batch in group_batches(keys, self.batch_size)]
        self._prepared = True

    def restored_size(self, height: int, width: int) -> Tuple[int, int]:
        """The size an input of ``height × width`` restores to (the operator's input size in real mode)."""
        operator = self.task_operator if self.mode == "real" else None
        return tuple(operator.input_size(height, width)) if operator is not None else (height, width)

    def _check_pixels(self, item: InputItem, size: Tuple[int, int]) -> Tuple[Tuple[int, int], Optional[str]]:
        height, width = (self.crop_size, self.crop_size) if self.crop_size else size
        rh, rw = self.restored_size(height, width)
        if rh * rw <= self.max_pixels:
            return size, None
        return size, (f"{item.paths[0]}: restores to {rw}x{rh} = {rh * rw / 1e6:.1f} megapixels, more than "
                      f"--data.max_pixels {self.max_pixels} ({self.max_pixels / 1e6:.1f} megapixels); raise the limit "
                      "or give a smaller image")

    def _held_out(self, items: List[InputItem]) -> Tuple[List[InputItem], List[InputItem]]:
        """(training, held-out) images of the input folder: ``val_split`` of them, chosen by ``seed``."""
        count = int(self.val_split) if self.val_split >= 1 else math.floor(self.val_split * len(items))
        if self.val_split > 0 and count == 0:
            raise DataError(f"--data.val_split {self.val_split}: holds out no image of {len(items)}; give a larger "
                            "fraction or a count")
        if count >= len(items):
            raise DataError(f"--data.val_split {self.val_split}: holds out {count} of {len(items)} images, none is "
                            "left to train on; give a smaller split or --data.val_dir")
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(item_seed(self.seed, 0)))
        held = set(order[:count].tolist())
        return ([it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held])

    def _setup_fit(self) -> None:
        """Training images and held-out validation images; the validation is synthetic (ground truth kept)."""
        if self._prepared:
            return
        if self.exposure_folders:
            raise DataError("--data.exposure_folders is for restoring HDR scenes; gdp fit trains on single images")
        found = find_inputs(self.input_dir, self.files, recursive=self.recursive, list_file=self.list_file,
                            side_files=False)
        if self.val_dir is not None:
            train, held = found, find_inputs(self.val_dir, recursive=self.recursive, side_files=False)
        else:
            train, held = self._held_out(found)
        _parallel(check_image, [item.paths[0] for item in train + held])
        size = self.image_size
        if size is None:
            raise DataError("gdp fit needs the prior's image size to crop the training images (image_size)")
        self.train_paths = [item.paths[0] for item in train]
        self.training_set = TrainingCrops(self.train_paths, size, self.epoch_size, min_scale=self.train_scales[0],
                                          max_scale=self.train_scales[1], flip=self.flip, seed=self.seed)
        # validation: the held-out images as synthetic inputs, renumbered 0..n-1
        self.items = [dataclasses.replace(item, index=i) for i, item in enumerate(held)]
        self._fit_crop = self.crop_size or size
        self.sizes = [(self._fit_crop, self._fit_crop) for _ in self.items]
        self._all_batches = group_batches(self.sizes, self.batch_size)
        self.batches = [list(b) for b in self._all_batches]
        if self.items:
            self._observation_operator = self._resolve_synthetic_operator()
        self._prepared = True

    def skip_done(self, names: Sequence[str]) -> None:
        """The inputs an earlier run restored (the writer tells, once it knows its folder): the predict
        dataloader leaves them out after grouping, so the other batches keep their composition."""
        self._done = set(names)

    def setup(self, stage: Optional[str] = None) -> None:
        """Find the inputs, read their sizes and decode every file once (errors come before any restoration),
        group them into batches. The predict dataloader leaves out the inputs it was told are done
        (:meth:`skip_done`) after grouping, so the other batches keep their composition."""
        if stage == "fit":
            self._setup_fit()
            return
        if self.mode == "real" and self.crop_size is not None:
            raise DataError("--data.crop_size applies to --data.mode synthetic only (real photos are restored whole)")
        if not self._prepared:
            self._discover()
        self._check_exposure_count()
        if self.mode == "synthetic" and self._observation_operator is None:
            self._observation_operator = self._resolve_synthetic_operator()
        self.batches = [list(b) for b in self._all_batches]

    def _drop_done(self) -> None:
        """Leave out the inputs that are done. Called when the predict dataloader is made: Lightning sets up the
        data module before the callbacks, so a writer knows its folder (and tells :meth:`skip_done`) only then."""
        if self._done:
            done = {p for p, item in enumerate(self.items) if item.name in self._done}
            batches = [[p for p in b if p not in done] for b in self._all_batches]
            self.batches = [b for b in batches if b]
            if done:
                from lightning.pytorch.utilities import rank_zero_info

                rank_zero_info(f"{len(done)} of {len(self.items)} inputs are already restored and are skipped "
                               "(--writer.overwrite true restores them again)")

    # ------------------------------------------------------------- dataloaders
    def dataset(self) -> RestorationBatches:
        """The dataset of the current :attr:`batches` (item k = batch k)."""
        return RestorationBatches(self.items, self.batches, self.sizes, self._observation_operator,
                                  self._fit_crop or self.crop_size, self.quantize, self.seed)

    def _dataloader(self, stage: str) -> DataLoader:
        if not self._prepared:
            self.setup(stage)
        dataset = self.dataset()
        return DataLoader(dataset, batch_size=None, sampler=ShardSampler(len(dataset)), num_workers=self.num_workers,
                          collate_fn=_keep_batch)

    def predict_dataloader(self) -> DataLoader:
        if not self._prepared:
            self.setup("predict")
        self._drop_done()
        return self._dataloader("predict")

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test")

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("validate")

    def train_dataloader(self) -> DataLoader:
        """``gdp fit``: batches of random crops (``{"x": (B, 3, S, S), "index": (B,), "name": [...]}``)."""
        if not self._prepared:
            self.setup("fit")
        sampler = CropSampler(self.epoch_size, consumed=self._samples_consumed)
        return DataLoader(self.training_set, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, drop_last=True, persistent_workers=self.num_workers > 0)

    def _samples_consumed(self) -> int:
        """Training crops taken so far by all processes: step k's batches are samples k·B·A·W onwards (batch size
        B, A batches per optimizer step, W processes), whatever epoch Lightning counts after a resume."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches * self.batch_size * trainer.world_size
