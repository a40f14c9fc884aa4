"""Data: image reading/writing, input discovery, same-size batches, sharding and the restoration data module."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DistributedSampler

from gdp_lightning.data import (
    DataError,
    GDPDataModule,
    RestorationBatches,
    ShardSampler,
    check_image,
    find_inputs,
    group_batches,
    image_size,
    item_seed,
    read_image,
    write_image,
)
from gdp_lightning.data.batching import EMPTY_BATCH
from gdp_lightning.data.images import apply_orientation, encode_png_16bit
from gdp_lightning.degradations import HDR, Blur, Compose, GaussianNoise, LowLight, SuperResolution


def random_uint(shape, bits, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**bits, size=shape, dtype=np.uint16 if bits == 16 else np.uint8)


def save_png(path: Path, array: np.ndarray, mode=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


def rgb(path: Path, height=8, width=12, seed=0) -> Path:
    return save_png(path, random_uint((height, width, 3), 8, seed))


def one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, message
    return message


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_write_then_read_gives_the_same_quantized_values(tmp_path, bits, mode):
    levels = 2**bits - 1
    channels = len(mode)
    samples = torch.from_numpy(random_uint((channels, 9, 13), bits).astype(np.int64))
    values = samples.double() / levels
    colour = values[:1] if mode in ("L", "LA") else values[:3]
    alpha = values[-1:] if mode in ("LA", "RGBA") else None
    path = tmp_path / "out.png"
    write_image(path, colour.float(), bits=bits, alpha=None if alpha is None else alpha.float(), gray=mode[0] == "L")
    image = read_image(path)
    assert (image.bits, image.mode, image.path) == (bits, mode, path)
    assert image.pixels.shape == (3, 9, 13) and image.pixels.dtype == torch.float32
    expected = colour.expand(3, -1, -1).mul(levels).round().long()
    assert torch.equal((image.pixels.double() * levels).round().long(), expected)
    if alpha is None:
        assert image.alpha is None
    else:
        assert torch.equal((image.alpha.double() * levels).round().long(), samples[-1:])
    # reading and writing again is exact
    write_image(tmp_path / "again.png", image.pixels, bits=bits, alpha=image.alpha, gray=mode[0] == "L")
    again = read_image(tmp_path / "again.png")
    assert torch.equal(again.pixels, image.pixels) and again.mode == mode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_16bit_png_encoder_is_a_genuine_16bit_png(tmp_path):
    from torchvision.io import ImageReadMode, decode_image

    samples = random_uint((7, 11, 3), 16, seed=3)
    path = tmp_path / "rgb16.png"
    path.write_bytes(encode_png_16bit(samples))
    decoded = decode_image(str(path), mode=ImageReadMode.UNCHANGED)  # libpng, independent of our reader
    assert decoded.dtype == torch.uint16
    assert np.array_equal(decoded.permute(1, 2, 0).numpy().astype(np.uint16), samples)
    with Image.open(path) as im:  # Pillow reads 48-bit PNGs cut to their high bytes
        assert np.array_equal(np.asarray(im.convert("RGB")), (samples >> 8).astype(np.uint8))
    gray = random_uint((5, 6, 1), 16, seed=4)
    (tmp_path / "gray16.png").write_bytes(encode_png_16bit(gray))
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode.startswith("I") and np.array_equal(np.asarray(im).astype(np.uint16), gray[..., 0])


def test_reads_16bit_files_written_by_pillow(tmp_path):
    gray = random_uint((6, 10), 16, seed=1)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    image = read_image(tmp_path / "gray16.png")
    assert (image.bits, image.mode) == (16, "L")
    assert np.array_equal((image.pixels[0].double() * 65535).round().numpy().astype(np.uint16), gray)
    Image.fromarray(gray).save(tmp_path / "gray16.tif")
    tif = read_image(tmp_path / "gray16.tif")
    assert tif.bits == 16 and torch.equal(tif.pixels, image.pixels)


def test_reads_palette_images_as_rgb_or_rgba(tmp_path):
    array = random_uint((6, 9, 3), 8)
    palette = Image.fromarray(array).quantize(16)
    palette.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    assert (image.mode, image.bits, image.alpha) == ("RGB", 8, None)
    assert np.array_equal((image.pixels * 255).round().byte().numpy(), expected)
    palette.save(tmp_path / "pt.png", transparency=0)
    transparent = read_image(tmp_path / "pt.png")
    assert transparent.mode == "RGBA"
    expected_alpha = np.asarray(Image.open(tmp_path / "pt.png").convert("RGBA"))[..., 3]
    assert np.array_equal((transparent.alpha[0] * 255).round().byte().numpy(), expected_alpha)


def test_reads_jpeg_bmp_and_gray(tmp_path):
    array = random_uint((8, 10, 3), 8)
    Image.fromarray(array).save(tmp_path / "a.bmp")
    bmp = read_image(tmp_path / "a.bmp")
    assert np.array_equal((bmp.pixels * 255).round().byte().numpy(), array.transpose(2, 0, 1))
    Image.fromarray(array).convert("L").save(tmp_path / "g.jpg")
    gray = read_image(tmp_path / "g.jpg")
    assert gray.mode == "L" and torch.equal(gray.pixels[0], gray.pixels[2])


def asymmetric_image(height=6, width=10) -> np.ndarray:
    array = np.zeros((height, width, 3), np.uint8)
    array[: height // 2, : width // 3] = (255, 0, 0)  # a red block in the top-left corner
    array[-1, -1] = (0, 255, 0)
    array[..., 2] = np.arange(width, dtype=np.uint8)[None, :] * 20
    return array


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_png_matches_pillow(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(asymmetric_image()).save(path, exif=exif)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).transpose(2, 0, 1)
    image = read_image(path)
    assert np.array_equal((image.pixels * 255).round().byte().numpy(), expected)
    assert image_size(path) == image.size == expected.shape[1:]


def test_exif_rotated_jpeg_and_16bit_png_come_out_rotated(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90° counter-clockwise: shown turned clockwise
    array = asymmetric_image(8, 16)
    Image.fromarray(array).save(tmp_path / "r.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "r.jpg")
    assert image.size == (16, 8) == image_size(tmp_path / "r.jpg")
    with Image.open(tmp_path / "r.jpg") as im:
        expected = np.asarray(ImageOps.exif_transpose(im)).transpose(2, 0, 1)
    assert np.array_equal((image.pixels * 255).round().byte().numpy(), expected)
    # the red block, top-left when stored, is top-right once turned clockwise
    assert image.pixels[0, 0, -1] > 0.8 and image.pixels[0, 8, 0] < 0.2
    # 16-bit PNGs (decoded by torchvision) get the same orientation
    samples16 = array.astype(np.uint16) * 257
    path16 = tmp_path / "r16.png"
    path16.write_bytes(encode_png_16bit(samples16))
    data = path16.read_bytes()  # Pillow would write 8 bits: add an eXIf chunk to our file, before the image data
    path16.write_bytes(data[:33] + _exif_chunk(exif) + data[33:])
    rotated = read_image(path16)
    assert rotated.bits == 16 and rotated.size == (16, 8) == image_size(path16)
    expected16 = apply_orientation(torch.from_numpy(samples16.astype(np.int32)).permute(2, 0, 1), 6)
    assert torch.equal((rotated.pixels.double() * 65535).round().long(), expected16.long())


def _exif_chunk(exif) -> bytes:
    import struct
    import zlib

    payload = exif.tobytes()
    if payload.startswith(b"Exif\x00\x00"):
        payload = payload[6:]
    return struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_raise_a_data_error_naming_them(tmp_path, suffix):
    complete = tmp_path / f"complete{suffix}"
    Image.fromarray(random_uint((64, 64, 3), 8)).save(complete)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    for function in (read_image, check_image):
        with pytest.raises(DataError) as excinfo:
            function(truncated)
        one_line_error(excinfo, truncated, "cannot read the image")
    check_image(complete)
    from PIL import ImageFile as PILImageFile

    PILImageFile.LOAD_TRUNCATED_IMAGES = True  # someone else's global setting does not make truncated files pass
    try:
        with pytest.raises(DataError):
            check_image(truncated)
    finally:
        PILImageFile.LOAD_TRUNCATED_IMAGES = False


def test_not_an_image_and_missing_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for function in (read_image, check_image, image_size):
        with pytest.raises(DataError) as excinfo:
            function(text)
        one_line_error(excinfo, text)
        with pytest.raises(DataError, match="no such image file"):
            function(tmp_path / "missing.png")


def test_write_gray_alpha_resize_and_png_only(tmp_path):
    pixels = torch.rand(3, 8, 8)
    write_image(tmp_path / "g.png", pixels, gray=True)
    gray = read_image(tmp_path / "g.png")
    assert gray.mode == "L"
    assert torch.allclose(gray.pixels[0], pixels.mean(0), atol=0.5 / 255 + 1e-6)
    write_image(tmp_path / "big.png", torch.rand(3, 16, 24), alpha=torch.ones(1, 4, 6) * 0.5)
    big = read_image(tmp_path / "big.png")
    assert big.mode == "RGBA" and big.alpha.shape == (1, 16, 24)
    assert torch.allclose(big.alpha, torch.full_like(big.alpha, 128 / 255))
    write_image(tmp_path / "one.png", torch.rand(1, 4, 4))
    assert read_image(tmp_path / "one.png").mode == "RGB"
    with pytest.raises(DataError, match="PNG"):
        write_image(tmp_path / "x.jpg", pixels)


# --------------------------------------------------------------------------------------------- discovery
def test_discovery_order_names_side_files_and_recursion(tmp_path):
    rgb(tmp_path / "b.png")
    rgb(tmp_path / "a.jpg")
    rgb(tmp_path / "C.PNG")
    save_png(tmp_path / "a_mask.png", np.full((8, 12), 255, np.uint8))
    np.savetxt(tmp_path / "b_kernel.txt", np.ones((3, 3)))
    (tmp_path / "notes.txt").write_text("x")
    rgb(tmp_path / ".hidden.png")
    rgb(tmp_path / "sub" / "c.png")
    items = find_inputs(tmp_path)
    assert [i.name for i in items] == ["C", "a", "b"]
    assert [i.index for i in items] == [0, 1, 2]
    by_name = {i.name: i for i in items}
    assert by_name["a"].mask == tmp_path / "a_mask.png" and by_name["a"].kernel is None
    assert by_name["b"].kernel == tmp_path / "b_kernel.txt" and by_name["b"].mask is None
    recursive = find_inputs(tmp_path, recursive=True)
    assert [i.name for i in recursive] == ["C", "a", "b", "sub/c"]
    assert recursive[-1].paths == [tmp_path / "sub" / "c.png"]
    no_sides = find_inputs(tmp_path, side_files=False)
    assert all(i.mask is None and i.kernel is None for i in no_sides)
    files = find_inputs(files=[tmp_path / "b.png", tmp_path / "sub" / "c.png"])
    assert [(i.name, i.index) for i in files] == [("b", 0), ("c", 1)] and files[0].kernel is not None


def test_discovery_errors(tmp_path):
    with pytest.raises(DataError) as excinfo:
        find_inputs(tmp_path / "nowhere")
    assert str(excinfo.value) == f"--data.input_dir {tmp_path / 'nowhere'}: no such folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        find_inputs(tmp_path / "empty")
    one_line_error(excinfo, "no images found", ".png", ".jpg", ".webp")
    rgb(tmp_path / "d" / "a.png")
    rgb(tmp_path / "d" / "a.jpg")
    with pytest.raises(DataError) as excinfo:
        find_inputs(tmp_path / "d")
    one_line_error(excinfo, tmp_path / "d" / "a.png", tmp_path / "d" / "a.jpg")
    rgb(tmp_path / "e" / "a.png")
    save_png(tmp_path / "e" / "a_mask.jpg", np.zeros((8, 12), np.uint8))
    with pytest.raises(DataError, match="mask side file must be"):
        find_inputs(tmp_path / "e")
    with pytest.raises(DataError, match="side file"):
        find_inputs(files=[tmp_path / "e" / "a_mask.jpg"])
    with pytest.raises(DataError, match="either"):
        find_inputs()


def test_list_file_selects_and_orders(tmp_path):
    for name in "abcd":
        rgb(tmp_path / "in" / f"{name}.png")
    listing = tmp_path / "list.txt"
    listing.write_text("# the ones to redo\nc.png\n\n  a  \n")
    items = find_inputs(tmp_path / "in", list_file=listing)
    assert [(i.name, i.index) for i in items] == [("c", 0), ("a", 1)]
    listing.write_text("a\nzz\nyy.png\n")
    with pytest.raises(DataError) as excinfo:
        find_inputs(tmp_path / "in", list_file=listing)
    one_line_error(excinfo, "'zz'", "'yy.png'", "--data.list_file")
    listing.write_text("a\na.png\n")
    with pytest.raises(DataError, match="listed twice"):
        find_inputs(tmp_path / "in", list_file=listing)
    with pytest.raises(DataError, match="no such file"):
        find_inputs(tmp_path / "in", list_file=tmp_path / "none.txt")


def test_hdr_scene_folders(tmp_path):
    for scene in ("s2", "s1"):
        for k in range(3):
            rgb(tmp_path / scene / f"e{k}.png", seed=k)
    rgb(tmp_path / "loose.png")
    items = find_inputs(tmp_path, exposure_folders=True)
    assert [i.name for i in items] == ["s1", "s2"]
    assert items[0].paths == [tmp_path / "s1" / f"e{k}.png" for k in range(3)]
    rgb(tmp_path / "s3" / "e0.png", height=8)
    rgb(tmp_path / "s3" / "e1.png", height=10)
    with pytest.raises(DataError) as excinfo:
        find_inputs(tmp_path, exposure_folders=True)
    one_line_error(excinfo, tmp_path / "s3", "differ in size")
    (tmp_path / "s3" / "e1.png").unlink()
    with pytest.raises(DataError) as excinfo:
        find_inputs(tmp_path, exposure_folders=True)
    one_line_error(excinfo, tmp_path / "s3", "at least 2 exposures")


# ---------------------------------------------------------------------------------------------- batching
def test_group_batches_example_and_properties():
    assert group_batches(list("AABAAB"), 2) == [[0, 1], [2, 5], [3, 4]]
    rng = random.Random(0)
    for _ in range(50):
        keys = [rng.choice([(8, 8), (8, 12), (16, 16)]) for _ in range(rng.randint(0, 30))]
        batch_size = rng.randint(1, 5)
        batches = group_batches(keys, batch_size)
        assert sorted(itertools.chain.from_iterable(batches)) == list(range(len(keys)))
        assert all(1 <= len(b) <= batch_size and len({keys[i] for i in b}) == 1 for b in batches)
        assert all(b == sorted(b) for b in batches)
        assert [b[0] for b in batches] == sorted(b[0] for b in batches)
        # every key's items are cut into consecutive chunks in index order
        for key in set(keys):
            members = [i for i, k in enumerate(keys) if k == key]
            chunks = [b for b in batches if keys[b[0]] == key]
            assert chunks == [members[s : s + batch_size] for s in range(0, len(members), batch_size)]
    with pytest.raises(ValueError):
        group_batches([(1, 1)], 0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_sampler_covers_every_batch_once(world):
    shards = [list(ShardSampler(5, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(itertools.chain.from_iterable(shards)) == list(range(5))
    assert all(len(ShardSampler(5, world, r)) == len(shards[r]) for r in range(world))
    assert shards[0] == list(range(0, 5, world))
    sampler = ShardSampler(5)
    assert isinstance(sampler, DistributedSampler) and (sampler.num_replicas, sampler.rank) == (1, 0)
    assert list(ShardSampler(0)) == []


def test_shard_sampler_gives_an_idle_process_one_empty_batch():
    # 1 batch, 3 processes: ranks 1 and 2 get the empty-batch position, which the dataset turns into no images
    assert [list(ShardSampler(1, 3, r)) for r in range(3)] == [[0], [EMPTY_BATCH], [EMPTY_BATCH]]
    assert [len(ShardSampler(0, 2, r)) for r in range(2)] == [1, 1]
    assert list(ShardSampler(0, 1, 0)) == []  # one process: nothing to do is no loop at all
    empty = RestorationBatches([], [], [])[EMPTY_BATCH]
    assert empty["name"] == [] and empty["index"].shape == (0,)


# ------------------------------------------------------------------------------------------ data module
def real_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "real"
    for name, (h, w) in {"a": (8, 12), "b": (10, 6), "c": (8, 12), "d": (8, 12), "e": (10, 6)}.items():
        rgb(folder / f"{name}.png", h, w, seed=ord(name))
    mask = np.zeros((8, 12), np.uint8)
    mask[:, :6] = 255
    save_png(folder / "c_mask.png", mask)
    np.savetxt(folder / "d_kernel.txt", np.ones((3, 3)))
    return folder


def test_real_mode_batches(tmp_path):
    folder = real_folder(tmp_path)
    dm = GDPDataModule(input_dir=str(folder), batch_size=2)
    dm.setup("predict")
    assert [i.name for i in dm.items] == list("abcde")
    assert dm.batches == [[0, 2], [1, 4], [3]]
    loader = dm.predict_dataloader()
    assert isinstance(loader.sampler, ShardSampler) and len(loader) == 3
    batches = list(loader)
    first = batches[0]
    assert first["y"].shape == (2, 3, 8, 12) and first["y"].dtype == torch.float32
    assert first["name"] == ["a", "c"] and first["index"].tolist() == [0, 2] and first["index"].dtype == torch.long
    assert first["path"] == [str(folder / "a.png"), str(folder / "c.png")]
    assert first["bits"] == [8, 8] and first["mode"] == ["RGB", "RGB"] and first["alpha"] == [None, None]
    assert torch.equal(first["y"][1], read_image(folder / "c.png").pixels)
    assert first["mask"].shape == (2, 1, 8, 12)
    mask = first["mask"]
    assert mask[0].min() == 1 and mask[1, 0, :, :6].min() == 1 and mask[1, 0, :, 6:].max() == 0
    assert "kernel" not in first and "x" not in first
    assert batches[1]["y"].shape == (2, 3, 10, 6) and "mask" not in batches[1]
    assert batches[2]["kernel"][0].shape == (3, 3) and torch.isclose(batches[2]["kernel"][0].sum(), torch.tensor(1.0))


def test_real_mode_hdr_stacks_exposures(tmp_path):
    for scene in ("s1", "s2"):
        for k in range(3):
            rgb(tmp_path / scene / f"e{k}.png", seed=k)
    dm = GDPDataModule(input_dir=str(tmp_path), exposure_folders=True, batch_size=2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["y"].shape == (2, 9, 8, 12) and batch["name"] == ["s1", "s2"]
    assert torch.equal(batch["y"][0, 3:6], read_image(tmp_path / "s1" / "e1.png").pixels)
    two_exposures = GDPDataModule(input_dir=str(tmp_path), exposure_folders=True, task_operator=HDR(2))
    with pytest.raises(DataError, match="3 exposures but the task's operator takes 2"):
        two_exposures.setup("predict")
    single = GDPDataModule(input_dir=str(tmp_path / "s1"), task_operator=HDR(2))
    with pytest.raises(DataError, match="--data.exposure_folders"):
        single.setup("predict")


def test_real_mode_leaves_out_bad_files_before_anything_runs(tmp_path):
    """Every file is checked at setup: an input with a bad file is left out with its reason (the others keep
    their batches); when every input is bad, the first reason is raised."""
    folder = real_folder(tmp_path)
    save_png(folder / "a_mask.png", np.zeros((5, 5), np.uint8))
    data = (folder / "e.png").read_bytes()
    (folder / "e.png").write_bytes(data[: len(data) - 30])
    dm = GDPDataModule(input_dir=str(folder), batch_size=2)
    dm.setup("predict")
    reasons = {item.name: why for item, why in dm.rejected}
    assert sorted(reasons) == ["a", "e"]
    assert reasons["a"] == (f"{folder / 'a_mask.png'}: the mask is 5x5 but {folder / 'a.png'} is 8x12; give a "
                            "mask of the image's size")
    assert str(folder / "e.png") in reasons["e"] and "\n" not in reasons["e"]
    assert dm.batches == [[1], [2, 3]]  # b alone (e, its size-mate, is out), c and d together
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(data[: len(data) - 30])
    with pytest.raises(DataError) as excinfo:
        GDPDataModule(input_dir=str(only_bad)).setup("predict")
    one_line_error(excinfo, only_bad / "x.png")


def test_predict_skips_done_inputs_after_grouping(tmp_path):
    folder = real_folder(tmp_path)
    dm = GDPDataModule(input_dir=str(folder), batch_size=2)
    dm.setup("predict")
    assert dm.batches == [[0, 2], [1, 4], [3]]  # the writer knows its folder only after setup
    dm.skip_done(["a", "e", "d"])  # as the writer tells it
    assert [b["name"] for b in dm.predict_dataloader()] == [["c"], ["b"]]
    assert dm.batches == [[2], [1]]  # c keeps its batch of its own, d's batch is gone
    dm.setup("test")  # only predict skips
    assert dm.batches == [[0, 2], [1, 4], [3]]
    assert [b["name"] for b in dm.test_dataloader()] == [["a", "c"], ["b", "e"], ["d"]]


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_the_data_module_under_a_lightning_trainer(tmp_path):
    import lightning as L

    class Names(L.LightningModule):
        def predict_step(self, batch, batch_idx):
            return batch["name"], batch["index"]

    folder = real_folder(tmp_path)
    dm = GDPDataModule(input_dir=str(folder), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    predictions = trainer.predict(Names(), datamodule=dm)
    assert [p[0] for p in predictions] == [["a", "c"], ["b", "e"], ["d"]]
    assert isinstance(trainer.predict_dataloaders.sampler, ShardSampler)


def clean_folder(tmp_path: Path, n=4, height=16, width=20) -> Path:
    folder = tmp_path / "clean"
    for i in range(n):
        rgb(folder / f"img{i}.png", height, width, seed=10 + i)
    return folder


def synthetic_batches(folder, operator, batch_size, **kwargs):
    dm = GDPDataModule(input_dir=str(folder), mode="synthetic", degradation=operator, batch_size=batch_size, **kwargs)
    dm.setup("predict")
    return dm, list(dm.predict_dataloader())


def by_index(batches, key):
    return {int(i): b[key][k] for b in batches for k, i in enumerate(b["index"])}


def test_synthetic_observations_are_quantized_and_reproducible_per_image(tmp_path):
    folder = clean_folder(tmp_path)
    operator = Compose([Blur("gaussian:3:1", padding="reflect"), GaussianNoise(0.1)])
    _, ones = synthetic_batches(folder, operator, 1, seed=7)
    _, threes = synthetic_batches(folder, operator, 3, seed=7)
    assert [b["y"].shape[0] for b in threes] == [3, 1]
    y1, y3 = by_index(ones, "y"), by_index(threes, "y")
    assert all(torch.equal(y1[i], y3[i]) for i in range(4))
    x = by_index(threes, "x")
    assert torch.equal(x[2], read_image(folder / "img2.png").pixels)
    generator = torch.Generator().manual_seed(item_seed(7, 2))
    expected = operator.observe(x[2][None], generators=[generator])[0]
    assert torch.equal(y1[2], ((expected.clamp(0, 1) * 255).round() / 255))
    assert torch.equal(y1[2] * 255, (y1[2] * 255).round())  # 8-bit levels
    assert not torch.equal(y1[0], y1[1])  # different images, different noise
    _, other_seed = synthetic_batches(folder, operator, 1, seed=8)
    assert not torch.equal(by_index(other_seed, "y")[2], y1[2])
    _, in_workers = synthetic_batches(folder, operator, 3, seed=7, num_workers=2)
    assert all(torch.equal(by_index(in_workers, "y")[i], y1[i]) for i in range(4))


def test_synthetic_quantize_crop_and_size_change(tmp_path):
    folder = clean_folder(tmp_path, n=2)
    operator = SuperResolution(2)
    _, rounded = synthetic_batches(folder, operator, 2)
    _, truncated = synthetic_batches(folder, operator, 2, quantize="truncate")
    _, floats = synthetic_batches(folder, operator, 2, quantize="none")
    assert rounded[0]["y"].shape == (2, 3, 8, 10) and rounded[0]["x"].shape == (2, 3, 16, 20)
    exact = floats[0]["y"]
    assert torch.equal(rounded[0]["y"], (exact * 255).round() / 255)
    assert torch.equal(truncated[0]["y"], (exact * 255).floor() / 255)
    assert not torch.equal(rounded[0]["y"], truncated[0]["y"])
    _, cropped = synthetic_batches(folder, operator, 2, crop_size=12)
    assert cropped[0]["x"].shape == (2, 3, 12, 12) and cropped[0]["y"].shape == (2, 3, 6, 6)
    x = cropped[0]["x"]
    assert torch.equal(x * 255, (x * 255).round()) and 0 <= x.min() and x.max() <= 1


def test_center_crop_whole_or_at_a_scale():
    """The benchmark crop resizes the whole image's short side to the crop; at a scale it cuts the central region
    of side crop / scale (at most the short side) and resizes that, and at scale 1 it only cuts."""
    from gdp_lightning.data import resize_and_center_crop

    image = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(0))
    whole = resize_and_center_crop(image, 20)
    resized = F.interpolate(image[None], size=(20, 28), mode="bicubic", antialias=True, align_corners=False)[0]
    assert torch.equal(whole, resized.clamp(0, 1)[:, :, 4:24])
    assert torch.equal(resize_and_center_crop(image, 20, 1.0), image[:, 15:35, 25:45])
    half = resize_and_center_crop(image, 20, 0.5)  # the central 40 x 40, halved
    region = image[None, :, 5:45, 15:55]
    assert torch.equal(half, F.interpolate(region, size=(20, 20), mode="bicubic", antialias=True,
                                           align_corners=False)[0].clamp(0, 1))
    # a region larger than the image is its central square, resized
    assert torch.equal(resize_and_center_crop(image, 20, 0.1), resize_and_center_crop(image[:, :, 10:60], 20))
    assert resize_and_center_crop(image, 64, 1.0).shape == (3, 64, 64)  # smaller than the crop: enlarged
    assert resize_and_center_crop(image, 17, 0.7).shape == (3, 17, 17)


def test_synthetic_default_operator_and_blind_error(tmp_path):
    folder = clean_folder(tmp_path, n=2)
    model_operator = Compose([Blur("gaussian:3:1", padding="reflect"), GaussianNoise(0.05)])
    dm = GDPDataModule(input_dir=str(folder), mode="synthetic", task_operator=model_operator)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["y"].shape == (1, 3, 16, 20)
    blind = GDPDataModule(input_dir=str(folder), mode="synthetic", task_operator=LowLight())
    with pytest.raises(DataError) as excinfo:
        blind.setup("test")
    assert str(excinfo.value) == ("the task's operator learns its parameters (blind); give the true operator that "
                                  "degrades the clean images with --data.degradation")
    with pytest.raises(DataError, match="--data.degradation"):
        GDPDataModule(input_dir=str(folder), mode="synthetic").setup("test")


def test_option_errors():
    with pytest.raises(DataError, match="--data.mode"):
        GDPDataModule(input_dir=".", mode="fake")
    with pytest.raises(DataError, match="--data.quantize"):
        GDPDataModule(input_dir=".", quantize="ceil")
    with pytest.raises(DataError, match="--data.crop_size"):  # real photos are restored whole (fit crops them)
        GDPDataModule(input_dir=".", crop_size=64).setup("predict")
    from gdp_lightning.finetune import FinetuneData

    with pytest.raises(DataError, match="--data.val_split"):
        FinetuneData(input_dir=".", val_split=-1)
