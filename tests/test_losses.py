"""Reconstruction and quality losses: values, per-image shapes, finite gradients."""

from __future__ import annotations

import pytest
import torch

from gdp_lightning.losses import ColorConstancy, ExposureControl, IlluminationSmoothness, l1, mse


def test_reconstruction_per_image():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    b[1] *= 2
    assert torch.equal(mse(a, b), torch.tensor([1.0, 4.0]))
    assert torch.equal(l1(a, b), torch.tensor([1.0, 2.0]))


def test_exposure_control():
    loss = ExposureControl(patch_size=4, target=0.6)
    assert torch.allclose(loss(torch.full((2, 3, 8, 8), 0.6)), torch.zeros(2))
    x = torch.zeros(1, 3, 8, 8)
    x[..., :4, :4] = 1.0  # one patch at 1, three at 0
    assert loss(x).item() == pytest.approx((0.4**2 + 3 * 0.6**2) / 4)
    assert loss(torch.zeros(1, 3, 5, 3)).shape == (1,)  # images smaller than a patch


def test_color_constancy_is_finite_on_gray_images():
    gray = torch.full((1, 3, 8, 8), 0.4, requires_grad=True)
    value = ColorConstancy()(gray)
    value.sum().backward()
    assert value.item() == pytest.approx(1e-10, rel=1e-3) and torch.isfinite(gray.grad).all()
    # the official form (no eps) has an infinite gradient there
    official = ColorConstancy(eps=0.0)
    g2 = gray.detach().clone().requires_grad_(True)
    official(g2).sum().backward()
    assert not torch.isfinite(g2.grad).all()

    x = torch.zeros(1, 3, 2, 2)
    x[:, 0] = 0.5  # mean r = 0.5, g = b = 0
    assert ColorConstancy()(x).item() == pytest.approx((2 * 0.25**2) ** 0.5, rel=1e-6)


def test_value_ranges():
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.allclose(ExposureControl(value_range="[0,1]").prepare(x0), (x0 + 1) / 2)
    assert torch.equal(ColorConstancy(value_range="[-1,1]").prepare(x0), x0)
    with pytest.raises(ValueError, match="value_range"):
        ColorConstancy(value_range="0-255")


def test_illumination_smoothness():
    m = torch.zeros(2, 1, 4, 4)
    m[1, 0, :, 2:] = 1.0  # a vertical edge: 4 horizontal differences of 1 over 12 pairs
    assert torch.allclose(IlluminationSmoothness()(m), torch.tensor([0.0, 2 * 4 / 12]))


def test_the_official_low_light_losses_on_minus_one_to_one():
    """The official (commented-out) low-light loss evaluates L_exp(8, 0.3) and L_color on x̃0 in [-1, 1]: on [0, 1]
    that is 4× exposure control towards (0.3 + 1)/2 = 0.65 and 4× colour constancy (differences of means double)."""
    x01 = torch.rand(2, 3, 32, 32)
    x0 = 2 * x01 - 1
    official_exp = ExposureControl(patch_size=8, target=0.3, value_range="[-1,1]")
    assert torch.allclose(official_exp(official_exp.prepare(x0)), 4 * ExposureControl(8, 0.65)(x01), rtol=1e-5)
    pooled = torch.nn.functional.avg_pool2d(x0.mean(1, keepdim=True), 8)  # MyLoss.L_exp, per image
    assert torch.allclose(official_exp(x0), (pooled - 0.3).pow(2).flatten(1).mean(1), rtol=1e-6)
    official_col = ColorConstancy(eps=0.0, value_range="[-1,1]")
    assert torch.allclose(official_col(official_col.prepare(x0)), 4 * ColorConstancy(eps=0.0)(x01), rtol=1e-5)
