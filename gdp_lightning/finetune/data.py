"""``gdp fit``'s data (:class:`FinetuneData`): random crops of clean images at the prior's size to train on, and
held-out images that the validation degrades with the task's operator and restores."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ..data import GDPDataModule, InputItem, RestorationBatches, TrainingCrops, check_image, find_inputs, group_batches
from ..data.images import DataError
from ..data.restoration import item_seed, parallel
from ..data.training import CropSampler

__all__ = ["FinetuneData"]


class FinetuneData(GDPDataModule):
    """The data of ``gdp fit``. ``input_dir`` (or ``files``) holds the clean training images, of any sizes: each
    training sample is a random crop at the prior's resolution (see :class:`~gdp_lightning.data.TrainingCrops`:
    seeded by ``(seed, sample)``, so the data do not depend on the workers or the number of GPUs); ``batch_size``
    crops make a training batch, and held-out images make the validation batches.

    :param val_dir: a folder of clean held-out images; validation crops them like synthetic mode (``crop_size``,
        default the prior's size), degrades them with the task's operator and restores them.
    :param val_split: without ``val_dir``: hold out this many images of the input folder (a count >= 1, or a
        fraction < 1; chosen by ``seed``) for validation.
    :param val_scale: the scale the held-out images are validated at (crop side / region side, as
        ``train_scales``): the central region of side crop / ``val_scale`` of each, resized to the crop (1: the
        central crop of the image as it is, the scale of training crops at ``train_scales [1, 1]``). Default: the
        whole image, its short side resized to the crop (the benchmark protocol).
    :param epoch_size: training crops per epoch (checkpoints are written at the end of each epoch).
    :param train_scales: the range of scales of the random crops (crop side / cut region side, log-uniform):
        ``[0.25, 1]`` cuts regions of 1 to 4 times the prior's size and resizes them to it.
    :param flip: flip half of the crops horizontally.
    :param replay_dir: a folder of images of the prior's own domain (e.g. the photos it was trained on) to mix into
        the training crops against forgetting.
    :param replay_fraction: the share of training crops cut from ``replay_dir`` (in [0, 1)), chosen per crop
        (seeded by its index).
    :param image_size: the prior's image size, the crops' (``gdp`` links the model's).
    :param kwargs: the data options of restoration (see :class:`~gdp_lightning.data.GDPDataModule`).
    """

    def __init__(self, val_dir: Optional[str] = None, val_split: float = 0, val_scale: Optional[float] = None,
                 epoch_size: int = 1000,
                 train_scales: Tuple[float, float] = (0.25, 1.0), flip: bool = True,
                 replay_dir: Optional[str] = None, replay_fraction: float = 0.0,
                 image_size: Optional[int] = None, **kwargs: Any):
        super().__init__(**kwargs)
        if val_split < 0:
            raise DataError(f"--data.val_split {val_split}: give a count >= 1, a fraction < 1, or 0")
        if val_scale is not None and not (math.isfinite(val_scale) and val_scale > 0):
            raise DataError(f"--data.val_scale {val_scale}: give the scale to validate at (> 0, e.g. 1.0 for crops "
                            "of the images as they are), or null for whole images")
        if not 0 <= replay_fraction < 1:
            raise DataError(f"--data.replay_fraction {replay_fraction}: give the share of replay crops in [0, 1)")
        if (replay_dir is None) != (replay_fraction == 0):
            raise DataError("--data.replay_dir and --data.replay_fraction go together: give the folder of the "
                            "prior's own images and the share of crops to cut from them (e.g. 0.25)")
        self.replay_dir, self.replay_fraction = replay_dir, replay_fraction
        self.val_dir, self.val_split, self.val_scale = val_dir, val_split, val_scale
        self.epoch_size, self.train_scales, self.flip = epoch_size, tuple(train_scales), flip
        self.image_size = image_size
        #: the training images, their crops, and the crop of the held-out images
        self.train_paths: List[Any] = []
        self.training_set: Optional[TrainingCrops] = None
        self._fit_crop: Optional[int] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "fit":
            self._setup_fit()
        else:
            super().setup(stage)

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
            train, held = found, find_inputs(self.val_dir, recursive=self.recursive, side_files=False,
                                             option="--data.val_dir")
        else:
            train, held = self._held_out(found)
        replay = [] if self.replay_dir is None else find_inputs(self.replay_dir, recursive=self.recursive,
                                                                  side_files=False, option="--data.replay_dir")
        parallel(check_image, [item.paths[0] for item in train + held + replay])
        size = self.image_size
        if size is None:
            raise DataError("gdp fit needs the prior's image size to crop the training images (image_size)")
        self.train_paths = [item.paths[0] for item in train]
        self.training_set = TrainingCrops(self.train_paths, size, self.epoch_size, min_scale=self.train_scales[0],
                                          max_scale=self.train_scales[1], flip=self.flip, seed=self.seed,
                                          replay=[item.paths[0] for item in replay],
                                          replay_fraction=self.replay_fraction)
        # validation: the held-out images as synthetic inputs, renumbered 0..n-1
        self.items = [dataclasses.replace(item, index=i) for i, item in enumerate(held)]
        self._fit_crop = self.crop_size or size
        self.sizes = [(self._fit_crop, self._fit_crop) for _ in self.items]
        self._all_batches = group_batches(self.sizes, self.batch_size)
        self.batches = [list(b) for b in self._all_batches]
        if self.items:
            self._observation_operator = self._resolve_synthetic_operator()
        self._prepared = True

    def dataset(self) -> RestorationBatches:
        """The held-out images at the crop of the prior's size (or ``crop_size``), at ``val_scale``."""
        return RestorationBatches(self.items, self.batches, self.sizes, self._observation_operator,
                                  self._fit_crop or self.crop_size, self.quantize, self.seed, self.val_scale)

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
