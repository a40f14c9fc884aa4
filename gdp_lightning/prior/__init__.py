"""The prior: a guided-diffusion-compatible UNet, named presets, checkpoint loading and export.

Knows nothing of diffusion math, tasks or Lightning.
"""

from .checkpoint import (
    CheckpointError,
    export_checkpoint,
    export_state_dict,
    extract_unet_state_dict,
    load_prior,
    load_prior_weights,
    load_unet_weights,
    matching_presets,
    read_checkpoint,
    save_state_dict,
)
from .presets import PRESET_CONFIGS, PRESETS, get_preset, preset_names
from .spec import DiffusionSettings, PriorSpec, UNetFlags, create_model
from .unet import UNetModel, timestep_embedding

__all__ = [
    "CheckpointError",
    "DiffusionSettings",
    "PRESETS",
    "PRESET_CONFIGS",
    "PriorSpec",
    "UNetFlags",
    "UNetModel",
    "create_model",
    "export_checkpoint",
    "export_state_dict",
    "extract_unet_state_dict",
    "get_preset",
    "load_prior",
    "load_prior_weights",
    "load_unet_weights",
    "matching_presets",
    "preset_names",
    "read_checkpoint",
    "save_state_dict",
    "timestep_embedding",
]
