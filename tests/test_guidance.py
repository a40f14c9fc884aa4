"""The robust guidance rule: the exact data-consistency (proximal) step on every linear operator, its choice by
``guidance: auto``, and divergence that stays finite being flagged."""

from __future__ import annotations

import math

import pytest
import torch

from gdp_lightning.degradations import (
    HDR,
    Blur,
    Colorization,
    Compose,
    GaussianNoise,
    Identity,
    Inpainting,
    KernelSuperResolution,
    LowLight,
    SuperResolution,
    gaussian_kernel,
    random_mask,
)
from gdp_lightning.sampling import GDPSampler
from gdp_lightning.sampling.consistency import DataConsistency, conjugate_gradient, supports_consistency
from gdp_lightning.sampling.divergence import DIVERGENCE_FLOOR, DivergenceMonitor

from .helpers import _tiny
from .test_sampler import PointwiseUNet, _diffusion


def _dense(op, shape):
    """The matrix of a linear operator on images of ``shape`` (C, H, W), one column per input pixel."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return torch.stack([op(b[None].float()).double().flatten() for b in basis], dim=1)


# operators at odd sizes, each with the image size it acts on
OPERATORS = {
    "sr3 odd": (lambda: SuperResolution(3), (3, 10, 11)),
    "sr4 full output": (lambda: SuperResolution(4, output="full"), (3, 9, 7)),
    "bicubic sr2": (lambda: SuperResolution(2, method="bicubic"), (3, 9, 10)),
    "blur valid": (lambda: Blur(gaussian_kernel(5, 1.0), padding="valid"), (3, 11, 9)),
    "blur reflect": (lambda: Blur(gaussian_kernel(3, 0.8), padding="reflect"), (3, 9, 8)),
    "inpainting": (lambda: Inpainting(random_mask(9, 7, 0.4, torch.Generator().manual_seed(2))), (3, 9, 7)),
    "colorization": (lambda: Colorization("mean"), (3, 7, 9)),
    "luma, one channel": (lambda: Colorization("luma", channels=1), (3, 8, 5)),
    "blur then sr2": (lambda: Compose([Blur(gaussian_kernel(3, 0.7), padding="zeros"), SuperResolution(2)]),
                      (3, 8, 10)),
    "kernel sr2, known": (lambda: KernelSuperResolution(2, learnable=False, kernel_size=5), (3, 10, 8)),
}


def test_conjugate_gradient_solves_each_image_of_a_batch():
    g = torch.Generator().manual_seed(0)
    mats = [(m := torch.randn(12, 12, generator=g, dtype=torch.float64)) @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
            for _ in range(3)]
    rhs = torch.randn(3, 1, 3, 4, generator=g, dtype=torch.float64)
    apply = lambda v: torch.stack([(m @ vi.flatten()).reshape(vi.shape) for m, vi in zip(mats, v)])  # noqa: E731
    x = conjugate_gradient(apply, rhs, max_iter=60, tol=1e-12)
    for m, xi, ri in zip(mats, x, rhs):
        assert torch.allclose(xi.flatten(), torch.linalg.solve(m, ri.flatten()), atol=1e-8)
    assert torch.equal(conjugate_gradient(apply, torch.zeros_like(rhs)), torch.zeros_like(rhs))  # no 0/0


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("rho_level", ["exact", "regularised"])
def test_consistency_step_is_the_proximal_solution(name, rho_level):
    """x̂ = argmin ‖A x − y‖² + ρ‖x − x̃‖² against a dense solve; at ρ = 0 the projection of x̃ onto {A x = y}
    nearest to it (the pseudo-inverse), which reproduces the observation."""
    make, shape = OPERATORS[name]
    op = make()
    g = torch.Generator().manual_seed(1)
    truth, x0 = torch.rand(2, *shape, generator=g).split(1)
    y = op(truth)
    A = _dense(op, shape)
    r = y.double().flatten() - A @ x0.double().flatten()
    if rho_level == "exact":  # a huge noise level: ρ = 0 up to rounding
        step = DataConsistency(op, noise_sigma=0.0, quantization=0.0, max_iter=400, tol=1e-6)
        expected = torch.linalg.pinv(A) @ r
        noise_level = torch.full((1, 1, 1, 1), 1e3)
    else:
        step = DataConsistency(op, noise_sigma=0.05, quantization=0.0, confidence=0.5, max_iter=400, tol=1e-6)
        noise_level = torch.full((1, 1, 1, 1), 0.2)
        rho = float(step.rho(noise_level))
        assert rho == pytest.approx((0.05 / (0.5 * 0.2 / 2)) ** 2)
        expected = torch.linalg.solve(A.T @ A + rho * torch.eye(A.shape[1], dtype=torch.float64), A.T @ r)
    x_hat = step(x0, y, noise_level)
    delta = (x_hat - x0).double().flatten()
    if rho_level == "exact":  # consistent, and x̃ moved only along the range of Aᵀ (no change A cannot see)
        assert float((op(x_hat) - y).abs().max()) < 1e-3, name
        _, sv, vh = torch.linalg.svd(A)
        null = vh[(sv > 1e-6 * sv.max()).sum():]  # a basis of A's null space (empty for an invertible A)
        if null.numel():
            assert float((null @ delta).abs().max()) < 1e-2 * float(delta.abs().max()), name
    else:
        assert torch.allclose(delta, expected, atol=2e-4), name


def test_noise_floor_and_rule_choice():
    assert DataConsistency(Identity(), 0.0, quantization=1 / 255).sigma == pytest.approx(1 / 255 / math.sqrt(12))
    assert DataConsistency(Identity(), 0.1).sigma == 0.1
    assert Compose([SuperResolution(2), GaussianNoise(0.03)]).noise_sigma() == pytest.approx(0.03)
    for op in (SuperResolution(2), Blur(gaussian_kernel(5, 1.0)), Inpainting(torch.ones(4, 4)), Colorization()):
        assert supports_consistency(op) is None
    assert "not linear" in supports_consistency(LowLight())
    assert "several exposures" in supports_consistency(HDR(3)) or "not linear" in supports_consistency(HDR(3))
    assert "blind" in supports_consistency(Blur(kernel_size=5, learnable=True))
    assert "'l1'" in supports_consistency(SuperResolution(2), "l1")
    unet = PointwiseUNet()
    assert GDPSampler(unet, _diffusion(), SuperResolution(2), 1.0, guidance="auto").proximal
    assert not GDPSampler(unet, _diffusion(), Blur(kernel_size=5, learnable=True), 1.0, guidance="auto").proximal
    assert not GDPSampler(unet, _diffusion(), SuperResolution(2), 1.0, guidance="auto", variant="xt").proximal
    assert not GDPSampler(unet, _diffusion(), SuperResolution(2), 1.0).proximal  # the class default: GDP's gradient
    with pytest.raises(ValueError, match="guidance 'proximal' needs a linear operator.*blind.*use guidance"):
        GDPSampler(unet, _diffusion(), Blur(kernel_size=5, learnable=True), 1.0, guidance="proximal")
    with pytest.raises(ValueError, match="guidance must be one of"):
        GDPSampler(unet, _diffusion(), Identity(), 1.0, guidance="exact")


@pytest.mark.parametrize("name", ["sr3 odd", "blur valid", "inpainting", "colorization", "blur then sr2"])
@pytest.mark.parametrize("steps,method", [("5", "ddpm"), ("3", "ddim")])
def test_proximal_restorations_reproduce_the_observation(name, steps, method):
    """A whole restoration (a fake pointwise prior that knows nothing of the image, at a size that needs tiles):
    whatever the prior says, the last step's sample explains a noiseless observation exactly (x̂0 unclamped:
    this prior's x̃0 sits at ±1, where a clamp would cut the correction; its clamped images are flagged as
    diverged, rightly)."""
    make, (c, h, w) = OPERATORS[name]
    op, size = make(), (2 * h + 3, 2 * w + 1)
    if name == "inpainting":
        op, size = Inpainting(random_mask(20, 19, 0.4, torch.Generator().manual_seed(2))), (20, 19)
    truth = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    y = op(truth)
    last = {}
    sampler = GDPSampler(PointwiseUNet(), _diffusion(steps), op, 1e9, guidance="proximal", method=method,
                         quantization=0.0, tile_size=16, prox_iterations=300, clip_denoised=False)
    sampler.restore(y, seeds=[1, 2], image_size=size, on_step=lambda info: last.update(x=info.x.clone()))
    mse = ((op((last["x"] + 1) / 2) - y) * 255).pow(2).flatten(1).mean(1)
    # the scale (1e9) plays no part. A valid blur is ill-conditioned: this prior's ±1 images put much of the
    # residual on its weakest frequencies, which 300 conjugate-gradient iterations in float32 fit to a few
    # gray levels (the exact solve is checked on small images above; real photos reach 0.1, see README)
    assert float(mse.max()) < (5.0 if "blur" in name else 1e-3), mse
    # the unguided prior is nowhere near
    free = GDPSampler(PointwiseUNet(), _diffusion(steps), op, 0.0, method=method, tile_size=16).restore(
        y, seeds=[1, 2], image_size=size)
    assert float(((op(free.images) - y) * 255).pow(2).mean()) > 100


def test_quality_terms_still_push_under_the_proximal_rule():
    from gdp_lightning.losses import ColorConstancy
    from gdp_lightning.sampling import QualityTerm

    op = Colorization()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    t = torch.tensor([3])
    y = op(torch.rand(1, 3, 16, 16))
    base = GDPSampler(PointwiseUNet(), _diffusion(), op, 1.0, guidance="proximal")
    with_q = GDPSampler(PointwiseUNet(), _diffusion(), op, 1.0, guidance="proximal",
                        quality=[QualityTerm(ColorConstancy(value_range="[-1,1]"), 50.0)])
    _, mean0, mv, terms = base.guided_step(x, t, y)
    _, mean1, _, terms1 = with_q.guided_step(x, t, y)
    assert "data" in terms and float(terms["data"][0]) > 0  # the data term is still reported
    assert not torch.allclose(mean0, mean1)
    # the push of the data step is c₁ (x̂0 − x̃0) on the mean
    c1 = base.diffusion._extract("posterior_mean_coef1", t, 4)
    level = base.diffusion._extract("sqrt_recipm1_alphas_cumprod", t, 4)
    x0_hat = (base.consistency((mv.pred_xstart + 1) / 2, y, level) * 2 - 1).clamp(-1, 1)
    assert torch.allclose(mean0, mv.mean + c1 * (x0_hat - mv.pred_xstart), atol=1e-6)


# ------------------------------------------------------------------ divergence
def test_monitor_flags_a_finite_run_away_and_keeps_a_recovering_one():
    m = DivergenceMonitor(3)
    runs = [
        [0.05, 0.01, 0.002, 0.001, 0.3, 0.4],       # runs off from its best (0.001) and stays there
        [0.05, 0.01, 0.002, 0.001, 0.3, 0.0009],    # a spike, then back
        [1e-3, 8e-4, 9e-4, 1e-3, 1.2e-3, 1.3e-3],   # never far from its best, within ten gray levels
    ]
    for step, values in enumerate(zip(*runs), start=1):
        m.update(step, torch.tensor(values))
    assert m.diverged_at() == [5, None, None]
    gray = DivergenceMonitor(2)  # never better than a flat gray image, or never within ten gray levels
    gray.bound(torch.tensor([0.01, 1.0]))
    for step, values in enumerate([[0.02, 0.5], [0.015, 0.2], [0.012, 0.1]], start=1):
        gray.update(step, torch.tensor(values))
    assert gray.diverged_at() == [1, 1]
    loose = DivergenceMonitor(1, absolute=None)  # a learned model (low-light) may end far from its data
    for step, v in enumerate([0.02, 0.0105, 0.01], start=1):
        loose.update(step, torch.tensor([v]))
    assert loose.diverged_at() == [None]
    noisy = DivergenceMonitor(1, noise_sigma=0.1)  # the absolute bound grows with the noise
    for step, v in enumerate([0.3, 0.05, 0.03], start=1):
        noisy.update(step, torch.tensor([v]))
    assert noisy.diverged_at() == [None]
    real = DivergenceMonitor(2)  # a photo no image explains to better than D* = 0.012: held to D* + 10 levels
    real.explainable(torch.tensor([0.012, 0.0]))
    for step, v in enumerate([0.02, 0.013, 0.0129], start=1):
        real.update(step, torch.tensor([v, v]))
    assert real.diverged_at() == [None, 1]
    tiny = DivergenceMonitor(1)
    for step, v in enumerate([1e-6, 1e-8, 0.5 * DIVERGENCE_FLOOR], start=1):  # far past its best, under the floor
        tiny.update(step, torch.tensor([v]))
    assert tiny.diverged_at() == [None]
    nan = DivergenceMonitor(2)
    nan.update(1, torch.tensor([1e-3, 1e-3]))
    nan.update(2, torch.tensor([float("nan"), 5e-4]), finite=torch.tensor([False, True]))
    nan.update(3, torch.tensor([0.0, 1e-4]))
    assert nan.diverged_at() == [2, None]


def test_a_non_finite_image_is_flagged_not_raised():
    unet = _tiny()
    op = SuperResolution(2)
    y = op(torch.rand(2, 3, 32, 32))
    y[0] = 1e30
    result = GDPSampler(unet, _diffusion("5"), op, 1e38, guidance="gradient").restore(y, seeds=[1, 2])
    assert isinstance(result.diverged[0], int)
    assert bool(torch.isfinite(result.images).all())
