"""Training data of fine-tuning: seeded random crops of clean images (:class:`TrainingCrops`) and their
distribution over processes and epochs (:class:`CropSampler`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from gdp_lightning.data import CropSampler, DataError, TrainingCrops, read_image, write_image
from gdp_lightning.data.restoration import item_seed
from gdp_lightning.data.training import crop_seed

STEP = 4 / 255  # one pixel of the coordinate ramps: 8-bit levels 0, 4, 8, ... (exact after the PNG round trip)


def coordinate_image(path: Path, height: int, width: int, noise_seed: int = 0) -> Path:
    """Red = x ramp, green = y ramp (``STEP`` per pixel), blue = noise; written as an 8-bit PNG."""
    assert height <= 64 and width <= 64
    xs = torch.arange(width, dtype=torch.float32) * STEP
    ys = torch.arange(height, dtype=torch.float32) * STEP
    noise = torch.randint(0, 256, (height, width), generator=torch.Generator().manual_seed(noise_seed)) / 255
    write_image(path, torch.stack([xs.expand(height, width), ys[:, None].expand(height, width), noise]))
    return path


def ramp_slope(x: torch.Tensor) -> float:
    """The mean horizontal step of the red channel."""
    return float((x[0, :, 1:] - x[0, :, :-1]).mean())


@pytest.fixture()
def images(tmp_path: Path) -> list:
    return [coordinate_image(tmp_path / "a.png", 48, 64, 1), coordinate_image(tmp_path / "b.png", 40, 40, 2),
            coordinate_image(tmp_path / "c.png", 64, 36, 3)]


# ----------------------------------------------------------------------------------------------- samples
def test_samples_shape_dtype_range_and_names(images):
    data = TrainingCrops(images, 16, 10, seed=3)
    assert len(data) == 10
    names = set()
    for i in [0, 1, 2, 9, 10, 123_456]:  # any non-negative index, not only < len
        sample = data[i]
        assert set(sample) == {"x", "index", "name"}
        assert sample["x"].shape == (3, 16, 16) and sample["x"].dtype == torch.float32
        assert sample["x"].is_contiguous()
        assert 0 <= float(sample["x"].min()) and float(sample["x"].max()) <= 1
        assert sample["index"] == i and isinstance(sample["index"], int)
        names.add(sample["name"])
    assert names <= {"a", "b", "c"} and len(names) >= 2
    with pytest.raises(IndexError):
        data[-1]


def test_samples_are_a_function_of_seed_and_index(images):
    data = TrainingCrops(images, 16, 8, seed=5)
    again = TrainingCrops(images, 16, 8, seed=5)
    other_seed = TrainingCrops(images, 16, 8, seed=6)
    uncached = TrainingCrops(images, 16, 8, seed=5, cache=False)
    torch.manual_seed(123)  # the global generator plays no part
    first = [data[i]["x"] for i in range(8)]
    torch.manual_seed(456)
    for i in reversed(range(8)):  # in any order
        assert torch.equal(again[i]["x"], first[i])
        assert torch.equal(uncached[i]["x"], first[i])
        assert not torch.equal(other_seed[i]["x"], first[i])
    assert all(not torch.equal(first[i], first[j]) for i in range(8) for j in range(i))
    assert len(data._pixels) >= 2 and not uncached._pixels  # the cache holds decoded images only when asked
    # the crops' streams are not the synthetic degradations' streams
    assert crop_seed(5, 3) != item_seed(5, 3) and 0 <= crop_seed(-2, 7) < 2**64


def test_cached_crop_is_not_a_view_of_the_cache(tmp_path):
    path = coordinate_image(tmp_path / "square.png", 16, 16)
    data = TrainingCrops([path], 16, 1, min_scale=1, max_scale=1, flip=False)
    x = data[0]["x"]
    x.zero_()
    assert torch.equal(data[0]["x"], read_image(path).pixels)


def test_dataloader_workers_give_the_in_process_samples(images):
    data = TrainingCrops(images, 16, 6, seed=11)
    expected = torch.stack([data[i]["x"] for i in range(6)])
    data = TrainingCrops(images, 16, 6, seed=11)
    loader = DataLoader(data, batch_size=3, num_workers=2, sampler=CropSampler(6))
    batches = list(loader)
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(6))
    assert torch.equal(torch.cat([b["x"] for b in batches]), expected)
    assert [n for b in batches for n in b["name"]] == [data[i]["name"] for i in range(6)]


# --------------------------------------------------------------------------------------------- geometry
def test_scale_one_crop_is_an_exact_sub_array(images):
    data = TrainingCrops(images, 16, 40, min_scale=1, max_scale=1, flip=False, seed=2)
    originals = {p.stem: read_image(p).pixels for p in images}
    tops, lefts = set(), set()
    for i in range(40):
        sample = data[i]
        x, image = sample["x"], originals[sample["name"]]
        left, top = round(float(x[0, 0, 0]) / STEP), round(float(x[1, 0, 0]) / STEP)
        assert torch.equal(x, image[:, top : top + 16, left : left + 16])
        assert top + 16 <= image.shape[1] and left + 16 <= image.shape[2]
        tops.add(top)
        lefts.add(left)
    assert len(tops) > 5 and len(lefts) > 5  # the positions vary


def test_about_half_the_crops_are_flipped(tmp_path):
    path = coordinate_image(tmp_path / "ramp.png", 32, 32)
    flipped = TrainingCrops([path], 8, 200, min_scale=1, max_scale=1, flip=True, seed=4)
    slopes = [ramp_slope(flipped[i]["x"]) for i in range(200)]
    assert all(abs(abs(s) - STEP) < 1e-6 for s in slopes)  # a flipped crop is a mirrored plain crop
    decreasing = sum(s < 0 for s in slopes)
    assert 70 < decreasing < 130  # binomial(200, 0.5): mean 100, sd 7
    unflipped = TrainingCrops([path], 8, 200, min_scale=1, max_scale=1, flip=False, seed=4)
    assert all(ramp_slope(unflipped[i]["x"]) > 0 for i in range(50))


def test_half_scale_crop_covers_twice_the_width(tmp_path):
    path = coordinate_image(tmp_path / "ramp.png", 64, 64)
    data = TrainingCrops([path], 16, 20, min_scale=0.5, max_scale=0.5, flip=False, seed=1)
    for i in range(20):
        x = data[i]["x"]
        interior = x[0, 4:-4, 3:-3]  # away from the edges of the cut region (bicubic replicates its border)
        steps = interior[:, 1:] - interior[:, :-1]
        assert torch.allclose(steps, torch.full_like(steps, 2 * STEP), atol=0.1 * STEP)
        # each output pixel spans two source pixels: the 16 pixels cover a 32-pixel region
        assert abs(float(x[0, 8, -2] - x[0, 8, 1]) - 13 * 2 * STEP) < 0.1 * 13 * STEP
        assert torch.allclose(x[1, 4:-4, 8] - x[1, 3:-5, 8], torch.full((8,), 2 * STEP), atol=0.1 * STEP)


def test_scales_are_log_uniform_within_the_range(tmp_path):
    path = coordinate_image(tmp_path / "ramp.png", 64, 64)
    data = TrainingCrops([path], 8, 300, min_scale=0.25, max_scale=1, flip=False, seed=9)
    assert data.scale_range(64, 64) == (0.25, 1.0)
    assert data.scale_range(10, 50) == (0.8, 1.0) and data.scale_range(4, 50) == (2.0, 2.0)
    # the horizontal step of the red channel is STEP / scale
    scales = np.array([STEP / ramp_slope(data[i]["x"][:, 2:-2, 2:-2]) for i in range(300)])
    assert scales.min() > 0.24 and scales.max() < 1.01
    log_scales = np.log(scales)
    assert abs(np.median(log_scales) - np.log(0.5)) < 0.15  # log-uniform in [log 0.25, log 1]: median at 0.5
    assert 0.2 < np.mean(scales < 0.35) < 0.35  # P(s < 0.35) = log(1.4) / log(4) = 0.24


def test_small_image_is_upscaled_to_fit(tmp_path):
    path = coordinate_image(tmp_path / "small.png", 10, 12)
    data = TrainingCrops([path], 16, 5, flip=False)
    for i in range(5):
        x = data[i]["x"]
        assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
        # the whole short side (10 pixels) is stretched to 16
        assert abs(ramp_slope(x[:, 3:-3, 3:-3]) - STEP * 10 / 16) < 0.1 * STEP


def test_gray_and_alpha_images_give_three_channels(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(24 * 24, dtype=np.uint8).reshape(24, 24) % 251).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((24, 24, 4), 200, dtype=np.uint8)).save(rgba)
    data = TrainingCrops([gray, rgba], 16, 20, seed=0)
    for i in range(20):
        sample = data[i]
        assert sample["x"].shape == (3, 16, 16)
        if sample["name"] == "gray":
            assert torch.equal(sample["x"][0], sample["x"][1]) and torch.equal(sample["x"][0], sample["x"][2])
        else:
            assert torch.allclose(sample["x"], torch.full((3, 16, 16), 200 / 255), atol=1e-5)


# ----------------------------------------------------------------------------------------------- sampler
def test_crop_sampler_partitions_the_epochs():
    ranks = [CropSampler(7, num_replicas=2, rank=r) for r in range(2)]
    assert all(isinstance(s, DistributedSampler) for s in ranks)
    epoch0 = [list(s) for s in ranks]
    assert [len(e) for e in epoch0] == [4, 4] and [len(s) for s in ranks] == [4, 4]
    assert epoch0 == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert not set(epoch0[0]) & set(epoch0[1])
    for s in ranks:
        s.set_epoch(1)
    epoch1 = [list(s) for s in ranks]
    assert epoch1 == [[8, 10, 12, 14], [9, 11, 13, 15]]
    assert not set(epoch1[0]) & set(epoch1[1])
    assert not (set(epoch1[0]) | set(epoch1[1])) & (set(epoch0[0]) | set(epoch0[1]))
    ranks[0].set_epoch(3)
    assert list(ranks[0]) == [24, 26, 28, 30]


def test_crop_sampler_single_process_and_checks():
    sampler = CropSampler(5)
    assert list(sampler) == [0, 1, 2, 3, 4] and len(sampler) == 5
    sampler.set_epoch(2)
    assert list(sampler) == [10, 11, 12, 13, 14]
    three = [CropSampler(5, num_replicas=3, rank=r) for r in range(3)]
    assert sorted(i for s in three for i in s) == list(range(6)) and {len(s) for s in three} == {2}
    with pytest.raises(DataError, match="--data.epoch_size"):
        CropSampler(0)
    with pytest.raises(ValueError):
        CropSampler(4, num_replicas=2, rank=2)


# -------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"epoch_size": 0}, "--data.epoch_size"),
        ({"epoch_size": -3}, "--data.epoch_size"),
        ({"min_scale": 0}, "--data.train_scales"),
        ({"min_scale": -0.5}, "--data.train_scales"),
        ({"min_scale": 0.8, "max_scale": 0.5}, "--data.train_scales"),
        ({"max_scale": float("nan")}, "--data.train_scales"),
        ({"size": 0}, "crop size"),
    ],
)
def test_bad_options_raise_a_data_error(images, options, option_name):
    arguments = {"size": 16, "epoch_size": 4, **options}
    size, epoch_size = arguments.pop("size"), arguments.pop("epoch_size")
    with pytest.raises(DataError, match=option_name) as error:
        TrainingCrops(images, size, epoch_size, **arguments)
    assert "\n" not in str(error.value)


def test_no_images_raise_a_data_error():
    with pytest.raises(DataError, match="no training images"):
        TrainingCrops([], 16, 4)


def test_corrupt_image_raises_a_data_error_naming_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    data = TrainingCrops([bad], 16, 4)
    with pytest.raises(DataError, match="broken.png"):
        data[0]
    missing = TrainingCrops([tmp_path / "gone.png"], 16, 4)
    with pytest.raises(DataError, match="gone.png"):
        missing[0]
