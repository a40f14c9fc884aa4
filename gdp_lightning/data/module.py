"""The Lightning data module of restoration: real degraded photos, or clean images degraded on the fly
(``gdp fit`` extends it: :class:`gdp_lightning.finetune.FinetuneData`).

Every batch of restoration holds inputs of one size, and its composition depends only on the inputs and
``batch_size``: the dataset's item k is the whole batch k, and the processes share out whole batches
(:class:`.ShardSampler`).
"""

from __future__ import annotations

import copy
import math
import os
from typing import List, Optional, Sequence, Tuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..degradations import Degradation
from ..errors import note, warn
from ..resources import estimate_bytes, format_bytes
from .batching import ShardSampler, group_batches
from .datasets import InputItem, find_inputs
from .images import DataError
from .restoration import MODES, QUANTIZATIONS, RestorationBatches, check_item, item_seed, keep_batch, parallel

__all__ = ["GDPDataModule"]

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
    :param max_pixels: leave out (and record as failed) inputs that restore to more pixels than this (the
        memory of a restoration grows with its pixels: about 240 bytes each, see :mod:`gdp_lightning.resources`;
        without a limit, a batch estimated to need more memory than is free gets a warning before it starts).
    :param task_operator: the task's operator (``gdp`` links the model's): the size an input restores to, the
        exposures a scene needs, the side files it takes, and synthetic mode's true operator unless ``degradation``
        is given.
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
        max_pixels: Optional[int] = None,
        task_operator: Optional[Degradation] = None,
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
        self.task_operator = task_operator
        self.crop_size = crop_size
        self.quantize = quantize
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
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
        checked = parallel(check_item, self.items)
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

    @property
    def hparams_for_log(self) -> dict:
        """The data settings a run's record and TensorBoard's HParams show."""
        return {"mode": self.mode, "batch_size": self.batch_size, "crop_size": self.crop_size,
                "quantize": self.quantize, "seed": self.seed, "inputs": len(self.items)}

    def check_memory(self, model_bytes: int, free: Optional[int]) -> None:
        """Warn when the largest batch would need more memory than ``free`` bytes (estimated by
        :func:`~gdp_lightning.resources.estimate_bytes` from its restored pixels and the model's ``model_bytes``)."""
        if not self.batches or not self.sizes or free is None:
            return
        pixels = [sum(math.prod(self.restored_size(*self.sizes[p])) for p in batch) for batch in self.batches]
        largest = max(range(len(self.batches)), key=pixels.__getitem__)
        need = estimate_bytes(pixels[largest], model_bytes=model_bytes)
        if need <= free:
            return
        first = self.batches[largest][0]
        height, width = self.restored_size(*self.sizes[first])
        mates = ", with its batch" if len(self.batches[largest]) > 1 else ""
        warn(f"{self.items[first].paths[0]} ({width}x{height}{mates}) needs about {format_bytes(need)} to restore and "
             f"{format_bytes(free)} is free: the run may be killed for memory; give --data.max_pixels to leave such "
             "inputs out, or a smaller --data.batch_size")

    def _check_pixels(self, item: InputItem, size: Tuple[int, int]) -> Tuple[Tuple[int, int], Optional[str]]:
        height, width = (self.crop_size, self.crop_size) if self.crop_size else size
        rh, rw = self.restored_size(height, width)
        if rh * rw <= self.max_pixels:
            return size, None
        return size, (f"{item.paths[0]}: restores to {rw}x{rh} = {rh * rw / 1e6:.1f} megapixels, more than "
                      f"--data.max_pixels {self.max_pixels} ({self.max_pixels / 1e6:.1f} megapixels); raise the limit "
                      "or give a smaller image")

    def skip_done(self, names: Sequence[str]) -> None:
        """The inputs an earlier run restored (the writer tells, once it knows its folder): the predict
        dataloader leaves them out after grouping, so the other batches keep their composition."""
        self._done = set(names)

    def setup(self, stage: Optional[str] = None) -> None:
        """Find the inputs, read their sizes and decode every file once (errors come before any restoration),
        group them into batches. The predict dataloader leaves out the inputs it was told are done
        (:meth:`skip_done`) after grouping, so the other batches keep their composition."""
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
                note(f"{len(done)} of {len(self.items)} inputs are already restored and are skipped "
                               "(--writer.overwrite true restores them again)")

    # ------------------------------------------------------------- dataloaders
    def dataset(self) -> RestorationBatches:
        """The dataset of the current :attr:`batches` (item k = batch k)."""
        return RestorationBatches(self.items, self.batches, self.sizes, self._observation_operator,
                                  self.crop_size, self.quantize, self.seed)

    def _dataloader(self, stage: str) -> DataLoader:
        if not self._prepared:
            self.setup(stage)
        dataset = self.dataset()
        return DataLoader(dataset, batch_size=None, sampler=ShardSampler(len(dataset)), num_workers=self.num_workers,
                          collate_fn=keep_batch)

    def predict_dataloader(self) -> DataLoader:
        if not self._prepared:
            self.setup("predict")
        self._drop_done()
        return self._dataloader("predict")

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test")

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("validate")
