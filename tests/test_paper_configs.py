"""The paper configs (``configs/task/paper/``) against the official scripts' own arithmetic, written out here."""

from __future__ import annotations

import torch

from gdp_lightning.api import build_module


def _official_color_step(x: torch.Tensor, y_gray: torch.Tensor, scale: float, weight: float) -> torch.Tensor:
    """The gradient of sample_x0_color.py's loss for a batch: scale · Σ_b mean((gray(x_b) − y_b)²) plus
    weight · mean_b L_color(x_b), L_color the Zero-DCE colour constancy of x in [-1, 1]."""
    x = x.detach().requires_grad_(True)
    gray = ((x + 1) / 2).mean(1, keepdim=True).expand_as(x)
    data = (gray - y_gray).pow(2).mean((1, 2, 3)).sum()
    m = x.mean((2, 3))
    d = torch.stack([(m[:, 0] - m[:, 1]).pow(2), (m[:, 0] - m[:, 2]).pow(2), (m[:, 2] - m[:, 1]).pow(2)], 1)
    color = d.pow(2).sum(1).sqrt()
    (grad,) = torch.autograd.grad(scale * data + weight * color.mean(), x)
    return grad


def test_paper_colorize_weights_each_image_as_the_official_batch_of_ten(skimage64_checkpoint):
    """The official colour term is 500 · the mean over its batch of 10: 50 per image. The paper config's weight is
    per image, so one image gets the official push whatever the batch size."""
    module = build_module("paper/colorize", "skimage64", skimage64_checkpoint)
    sampler = module.make_sampler(module.settings.scale_list()[0])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 16, 16, generator=g) * 2 - 1
    x = x + torch.tensor([0.3, -0.2, 0.1])[None, :, None, None]  # channel means apart: a colour push
    y = torch.rand(10, 3, 16, 16, generator=g).mean(1, keepdim=True).expand(10, 3, 16, 16)
    expected = _official_color_step(x, y, 6000.0, 500.0)
    c = sampler.conversion(16, 16, 3)
    for batch in (10, 3, 1):  # per image: the same push in any batch
        ours, _ = sampler.guidance(x[:batch], y[:batch], c)
        assert torch.allclose(ours, expected[:batch], rtol=1e-4, atol=1e-4), batch
