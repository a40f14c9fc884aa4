"""The paper configs (``configs/task/paper/``) against the official scripts' own arithmetic, written out here."""

from __future__ import annotations

import pytest
import torch
import yaml

from gdp_lightning.api import build_module
from gdp_lightning.degradations import Inpainting, load_mask, permutation_mask

from .conftest import REPO, SHARED

PERMUTATION = SHARED / "data" / "masks" / "random_permutation_256.txt"


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


def test_permutation_files_are_masks(tmp_path):
    """The official inp_masks/mask.np and DDRM's random_permutation_256.txt (text, one flat index per line) are
    read as masks: the first quarter of the indices missing."""
    order = torch.randperm(36, generator=torch.Generator().manual_seed(0))
    for name in ("mask.np", "perm.txt"):
        (tmp_path / name).write_text("\n".join(f"{float(i):.18e}" for i in order.tolist()) + "\n")
        mask = load_mask(tmp_path / name)
        expected = torch.ones(36)
        expected[order[:9]] = 0
        assert torch.equal(mask, expected.reshape(6, 6))
        assert torch.equal(Inpainting(str(tmp_path / name)).mask[0, 0], mask)
    (tmp_path / "short.txt").write_text("0\n1\n2\n")
    with pytest.raises(ValueError, match="short.txt: a permutation mask needs"):
        load_mask(tmp_path / "short.txt")
    (tmp_path / "twice.txt").write_text("0\n0\n1\n2\n")
    with pytest.raises(ValueError, match="twice.txt: not a permutation"):
        load_mask(tmp_path / "twice.txt")


@pytest.mark.skipif(not PERMUTATION.is_file(), reason="needs ../shared/data/masks/random_permutation_256.txt")
def test_paper_inpaint_masks_the_protocol_pixels(monkeypatch):
    monkeypatch.chdir(REPO)  # the config's path is relative to the repository root
    config = yaml.safe_load((REPO / "configs/task/paper/inpaint.yaml").read_text())
    op = Inpainting(**config["model"]["degradation"]["init_args"])
    assert torch.equal(op.mask[0, 0], permutation_mask(PERMUTATION, 0.25, 256))
    assert torch.equal(load_mask(PERMUTATION), permutation_mask(PERMUTATION, 0.25, 256))


def _paper(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "task" / "paper" / f"{name}.yaml").read_text())["model"]


@pytest.mark.parametrize("name,size,tiles", [("lowlight", (400, 600), 12), ("hdr", (1060, 1900), 112)])
def test_paper_enhancement_configs_tile_as_the_official_scripts(name, size, tiles):
    """The official low-light and HDR scripts restore 256×256 patches every 128 pixels (12 on LOL's 400×600, 112 on
    the 1060×1900 HDR scene) and have their quality terms commented out."""
    from gdp_lightning.sampling.tiling import tile_overlap_pixels
    from gdp_lightning.sampling.tiling import Tiler

    model = _paper(name)
    overlap = tile_overlap_pixels(model["sampler"].get("tile_overlap"), 256)
    assert overlap == 128
    assert len(Tiler(*size, 256, overlap).boxes) == tiles
    assert not model.get("quality")
    assert not model["degradation"]["init_args"].get("smoothness")
    losses = _paper("lowlight_paper_losses")  # the paper's terms live in their own config
    assert [q["name"] for q in losses["quality"]] == ["exposure", "color"]
    assert losses["degradation"]["init_args"]["smoothness"] == 1.0


def test_tile_overlap_as_a_fraction_of_the_tile():
    from gdp_lightning.sampling.tiling import tile_overlap_pixels

    assert tile_overlap_pixels(None, 64) == 16
    assert tile_overlap_pixels(0.5, 64) == 32 and tile_overlap_pixels(0.5, 256) == 128
    assert tile_overlap_pixels(0, 64) == 0 and tile_overlap_pixels(24, 64) == 24
    with pytest.raises(ValueError, match="tile_overlap is pixels"):
        tile_overlap_pixels(2.5, 64)
