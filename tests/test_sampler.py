"""The GDP sampler on a tiny random UNet: tiling, seeds, scale rule, update order, DDIM, GDP-xt, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from gdp_lightning.degradations import (
    HDR,
    Blur,
    Colorization,
    Inpainting,
    LowLight,
    SuperResolution,
    gaussian_kernel,
    random_mask,
)
from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.losses import ExposureControl
from gdp_lightning.prior.spec import DiffusionSettings
from gdp_lightning.sampling import GDPSampler, GuidanceDivergedError, QualityTerm, Tiler, tile_starts

from .helpers import _tiny


def _diffusion(steps="5") -> GaussianDiffusion:
    return GaussianDiffusion.from_settings(DiffusionSettings(), learn_sigma=True, respacing=steps)


@pytest.fixture(scope="module")
def unet():
    return _tiny()  # image_size 32, downsampling factor 2


# ------------------------------------------------------------------ tiling
@pytest.mark.parametrize("length,tile,overlap", [(32, 32, 8), (37, 32, 8), (100, 32, 16), (64, 32, 0), (33, 32, 31)])
def test_tile_starts_cover_and_end_flush(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert sorted(set(starts)) == starts
    with pytest.raises(ValueError, match="does not fit"):
        tile_starts(tile - 1, tile, 0)


def test_tiler_merge_averages_and_split_roundtrips():
    x = torch.rand(2, 3, 45, 37)
    tiler = Tiler(45, 37, 32, 8)
    tiles = tiler.split(x)
    assert tiles.shape == (2 * tiler.num_tiles, 3, 32, 32)
    assert torch.allclose(tiler.merge(tiles), x)
    ones = torch.ones_like(tiles)
    ones[: tiler.num_tiles] *= 3  # every tile of the first image says 3
    merged = tiler.merge(ones)
    assert torch.allclose(merged[0], torch.full((3, 45, 37), 3.0)) and torch.allclose(merged[1], torch.ones(3, 45, 37))


def test_model_size_image_is_the_same_tiled_and_untiled(unet):
    y = SuperResolution(4)(torch.rand(2, 3, 32, 32))
    kw = dict(scale=2000.0)
    tiled = GDPSampler(unet, _diffusion(), SuperResolution(4), tile_size=32, **kw).restore(y, seeds=[3, 4])
    whole = GDPSampler(unet, _diffusion(), SuperResolution(4), whole_image=True, **kw).restore(y, seeds=[3, 4])
    assert torch.equal(tiled.images, whole.images)


@pytest.mark.parametrize("size", [(45, 37), (33, 64)])
def test_any_size_restores_in_tiles(unet, size):
    mask = random_mask(*size, 0.5, torch.Generator().manual_seed(0))
    y = Inpainting(mask)(torch.rand(1, 3, *size))
    sampler = GDPSampler(unet, _diffusion(), Inpainting(mask), 4000.0, tile_overlap=8)
    out = sampler.restore(y)
    assert out.images.shape == (1, 3, *size) and torch.isfinite(out.images).all()
    with pytest.raises(ValueError, match=r"20x40, smaller than the prior's 32x32 tiles"):
        GDPSampler(unet, _diffusion(), SuperResolution(2), 1.0).restore(torch.rand(1, 3, 10, 20))


# ----------------------------------------------------------- seeds, batches
def test_an_image_does_not_depend_on_its_batch(unet):
    x = torch.rand(3, 3, 32, 32)
    deg = Blur(kernel_size=5, learnable=True, padding="reflect")
    y = Blur(gaussian_kernel(5, 1.0), padding="reflect")(x)
    batch = GDPSampler(unet, _diffusion(), copy.deepcopy(deg), 3000.0).restore(y, seeds=[10, 11, 12])
    alone = GDPSampler(unet, _diffusion(), copy.deepcopy(deg), 3000.0).restore(y[1:2], seeds=[11])
    assert torch.allclose(batch.images[1], alone.images[0], atol=1e-4)
    assert torch.allclose(batch.phi["kernel"][1], alone.phi["kernel"][0], atol=1e-5)
    again = GDPSampler(unet, _diffusion(), copy.deepcopy(deg), 3000.0).restore(y, seeds=[10, 11, 12])
    assert torch.equal(again.images, batch.images)
    other = GDPSampler(unet, _diffusion(), copy.deepcopy(deg), 3000.0).restore(y, seeds=[13, 11, 12])
    assert not torch.allclose(other.images[0], batch.images[0])


# ---------------------------------------------------------------- the rule
def test_scale_conversion_rule(unet):
    d = _diffusion("50")
    sr = GDPSampler(unet, d, SuperResolution(4), 1.0)
    assert sr.conversion(64, 64) == pytest.approx(1000 / 50 * (64 * 64) / (256 * 256))
    blur = GDPSampler(unet, d, Blur(gaussian_kernel(9, 2.0), padding="valid"), 1.0)
    assert blur.conversion(64, 64) == pytest.approx(20 * (56 * 56) / (248 * 248))
    hdr = GDPSampler(unet, d, HDR(3), 1.0)
    assert hdr.conversion(128, 96) == pytest.approx(20 * (128 * 96) / (256 * 256))
    assert GDPSampler(unet, d, SuperResolution(4), 1.0, scale_convention="raw").conversion(64, 64) == 1.0


def test_guidance_is_the_scaled_gradient_of_the_objective(unet):
    """μ' = μ − c·s·∇ Σ_b mean (A(x̃0') − y')² − c·w·∇ Σ_b Q, written out independently."""
    deg = Colorization()
    q = ExposureControl(patch_size=8)
    sampler = GDPSampler(unet, _diffusion("10"), deg, 700.0, quality=[QualityTerm(q, 0.5, relative=True)])
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([6, 6])
    y = torch.rand(2, 3, 32, 32)
    _, mean, mv, terms = sampler.guided_step(x, t, y)
    x0 = mv.pred_xstart.detach().requires_grad_(True)
    data = ((deg((x0 + 1) / 2) - y) ** 2).mean((1, 2, 3)).sum()
    objective = 700.0 * data + 0.5 * 700.0 * q((x0 + 1) / 2).sum()
    (grad,) = torch.autograd.grad(sampler.conversion(32, 32) * objective, x0)
    assert torch.allclose(mean, mv.mean - grad, atol=1e-6)
    assert set(terms) == {"data", "ExposureControl"} and terms["data"].shape == (2,)


def test_gdp_xt_guides_with_the_loss_on_x_t(unet):
    deg = SuperResolution(2)
    sampler = GDPSampler(unet, _diffusion("10"), deg, 500.0, variant="xt", scale_convention="raw")
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([4])
    y = torch.rand(1, 3, 16, 16)
    _, mean, mv, _ = sampler.guided_step(x, t, y)
    xt = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(500.0 * ((deg((xt + 1) / 2) - y) ** 2).mean(), xt)
    assert torch.allclose(mean, mv.mean - grad, atol=1e-6)


def test_ddim_guidance_at_eta_one_equals_the_ddpm_step(unet):
    deg = SuperResolution(4, output="full")
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([7, 7]), torch.rand(2, 3, 32, 32)
    noise = torch.randn_like(x)
    ddpm = GDPSampler(unet, _diffusion("10"), deg, 2000.0).guided_step(x, t, y, noise=noise)
    ddim = GDPSampler(unet, _diffusion("10"), deg, 2000.0, method="ddim", eta=1.0).guided_step(x, t, y, noise=noise)
    assert torch.allclose(ddim[1], ddpm[1], atol=1e-5)  # the guided means
    # the DDIM noise at eta = 1 is the posterior's (fixed-small) standard deviation
    sigma = torch.sqrt(_diffusion("10").table("posterior_variance")[7]).float()
    assert torch.allclose(ddim[0], ddim[1] + sigma * noise, atol=1e-5)


@pytest.mark.parametrize("order", ["before", "after"])
def test_phi_update_order(unet, order):
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([3])
    y = 0.3 * torch.rand(1, 3, 32, 32)

    def make():
        op = LowLight(init="identity")
        op.init_parameters(1, 32, 32)
        return op

    deg = make()
    sampler = GDPSampler(unet, _diffusion("10"), deg, 900.0, phi_optimizer="sgd", phi_lr=1.0, phi_update=order)
    _, mean, mv, _ = sampler.guided_step(x, t, y, optimizer=sampler.make_optimizer())
    f_after = deg.f.detach().clone()
    # φ moved by one plain gradient step of its data term
    ref = make()
    loss = ((ref((mv.pred_xstart + 1) / 2) - y) ** 2).mean()
    (gf,) = torch.autograd.grad(loss, ref.f)
    assert torch.allclose(f_after, 1.0 - gf, atol=1e-6)
    # the guidance used φ before ("before") or after ("after") that step
    probe = make()
    if order == "after":
        probe.set_parameters(f=f_after, M=deg.M.detach())
    x0 = mv.pred_xstart.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        sampler.conversion(32, 32) * 900.0 * ((probe((x0 + 1) / 2) - y) ** 2).mean(), x0
    )
    assert torch.allclose(mean, mv.mean - grad, atol=1e-6)


# ------------------------------------------------------------------ errors
def test_divergence_is_reported_with_the_step(unet):
    y = SuperResolution(2)(torch.rand(1, 3, 32, 32))
    with pytest.raises(GuidanceDivergedError, match=r"non-finite at step \d of 5 \(timestep \d+\).*smaller scale than 1e\+38"):
        GDPSampler(unet, _diffusion(), SuperResolution(2), 1e38).restore(y)


def test_bad_settings_and_inputs(unet):
    with pytest.raises(ValueError, match="variant must be one of"):
        GDPSampler(unet, _diffusion(), SuperResolution(2), 1.0, variant="x1")
    sampler = GDPSampler(unet, _diffusion(), SuperResolution(2), 1.0)
    with pytest.raises(ValueError, match=r"maps the image to \(1, 3, 16, 16\) but the observation is \(1, 3, 15, 16\)"):
        sampler.restore(torch.rand(1, 3, 15, 16), image_size=(32, 32))
    with pytest.raises(ValueError, match="2 seeds for 1 images"):
        sampler.restore(torch.rand(1, 3, 16, 16), seeds=[1, 2])
    cond = GDPSampler(_tiny(class_cond=True), _diffusion(), SuperResolution(2), 1.0)
    with pytest.raises(ValueError, match="class-conditional"):
        cond.restore(torch.rand(1, 3, 16, 16))
    out = cond.restore(torch.rand(1, 3, 16, 16), labels=torch.tensor([7]))
    assert out.images.shape == (1, 3, 32, 32)


def test_trajectory_and_outputs(unet):
    deg = LowLight()
    sampler = GDPSampler(unet, _diffusion("10"), deg, 1000.0, trajectory_every=4, trajectory_images=1)
    out = sampler.restore(torch.rand(2, 3, 32, 32) * 0.2)
    assert [p.step for p in out.trajectory] == [1, 5, 9, 10]
    point = out.trajectory[-1]
    assert point.x0.shape == (1, 3, 32, 32) and 0 <= point.x0.min() and point.x0.max() <= 1
    assert point.phi["f"].shape == (1, 1, 1, 1) and point.losses["data"].shape == (2,)
    assert set(out.phi) == {"f", "M"} and out.phi["M"].shape == (2, 1, 32, 32)
    assert out.images.min() >= 0 and out.images.max() <= 1
