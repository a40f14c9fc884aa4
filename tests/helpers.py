"""Small models shared by the tests."""

from __future__ import annotations

import torch

from gdp_lightning.prior import create_model

TINY = dict(
    image_size=32,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    learn_sigma=True,
    attention_resolutions="16",
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a random value (the zero-initialised output layers would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _tiny(**overrides) -> torch.nn.Module:
    return _randomize(create_model(**{**TINY, **overrides})).eval()


def skimage_crops(n: int = 4, size: int = 64, scale: float = 0.25, seed: int = 0) -> torch.Tensor:
    """``n`` crops of scikit-image's colour photos, downscaled by ``scale`` first, in [0, 1], 8-bit values."""
    import torch.nn.functional as F
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = torch.from_numpy(getattr(data, names[i % len(names)])()).permute(2, 0, 1).float()[None] / 255
        img = F.interpolate(img, scale_factor=scale, mode="bicubic", antialias=True, align_corners=False)
        top = int(torch.randint(0, img.shape[-2] - size + 1, (1,), generator=g))
        left = int(torch.randint(0, img.shape[-1] - size + 1, (1,), generator=g))
        out.append(img[..., top : top + size, left : left + size])
    return quantize(torch.cat(out))


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels (the observations and outputs of the benchmark protocol)."""
    return (x.clamp(0, 1) * 255).round() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, for images in [0, 1]."""
    return 10 * torch.log10(1 / (a - b).pow(2).flatten(1).mean(1))
