"""Metrics on 8-bit outputs: hand-computed values, torchmetrics agreement, and the offline weights checks."""

from __future__ import annotations

import math
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchmetrics.functional.image import structural_similarity_index_measure

from gdp_lightning import metrics
from gdp_lightning.metrics import (
    FID,
    LPIPS,
    ImageMetrics,
    MetricUnavailable,
    consistency,
    lightness_order_error,
    psnr,
    ssim,
    to_8bit,
)

ALEX_URL = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
ALEX_FILE = "alexnet-owt-7be5be79.pth"


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _use_torch_home(monkeypatch, home: Path) -> Path:
    """Point the torch hub cache at ``home/hub`` (env var and any earlier ``torch.hub.set_dir``), restored after."""
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def fake_alexnet_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds an AlexNet state dict with random weights under torchvision's file name.

    Only ``features`` matter to LPIPS; the classifier is stored as broadcast zeros to keep the file small."""
    home = tmp_path_factory.mktemp("torch_home")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.alexnet(weights=None).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    state = {
        k: (torch.randn(s, generator=g) * 0.1 if k.startswith("features.") else torch.zeros(1).expand(s))
        for k, s in shapes.items()
    }
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / ALEX_FILE)
    return home


class _TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("fid") / "tiny_features.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_TinyFeatures()), str(path))
    return path


# --- to_8bit / PSNR ---------------------------------------------------------------------------------------------


def test_to_8bit_levels():
    x = torch.tensor([-0.5, 0.0, 0.3 / 255, 0.6 / 255, 100.49 / 255, 1.0, 2.0])
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 100.0, 255.0, 255.0]) / 255
    assert to_8bit(x).dtype == x.dtype
    torch.testing.assert_close(to_8bit(x), expected, rtol=0, atol=0)


def test_psnr_matches_hand_formula_on_8bit_values():
    x, gt = _rand(4, 3, 16, 12, seed=1), _rand(4, 3, 16, 12, seed=2)
    out = psnr(x, gt)
    assert out.shape == (4,)
    a, b = (x.double() * 255).round(), (gt.double() * 255).round()
    mse = ((a - b) / 255).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(out.double(), 10 * torch.log10(1 / mse), rtol=1e-6, atol=1e-6)
    # on unquantized values the number would differ noticeably
    assert (out.double() - 10 * torch.log10(1 / (x - gt).double().pow(2).flatten(1).mean(1))).abs().max() > 1e-3


def test_psnr_quantizes_before_comparing():
    gt = (_rand(2, 3, 8, 8, seed=3) * 254).round() / 255  # 8-bit levels below 255, so +0.6 levels does not clip
    assert torch.isinf(psnr(gt + 0.4 / 255, gt)).all()  # under half a level: same 8-bit image
    torch.testing.assert_close(psnr(gt + 0.6 / 255, gt).double(), torch.full((2,), 20 * math.log10(255)).double())


# --- SSIM -------------------------------------------------------------------------------------------------------


def test_ssim_identical_is_one_and_per_image_matches_torchmetrics():
    x, gt = _rand(3, 3, 32, 40, seed=4), _rand(3, 3, 32, 40, seed=5)
    torch.testing.assert_close(ssim(gt, gt), torch.ones(3, dtype=torch.float64))
    out = ssim(x, gt)
    assert out.shape == (3,)
    for i in range(3):
        ref = structural_similarity_index_measure(to_8bit(x[i : i + 1]), to_8bit(gt[i : i + 1]), data_range=1.0)
        assert out[i].item() == pytest.approx(ref.item(), abs=1e-5)


def test_ssim_odd_and_tiny_sizes():
    x, gt = _rand(2, 3, 37, 23, seed=6), _rand(2, 3, 37, 23, seed=7)
    ref = structural_similarity_index_measure(to_8bit(x), to_8bit(gt), data_range=1.0, reduction="none")
    torch.testing.assert_close(ssim(x, gt).float(), ref, rtol=1e-5, atol=1e-5)
    # below the 11x11 window's reach a smaller gaussian is used instead of failing
    small = _rand(2, 3, 4, 5, seed=8)
    with pytest.raises(Exception):  # noqa: B017 - torchmetrics' own failure on this size
        structural_similarity_index_measure(small, small.flip(0), data_range=1.0)
    torch.testing.assert_close(ssim(small, small), torch.ones(2, dtype=torch.float64))
    v = ssim(small, small.flip(0))
    assert v.shape == (2,) and (v < 0.9).all() and (v >= -1).all()
    with pytest.raises(ValueError, match="too small"):
        ssim(torch.rand(1, 3, 1, 5), torch.rand(1, 3, 1, 5))


# --- consistency ------------------------------------------------------------------------------------------------


def test_consistency_known_value_and_shape_error():
    y = _rand(2, 3, 8, 8, seed=9).double() * 0.9
    ax = y + 2 / 255
    torch.testing.assert_close(consistency(ax, y), torch.full((2,), 4.0, dtype=torch.float64))
    ax2 = y.clone()
    ax2[1, 0, 0, 0] += 16 / 255  # one pixel off by 16 levels in image 1 only
    torch.testing.assert_close(consistency(ax2, y), torch.tensor([0.0, 256 / (3 * 64)], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\).*\(2, 3, 4, 4\)"):
        consistency(ax, y[..., :4, :4])


# --- LOE --------------------------------------------------------------------------------------------------------


def _loe_bruteforce(l_enh: torch.Tensor, l_ref: torch.Tensor) -> float:
    """LOE of two lightness maps (H, W), the literal double loop of the definition."""
    e, r = l_enh.flatten().tolist(), l_ref.flatten().tolist()
    total = sum((r[p] >= r[q]) != (e[p] >= e[q]) for p in range(len(r)) for q in range(len(r)))
    return total / len(r)


def test_loe_hand_built_cases():
    ref = torch.tensor([10.0, 20.0, 30.0]).reshape(1, 1, 1, 3) / 255
    # swapping the two darkest pixels: pixel 0 and pixel 1 each disagree with one other pixel -> (1 + 1 + 0) / 3
    enh = torch.tensor([20.0, 10.0, 30.0]).reshape(1, 1, 1, 3) / 255
    assert lightness_order_error(enh, ref, size=1).item() == pytest.approx(2 / 3)
    # full reversal: every pixel disagrees with both others
    assert lightness_order_error(ref.flip(-1), ref, size=1).item() == pytest.approx(2.0)
    # ties count: L_ref equal, L_enh not -> only the pair (p=1, q=0) flips: 1/2
    tie_ref = torch.tensor([10.0, 10.0]).reshape(1, 1, 2, 1) / 255
    tie_enh = torch.tensor([10.0, 20.0]).reshape(1, 1, 2, 1) / 255
    assert lightness_order_error(tie_enh, tie_ref, size=1).item() == pytest.approx(0.5)
    # lightness is the max over RGB: a 3-channel image whose max channel keeps the order of a grey reference
    rgb = torch.zeros(1, 3, 1, 3)
    rgb[0, 0, 0, 0], rgb[0, 1, 0, 1], rgb[0, 2, 0, 2] = 0.1, 0.2, 0.3
    assert lightness_order_error(rgb, ref, size=1).item() == 0.0
    assert lightness_order_error(rgb.flip(-1), ref, size=1).item() == pytest.approx(2.0)


def test_loe_identical_and_monotone_map_are_zero():
    ref = torch.randint(0, 16, (2, 3, 50, 60), generator=torch.Generator().manual_seed(10)).float() * 16 / 255
    assert torch.equal(lightness_order_error(ref, ref), torch.zeros(2, dtype=torch.float64))
    # a brightening gamma keeps levels 16 apart distinct after 8-bit rounding, so the order is kept
    assert torch.equal(lightness_order_error(ref.pow(0.5), ref), torch.zeros(2, dtype=torch.float64))
    assert (lightness_order_error(1 - ref, ref) > 10).all()


def test_loe_vectorised_chunks_match_the_definition():
    ref, enh = _rand(2, 3, 7, 9, seed=11), _rand(2, 3, 7, 9, seed=12)
    out = lightness_order_error(enh, ref, size=7, chunk=5)  # 63 pixels in 13 chunks, no resizing
    assert out.shape == (2,) and out.dtype == torch.float64
    for i in range(2):
        l_enh = (to_8bit(enh[i]) * 255).amax(0)
        l_ref = (to_8bit(ref[i]) * 255).amax(0)
        assert out[i].item() == pytest.approx(_loe_bruteforce(l_enh, l_ref))
    torch.testing.assert_close(lightness_order_error(enh, ref, size=7), out)


def test_loe_downsamples_the_short_side_to_size():
    ref, enh = _rand(1, 3, 200, 100, seed=13), _rand(1, 3, 200, 100, seed=14).pow(0.7)

    def lightness_50(x):
        l_map = (to_8bit(x.double()) * 255).amax(1, keepdim=True)
        return F.interpolate(l_map, size=(100, 50), mode="bilinear", antialias=True, align_corners=False)[0, 0]

    le, lr = lightness_50(enh).flatten(), lightness_50(ref).flatten()
    expected = ((lr[:, None] >= lr[None, :]) ^ (le[:, None] >= le[None, :])).sum().item() / lr.numel()
    out = lightness_order_error(enh, ref)
    assert out.item() == pytest.approx(expected)
    # without the resizing (short side already 100) the number differs
    assert abs(lightness_order_error(enh, ref, size=100).item() - expected) > 1.0


def test_loe_shape_errors():
    with pytest.raises(ValueError, match="share N, H and W"):
        lightness_order_error(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="1 or 3"):
        lightness_order_error(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8))


# --- LPIPS ------------------------------------------------------------------------------------------------------


def test_lpips_missing_weights_is_one_line(monkeypatch, tmp_path, no_network):
    folder = _use_torch_home(monkeypatch, tmp_path)
    with pytest.raises(MetricUnavailable) as err:
        LPIPS()
    msg = str(err.value)
    assert "\n" not in msg
    assert ALEX_FILE in msg and ALEX_URL in msg and str(folder) in msg and "TORCH_HOME" in msg
    assert not (folder / ALEX_FILE).exists()
    with pytest.raises(ValueError, match="net_type"):
        LPIPS("resnet")


def test_lpips_offline_with_cached_backbone(monkeypatch, fake_alexnet_home, no_network):
    _use_torch_home(monkeypatch, fake_alexnet_home)
    lp = LPIPS("alex").to("cpu")
    gt = _rand(3, 3, 64, 64, seed=15)
    x = gt.clone()
    x[1] = _rand(3, 64, 64, seed=16)
    x[2] = 1 - gt[2]
    out = lp(x, gt)
    assert out.shape == (3,)
    assert out[0].abs().item() < 1e-6
    assert out[1].item() > 1e-3 and out[2].item() > 1e-3
    # per-image values do not depend on the batch they come in
    assert lp(x[1:2], gt[1:2]).item() == pytest.approx(out[1].item(), rel=1e-4)
    # 8-bit quantization: a shift under half a level changes nothing
    assert torch.equal(lp(to_8bit(gt) + 0.3 / 255, gt), lp(to_8bit(gt), gt))


# --- FID --------------------------------------------------------------------------------------------------------


def test_fid_standard_inception_unavailable_is_one_line(monkeypatch, tmp_path, no_network):
    folder = _use_torch_home(monkeypatch, tmp_path)
    with pytest.raises(MetricUnavailable) as err:
        FID()
    msg = str(err.value)
    assert "\n" not in msg
    assert "torch-fidelity" in msg or "weights-inception-2015-12-05-6726825d.pth" in msg
    # with the package present, the message is about the weights file: name, URL and folder
    monkeypatch.setattr(metrics, "_torch_fidelity_available", lambda: True)
    with pytest.raises(MetricUnavailable) as err:
        FID()
    msg = str(err.value)
    assert "\n" not in msg and "pip install" not in msg
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and metrics.INCEPTION_WEIGHTS_URL in msg
    assert str(folder) in msg


def test_fid_custom_extractor(extractor_file, tmp_path, no_network):
    a, b = _rand(24, 3, 16, 16, seed=17), _rand(24, 3, 16, 16, seed=18)
    fid = FID(str(extractor_file)).to("cpu")
    fid.update(a[:12], a[:12])
    fid.update(a[12:], a[12:])
    same = fid.compute()
    assert abs(same) < 1e-3
    fid.reset()
    fid.update(a * 0.3, a)  # darker restorations: clearly different feature statistics
    darker = fid.compute()
    assert darker > 100 * max(abs(same), 1e-6)
    # a stated feature dimension gives the same numbers
    fid16 = FID(str(extractor_file), feature_dim=16)
    fid16.update(a * 0.3, a)
    assert fid16.compute() == pytest.approx(darker, rel=1e-5)
    # and two independent random sets sit between
    fid.reset()
    fid.update(b, a)
    assert abs(same) < fid.compute() < darker


def test_fid_custom_extractor_missing_or_broken(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(MetricUnavailable, match="nope.pt"):
        FID(str(missing))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torchscript file")
    with pytest.raises(MetricUnavailable, match="broken.pt") as err:
        FID(str(broken))
    assert "\n" not in str(err.value)


# --- ImageMetrics -----------------------------------------------------------------------------------------------


def test_image_metrics_unknown_name():
    with pytest.raises(ValueError, match="psnr.*ssim.*lpips.*fid.*consistency.*loe"):
        ImageMetrics(["psnr", "niqe"])


def test_image_metrics_skips_missing_inputs_and_matches_functions():
    im = ImageMetrics(["psnr", "ssim", "consistency", "loe"])
    x, gt, y = _rand(2, 3, 24, 20, seed=19), _rand(2, 3, 24, 20, seed=20), _rand(2, 3, 24, 20, seed=21) * 0.3
    ax = x * 0.3
    assert im.per_image(x) == {}
    assert list(im.per_image(x, gt=gt)) == ["psnr", "ssim"]
    assert list(im.per_image(x, y=y)) == ["loe"]
    assert list(im.per_image(x, ax=ax)) == []
    out = im.per_image(x, gt=gt, ax=ax, y=y)
    assert list(out) == ["psnr", "ssim", "consistency", "loe"]
    for v in out.values():
        assert v.shape == (2,) and v.dtype == torch.float64 and v.device.type == "cpu"
    torch.testing.assert_close(out["psnr"], psnr(x, gt).double())
    torch.testing.assert_close(out["ssim"], ssim(x, gt).double())
    torch.testing.assert_close(out["consistency"], consistency(ax, y))
    torch.testing.assert_close(out["loe"], lightness_order_error(x, y))
    assert im.dataset() == {}


def test_image_metrics_lpips_and_fid(monkeypatch, tmp_path, fake_alexnet_home, extractor_file, no_network):
    _use_torch_home(monkeypatch, tmp_path)  # empty cache: LPIPS fails at construction, not at the first image
    with pytest.raises(MetricUnavailable, match=ALEX_FILE):
        ImageMetrics(["psnr", "lpips"])
    _use_torch_home(monkeypatch, fake_alexnet_home)
    im = ImageMetrics(["lpips", "fid"], fid_feature_extractor=str(extractor_file)).to("cpu")
    x, gt = _rand(4, 3, 64, 64, seed=22), _rand(4, 3, 64, 64, seed=23)
    assert im.per_image(x) == {} and im.dataset() == {}  # no ground truth: nothing computed or accumulated
    out = im.per_image(x[:2], gt=gt[:2])
    out2 = im.per_image(x[2:], gt=gt[2:])
    assert list(out) == ["lpips"]
    torch.testing.assert_close(out["lpips"], LPIPS()(x[:2], gt[:2]).double())
    torch.testing.assert_close(out2["lpips"], LPIPS()(x[2:], gt[2:]).double())
    ref = FID(str(extractor_file))
    ref.update(x, gt)
    assert im.dataset()["fid"] == pytest.approx(ref.compute(), rel=1e-6)
    im.reset()
    assert im.dataset() == {}
    im.per_image(x[:1], gt=gt[:1])
    assert math.isnan(im.dataset()["fid"])  # one image: FID undefined

    # a scale sweep: one FID per scale, each over its own images
    sweep = ImageMetrics(["fid"], fid_feature_extractor=str(extractor_file), groups=["/s1", "/s2"])
    sweep.per_image(x, gt=gt, group="/s1")
    sweep.per_image(x * 0.3, gt=gt, group="/s2")
    darker = FID(str(extractor_file))
    darker.update(x * 0.3, gt)
    values = sweep.dataset()
    assert set(values) == {"fid/s1", "fid/s2"}
    assert values["fid/s1"] == pytest.approx(ref.compute(), rel=1e-6)
    assert values["fid/s2"] == pytest.approx(darker.compute(), rel=1e-6)
