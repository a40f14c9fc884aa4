"""Every operator: shapes at odd sizes, adjointness of the linear ones, gradients reaching φ, blind recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

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
    box_mask,
    center_kernels,
    gaussian_kernel,
    gdp_gaussian_kernel,
    kernel_least_squares,
    load_kernel,
    load_mask,
    motion_kernel,
    permutation_mask,
    project_to_simplex,
    random_mask,
    uniform_kernel,
)

from .conftest import SHARED, fixture_files

H, W = 37, 45  # odd, non-square

OPERATORS = {
    "identity": lambda: Identity(),
    "sr4_average": lambda: SuperResolution(4),
    "sr4_average_full": lambda: SuperResolution(4, output="full"),
    "sr3_bicubic": lambda: SuperResolution(3, method="bicubic"),
    "sr2_bicubic_full": lambda: SuperResolution(2, method="bicubic", output="full"),
    "sr2_kernel_blind": lambda: KernelSuperResolution(2, kernel_size=7),
    "sr3_kernel_fixed_zeros": lambda: KernelSuperResolution(3, learnable=False, padding="zeros"),
    "blur_gdp_valid": lambda: Blur(gdp_gaussian_kernel(9, 2), padding="valid"),
    "blur_motion_zeros": lambda: Blur(motion_kernel(7, 30.0), padding="zeros"),
    "blur_uniform_even_reflect": lambda: Blur(uniform_kernel(4), padding="reflect"),
    "blur_gaussian_circular": lambda: Blur(gaussian_kernel(5, 1.2), padding="circular"),
    "blur_blind_replicate": lambda: Blur(kernel_size=5, learnable=True, padding="replicate"),
    "inpaint_random": lambda: Inpainting(random_mask(H, W, 0.3, torch.Generator().manual_seed(0))),
    "colorize_mean": lambda: Colorization(),
    "colorize_luma_1ch": lambda: Colorization("luma", channels=1),
    "lowlight": lambda: LowLight(),
    "lowlight_channel_scalar": lambda: LowLight(factor="channel", offset="scalar"),
    "hdr": lambda: HDR(3),
    "hdr_shared": lambda: HDR(2, shared=True, offset="none"),
    "noise": lambda: GaussianNoise(0.05),
    "blur_sr_noise": lambda: Compose([Blur(gaussian_kernel(5, 1.0), padding="reflect"), SuperResolution(2), GaussianNoise(0.02)]),
    "blind_blur_then_lowlight": lambda: Compose([Blur(kernel_size=3, learnable=True, padding="reflect"), LowLight()]),
}


def _ready(name: str, batch: int = 2, h: int = H, w: int = W, dtype=torch.float32):
    op = OPERATORS[name]()
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    op.init_parameters(batch, h, w, gens)
    return op.to(dtype)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_shapes_at_odd_sizes(name):
    op = _ready(name)
    x = torch.rand(2, 3, H, W)
    y = op(x)
    h, w = op.output_size(H, W)
    assert y.shape == (2, op.output_channels(3), h, w)
    assert op.output_numel(H, W) == y[0].numel()
    assert torch.isfinite(y).all()
    # the image an observation of this size comes from is at least as large as the image (ceil sizes)
    ih, iw = op.input_size(h, w)
    assert ih >= H and iw >= W and ih - H < 4 and iw - W < 4


@pytest.mark.parametrize("name", sorted(n for n in OPERATORS if OPERATORS[n]().linear))
def test_adjoint(name):
    op = _ready(name, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
    y = op(x).detach()
    v = torch.randn(y.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        lhs = (y * v).sum()
        adj = op.adjoint(v, (H, W))
        rhs = (x * adj).sum()
    assert adj.shape == x.shape
    assert torch.allclose(lhs, rhs, rtol=1e-10), (lhs.item(), rhs.item())


def test_nonlinear_operators_have_no_adjoint():
    with pytest.raises(NotImplementedError, match="LowLight is not linear"):
        _ready("lowlight").adjoint(torch.zeros(2, 3, H, W))


@pytest.mark.parametrize("name", sorted(n for n in OPERATORS if OPERATORS[n]().learnable_parameters() or n.startswith(("lowlight", "hdr"))))
def test_gradients_reach_phi(name):
    op = _ready(name)
    params = op.learnable_parameters()
    assert params, "no learnable parameters"
    x = torch.rand(2, 3, H, W)
    target = torch.rand_like(op(x))
    ((op(x) - target) ** 2).mean().backward()
    for k, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, k
        assert p.shape[0] == 2, f"{k} is not per image"
    phi = op.phi()
    assert phi and all(not v.requires_grad and v.device.type == "cpu" for v in phi.values())


def test_per_image_parameters_are_independent():
    op = _ready("blur_blind_replicate")
    x = torch.rand(2, 3, H, W)
    op(x)[0].sum().backward()
    grad = op.kernel_logits.grad
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0


# ----------------------------------------------------------------- kernels
@pytest.mark.parametrize("path", fixture_files("gdp_step_golden"), ids=lambda p: p.name)
def test_gdp_kernel_is_the_official_gkern(path):
    fx = torch.load(path, weights_only=True)
    k = fx["blur_kernel"]
    assert torch.allclose(gdp_gaussian_kernel(k.shape[0], 2), k, atol=1e-7)


def test_kernel_properties():
    for k in (gaussian_kernel(11, 1.5), gdp_gaussian_kernel(), uniform_kernel(3), motion_kernel(9, 45)):
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6) and (k >= 0).all()
    g = gaussian_kernel(31, 2.0)
    r = torch.arange(31.0) - 15
    assert (g.sum(0) * r**2).sum().item() == pytest.approx(4.0, rel=1e-3)  # variance sigma^2
    horizontal = motion_kernel(7, 0.0)
    assert horizontal[3].sum().item() == pytest.approx(1.0) and (horizontal[3] > 0).all()
    vertical = motion_kernel(7, 90.0)
    assert vertical[:, 3].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_load_kernel_formats(tmp_path):
    k = motion_kernel(5, 20.0)
    np.save(tmp_path / "k.npy", k.numpy() * 7)
    np.savetxt(tmp_path / "k.txt", k.numpy())
    torch.save(k * 2, tmp_path / "k.pt")
    Image.fromarray((k / k.max() * 255).round().byte().numpy()).save(tmp_path / "k.png")
    for name in ("k.npy", "k.txt", "k.pt"):
        assert torch.allclose(load_kernel(tmp_path / name), k, atol=1e-6), name
    assert torch.allclose(load_kernel(tmp_path / "k.png"), k, atol=5e-3)
    (tmp_path / "bad.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"bad\.npy: cannot read a blur kernel"):
        load_kernel(tmp_path / "bad.npy")
    np.save(tmp_path / "neg.npy", -np.ones((3, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        load_kernel(tmp_path / "neg.npy")


# ------------------------------------------------------------------- masks
def test_masks():
    m = random_mask(64, 64, 0.25, torch.Generator().manual_seed(0))
    assert m.sum().item() == 64 * 64 - 1024
    b = box_mask(10, 12, 2, 3, 4, 5)
    assert b.sum().item() == 120 - 20 and b[2:6, 3:8].sum() == 0
    protocol = permutation_mask(SHARED / "data" / "masks" / "random_permutation_256.txt")
    assert protocol.shape == (256, 256) and (protocol == 0).sum().item() == 16384
    lolcat = load_mask(SHARED / "data" / "masks" / "lolcat_extra.npy")
    raw = np.load(SHARED / "data" / "masks" / "lolcat_extra.npy")
    assert lolcat.shape == (256, 256) and lolcat.sum().item() == (raw != 0).sum()


def test_png_mask_white_is_observed(tmp_path):
    m = box_mask(20, 30, 5, 5, 6, 7)
    Image.fromarray((m * 255).byte().numpy()).save(tmp_path / "m.png")
    assert torch.equal(load_mask(tmp_path / "m.png"), m)
    with pytest.raises(ValueError, match=r"mask is 20x30 but the image is 37x45"):
        Inpainting(tmp_path / "m.png")(torch.rand(1, 3, H, W))


# -------------------------------------------------------------- operators
def test_super_resolution_semantics():
    x = torch.rand(1, 3, 16, 12)
    low = SuperResolution(4)(x)
    assert torch.allclose(low[0, :, 1, 2], x[0, :, 4:8, 8:12].mean((1, 2)))
    full = SuperResolution(4, output="full")(x)
    assert torch.equal(full, low.repeat_interleave(4, -2).repeat_interleave(4, -1))
    # a partial last block averages what is there
    odd = torch.rand(1, 1, 5, 5)
    assert torch.allclose(SuperResolution(4)(odd)[0, 0, 1, 1], odd[0, 0, 4, 4])
    const = torch.full((1, 3, 13, 11), 0.3)
    assert torch.allclose(SuperResolution(3, "bicubic")(const), torch.full((1, 3, 5, 4), 0.3), atol=1e-6)


def test_colorization_and_luma():
    x = torch.rand(2, 3, 4, 4)
    y = Colorization()(x)
    assert torch.allclose(y, (x[:, 0:1] / 3 + x[:, 1:2] / 3 + x[:, 2:3] / 3).expand(-1, 3, -1, -1))
    luma = Colorization("luma", channels=1)(x)
    assert torch.allclose(luma[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    with pytest.raises(ValueError, match="RGB"):
        Colorization()(torch.rand(1, 1, 4, 4))


def test_illumination_models():
    x = torch.rand(2, 3, 8, 10)
    ll = LowLight(init="identity")
    ll.init_parameters(2, 8, 10)
    assert torch.allclose(ll(x), x)
    official = LowLight()
    official.init_parameters(2, 8, 10, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert official.f.shape == (2, 1, 1, 1) and official.M.shape == (2, 1, 8, 10)
    assert official.f.abs().max() < 0.05 and 0 <= official.M.min() and official.M.max() < 1e-4
    again = LowLight()
    again.init_parameters(2, 8, 10, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert torch.equal(again.f, official.f)  # seeded per image

    hdr = HDR(3, init="identity")
    hdr.init_parameters(2, 8, 10)
    hdr.set_inputs(f=torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1).expand(2, 3, 1, 1))
    y = hdr(x)
    assert y.shape == (2, 9, 8, 10) and hdr.num_observations == 3
    assert torch.allclose(y[:, 0:3], 0.5 * x) and torch.allclose(y[:, 6:9], 2 * x)
    assert torch.equal(HDR.stack([x, x * 2]), torch.cat([x, 2 * x], 1))
    shared = HDR(3, shared=True)
    shared.init_parameters(2, 8, 10)
    assert shared.f.shape == (2, 1, 1, 1) and shared.M.shape == (2, 1, 8, 10)

    smooth = LowLight(smoothness=2.0, init="identity")
    smooth.init_parameters(1, 3, 3)
    smooth.set_inputs(M=torch.tensor([[0.0, 1, 0], [0, 0, 0], [0, 0, 0]]).view(1, 1, 3, 3))
    # vertical: one difference of 1 over 6 pairs; horizontal: two of 1 over 6 pairs; TV = 2 (1/6 + 2/6)
    assert smooth.regularization().item() == pytest.approx(2.0 * 2 * (1 / 6 + 2 / 6))


def test_compose_names_sizes_and_noise():
    op = _ready("blind_blur_then_lowlight")
    assert set(op.learnable_parameters()) == {"0.kernel_logits", "1.f", "1.M"}
    assert set(op.phi()) == {"0.kernel", "1.f", "1.M"}
    chain = _ready("blur_sr_noise")
    assert chain.output_size(H, W) == (19, 23) and chain.linear
    x = torch.full((1, 3, 64, 64), 0.5)
    noisy = GaussianNoise(0.1).observe(x, [torch.Generator().manual_seed(0)])
    assert noisy.std().item() == pytest.approx(0.1, rel=0.05)
    assert torch.equal(GaussianNoise(0.1)(x), x)
    with pytest.raises(ValueError, match="only the last operator"):
        Compose([HDR(2), Blur(uniform_kernel(3))])


def test_restrict_observation_masks_the_holes_of_a_real_photo():
    y = torch.rand(2, 3, 8, 10)
    mask = box_mask(8, 10, 2, 3, 4, 4)
    masked = y * mask
    assert torch.equal(Inpainting(mask).restrict_observation(y), masked)
    # a mask followed by noise still observes the masked pixels only
    assert torch.equal(Compose([Inpainting(mask), GaussianNoise(0.05)]).restrict_observation(y), masked)
    assert torch.equal(Compose([Blur(uniform_kernel(3), padding="reflect"), Inpainting(mask)]).restrict_observation(y),
                       masked)
    # a blur after the mask spreads content into the holes: y stays whole
    assert Compose([Inpainting(mask), Blur(uniform_kernel(3), padding="reflect")]).restrict_observation(y) is None
    for op in (SuperResolution(2), Colorization(), Blur(uniform_kernel(3)), LowLight(), Identity(), GaussianNoise(0.1)):
        assert op.restrict_observation(y) is None


# ------------------------------------------------------------ blind recovery
def _photo(size=48):
    from skimage import data

    img = torch.from_numpy(data.astronaut()[100:100 + 4 * size:4, 180:180 + 4 * size:4].copy()).permute(2, 0, 1)
    return img[None].float() / 255


def _fit(op, x, y, steps, lr):
    params = list(op.learnable_parameters().values())
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((op(x) - y) ** 2).mean()
        reg = op.regularization()
        (loss + (reg.sum() if reg is not None else 0)).backward()
        opt.step()
    return op


def test_blind_blur_recovers_the_kernel():
    x = _photo()
    true = gaussian_kernel(7, 1.6)
    y = Blur(true, padding="valid")(x)
    op = Blur(kernel_size=7, learnable=True, init_sigma=0.7)
    op.init_parameters(1, *x.shape[-2:])
    start_err = (op.kernel()[0, 0] - true).abs().sum().item()
    _fit(op, x, y, steps=400, lr=0.05)
    err = (op.kernel()[0, 0].detach() - true).abs().sum().item()
    assert err < 0.02 < start_err, (start_err, err)  # L1 distance between kernels (each sums to one)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_kernel_super_resolution_samples_the_cell_centre(factor):
    """Low-resolution pixel i stands for the cell [s·i, s·i + s): on a ramp, a symmetric kernel gives its centre
    s·i + (s − 1)/2 (13.5 for column 3 at ×4); an s × s box kernel is block averaging exactly; and bicubic
    upsampling of the observation lines up with the image (cross-correlation peak at zero shift)."""
    ramp = torch.arange(48, dtype=torch.float64).expand(1, 1, 40, 48)
    op = KernelSuperResolution(factor, learnable=False, padding="replicate")
    low = op(ramp.float()).double()
    inner = slice(2, low.shape[-1] - 2)
    centres = factor * torch.arange(low.shape[-1], dtype=torch.float64) + (factor - 1) / 2
    assert torch.allclose(low[0, 0, 3, inner], centres[inner], atol=1e-4)
    x = _photo()
    box = KernelSuperResolution(factor, kernel=torch.ones(factor, factor), learnable=False)
    assert torch.allclose(box(x[..., :36, :36]), SuperResolution(factor)(x[..., :36, :36]), atol=1e-6)
    big = torch.nn.functional.interpolate(_photo(96), size=(96, 96), mode="bilinear")
    up = torch.nn.functional.interpolate(op(big), scale_factor=factor, mode="bicubic", align_corners=False)
    core = (slice(None), slice(None), slice(12, -12), slice(12, -12))

    def score(dy, dx):
        return float((up[core] - big.roll((dy, dx), (-2, -1))[core]).pow(2).mean())

    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    assert min(shifts, key=lambda d: score(*d)) == (0, 0)


def test_kernel_super_resolution_kernels_take_the_factor_parity():
    assert KernelSuperResolution(4).kernel().shape[-2:] == (16, 16)  # even for an even factor
    assert KernelSuperResolution(3).kernel().shape[-2:] == (13, 13)
    assert KernelSuperResolution(2, kernel_size=7).kernel().shape[-2:] == (8, 8)
    odd = KernelSuperResolution(4, kernel=gaussian_kernel(13, 2.0), learnable=False).kernel()[0, 0]
    assert odd.shape == (14, 14) and float(odd.sum()) == pytest.approx(1.0)
    assert torch.allclose(odd, odd.flip(0).flip(1), atol=1e-7)  # still centred
    small = KernelSuperResolution(4, kernel=torch.ones(2, 2), learnable=False).kernel()[0, 0]
    assert small.shape == (4, 4) and torch.allclose(small[1:3, 1:3], torch.full((2, 2), 0.25))


def test_correlate_applies_a_kernel_as_conv2d_does():
    """Correlation-based code (conv2d, the official GDP) applies a kernel unflipped: ``correlate=True`` gives its
    result, the default is the true convolution (the kernel rotated 180°)."""
    x = _photo()
    k = torch.rand(9, 9, generator=torch.Generator().manual_seed(0))  # no symmetry
    k = k / k.sum()
    conv2d = torch.nn.functional.conv2d(x.reshape(3, 1, *x.shape[-2:]), k[None, None]).reshape(1, 3, 40, 40)
    assert torch.allclose(Blur(k, padding="valid", correlate=True)(x), conv2d, atol=1e-6)
    assert torch.allclose(Blur(k.flip(0, 1), padding="valid")(x), conv2d, atol=1e-6)
    assert not torch.allclose(Blur(k, padding="valid")(x), conv2d, atol=1e-3)
    per_image = Blur(gaussian_kernel(9, 1.0), padding="valid", correlate=True)
    per_image.set_inputs(kernel=k)  # a <name>_kernel side file: read the same way
    assert torch.allclose(per_image(x), conv2d, atol=1e-6)


def test_center_kernels_moves_the_centre_of_mass_to_the_grid_centre():
    k = torch.zeros(2, 1, 9, 9)
    k[0, 0, 1:4, 5:8] = gaussian_kernel(3, 0.8)  # centre of mass at (2, 6): two up, two right
    k[1, 0] = gaussian_kernel(9, 1.5)  # already centred
    out = center_kernels(k)
    assert torch.allclose(out[0, 0, 3:6, 3:6], gaussian_kernel(3, 0.8).float(), atol=1e-6)
    assert torch.allclose(out[1], k[1]) and torch.allclose(out.sum((1, 2, 3)), torch.ones(2))


def test_blind_least_squares_fit_keeps_the_kernel_centred():
    """A shifted kernel explains a shifted image equally well: fitted on an image moved by two pixels, the
    uncentred kernel comes out off-centre, the centred one (default) on the grid's centre."""
    x = _photo(56)
    y = Blur(gaussian_kernel(9, 1.2), padding="valid")(x)
    moved = x.roll((2, 2), (-2, -1))
    centroid = {}
    for center in (False, True):
        op = Blur(kernel_size=9, learnable=True, init_sigma=0.7, padding="valid", center=center)
        op.init_parameters(1, *x.shape[-2:])
        for _ in range(60):
            op.fit_parameters(moved, y)
        k = op.kernel()[0, 0].detach()
        centroid[center] = (float((k.sum(1) * torch.arange(9.0)).sum()), float((k.sum(0) * torch.arange(9.0)).sum()))
    assert min(abs(c - 4) for c in centroid[False]) > 1.0
    assert max(abs(c - 4) for c in centroid[True]) < 0.5


def test_project_to_simplex_is_the_euclidean_projection():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, 9, generator=g) * 2
    p = project_to_simplex(v)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(64), atol=1e-5)
    assert torch.equal(project_to_simplex(p), p) or torch.allclose(project_to_simplex(p), p, atol=1e-6)
    # no point of the simplex is closer: compare with random simplex points
    others = torch.distributions.Dirichlet(torch.ones(9)).sample((64, 200))
    closest = (others - v[:, None]).pow(2).sum(-1).min(1).values
    assert ((p - v).pow(2).sum(1) <= closest + 1e-5).all()


@pytest.mark.parametrize("padding", ["valid", "reflect", "zeros"])
def test_kernel_least_squares_recovers_the_kernel(padding):
    """Two images blurred with different (asymmetric) kernels: each one's kernel is found from its own pair, from
    a start far from it, and bands of a few rows give the same solve as one band."""
    x = torch.cat([_photo(), _photo().flip(-1)])
    true = torch.stack([motion_kernel(5, 30.0, 7), gaussian_kernel(7, 1.6)])[:, None]
    y = torch.cat([Blur(true[i, 0], padding=padding)(x[i : i + 1]) for i in range(2)])
    start = gaussian_kernel(7, 0.7).expand(2, 1, 7, 7)
    fitted = kernel_least_squares(x, y, (7, 7), padding, start, iterations=20000)
    assert fitted.shape == (2, 1, 7, 7)
    assert (fitted - true).abs().flatten(1).sum(1).max() < 0.02  # L1 distance of kernels summing to one
    short = kernel_least_squares(x, y, (7, 7), padding, start, iterations=200)
    assert ((short - true).abs().flatten(1).sum(1) < (start - true).abs().flatten(1).sum(1)).all()
    banded = kernel_least_squares(x, y, (7, 7), padding, start, iterations=20000, rows=5)
    assert torch.allclose(banded, fitted, atol=1e-5)
    flat = kernel_least_squares(torch.zeros_like(x), y, (7, 7), padding, start)
    assert torch.equal(flat, start)  # nothing to fit: the start is kept


def test_kernel_smoothness_prior_helps_on_noisy_observations():
    """With 3 % noise on the blurred photo the plain least-squares kernel picks up the noise; a small smoothness
    prior (λ 0.01) brings it closer to the true kernel, a large one (λ 1) widens it."""
    x = _photo(56)
    true = gaussian_kernel(9, 1.5)
    y = Blur(true, padding="valid")(x)
    y = y + 0.03 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    start = gaussian_kernel(9, 0.7).expand(1, 1, 9, 9)
    error = {lam: float((kernel_least_squares(x, y, (9, 9), "valid", start, iterations=5000, smoothness=lam)[0, 0]
                         - true).abs().sum()) for lam in (0.0, 0.01, 1.0)}
    assert error[0.01] < 0.5 * error[0.0]
    assert error[1.0] > error[0.01]


def test_lstsq_phi_fits_a_blind_blur_and_refuses_other_operators():
    from gdp_lightning.sampling import GDPSampler

    x = _photo()
    true = gaussian_kernel(9, 1.4)
    y = Blur(true, padding="reflect")(x)
    op = Blur(kernel_size=9, learnable=True, init_sigma=0.7, padding="reflect")
    op.init_parameters(1, *x.shape[-2:])
    sampler = GDPSampler(torch.nn.Identity(), None, op, 1.0, phi_optimizer="lstsq", phi_start=0.5, whole_image=True)
    assert sampler.make_optimizer() is None
    before = op.kernel().detach().clone()
    sampler.update_phi(x * 2 - 1, y, None, progress=0.4)  # before phi_start: unchanged
    assert torch.equal(op.kernel().detach(), before)
    for _ in range(100):  # each call warm-starts from the last kernel
        sampler.update_phi(x * 2 - 1, y, None, progress=0.5)
    assert (op.kernel()[0, 0].detach() - true).abs().sum() < 0.1 < 0.5 < (before[0, 0] - true).abs().sum()
    with pytest.raises(ValueError, match="lstsq"):
        GDPSampler(torch.nn.Identity(), None, Compose([Blur(kernel_size=5, learnable=True), SuperResolution(2)]),
                   1.0, phi_optimizer="lstsq")
    with pytest.raises(ValueError, match="phi_start"):
        GDPSampler(torch.nn.Identity(), None, op, 1.0, phi_start=1.5)


@pytest.mark.parametrize("offset,smoothness", [("scalar", 0.0), ("map", 50.0)])
def test_lowlight_recovers_the_gain(offset, smoothness):
    x = _photo()
    y = 0.3 * x + 0.05
    op = LowLight(offset=offset, smoothness=smoothness)
    op.init_parameters(1, *x.shape[-2:], [torch.Generator().manual_seed(0)])
    _fit(op, x, y, steps=600, lr=0.01)
    assert op.f.item() == pytest.approx(0.3, abs=0.01)
    assert op.M.mean().item() == pytest.approx(0.05, abs=0.01)


def test_saturating_hdr_model_is_not_pulled_darker_by_clipped_highlights():
    """Three exposures 0.5·x, x and 2·x of a photo, the long one clipped at white as a sensor does. Fitting the gains
    and the image with the unclipped model (the official one) pulls the image darker where the long exposure
    clipped; the saturating model leaves it alone, and its data term is exactly zero at the truth."""
    x = _photo()
    gains = torch.tensor([0.5, 1.0, 2.0])
    y = HDR.stack([(g * x).clamp(0, 1) for g in gains])
    clipped = (2 * x > 1).expand(1, 3, *x.shape[-2:])
    assert 0.05 < clipped.float().mean() < 0.6
    errors = {}
    for saturate in (False, True):
        op = HDR(3, offset="none", init="identity", saturation=1.0 if saturate else None)
        op.init_parameters(1, *x.shape[-2:])
        with torch.no_grad():
            op.f.copy_(gains.reshape(op.f.shape))
        if saturate:
            assert float(((op(x) - y) ** 2).mean()) == 0.0
            assert op(x * 3).max() <= 1.0
        image = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([image], lr=0.01)
        for _ in range(200):  # the image moves to fit the exposures, the gains held at the truth
            opt.zero_grad()
            ((op(image) - y) ** 2).mean().backward()
            opt.step()
        errors[saturate] = float((image.detach() - x)[clipped].mean())
    assert errors[False] < -0.02  # pulled darker where the long exposure clipped
    assert abs(errors[True]) < 1e-3


# ------------------------------------------------ low-light then blur; the lorem3 protocol mask
def test_lowlight_then_blur_optimises_every_phi_jointly():
    """Compose([LowLight, Blur(learnable)]): y = k * (f·x + M); the data term's gradient reaches f, M and the
    kernel, and one sampler φ step moves all three together."""
    from gdp_lightning.sampling import GDPSampler

    op = Compose([LowLight(offset="map"), Blur(kernel_size=5, learnable=True, padding="reflect")])
    op.init_parameters(2, H, W, [torch.Generator().manual_seed(i) for i in range(2)])
    assert set(op.learnable_parameters()) == {"0.f", "0.M", "1.kernel_logits"}
    x = torch.rand(2, 3, H, W)
    lowlight, blur = op.operators
    assert torch.allclose(op(x), blur(lowlight(x)))
    assert torch.allclose(op(x), blur(lowlight.f * x + lowlight.M), atol=1e-6)
    y = Blur(gaussian_kernel(5, 1.2), padding="reflect")(0.3 * x + 0.05)
    ((op(x) - y) ** 2).mean().backward()
    for name, p in op.learnable_parameters().items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

    sampler = GDPSampler(torch.nn.Identity(), None, op, 1.0, phi_lr=0.05, whole_image=True)
    before = {k: v.clone() for k, v in op.phi().items()}
    sampler.update_phi(2 * x - 1, y, sampler.make_optimizer())  # x̃0 in [-1, 1]
    after = op.phi()
    for name in ("0.f", "0.M", "1.kernel"):
        assert not torch.allclose(after[name], before[name]), name
        assert not torch.allclose(after[name][0], after[name][1]), name  # one φ per image


def test_lorem3_protocol_mask_loads():
    path = SHARED / "data" / "masks" / "lorem3.npy"
    raw = np.load(path)
    mask = load_mask(path)
    assert mask.shape == (256, 256) == raw.shape and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum().item() == (raw != 0).sum() and 0.8 < mask.mean().item() < 0.9  # text strokes are missing
    op = Inpainting(mask)
    x = torch.rand(1, 3, 256, 256)
    assert torch.equal(op(x), x * mask) and torch.equal(op.adjoint(op(x)), op(x))
