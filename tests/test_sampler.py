"""The GDP sampler on a tiny random UNet: tiling, seeds, scale rule, update order, DDIM, GDP-xt, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gdp_lightning.degradations import (
    HDR,
    Blur,
    Colorization,
    Compose,
    Identity,
    Inpainting,
    LowLight,
    SuperResolution,
    gaussian_kernel,
    random_mask,
)
from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.losses import ColorConstancy, ExposureControl
from gdp_lightning.prior.spec import DiffusionSettings
from gdp_lightning.sampling import GDPSampler, QualityTerm, Tiler, tile_starts

from .helpers import _tiny

pytestmark = pytest.mark.usefixtures("one_thread")


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
    # in groups (what the sampler does, to keep memory to one group): the same tiles and exactly the same merge
    values = torch.rand_like(tiles)
    sums = torch.zeros(2, 3, 45, 37)
    for start in range(0, len(tiles), 5):
        positions = list(range(start, min(len(tiles), start + 5)))
        assert torch.equal(tiler.tiles_at(x, positions), tiles[positions])
        tiler.accumulate(sums, values[positions], positions)
    assert torch.equal(tiler.average(sums), tiler.merge(values))


class PointwiseUNet(nn.Module):
    """A fake prior that acts on every pixel alone (a 1x1 "convolution" of x and t, no position): tiles averaged
    over their overlaps must then reproduce the whole-image forward exactly."""

    image_size = 16
    num_classes = None

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("mix", torch.randn(6, 3, generator=g) * 0.5)
        self.register_buffer("bias", torch.randn(6, generator=g) * 0.2)

    def forward(self, x, t, y=None):
        s = (t.float() / 1000).view(-1, 1, 1, 1)
        h = torch.einsum("oc,nchw->nohw", self.mix, x) + self.bias.view(1, -1, 1, 1) * (1 + s)
        eps, var = torch.tanh(h).split(3, dim=1)
        return torch.cat([eps + 0.3 * x * s, var], dim=1)  # ε and the variance interpolation in [-1, 1]


@pytest.mark.parametrize("size", [(45, 70), (33, 16)])
def test_tiles_reproduce_the_whole_image_with_a_pointwise_prior(size):
    """The tiled path (forced: tiles of 16 on a larger, odd, non-square image, overlap 5) against one forward on
    the whole image, through a blind deblurring whose kernel and guidance cross tile borders."""
    mask = random_mask(*size, 0.3, torch.Generator().manual_seed(1))
    y = Inpainting(mask)(Blur(gaussian_kernel(5, 1.0), padding="reflect")(torch.rand(2, 3, *size)))

    def run(**kw):
        deg = Compose([Blur(kernel_size=5, learnable=True, padding="reflect"), Inpainting(mask)])
        quality = [QualityTerm(ExposureControl(patch_size=4), 0.01, relative=True)]
        return GDPSampler(PointwiseUNet(), _diffusion(), deg, 3000.0, quality=quality, **kw).restore(y, seeds=[5, 6])

    whole = run(whole_image=True)
    tiled = [run(tile_overlap=5, tile_batch=b) for b in (1, 7)]
    sampler = GDPSampler(PointwiseUNet(), _diffusion(), Inpainting(mask), 1.0, tile_overlap=5)
    assert sampler.denoiser.tiler(*size).num_tiles > 1  # the tiled path really ran
    for out in tiled:
        assert torch.allclose(out.images, whole.images, atol=1e-5, rtol=0)
        assert torch.allclose(out.phi["0.kernel"], whole.phi["0.kernel"], atol=1e-5, rtol=0)
    assert torch.allclose(tiled[0].images, tiled[1].images, atol=1e-6, rtol=0)  # tile_batch changes nothing
    assert not torch.allclose(whole.images[0], whole.images[1], atol=1e-2)  # the seeds matter: not a constant


def test_model_size_image_is_the_same_tiled_and_untiled(unet, monkeypatch):
    """At exactly the prior's size the sampler skips the tiler; its one-tile path must give the same result."""
    deg = SuperResolution(4)
    sampler = GDPSampler(unet, _diffusion(), deg, 2000.0, tile_size=32)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 3])
    whole, tiled = sampler.denoiser.whole(x, t, None), sampler.denoiser.tiled(x, t, None)
    assert sampler.denoiser.tiler(32, 32).num_tiles == 1
    for name in ("mean", "log_variance", "pred_xstart"):
        assert torch.allclose(getattr(tiled, name), getattr(whole, name), atol=1e-6, rtol=0), name

    y = deg(torch.rand(2, 3, 32, 32))
    untiled = GDPSampler(unet, _diffusion(), SuperResolution(4), 2000.0, tile_size=32).restore(y, seeds=[3, 4])
    forced = GDPSampler(unet, _diffusion(), SuperResolution(4), 2000.0, tile_size=32)
    monkeypatch.setattr(forced.denoiser, "whole", forced.denoiser.tiled)  # every step through the tiler
    assert torch.allclose(forced.restore(y, seeds=[3, 4]).images, untiled.images, atol=1e-6, rtol=0)


def test_any_size_needs_tiles_at_least_the_prior(unet):
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


@pytest.mark.parametrize("substeps", [1, 4, 40])
def test_guidance_substeps_take_gradient_steps_to_the_observation(unet, substeps):
    """With A = I the data term's gradient of image i is k·r (r = (x+1)/2 − y, k = c·s/numel): m substeps of
    k/m each shrink r by (1 − k/2m), so the push is 2r(1 − (1 − k/2m)^m): k r for one step (overshooting the
    observation by k/2 − 1 times when k > 2), and close to the exact 2r (x' = 2y − 1) with many."""
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = torch.rand(2, 3, 8, 8)
    numel, c, s = 3 * 8 * 8, 2.0, 3840.0
    k = c * s / numel  # 40: one push lands 19 times past the observation
    sampler = GDPSampler(unet, _diffusion("10"), Identity(), s, scale_convention="raw", guidance_substeps=substeps)
    push, terms = sampler.guidance(x, y, c)
    r = (x + 1) / 2 - y
    expected = 2 * r * (1 - (1 - k / (2 * substeps)) ** substeps)
    assert torch.allclose(push, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(terms["data"], r.pow(2).mean((1, 2, 3)))  # the loss reported is the one before the push
    if substeps == 40:  # converged: the pushed image explains y
        assert float(((x - push + 1) / 2 - y).abs().max()) < 1e-4
    # 0 = one substep per 1000-step interval: 100 at 10 steps
    assert GDPSampler(unet, _diffusion("10"), Identity(), s, guidance_substeps=0).substeps == 100
    assert GDPSampler(unet, _diffusion("250"), Identity(), s, guidance_substeps=0).substeps == 4


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


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("steps", ["10", "100"])
def test_ddim_push_moves_the_mean_as_far_as_ddpm(unet, eta, steps):
    """At any η the guidance moves the DDIM mean by the DDPM push itself (at η = 0 a shift of x̃0 by ∇/c₁ would
    move it about half as far): the same scale pushes as hard per unit of diffusion time with either sampler."""
    deg = SuperResolution(4, output="full")
    x, y = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    t = torch.tensor([int(steps) // 2] * 2)
    pushes = {}
    for method in ("ddpm", "ddim"):
        guided = GDPSampler(unet, _diffusion(steps), deg, 2000.0, method=method, eta=eta).guided_step(x, t, y)
        free = GDPSampler(unet, _diffusion(steps), deg, 0.0, method=method, eta=eta).guided_step(x, t, y)
        pushes[method] = guided[1] - free[1]
    assert pushes["ddpm"].abs().max() > 1e-3
    assert torch.allclose(pushes["ddim"], pushes["ddpm"], rtol=1e-3, atol=1e-6)


def test_ddim_consistency_step_replaces_x0_by_the_consistent_one(unet):
    """The data-consistency rule under DDIM: the step is the DDIM step from x̂0 exactly (not a push scaled by the
    DDIM coefficient)."""
    deg = Inpainting(random_mask(32, 32, 0.5, torch.Generator().manual_seed(0)))
    x, y = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    t = torch.tensor([5, 5])
    sampler = GDPSampler(unet, _diffusion("10"), deg, 1.0, method="ddim", eta=0.0, guidance="proximal",
                         quantization=0.0, tile_size=32)
    _, mean, mv, _ = sampler.guided_step(x, t, deg(y))
    noise_level = sampler.diffusion._extract("sqrt_recipm1_alphas_cumprod", t, 4)
    x0_hat = (sampler.consistency((mv.pred_xstart + 1) / 2, deg(y), noise_level) * 2 - 1).clamp(-1, 1)
    expected = sampler.diffusion.ddim_step(mv, x, t, eta=0.0, pred_xstart=x0_hat).mean
    assert torch.allclose(mean, expected, atol=1e-5)


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
        probe.set_inputs(f=f_after, M=deg.M.detach())
    x0 = mv.pred_xstart.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        sampler.conversion(32, 32) * 900.0 * ((probe((x0 + 1) / 2) - y) ** 2).mean(), x0
    )
    assert torch.allclose(mean, mv.mean - grad, atol=1e-6)


def test_several_phi_steps_per_diffusion_step(unet):
    """phi_steps=3: three successive plain gradient steps of φ's objective on the same x̃0 (not one step, nor one
    step three times as long); the guidance still uses φ from before them."""
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([3])
    y = 0.3 * torch.rand(1, 3, 32, 32) + 0.1

    def make():
        op = LowLight(init="identity", smoothness=0.5)
        op.init_parameters(1, 32, 32)
        return op

    moved = {}
    for k in (1, 3):
        deg = make()
        sampler = GDPSampler(unet, _diffusion("10"), deg, 900.0, phi_optimizer="sgd", phi_lr=0.7, phi_steps=k)
        _, mean, mv, _ = sampler.guided_step(x, t, y, optimizer=sampler.make_optimizer())
        moved[k] = (deg.f.detach().clone(), deg.M.detach().clone())
        ref = make()  # k plain gradient steps, written out
        for _ in range(k):
            objective = ((ref((mv.pred_xstart + 1) / 2) - y) ** 2).mean() + ref.regularization().sum()
            gf, gm = torch.autograd.grad(objective, [ref.f, ref.M])
            ref.set_inputs(f=ref.f.detach() - 0.7 * gf, M=ref.M.detach() - 0.7 * gm)
        assert torch.allclose(moved[k][0], ref.f, atol=1e-6) and torch.allclose(moved[k][1], ref.M, atol=1e-6)
        x0 = mv.pred_xstart.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(sampler.conversion(32, 32) * 900.0 * ((make()((x0 + 1) / 2) - y) ** 2).mean(), x0)
        assert torch.allclose(mean, mv.mean - grad, atol=1e-6)  # guided with φ before its steps
    step1 = moved[1][0] - 1.0
    assert not torch.allclose(moved[3][0], moved[1][0], atol=1e-4)
    assert not torch.allclose(moved[3][0] - 1.0, 3 * step1, atol=1e-4)  # the gradient is taken anew each step


def test_l1_data_loss_pushes_by_the_sign_of_the_residual(unet):
    """data_loss="l1": ∇ Σ_b mean|m⊙x' − y| = m⊙sign(m⊙x' − y)/(2·C·H·W), x' = (x̃0+1)/2: the same push on every
    observed pixel whatever the size of its residual, in the direction of the MSE push."""
    mask = random_mask(32, 32, 0.4, torch.Generator().manual_seed(2))
    deg = Inpainting(mask)
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([5, 5]), torch.rand(2, 3, 32, 32) * mask
    s = 700.0
    pushes = {}
    for loss in ("l1", "mse"):
        sampler = GDPSampler(unet, _diffusion("10"), deg, s, data_loss=loss, scale_convention="raw")
        _, mean, mv, terms = sampler.guided_step(x, t, y)
        pushes[loss] = mv.mean - mean
    residual = deg((mv.pred_xstart + 1) / 2) - y
    assert torch.allclose(terms["data"], (residual**2).mean((1, 2, 3)))  # the last run: mse
    expected = s * mask * torch.sign(residual) / (2 * 3 * 32 * 32)
    assert torch.allclose(pushes["l1"], expected, atol=1e-7, rtol=1e-5)
    observed = (mask.bool() & (residual != 0)).expand_as(residual)
    assert torch.allclose(pushes["l1"][observed].abs(), torch.tensor(s / 6144.0))
    assert torch.equal(torch.sign(pushes["l1"][observed]), torch.sign(pushes["mse"][observed]))
    ratio = pushes["mse"][observed] / pushes["l1"][observed]  # MSE: proportional to the residual
    assert ratio.std() > 0.1 * ratio.mean()


def test_ddim_at_eta_zero_does_not_depend_on_later_noise(unet, monkeypatch):
    """With η = 0 and the same x_T, DDIM's result is a function of x_T alone: the noise of the later steps (other
    generators here) changes nothing; at η = 1 it does."""
    import gdp_lightning.sampling.gdp as gdp_module

    x_T = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    y = SuperResolution(2)(torch.rand(1, 3, 32, 32))

    def restore(eta, later_seed):
        later = torch.Generator().manual_seed(later_seed)
        calls = []

        def noise(shape, generators=None, device=None, dtype=torch.float32):
            calls.append(shape)
            return x_T.clone() if len(calls) == 1 else torch.randn(tuple(shape), generator=later, dtype=dtype)

        monkeypatch.setattr(gdp_module, "randn", noise)
        sampler = GDPSampler(unet, _diffusion(), SuperResolution(2), 2000.0, method="ddim", eta=eta)
        return sampler.restore(y, seeds=[later_seed]).images

    assert torch.equal(restore(0.0, 1), restore(0.0, 2))
    assert not torch.allclose(restore(1.0, 1), restore(1.0, 2), atol=1e-3)
    # the step itself: at η = 0 the noise passed in is ignored
    x, t, y = torch.randn(1, 3, 32, 32), torch.tensor([4]), torch.rand(1, 3, 16, 16)
    sampler = GDPSampler(unet, _diffusion("10"), SuperResolution(2), 2000.0, method="ddim", eta=0.0)
    steps = [sampler.guided_step(x, t, y, noise=noise)[0] for noise in (torch.randn_like(x), torch.randn_like(x), None)]
    assert torch.equal(steps[0], steps[1]) and torch.equal(steps[0], steps[2])


def test_smoothness_one_is_the_papers_tv_weight_s(unet):
    """The paper's low-light objective s·D + s/100·L_exp + s/200·L_col + s·TV(M): the guidance is its gradient in
    x̃0, and φ's plain step (lr 1) with smoothness 1 is its gradient in φ divided by s (the official step on D)."""
    s, x, t = 5000.0, torch.randn(1, 3, 32, 32), torch.tensor([3])
    y = 0.2 * torch.rand(1, 3, 32, 32) + 0.05

    def make():
        op = LowLight(smoothness=1.0)
        op.init_parameters(1, 32, 32, [torch.Generator().manual_seed(3)])
        return op

    exposure = ExposureControl(patch_size=8, target=0.3, value_range="[-1,1]")
    color = ColorConstancy(value_range="[-1,1]")
    quality = [QualityTerm(exposure, 1 / 100, relative=True), QualityTerm(color, 1 / 200, relative=True)]
    deg = make()
    sampler = GDPSampler(unet, _diffusion("10"), deg, s, scale_convention="raw", quality=quality,
                         phi_optimizer="sgd", phi_lr=1.0)
    _, mean, mv, _ = sampler.guided_step(x, t, y, optimizer=sampler.make_optimizer())

    ref = make()
    x0 = mv.pred_xstart.detach().requires_grad_(True)
    tv = 2 * ((ref.M[..., 1:, :] - ref.M[..., :-1, :]).pow(2).mean() + (ref.M[..., 1:] - ref.M[..., :-1]).pow(2).mean())
    paper = (s * ((ref((x0 + 1) / 2) - y) ** 2).mean() + s / 100 * exposure(x0).sum() + s / 200 * color(x0).sum()
             + s * tv)
    gx, gf, gm = torch.autograd.grad(paper, [x0, ref.f, ref.M])
    assert torch.allclose(mean, mv.mean - gx, atol=1e-6)
    assert torch.allclose(deg.f.detach(), ref.f.detach() - gf / s, atol=1e-6)
    assert torch.allclose(deg.M.detach(), ref.M.detach() - gm / s, atol=1e-7)
    assert not torch.allclose(deg.M.detach(), ref.M.detach(), atol=1e-9)


def test_shared_hdr_phi_step_at_lr_one_third_is_the_official_average(unet):
    """The official HDR step moves the shared f and M by each exposure's data term from the same start and averages
    the three results; φ's objective here sums the exposures, so lr 1/3 (configs/task/paper/hdr.yaml) is that step."""
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([3])
    y = torch.cat([g * torch.rand(1, 3, 32, 32) for g in (0.2, 0.5, 0.9)], dim=1)

    def make():
        op = HDR(3, shared=True)
        op.init_parameters(1, 32, 32, [torch.Generator().manual_seed(4)])
        return op

    deg = make()
    sampler = GDPSampler(unet, _diffusion("10"), deg, 900.0, phi_optimizer="sgd", phi_lr=1 / 3)
    _, _, mv, _ = sampler.guided_step(x, t, y, optimizer=sampler.make_optimizer())
    ref = make()
    x1 = (mv.pred_xstart + 1) / 2
    steps = []
    for e in range(3):
        mse = ((ref.f * x1 + ref.M - y[:, 3 * e : 3 * e + 3]) ** 2).mean()
        steps.append(torch.autograd.grad(mse, [ref.f, ref.M]))
    f_official = ref.f.detach() - sum(g[0] for g in steps) / 3
    m_official = ref.M.detach() - sum(g[1] for g in steps) / 3
    assert torch.allclose(deg.f.detach(), f_official, atol=1e-6) and torch.allclose(deg.M.detach(), m_official, atol=1e-8)


# ------------------------------------------------------------------ errors
def test_divergence_is_reported_with_the_step(unet):
    """A sample that turns non-finite is flagged with its step, not raised; the batch goes on (zeros for it)."""
    y = SuperResolution(2)(torch.rand(1, 3, 32, 32))
    result = GDPSampler(unet, _diffusion(), SuperResolution(2), 1e38).restore(y)
    assert isinstance(result.diverged[0], int) and 1 <= result.diverged[0] <= 5
    assert bool(torch.isfinite(result.images).all())


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


def test_random_streams_are_pinned_and_never_share_a_seed():
    """The seeds are part of the results (gdp_lightning/seeds.py): pinned values, no two streams share a seed for
    any seed and index a run meets, in the low 32 bits that torch's CPU generator uses, and an image's own
    sub-streams (φ, label, denoising) differ from each other."""
    from gdp_lightning import seeds

    assert seeds.stream_seed(7, 5) == 7_000_026
    assert seeds.stream_seed(7, 5, seeds.SAMPLER) == (1 << 30) + 7_000_026
    assert seeds.stream_seed(7, 5, seeds.TRAINING) == (2 << 30) + 7_000_026
    assert seeds.stream_seed(7, 5, seeds.CROPS) == (3 << 30) + 7_000_026
    assert seeds.dropout_seed(7, 3, 1) == 7_000_024 * 1_009 + 1 + (1 << 43)
    streams = (seeds.DATA, seeds.SAMPLER, seeds.TRAINING, seeds.CROPS)
    values = [seeds.stream_seed(s, i, stream) & 0xFFFF_FFFF for s in (0, 1, 2, 3, 1000) for i in range(2000)
              for stream in streams]
    assert len(set(values)) == len(values)
    for seed in (0, 12345, 2**40 + 3, -5):  # an input's streams differ whatever the seed
        assert len({seeds.stream_seed(seed, 9, stream) & 0xFFFF_FFFF for stream in streams}) == 4
    # the CPU generator really ignores the high bits: the reason the offsets live in the low ones
    draw = [torch.randn(3, generator=seeds.generator(v)) for v in (5, 5 + (1 << 40))]
    assert torch.equal(*draw)
    assert len({0, seeds.PHI, seeds.LABEL, seeds.DENOISING}) == 4
