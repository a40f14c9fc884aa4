"""Named priors: the released guided-diffusion architectures with the diffusion they were trained with."""

from __future__ import annotations

import copy
from typing import Dict, List

from .spec import DiffusionSettings, PriorSpec, UNetFlags

__all__ = ["PRESETS", "PRESET_CONFIGS", "get_preset", "preset_names"]

_OPENAI = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"

# The released ImageNet/LSUN models share these flags (guided-diffusion README, MODEL_FLAGS).
_ADM = dict(
    num_channels=256,
    num_res_blocks=2,
    learn_sigma=True,
    attention_resolutions="32,16,8",
    num_heads=4,
    num_head_channels=64,
    use_scale_shift_norm=True,
    resblock_updown=True,
    use_fp16=True,
)


def _adm(**flags) -> UNetFlags:
    return UNetFlags(**{**_ADM, **flags})


PRESETS: Dict[str, PriorSpec] = {
    "imagenet256_uncond": PriorSpec(
        name="imagenet256_uncond",
        unet=_adm(image_size=256, class_cond=False),
        diffusion=DiffusionSettings(noise_schedule="linear"),
        checkpoint="256x256_diffusion_uncond.pt",
        source=_OPENAI + "256x256_diffusion_uncond.pt",
        description="openai guided-diffusion, ImageNet 256x256, unconditional: the prior of GDP, DDRM, DDNM and DPS",
    ),
    "imagenet256_cond": PriorSpec(
        name="imagenet256_cond",
        unet=_adm(image_size=256, class_cond=True),
        diffusion=DiffusionSettings(noise_schedule="linear"),
        checkpoint="256x256_diffusion.pt",
        source=_OPENAI + "256x256_diffusion.pt",
        description="openai guided-diffusion, ImageNet 256x256, class-conditional",
    ),
    "imagenet64_cond": PriorSpec(
        name="imagenet64_cond",
        unet=_adm(
            image_size=64,
            class_cond=True,
            num_channels=192,
            num_res_blocks=3,
            use_new_attention_order=True,
            dropout=0.1,
        ),
        diffusion=DiffusionSettings(noise_schedule="cosine"),
        checkpoint="64x64_diffusion.pt",
        source=_OPENAI + "64x64_diffusion.pt",
        description="openai guided-diffusion, ImageNet 64x64, class-conditional, cosine schedule",
    ),
    "imagenet128_cond": PriorSpec(
        name="imagenet128_cond",
        unet=_adm(image_size=128, class_cond=True, num_head_channels=-1),
        diffusion=DiffusionSettings(noise_schedule="linear"),
        checkpoint="128x128_diffusion.pt",
        source=_OPENAI + "128x128_diffusion.pt",
        description="openai guided-diffusion, ImageNet 128x128, class-conditional",
    ),
    "imagenet512_cond": PriorSpec(
        name="imagenet512_cond",
        unet=_adm(image_size=512, class_cond=True, use_fp16=False),
        diffusion=DiffusionSettings(noise_schedule="linear"),
        checkpoint="512x512_diffusion.pt",
        source=_OPENAI + "512x512_diffusion.pt",
        description="openai guided-diffusion, ImageNet 512x512, class-conditional",
    ),
    "lsun256": PriorSpec(
        name="lsun256",
        unet=_adm(image_size=256, class_cond=False, dropout=0.1),
        diffusion=DiffusionSettings(noise_schedule="linear"),
        checkpoint="lsun_bedroom.pt",
        source=_OPENAI + "lsun_bedroom.pt (also lsun_cat.pt, lsun_horse.pt; lsun_horse_nodropout.pt with dropout 0.0)",
        description="openai guided-diffusion, LSUN 256x256 (bedroom, cat, horse), unconditional",
    ),
    "ffhq256_dps": PriorSpec(
        name="ffhq256_dps",
        unet=UNetFlags(
            image_size=256,
            num_channels=128,
            num_res_blocks=1,
            learn_sigma=True,
            attention_resolutions="16",
            num_heads=4,
            num_head_channels=64,
            use_scale_shift_norm=True,
            resblock_updown=True,
        ),
        diffusion=DiffusionSettings(noise_schedule="linear"),
        checkpoint="ffhq_10m.pt",
        source="DPS (Chung et al. 2023), github.com/DPS2022/diffusion-posterior-sampling: ffhq_10m.pt",
        description="FFHQ 256x256 faces, unconditional, as released with DPS",
    ),
    "skimage64": PriorSpec(
        name="skimage64",
        unet=UNetFlags(
            image_size=64,
            num_channels=64,
            num_res_blocks=2,
            channel_mult="1,2,2,2",
            learn_sigma=True,
            attention_resolutions="16,8",
            num_heads=4,
            num_head_channels=32,
            use_scale_shift_norm=True,
            dropout=0.1,
            resblock_updown=True,
        ),
        diffusion=DiffusionSettings(noise_schedule="linear"),
        checkpoint="skimage64.pt",
        source="../shared/priors/skimage64.pt (trained with the reference code on scikit-image's bundled photos)",
        description="64x64, 11 M parameters, scikit-image's colour photos: small enough for tests and CPU demos",
    ),
}


def preset_names() -> List[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> PriorSpec:
    """A copy of the named preset (edit it freely)."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown prior preset {name!r}; presets: {', '.join(preset_names())}") from None


# The prior config (``gdp --config ...``) of each preset, relative to the repository root.
PRESET_CONFIGS: Dict[str, str] = {
    "imagenet256_uncond": "configs/prior/imagenet256.yaml",
    "imagenet256_cond": "configs/prior/imagenet256_cond.yaml",
    "imagenet64_cond": "configs/prior/imagenet64.yaml",
    "imagenet128_cond": "configs/prior/imagenet128.yaml",
    "imagenet512_cond": "configs/prior/imagenet512.yaml",
    "lsun256": "configs/prior/lsun256.yaml",
    "ffhq256_dps": "configs/prior/ffhq256.yaml",
    "skimage64": "configs/prior/skimage64.yaml",
}
