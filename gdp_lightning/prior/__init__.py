"""The prior: a guided-diffusion-compatible UNet, named presets, checkpoint loading and export.

Knows nothing of diffusion math, tasks or Lightning.
"""

from .adapters import (
    LORA_TARGETS,
    PARTS,
    add_low_rank_adapters,
    adapter_parameters,
    has_adapters,
    merge_low_rank,
    select_modules,
    select_parameters,
    trainable_summary,
)
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
    state_dict_mismatches,
)
from .presets import PRESET_CONFIGS, PRESETS, get_preset, preset_names
from .spec import SCRIPT_DEFAULTS, DiffusionSettings, ModelFlags, PriorSpec, UNetFlags, create_model, parse_model_flags
from .unet import UNetModel, timestep_embedding

__all__ = [
    "CheckpointError",
    "LORA_TARGETS",
    "PARTS",
    "add_low_rank_adapters",
    "adapter_parameters",
    "has_adapters",
    "merge_low_rank",
    "select_modules",
    "select_parameters",
    "trainable_summary",
    "DiffusionSettings",
    "ModelFlags",
    "PRESETS",
    "PRESET_CONFIGS",
    "PriorSpec",
    "SCRIPT_DEFAULTS",
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
    "state_dict_mismatches",
    "parse_model_flags",
    "preset_names",
    "read_checkpoint",
    "save_state_dict",
    "timestep_embedding",
]
