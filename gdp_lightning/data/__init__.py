"""Data: reading and writing images, finding the inputs, same-size batches and the restoration data module.

See :mod:`.datasets` for the naming rules of inputs and side files, and :class:`.GDPDataModule` for the batch dict.
"""

from .batching import ShardSampler, group_batches
from .datasets import (
    IMAGE_EXTENSIONS,
    KERNEL_EXTENSIONS,
    MASK_EXTENSIONS,
    InputItem,
    check_image,
    find_inputs,
    image_size,
    read_list_file,
)
from .images import DataError, ImageFile, read_image, write_image
from .module import GDPDataModule
from .restoration import RestorationBatches, item_seed, quantize_observation, resize_and_center_crop
from .training import CropSampler, TrainingCrops

__all__ = [
    "CropSampler",
    "DataError",
    "GDPDataModule",
    "IMAGE_EXTENSIONS",
    "ImageFile",
    "InputItem",
    "KERNEL_EXTENSIONS",
    "MASK_EXTENSIONS",
    "RestorationBatches",
    "ShardSampler",
    "TrainingCrops",
    "check_image",
    "find_inputs",
    "group_batches",
    "image_size",
    "item_seed",
    "quantize_observation",
    "read_image",
    "read_list_file",
    "resize_and_center_crop",
    "write_image",
]
