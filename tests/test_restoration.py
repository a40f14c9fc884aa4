"""End to end with the real prior (skimage64) on 64×64 crops of scikit-image's photos.

The prior was trained on these very photos: these tests check that the sampler works, not how well it
generalises. Scales use the paper convention (see gdp_lightning.sampling.gdp) at 50 steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import save_image

from gdp_lightning.benchmark import psnr, quantize, skimage_crops
from gdp_lightning.degradations import (
    HDR,
    Blur,
    Colorization,
    Inpainting,
    LowLight,
    SuperResolution,
    gdp_gaussian_kernel,
    random_mask,
)
from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.losses import ColorConstancy, ExposureControl
from gdp_lightning.prior import get_preset, load_prior
from gdp_lightning.sampling import GDPSampler, QualityTerm

from .conftest import SHARED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prior(skimage64_checkpoint):
    spec = get_preset("skimage64")
    return load_prior(spec, skimage64_checkpoint), spec


@pytest.fixture(scope="module")
def clean():
    return skimage_crops(4)


def _restore(prior, degradation, y, scale, steps="50", **kw):
    unet, spec = prior
    sampler = GDPSampler(unet, GaussianDiffusion.from_prior(spec, respacing=steps), degradation, scale, **kw)
    return sampler.restore(y)


def _consistency(degradation, restored, y) -> torch.Tensor:
    """MSE between A(x̂) and y on the 0-255 scale (the paper's consistency)."""
    return ((degradation(restored) - y) * 255).pow(2).flatten(1).mean(1)


def _save(tmp_path, name, *rows):
    save_image(torch.cat(rows), tmp_path / f"{name}.png", nrow=rows[0].shape[0])


def _report(task: str, **values) -> None:
    """The measured numbers (README's table), shown by ``pytest tests/test_restoration.py -s``."""
    text = "; ".join(f"{k} {_fmt(v)}" for k, v in values.items())
    print(f"\n[{task}] {text}")


def _fmt(v) -> str:
    if isinstance(v, torch.Tensor):
        v = v.flatten().tolist()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(f"{float(x):.3g}" for x in v) + "]"
    return f"{float(v):.3g}"


def test_inpainting_25_percent(prior, clean, tmp_path):
    deg = Inpainting(random_mask(64, 64, 0.25, torch.Generator().manual_seed(1)))
    y = quantize(deg(clean))
    out = quantize(_restore(prior, deg, y, 16000.0).images)
    _save(tmp_path, "inpaint", clean, y, out)
    gain = psnr(out, clean) - psnr(y, clean)
    _report("inpainting", psnr_gain_db=gain, consistency=_consistency(deg, out, y))
    assert (gain >= 15).all(), gain
    assert (_consistency(deg, out, y) <= 10).all()


def test_super_resolution_x4(prior, clean, tmp_path):
    deg = SuperResolution(4)
    y = quantize(deg(clean))
    out = quantize(_restore(prior, deg, y, 8000.0).images)
    nearest = F.interpolate(y, scale_factor=4, mode="nearest")
    _save(tmp_path, "sr4", clean, nearest, out)
    _report("sr4", gain_over_nearest_db=psnr(out, clean) - psnr(nearest, clean), consistency=_consistency(deg, out, y))
    assert (psnr(out, clean) >= psnr(nearest, clean) - 1).all(), (psnr(out, clean), psnr(nearest, clean))
    assert psnr(out, clean).mean() > psnr(nearest, clean).mean() + 1.5
    assert (_consistency(deg, out, y) <= 10).all()


def _gradient_energy(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1) + (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)


def test_deblurring(prior, clean, tmp_path):
    deg = Blur(gdp_gaussian_kernel(9, 2), padding="valid")
    y = quantize(deg(clean))  # 56 x 56, the valid part
    out = quantize(_restore(prior, deg, y, 24000.0).images)
    _save(tmp_path, "deblur", clean, F.pad(y, (4, 4, 4, 4)), out)
    inner = out[..., 4:-4, 4:-4]  # the same 56 x 56 region
    _report("deblur", gain_db=psnr(inner, clean[..., 4:-4, 4:-4]) - psnr(y, clean[..., 4:-4, 4:-4]),
            gradient_energy_ratio=_gradient_energy(inner) / _gradient_energy(y), consistency=_consistency(deg, out, y))
    assert (_gradient_energy(inner) > 1.5 * _gradient_energy(y)).all()
    assert (psnr(inner, clean[..., 4:-4, 4:-4]) > psnr(y, clean[..., 4:-4, 4:-4])).all()
    assert (_consistency(deg, out, y) <= 10).all()


def test_colorization(prior, clean, tmp_path):
    deg = Colorization()
    y = quantize(deg(clean))
    quality = [QualityTerm(ColorConstancy(value_range="[-1,1]"), 5.0)]
    out = quantize(_restore(prior, deg, y, 10000.0, quality=quality).images)
    _save(tmp_path, "colorize", clean, y, out)
    assert torch.isfinite(out).all()
    chroma = out.std(1).flatten(1).mean(1)  # per-pixel spread of the channels: 0 for gray
    gray = y.expand_as(clean)
    _report("colorization", mean_gain_over_gray_db=(psnr(out, clean) - psnr(gray, clean)).mean(), chroma=chroma,
            consistency=_consistency(deg, out, y))
    assert (chroma > 0.02).all(), chroma
    assert (_consistency(deg, out, y) <= 10).all()


def _exposures():
    out = {}
    for name in ("short", "medium", "long"):
        with Image.open(SHARED / "data" / "hdr_example" / f"{name}.png") as im:
            img = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).float()[None] / 255
        img = F.interpolate(img, scale_factor=1 / 8, mode="bicubic", antialias=True, align_corners=False)
        out[name] = quantize(img[..., 20:116, 50:178])  # 96 x 128: larger than the prior, so tiled
    return out


ENHANCE = [
    QualityTerm(ExposureControl(), 1 / 100, relative=True, name="exposure"),
    QualityTerm(ColorConstancy(), 1 / 200, relative=True, name="color"),
]


def test_low_light_enhancement(prior, tmp_path):
    exp = _exposures()
    y = exp["short"]
    result = _restore(prior, LowLight(offset="scalar"), y, 80000.0, steps="25", quality=ENHANCE)
    _save(tmp_path, "lowlight", y, result.images)
    exposure = ExposureControl()
    _report("low-light", exposure_before=exposure(y), exposure_after=exposure(result.images), f=result.phi["f"])
    assert exposure(result.images).item() < 0.5 * exposure(y).item()
    assert 0.05 < result.phi["f"].item() < 1.0 and torch.isfinite(result.images).all()


def test_hdr_from_three_exposures(prior, tmp_path):
    exp = _exposures()
    y = HDR.stack([exp["short"], exp["medium"], exp["long"]])
    result = _restore(prior, HDR(3, smoothness=1000.0), y, 20000.0, steps="25", quality=ENHANCE)
    _save(tmp_path, "hdr", exp["short"], exp["medium"], exp["long"], result.images)
    exposure = ExposureControl()
    before = [exposure(v).item() for v in exp.values()]
    _report("hdr", exposure_before=before, exposure_after=exposure(result.images), f=result.phi["f"])
    assert exposure(result.images).item() < min(before), before
    f = result.phi["f"].flatten()
    assert f.shape == (3,) and f[0] < f[1] < f[2], f  # longer exposures have larger gains
