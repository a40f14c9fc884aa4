"""System tests: the ``gdp`` command end to end, in-process (``gdp_lightning.cli.main``), and the Python API.

Every shipped config parses; ``gdp predict``/``validate``/``test`` write the outputs, the records, the metrics and
TensorBoard's view of the sampler; a run resumes where it stopped; user errors end with one ``gdp: error:`` line.
Runs use a tiny random prior (32x32) where only the plumbing matters and the shared skimage64 prior (64x64) for
every task config, with 3 to 10 diffusion steps and scales small enough for so few steps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdp_lightning.benchmark import psnr, quantize, skimage_crops
from gdp_lightning.cli import main
from gdp_lightning.data import read_image, write_image
from gdp_lightning.degradations import (
    Identity,
    gaussian_kernel,
    kernel_error,
    kernel_from_spec,
    kernel_width,
    random_mask,
)
from gdp_lightning.errors import ConfigError
from gdp_lightning.module import GDPModule
from gdp_lightning.panels import LABEL_HEIGHT, MIN_SIDE
from gdp_lightning.prior import PriorSpec
from gdp_lightning.run_record import HPARAM_SAMPLER_KEYS
from gdp_lightning.sampling import GuidanceDivergedError

from .conftest import REPO
from .helpers import KEEP, TINY, _tiny

pytestmark = pytest.mark.usefixtures("cli_argv", "one_thread")

PRIORS = sorted((REPO / "configs" / "prior").glob("*.yaml"))
TASKS = sorted((REPO / "configs" / "task").glob("*.yaml")) + sorted((REPO / "configs" / "task").glob("paper/*.yaml"))
SKIMAGE64 = REPO / "configs" / "prior" / "skimage64.yaml"
QUIET = ["--model.progress", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]
OLD_NS = 10**18  # an mtime (2001) that no file written by a test has


# ---------------------------------------------------------------------------------------------------- helpers
def task(name: str) -> str:
    return str(REPO / "configs" / "task" / f"{name}.yaml")


def gdp(capfd, logs: Path, command: str, prior: Sequence[str], task_name: str, *options: str, steps: int = 3,
        scale: float = 1000.0):
    """Run ``gdp <command>`` in-process with the prior's options, a task config, few steps and a small scale;
    return the exit status and stderr."""
    argv = [command, *prior, "--config", task(task_name), "--model.sampler.steps", str(steps),
            "--model.sampler.scale", str(scale), *QUIET, "--trainer.logger.init_args.save_dir", str(logs), *options]
    rc = main(argv)
    return rc, capfd.readouterr().err


def error_line(err: str) -> str:
    """The one ``gdp: error:`` line, which must be the last line on stderr."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert sum(line.startswith("gdp: error:") for line in lines) == 1, err
    assert lines[-1].startswith("gdp: error: "), err
    return lines[-1]


def names_in(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir())


def read_rows(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def record(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def png_size(path: Path):
    with Image.open(path) as im:
        im.load()  # decodes the whole file: a truncated PNG fails here
        return im.size, im.mode


def age(folder: Path) -> None:
    """Give every file of ``folder`` an old mtime, so that a rewrite shows."""
    for p in folder.iterdir():
        os.utime(p, ns=(OLD_NS, OLD_NS))


def rewritten(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.stat().st_mtime_ns != OLD_NS)


def events(logs: Path) -> EventAccumulator:
    files = sorted(logs.rglob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def write_images(folder: Path, images: torch.Tensor, names: Sequence[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        write_image(folder / f"{name}.png", image)
    return folder


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return skimage_crops(4, size=64, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny prior (32x32): its config and weights, and the same for a class-conditional one."""
    folder = tmp_path_factory.mktemp("tiny")
    out = {}
    for key, overrides in (("plain", {}), ("cond", {"class_cond": True})):
        weights = folder / f"{key}.pt"
        torch.save(_tiny(**overrides).state_dict(), weights)
        config = folder / f"{key}.yaml"
        spec = {"name": f"tiny_{key}", "unet": {**TINY, **overrides}, "diffusion": {"diffusion_steps": 1000},
                "checkpoint": str(weights)}
        config.write_text(yaml.safe_dump({"model": {"prior": spec, "sampler": KEEP}}))
        out[key] = (config, weights)
    return out


@pytest.fixture()
def tiny_prior(tiny) -> List[str]:
    return ["--config", str(tiny["plain"][0])]


@pytest.fixture()
def sk_prior(skimage64_checkpoint) -> List[str]:
    # the config's checkpoint path is relative to the repository root: give it whatever the working directory.
    # These runs take 3 steps to test the plumbing: their restorations are too rough for the divergence check
    # (an RMS error of 10 gray levels), so they keep them
    return ["--config", str(SKIMAGE64), "--model.prior.checkpoint", str(skimage64_checkpoint),
            "--model.sampler.on_divergence", "keep"]


@pytest.fixture(scope="module")
def photos16(tmp_path_factory, crops) -> Path:
    """Three 16x16 low-resolution photos (4x4 block averages of 64x64 crops)."""
    return write_images(tmp_path_factory.mktemp("photos16"), quantize(F.avg_pool2d(crops[:3], 4)),
                        ["im0", "im1", "im2"])


# ------------------------------------------------------------------------------------------------ 1. configs
@pytest.mark.parametrize("config", TASKS, ids=lambda p: p.relative_to(REPO / "configs" / "task").as_posix())
def test_every_task_config_parses(config, capfd):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--config", str(SKIMAGE64), "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capfd.readouterr().out)
    expected = yaml.safe_load(config.read_text())["model"]
    assert printed["model"]["degradation"]["class_path"] == expected["degradation"]["class_path"]
    assert str(printed["model"]["sampler"]["steps"]) == str(expected["sampler"]["steps"])  # 100 or '100'
    for key, value in expected["sampler"].items():
        if key != "steps":
            assert printed["model"]["sampler"][key] == (float(value) if key == "scale" else value)
    if "scale" not in expected["sampler"]:  # the data-consistency rule needs none; the paper configs keep GDP's
        assert printed["model"]["sampler"]["guidance"] == "auto"
    assert printed["model"]["prior"]["name"] == "skimage64"
    assert printed["trainer"]["inference_mode"] is False


@pytest.mark.parametrize("config", PRIORS, ids=lambda p: p.name)
def test_every_prior_config_parses(config, capfd):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--config", str(config), "--config", task("sr4"), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capfd.readouterr().out)["model"]
    expected = yaml.safe_load(config.read_text())["model"]["prior"]
    assert printed["prior"]["name"] == expected["name"]
    assert printed["prior"]["unet"] == {**printed["prior"]["unet"], **expected["unet"]}
    assert printed["degradation"]["class_path"] == "gdp_lightning.degradations.SuperResolution"


@pytest.mark.parametrize("where", ["config", "command line"])
def test_an_unknown_option_is_rejected_by_name(where, tmp_path, capfd):
    argv = ["predict", "--config", str(SKIMAGE64), "--config", task("sr4")]
    if where == "config":
        bad = tmp_path / "bad.yaml"
        bad.write_text("model:\n  nonsense: 1\n")
        argv += ["--config", str(bad)]
    else:
        argv += ["--model.sampler.nonsense", "1"]
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--print_config"])
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    line = error_line(err)
    assert "nonsense" in line and "--help" in line and "usage:" not in err


# ----------------------------------------------------------------------------------- 2. predict, end to end
def test_predict_end_to_end(tiny, tiny_prior, photos16, tmp_path, capfd):
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos16),
                  "--data.batch_size", "2", "--writer.output_dir", str(out))
    assert rc == 0, err
    assert names_in(out) == ["im0.json", "im0.png", "im1.json", "im1.png", "im2.json", "im2.png", "metrics.csv",
                             "metrics.json", "run.json", "run.yaml"]
    seeds = set()
    for i in range(3):
        assert png_size(out / f"im{i}.png") == ((64, 64), "RGB")  # 4x the 16x16 input
        rec = record(out, f"im{i}")
        assert rec["name"] == f"im{i}" and rec["index"] == i
        assert Path(rec["input"]) == photos16 / f"im{i}.png"
        [result] = rec["results"]
        assert result["output"] == f"im{i}.png" and result["scale"] == 1000.0
        assert math.isfinite(result["losses"]["data"]) and result["losses"]["data"] >= 0
        assert math.isfinite(result["metrics"]["consistency"])
        seeds.add(rec["seed"])
    assert len(seeds) == 3
    rows = read_rows(out / "metrics.csv")
    assert [r["name"] for r in rows] == ["im0", "im1", "im2"]
    for r in rows:
        assert float(r["consistency"]) == record(out, r["name"])["results"][0]["metrics"]["consistency"]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["images"] == 3
    run = json.loads((out / "run.json").read_text())
    weights = tiny["plain"][1]
    assert run["stage"] == "predict" and run["command"][:2] == ["gdp", "predict"]  # the CLI told the writer
    assert "--writer.output_dir" in run["command"] and yaml.safe_load(run["config"])["data"]["batch_size"] == 2
    assert Path(run["model"]["checkpoint"]) == weights.resolve()
    assert run["model"]["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert run["model"]["sampler"]["steps"] == "3"
    resolved = yaml.safe_load((out / "run.yaml").read_text())
    assert resolved["model"]["degradation"]["class_path"] == "gdp_lightning.degradations.SuperResolution"
    assert resolved["data"]["batch_size"] == 2 and resolved["writer"]["output_dir"] == str(out)


def test_gray_input_gives_gray_output(tiny_prior, crops, tmp_path, capfd):
    photos = tmp_path / "gray"
    photos.mkdir()
    gray = (F.avg_pool2d(crops[:1], 4).mean(1)[0] * 255).round().byte()
    Image.fromarray(gray.numpy(), "L").save(photos / "g.png")
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(tmp_path / "out"))
    assert rc == 0, err
    assert png_size(tmp_path / "out" / "g.png") == ((64, 64), "L")
    # the consistency is that of the file written: A(gray output) against the input
    written = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / "g.png"))).double() / 255
    expected = float(((F.avg_pool2d(written[None, None], 4)[0, 0] - gray.double() / 255) * 255).pow(2).mean())
    assert record(tmp_path / "out", "g")["results"][0]["metrics"]["consistency"] == pytest.approx(expected, rel=1e-4)


def test_real_photo_formats_keep_alpha_bits_and_orientation(tiny_prior, crops, tmp_path, capfd):
    from gdp_lightning.data.images import encode_png_16bit

    photos = tmp_path / "in"
    photos.mkdir()
    low = quantize(F.avg_pool2d(crops[:2], 4))  # (2, 3, 16, 16)
    rgb16 = (low[0].permute(1, 2, 0).double().numpy() * 65535).round().astype(np.uint16)
    alpha16 = np.tile(np.linspace(0, 65535, 16).round().astype(np.uint16), (16, 1))[..., None]
    (photos / "a16.png").write_bytes(encode_png_16bit(np.concatenate([rgb16, alpha16], -1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown (and restored) upright, 16 wide and 12 high
    stored = (low[1, :, :12].permute(2, 1, 0).flip(1).numpy() * 255).round().astype(np.uint8)  # (16, 12, 3)
    Image.fromarray(np.ascontiguousarray(stored)).save(photos / "r.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    a16 = read_image(out / "a16.png")
    assert (a16.bits, a16.mode, a16.size) == (16, "RGBA", (64, 64))
    # the alpha channel is the input's, enlarged with the image: a left-to-right ramp
    assert float(a16.alpha[0, :, 0].max()) < 0.05 and float(a16.alpha[0, :, -1].min()) > 0.95
    r = read_image(out / "r.png")
    assert (r.bits, r.mode, r.size) == (8, "RGB", (48, 64))  # (height, width): upright, 4x the shown 12x16


def test_predict_precision_option(tiny_prior, photos16, tmp_path, capfd):
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos16),
                      "--model.precision", precision, "--writer.output_dir", str(out), steps=2)
        assert rc == 0, err
        assert json.loads((out / "run.json").read_text())["model"]["precision"] == precision
        outputs[precision] = torch.stack([read_image(out / f"im{i}.png").pixels for i in range(3)])
    diff = (outputs["fp32"] - outputs["bf16"]).abs()
    assert float(diff.max()) > 0  # the UNet really ran in bfloat16
    assert float(diff.mean()) * 255 < 0.5  # and restored the same images (measured: 0.009 levels at 2 steps)


def test_precision_auto_is_the_default_and_follows_the_device(tiny_prior, photos16, tmp_path, capfd, monkeypatch):
    from gdp_lightning import precision

    out = tmp_path / "auto"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos16),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    expected = "bf16" if precision.cpu_has_bf16() else "fp32"
    assert json.loads((out / "run.json").read_text())["model"]["precision"] == expected
    # the rule: bfloat16 where the hardware computes it, else fp32 on a CPU and fp16 on an older GPU
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.auto_precision(torch.device("cpu"))[0] == "fp32"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.auto_precision(torch.device("cpu"))[0] == "bf16"
    for supported, name in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert precision.auto_precision(torch.device("cuda", 0))[0] == name
    assert precision.resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ConfigError, match="--model.precision must be one of auto, fp32, fp16, bf16"):
        GDPModule(PriorSpec.from_dict({"name": "t", "unet": TINY}), Identity(), precision="half")


def test_small_images_error_and_per_image_kernel_file(tiny_prior, crops, tmp_path, capfd):
    photos = write_images(tmp_path / "in", [crops[0, :, :24, :24]], ["p"])
    kernel = torch.zeros(5, 5)
    kernel[2, :] = 1.0  # a horizontal motion blur, given for this image only
    np.savetxt(photos / "p_kernel.txt", kernel.numpy())
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "deblur", "--data.input_dir", str(photos),
                  "--model.small_images", "error", "--writer.output_dir", str(tmp_path / "refused"))
    line = [ln for ln in err.splitlines() if ln.startswith("gdp: ")][-1]  # the one input fails, recorded
    assert rc == 3 and "1 input(s) have no output: p (p: restores to 24x24" in line
    assert "--model.small_images pad" in record(tmp_path / "refused", "p")["error"]
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "deblur", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    assert png_size(out / "p.png") == ((24, 24), "RGB")
    used = torch.load(out / "p.phi.pt")["kernel"].squeeze()
    assert torch.allclose(used, kernel / kernel.sum(), atol=1e-6)  # the file's kernel, not the task's default


# ----------------------------------------------------------------------- 3. every task on the skimage64 prior
def test_sr4_beats_nearest_neighbour(sk_prior, crops, tmp_path, capfd):
    clean = write_images(tmp_path / "clean", crops[:2], ["c0", "c1"])
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "test", sk_prior, "sr4", "--data.input_dir", str(clean),
                  "--data.mode", "synthetic", "--data.batch_size", "2", "--writer.output_dir", str(out), steps=10)
    assert rc == 0, err
    low = quantize(F.avg_pool2d(crops[:2], 4))  # the synthetic observation: 4x4 averages, rounded to 8 bits
    nearest = psnr(F.interpolate(low, scale_factor=4, mode="nearest"), crops[:2])
    rows = {r["name"]: r for r in read_rows(out / "metrics.csv")}
    for i in range(2):
        restored = read_image(out / f"c{i}.png").pixels[None]
        assert restored.shape == (1, 3, 64, 64)
        measured = float(psnr(restored, crops[i : i + 1]))
        assert float(rows[f"c{i}"]["psnr"]) == pytest.approx(measured, abs=0.01)  # metrics of the written file
        assert measured > float(nearest[i]) + 1.0, (measured, nearest.tolist())
        assert 0 < float(rows[f"c{i}"]["ssim"]) <= 1


def test_deblur_keeps_the_size(sk_prior, crops, tmp_path, capfd):
    photos = write_images(tmp_path / "in", [crops[0, :, :40, :56]], ["wide"])  # smaller than the prior: padded
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "deblur", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    assert png_size(out / "wide.png") == ((56, 40), "RGB")  # reflect padding: the size of the input
    kernel = torch.load(out / "wide.phi.pt")["kernel"].squeeze()
    assert torch.allclose(kernel, kernel_from_spec("gdp:9:2") / kernel_from_spec("gdp:9:2").sum(), atol=1e-6)


def test_blind_deblur_learns_a_kernel(sk_prior, crops, tmp_path, capfd):
    photos = write_images(tmp_path / "in", crops[:2], ["a", "b"])
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "blind_deblur", "--data.input_dir", str(photos),
                  "--data.batch_size", "2", "--writer.output_dir", str(out))
    assert rc == 0, err
    start = gaussian_kernel(9, 0.7)  # the config's start
    start = start / start.sum()
    learned = []
    for name in ("a", "b"):
        assert png_size(out / f"{name}.png")[0] == (64, 64)
        assert png_size(out / f"{name}.kernel.png")[0][0] >= 9  # a picture of the kernel
        kernel = torch.load(out / f"{name}.phi.pt")["kernel"].squeeze()
        assert kernel.shape == (9, 9) and bool((kernel >= 0).all())
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
        assert float((kernel - start).abs().max()) > 1e-4  # it moved away from the start
        result = record(out, name)["results"][0]
        assert result["phi_pictures"] == {"kernel": f"{name}.kernel.png"} and result["phi_file"] == f"{name}.phi.pt"
        learned.append(kernel)
    assert not torch.equal(learned[0], learned[1])  # one kernel per image


def test_inpaint_with_mask_files_and_random_masks(sk_prior, crops, tmp_path, capfd):
    photos = write_images(tmp_path / "in", crops[:2], ["a", "b"])
    masks = torch.ones(2, 1, 64, 64)
    masks[0, :, 16:48, 16:48] = 0
    masks[1, :, :, 40:] = 0
    for mask, name in zip(masks, ("a", "b")):
        write_image(photos / f"{name}_mask.png", mask)
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "inpaint", "--data.input_dir", str(photos),
                  "--data.batch_size", "2", "--writer.output_dir", str(out))
    assert rc == 0, err
    assert names_in(out) == ["a.json", "a.png", "b.json", "b.png", "metrics.csv", "metrics.json", "run.json",
                             "run.yaml"]  # the masks are inputs, not images to restore
    for i, name in enumerate(("a", "b")):
        restored = read_image(out / f"{name}.png").pixels
        observed = masks[i].bool().expand(3, -1, -1)
        # the data-consistency rule keeps the observed pixels exactly (an MSE of 0: PSNR capped at 100 dB)
        kept = 10 * math.log10(1 / max(1e-10, float((restored - crops[i])[observed].pow(2).mean())))
        filled = 10 * math.log10(1 / float((restored - crops[i])[~observed].pow(2).mean()))
        assert kept > 30 and kept > filled + 10, (kept, filled)  # the observed pixels stay, the hole is new
        # the consistency compares the observed pixels only: the photo's content in the hole is not observed
        expected = float(((restored - crops[i]) * masks[i] * 255).pow(2).mean())
        assert record(out, name)["results"][0]["metrics"]["consistency"] == pytest.approx(expected, rel=1e-3)

    out = tmp_path / "random"
    photos = write_images(tmp_path / "nomask", crops[2:3], ["c"])
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "inpaint", "--data.input_dir", str(photos),
                  "--model.degradation.init_args.mask", "random:0.25", "--writer.output_dir", str(out))
    assert rc == 0, err
    assert png_size(out / "c.png") == ((64, 64), "RGB")
    assert "random:0.25" in (out / "run.yaml").read_text()
    mask = random_mask(64, 64, 0.25, torch.Generator().manual_seed(0))  # what 'random:0.25' draws at 64x64
    assert float(mask.mean()) == pytest.approx(0.75, abs=0.02)
    restored = read_image(out / "c.png").pixels
    expected = float(((restored - crops[2]) * mask * 255).pow(2).mean())
    assert record(out, "c")["results"][0]["metrics"]["consistency"] == pytest.approx(expected, rel=1e-3)
    assert expected < 100


def test_colorize_gray_photo(sk_prior, crops, tmp_path, capfd):
    photos = tmp_path / "in"
    photos.mkdir()
    gray = (crops[0].mean(0) * 255).round().byte()
    Image.fromarray(gray.numpy(), "L").save(photos / "g.png")
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "colorize", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    assert png_size(out / "g.png") == ((64, 64), "RGB")
    restored = read_image(out / "g.png").pixels
    assert float(psnr(restored.mean(0)[None, None], gray[None, None].float() / 255)) > 30  # its gray is the input
    assert float((restored - restored.mean(0)).abs().mean()) > 0.005  # and it has colours


def test_lowlight_learns_f_and_m(sk_prior, crops, tmp_path, capfd):
    dark = quantize(crops[1:2] * 0.15)
    photos = write_images(tmp_path / "in", dark, ["d"])
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "lowlight", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    restored = read_image(out / "d.png").pixels
    assert restored.shape == (3, 64, 64)
    assert float(restored.mean()) > 2 * float(dark.mean())  # brighter
    result = record(out, "d")["results"][0]
    assert set(result["phi"]) == {"f", "M"}
    assert all(isinstance(result["phi"][k], float) and math.isfinite(result["phi"][k]) for k in ("f", "M"))
    assert set(result["losses"]) == {"data", "exposure", "color"}
    assert {"consistency", "loe"} <= set(result["metrics"])
    phi = torch.load(out / "d.phi.pt")
    assert float(phi["f"].flatten()[0]) == pytest.approx(result["phi"]["f"], rel=1e-4)


def test_hdr_scene_folder(sk_prior, crops, tmp_path, capfd):
    scene = tmp_path / "in" / "scene1"
    exposures = quantize(torch.stack([crops[2] * 0.3, crops[2] * 0.7, (crops[2] * 1.6).clamp(0, 1)]))
    write_images(scene, exposures[:, :, :48, :], ["e1", "e2", "e3"])
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "hdr", "--data.input_dir", str(tmp_path / "in"),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    assert names_in(out) == ["metrics.csv", "metrics.json", "run.json", "run.yaml", "scene1.M.png", "scene1.json",
                             "scene1.phi.pt", "scene1.png"]
    assert png_size(out / "scene1.png") == ((64, 48), "RGB")
    result = record(out, "scene1")["results"][0]
    assert len(result["phi"]["f"]) == 3  # one gain per exposure
    assert result["phi"]["M"]["shape"] == [3, 48, 64]
    phi = torch.load(out / "scene1.phi.pt")
    assert phi["f"].numel() == 3 and tuple(phi["M"].shape) == (3, 48, 64)


def test_blind_deblur_scores_its_kernel_against_the_true_one(tiny_prior, crops, tmp_path, capfd):
    """Synthetic blind deblurring with a known true kernel: the record and metrics.csv say how far the learned
    kernel is from it (error and widths); without a blind operator no kernel is scored."""
    clean = write_images(tmp_path / "clean", crops[:2], ["c0", "c1"])
    out = tmp_path / "out"
    truth = {"class_path": "gdp_lightning.degradations.Blur", "init_args": {"kernel": "gaussian:9:2",
                                                                             "padding": "reflect"}}
    rc, err = gdp(capfd, tmp_path / "logs", "test", tiny_prior, "blind_deblur", "--data.input_dir", str(clean),
                  "--data.mode", "synthetic", "--data.degradation", json.dumps(truth), "--writer.output_dir", str(out))
    assert rc == 0, err
    true_width = kernel_width(gaussian_kernel(9, 2.0))
    for name in ("c0", "c1"):
        metrics = record(out, name)["results"][0]["metrics"]
        learned = torch.load(out / f"{name}.phi.pt")["kernel"]
        assert metrics["true_kernel_width"] == pytest.approx(true_width, rel=1e-4)
        assert metrics["kernel_width"] == pytest.approx(kernel_width(learned), rel=1e-4)
        assert metrics["kernel_error"] == pytest.approx(kernel_error(learned, gaussian_kernel(9, 2.0)), rel=1e-4)
    assert {"kernel_error", "kernel_width", "true_kernel_width"} <= set(read_rows(out / "metrics.csv")[0])
    acc = events(tmp_path / "logs")
    [picture] = acc.Images("kernels/test/c0")  # learned | true, 96 px each under a label band
    assert (picture.width, picture.height) == (2 * 96 + 2, 96 + LABEL_HEIGHT)
    peaks = acc.Scalars("phi/test/c0/kernel_peak")  # a kernel's φ scalar is its peak, named so
    assert peaks[-1].value == pytest.approx(float(torch.load(out / "c0.phi.pt")["kernel"].max()), rel=1e-4)
    logs = acc.Scalars("loss_log10/test/c0/data")
    assert [e.value for e in logs] == [pytest.approx(math.log10(e.value), rel=1e-5)
                                       for e in acc.Scalars("loss/test/c0/data")]
    out2 = tmp_path / "out2"  # a known kernel: nothing to score
    rc, err = gdp(capfd, tmp_path / "logs", "test", tiny_prior, "deblur", "--data.input_dir", str(clean),
                  "--data.mode", "synthetic", "--writer.output_dir", str(out2))
    assert rc == 0, err
    assert "kernel_error" not in record(out2, "c0")["results"][0]["metrics"]


def test_blur_sr4_learns_the_kernel_of_the_composition(sk_prior, crops, tmp_path, capfd):
    photos = write_images(tmp_path / "in", quantize(F.avg_pool2d(crops[:1], 4)), ["s"])
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", sk_prior, "blur_sr4", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    assert png_size(out / "s.png") == ((64, 64), "RGB")
    kernel = torch.load(out / "s.phi.pt")["0.kernel"]
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5) and bool((kernel >= 0).all())
    assert (out / "s.0.kernel.png").is_file()


@pytest.mark.parametrize("factor,size", [(4, (66, 70)), (3, (67, 71))])
def test_synthetic_super_resolution_at_sizes_not_a_multiple_of_the_factor(factor, size, tiny_prior, crops, tmp_path,
                                                                          capfd):
    """A 66×70 ground truth under SR×4 gives a 17×18 observation; the restoration is 66×70 (not 68×72), scored
    against the ground truth, with the partial border blocks modelled as they were made."""
    from gdp_lightning.degradations import SuperResolution

    h, w = size
    photos = torch.nn.functional.interpolate(crops[:2], size=size, mode="bilinear", align_corners=False)
    clean = write_images(tmp_path / "clean", quantize(photos), ["a", "b"])
    out = tmp_path / "out"
    op = {"class_path": "gdp_lightning.degradations.SuperResolution", "init_args": {"factor": factor}}
    rc, err = gdp(capfd, tmp_path / "logs", "test", tiny_prior, "sr4", "--data.input_dir", str(clean), "--data.mode",
                  "synthetic", "--model.degradation", json.dumps(op), "--writer.output_dir", str(out), steps=3)
    assert rc == 0, err
    rows = {r["name"]: r for r in read_rows(out / "metrics.csv")}
    for i, name in enumerate(("a", "b")):
        restored = read_image(out / f"{name}.png").pixels[None]
        assert restored.shape[-2:] == (h, w)
        truth = read_image(clean / f"{name}.png").pixels[None]
        assert float(rows[name]["psnr"]) == pytest.approx(float(psnr(restored, truth)), abs=0.01)
        y = SuperResolution(factor)(truth)
        assert y.shape[-2:] == (-(-h // factor), -(-w // factor))
        consistency = float(((SuperResolution(factor)(restored) - quantize(y)) * 255).pow(2).mean())
        assert float(rows[name]["consistency"]) == pytest.approx(consistency, rel=0.05, abs=0.5)


# ------------------------------------------------------------------------------- 4. validate/test, TensorBoard
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluation_writes_metrics_and_tensorboard(stage, tiny_prior, crops, tmp_path, capfd):
    clean = write_images(tmp_path / "clean", crops[:3, :, :32, :32], ["c0", "c1", "c2"])
    out, logs = tmp_path / "out", tmp_path / "logs"
    rc, err = gdp(capfd, logs, stage, tiny_prior, "sr4", "--data.input_dir", str(clean), "--data.mode", "synthetic",
                  "--data.batch_size", "2", "--trajectory.every_n_steps", "2", "--writer.output_dir", str(out),
                  steps=4)
    assert rc == 0, err
    rows = read_rows(out / "metrics.csv")
    assert [r["name"] for r in rows] == ["c0", "c1", "c2"]
    assert {"psnr", "ssim", "consistency"} <= set(rows[0])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["images"] == 3
    means = summary["mean_by_scale"]["1000"]
    for key in ("psnr", "ssim", "consistency"):
        assert means[key] == pytest.approx(sum(float(r[key]) for r in rows) / 3, rel=1e-5)
    for i in range(3):
        restored = read_image(out / f"c{i}.png").pixels[None]
        assert float(rows[i]["psnr"]) == pytest.approx(float(psnr(restored, crops[i : i + 1, :, :32, :32])), abs=0.01)

    acc = events(logs)
    scalars, images = acc.Tags()["scalars"], acc.Tags()["images"]
    logged = [e.value for e in acc.Scalars(f"{stage}/psnr")]
    assert logged == [pytest.approx(means["psnr"], rel=1e-4)]
    # the first batch (c0, c1) is followed: x0 at steps 1, 3 (every 2) and the last one, losses at every step
    for name in ("c0", "c1"):
        assert [e.step for e in acc.Images(f"x0/{stage}/{name}")] == [1, 3, 4]
        [grid] = acc.Images(f"trajectory/{stage}/{name}")
        # frames 2 px apart, under their step; 32 px frames shown 4x (panels enlarge small images to MIN_SIDE)
        assert (grid.width, grid.height) == (3 * MIN_SIDE + 2 * 2, MIN_SIDE + LABEL_HEIGHT)
        losses = acc.Scalars(f"loss/{stage}/{name}/data")
        assert [e.step for e in losses] == [1, 2, 3, 4]
        assert all(math.isfinite(e.value) and e.value >= 0 for e in losses)
    assert f"x0/{stage}/c2" not in images and f"loss/{stage}/c2/data" not in scalars  # num_batches 1


def test_predict_logs_metrics_and_phi_to_tensorboard(tiny_prior, photos16, tmp_path, capfd):
    out, logs = tmp_path / "out", tmp_path / "logs"
    rc, err = gdp(capfd, logs, "predict", tiny_prior, "lowlight", "--data.input_dir", str(photos16),
                  "--data.batch_size", "3", "--writer.output_dir", str(out), steps=3, scale=100.0)
    assert rc == 0, err
    acc = events(logs)
    # the mean as metrics.json has it, named as test's and validate's (real photos: no PSNR); per image a table
    rows = read_rows(out / "metrics.csv")
    mean = json.loads((out / "metrics.json").read_text())["mean_by_scale"]["100"]["consistency"]
    assert [e.value for e in acc.Scalars("predict/consistency")] == [pytest.approx(mean, rel=1e-5)]
    assert "predict/psnr" not in acc.Tags()["scalars"] and "predict/mean_consistency" not in acc.Tags()["scalars"]
    [table] = acc.Tensors("predict/metrics/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    for r in rows:
        assert f"| {r['name']} | 100 | {float(r['consistency']):.4g} |" in text
    # φ at every diffusion step: the learned gain f of the first images ends where the record says
    for name in ("im0", "im1"):
        f = acc.Scalars(f"phi/predict/{name}/f")
        assert [e.step for e in f] == [1, 2, 3]
        assert f[-1].value == pytest.approx(record(out, name)["results"][0]["phi"]["f"], rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------------------------- 5. resume
def test_predict_resumes_and_overwrites(tiny_prior, photos16, tmp_path, capfd):
    out, logs = tmp_path / "out", tmp_path / "logs"
    options = ["--data.input_dir", str(photos16), "--writer.output_dir", str(out)]
    assert gdp(capfd, logs, "predict", tiny_prior, "sr4", *options)[0] == 0
    first = {n: (out / f"{n}.png").read_bytes() for n in ("im0", "im1", "im2")}

    age(out)
    (out / "im1.json").unlink()  # the record marks an input done: without it, im1 is redone
    (out / "im2.json").unlink()
    (out / "im2.png").unlink()
    rc, err = gdp(capfd, logs, "predict", tiny_prior, "sr4", *options)
    assert rc == 0, err
    changed = rewritten(out)
    assert {"im1.json", "im1.png", "im2.json", "im2.png", "metrics.csv"} <= set(changed)
    assert not {"im0.png", "im0.json"} & set(changed)
    assert [r["name"] for r in read_rows(out / "metrics.csv")] == ["im0", "im1", "im2"]  # the earlier ones too
    for n in ("im1", "im2"):  # the same seeds, the same results
        assert (out / f"{n}.png").read_bytes() == first[n]

    age(out)
    rc, err = gdp(capfd, logs, "predict", tiny_prior, "sr4", *options, "--model.sampler.tile_batch", "3")
    assert rc == 0, err  # a setting that does not change the results: resumes
    assert not {f"im{i}.{ext}" for i in range(3) for ext in ("png", "json")} & set(rewritten(out))  # all done
    # the record is of the run that restored im1 and im2 and names when the run that made im0 started
    assert len(json.loads((out / "run.json").read_text())["earlier_starts"]) == 1

    # settings that change the results do not mix with the outputs of the earlier ones
    for option, value in (("--model.sampler.scale", "123"), ("--model.seed", "5")):
        age(out)
        rc, err = gdp(capfd, logs, "predict", tiny_prior, "sr4", *options, option, value)
        assert rc == 2
        line = error_line(err)
        assert str(out) in line and option.split(".")[-1] in line and "--writer.overwrite" in line
        assert not rewritten(out)  # nothing written, not even the run record

    rc, err = gdp(capfd, logs, "predict", tiny_prior, "sr4", *options, "--writer.overwrite", "true")
    assert rc == 0, err
    assert {f"im{i}.{ext}" for i in range(3) for ext in ("png", "json")} <= set(rewritten(out))


@pytest.mark.parametrize("task_name,option,value,expected", [
    ("sr4", "--model.sampler.phi_start", "1.5", "--model.sampler: phi_start must be in [0, 1]"),
    ("sr4", "--model.sampler.tile_overlap", "2.5", "--model.sampler: tile_overlap is pixels"),
    ("sr4", "--model.sampler.phi_update", "later", "--model.sampler: phi_update must be one of"),
    ("blur_sr4", "--model.sampler.phi_optimizer", "lstsq", "needs an operator with an exact solve"),
    ("inpaint", "--model.degradation.init_args.mask", "twice.txt", "twice.txt: not a permutation"),
    ("inpaint", "--model.degradation.init_args.mask", "bad.npy", "bad.npy: cannot read an inpainting mask"),
])
def test_bad_sampler_options_and_mask_files_end_in_one_line(task_name, option, value, expected, tiny_prior,
                                                            photos16, tmp_path, capfd):
    """Refused before anything is restored: one line naming the option or file, the output folder untouched."""
    (tmp_path / "twice.txt").write_text("0\n0\n1\n2\n")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    if value in ("twice.txt", "bad.npy"):
        value = str(tmp_path / value)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"kept")
    inputs = sorted(p.read_bytes() for p in photos16.iterdir())
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, task_name, "--data.input_dir", str(photos16),
                  "--writer.output_dir", str(out), option, value)
    assert rc == 2
    assert expected in error_line(err)
    assert names_in(out) == ["earlier.png"] and (out / "earlier.png").read_bytes() == b"kept"
    assert sorted(p.read_bytes() for p in photos16.iterdir()) == inputs


def test_outputs_written_before_a_failure_stay(tiny_prior, photos16, tmp_path, capfd, monkeypatch):
    out, logs = tmp_path / "out", tmp_path / "logs"
    options = ["--data.input_dir", str(photos16), "--data.batch_size", "2", "--writer.output_dir", str(out)]
    predict_step = GDPModule.predict_step

    def second_batch_diverges(self, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1:
            raise GuidanceDivergedError("the sample became non-finite at step 2 of 3 (simulated)")
        return predict_step(self, batch, batch_idx, dataloader_idx)

    monkeypatch.setattr(GDPModule, "predict_step", second_batch_diverges)
    rc, err = gdp(capfd, logs, "predict", tiny_prior, "sr4", *options)
    assert rc == 2
    assert "non-finite" in error_line(err)
    assert names_in(out) == ["im0.json", "im0.png", "im1.json", "im1.png", "run.json", "run.yaml"]  # no temp files
    for n in ("im0", "im1"):
        assert png_size(out / f"{n}.png") == ((64, 64), "RGB")
        assert record(out, n)["results"][0]["output"] == f"{n}.png"

    monkeypatch.setattr(GDPModule, "predict_step", predict_step)
    age(out)
    rc, err = gdp(capfd, logs, "predict", tiny_prior, "sr4", *options)
    assert rc == 0, err
    assert {"im2.png", "im2.json"} <= set(rewritten(out))
    assert not {"im0.png", "im0.json", "im1.png", "im1.json"} & set(rewritten(out))
    assert [r["name"] for r in read_rows(out / "metrics.csv")] == ["im0", "im1", "im2"]


# ----------------------------------------------------------------------------------------- 6. bad inputs
@pytest.fixture()
def earlier_outputs(tmp_path, crops) -> Path:
    """An output folder holding the files of an earlier run."""
    out = tmp_path / "out"
    write_image(out / "old.png", crops[0])
    (out / "old.json").write_text('{"name": "old", "results": []}\n')
    (out / "metrics.csv").write_text("name,scale,psnr\nold,1000.0,20.0\n")
    (out / "run.json").write_text('{"stage": "predict"}\n')
    return out


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("case", ["missing folder", "truncated image", "mask of another size",
                                  "small checkpoint, large config", "large checkpoint, small config",
                                  "missing checkpoint", "inference mode"])
def test_bad_input_ends_with_one_error_line(case, tiny, tiny_prior, sk_prior, skimage64_checkpoint, photos16,
                                            earlier_outputs, crops, tmp_path, capfd):
    before = _snapshot(earlier_outputs)
    photos, prior, task_name, extra = photos16, tiny_prior, "sr4", []
    if case == "missing folder":
        photos = tmp_path / "no_such_folder"
        culprit = str(photos)
    elif case == "truncated image":  # the only input (with others, it alone fails: tests/test_reliability.py)
        photos = write_images(tmp_path / "in", F.avg_pool2d(crops[:1], 4), ["cut"])
        data = (photos / "cut.png").read_bytes()
        (photos / "cut.png").write_bytes(data[: len(data) // 2])
        culprit = str(photos / "cut.png")
    elif case == "mask of another size":
        photos = write_images(tmp_path / "in", crops[:1, :, :32, :32], ["a"])
        write_image(photos / "a_mask.png", torch.ones(1, 16, 16))
        task_name, culprit = "inpaint", str(photos / "a_mask.png")
    elif case == "small checkpoint, large config":
        prior = sk_prior + ["--model.prior.checkpoint", str(tiny["plain"][1])]
        culprit = str(tiny["plain"][1])
    elif case == "large checkpoint, small config":
        extra = ["--model.prior.checkpoint", str(skimage64_checkpoint)]
        culprit = str(skimage64_checkpoint)
    elif case == "missing checkpoint":
        culprit = str(tmp_path / "gone.pt")
        extra = ["--model.prior.checkpoint", culprit]
    else:
        extra, culprit = ["--trainer.inference_mode", "true"], "--trainer.inference_mode false"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", prior, task_name, "--data.input_dir", str(photos),
                  "--writer.output_dir", str(earlier_outputs), *extra)
    assert rc == 2
    line = error_line(err)
    assert culprit in line, line
    if "checkpoint," in case:
        assert "does not fit" in line
    after = _snapshot(earlier_outputs)
    for name in ("old.png", "old.json", "metrics.csv"):
        assert after[name] == before[name], name
    assert not any(name.endswith((".png", ".json")) and name not in before and name != "run.yaml"
                   for name in after)  # no restored image, no record
    if case in ("missing folder", "truncated image", "mask of another size"):
        assert after == before  # found before anything is set up


# -------------------------------------------------------------------------------------------- 8. scale sweep
def test_scale_sweep(tiny_prior, photos16, tmp_path, capfd):
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos16),
                  "--data.batch_size", "3", "--model.sampler.scales", "[500, 2000]", "--writer.output_dir", str(out),
                  "--model.sampler.guidance", "gradient")
    assert rc == 0, err
    for i in range(3):
        name = f"im{i}"
        assert png_size(out / f"{name}_s500.png") == ((64, 64), "RGB")
        assert png_size(out / f"{name}_s2000.png") == ((64, 64), "RGB")
        assert png_size(out / f"{name}_scales.png") == ((64 + 2 + 64, 64), "RGB")
        assert not (out / f"{name}.png").exists()
        rec = record(out, name)
        assert [r["scale"] for r in rec["results"]] == [500.0, 2000.0]
        assert [r["output"] for r in rec["results"]] == [f"{name}_s500.png", f"{name}_s2000.png"]
        assert rec["grid"] == f"{name}_scales.png"
        a, b = (read_image(out / f"{name}_s{s}.png").pixels for s in (500, 2000))
        assert float((a - b).abs().mean()) > 1e-3  # the scale matters
        # the grid holds both outputs side by side, 2 px apart (the scale label is drawn in the top rows)
        grid = read_image(out / f"{name}_scales.png").pixels
        assert float((grid[:, 16:, :64] - a[:, 16:]).abs().max()) <= 1.01 / 255
        assert float((grid[:, 16:, 66:] - b[:, 16:]).abs().max()) <= 1.01 / 255
        assert float(grid[:, :, 64:66].abs().max()) == 0  # the gap
    rows = read_rows(out / "metrics.csv")
    assert [(r["name"], float(r["scale"])) for r in rows] == [
        (f"im{i}", s) for i in range(3) for s in (500.0, 2000.0)]
    means = json.loads((out / "metrics.json").read_text())["mean_by_scale"]
    assert set(means) == {"500", "2000"}
    chart = events(tmp_path / "logs").Scalars("sweep/predict/consistency")  # the metric against the scale
    assert [(e.step, e.value) for e in chart] == [(500, pytest.approx(means["500"]["consistency"], rel=1e-5)),
                                                   (2000, pytest.approx(means["2000"]["consistency"], rel=1e-5))]


def test_scale_sweep_with_ground_truth_reports_one_fid_per_scale(tiny_prior, crops, tmp_path, capfd):
    from .test_metrics import _TinyFeatures

    extractor = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(_TinyFeatures()), str(extractor))
    clean = write_images(tmp_path / "clean", crops[:3], ["c0", "c1", "c2"])
    out, logs = tmp_path / "out", tmp_path / "logs"
    rc, err = gdp(capfd, logs, "test", tiny_prior, "sr4", "--data.input_dir", str(clean), "--data.mode",
                  "synthetic", "--data.batch_size", "3", "--model.sampler.scales", "[500, 2000]",
                  "--model.metrics", "[psnr, fid]", "--model.fid_feature_extractor", str(extractor),
                  "--writer.output_dir", str(out), "--model.sampler.guidance", "gradient")
    assert rc == 0, err
    dataset = json.loads((out / "metrics.json").read_text())["dataset"]
    assert set(dataset) == {"fid/s500", "fid/s2000"} and dataset["fid/s500"] != dataset["fid/s2000"]
    tags = events(logs).Tags()["scalars"]
    assert {"test/fid/s500", "test/fid/s2000", "test/psnr/s500", "test/psnr/s2000"} <= set(tags)


# ---------------------------------------------------------------------------------------------- 9. Python API
def test_python_api(tiny, crops):
    from gdp_lightning import build_module, restore

    config = str(tiny["plain"][0])
    y = quantize(F.avg_pool2d(crops[:3, :, :32, :32], 4))  # (3, 3, 8, 8)
    kwargs = dict(task="sr4", prior=config, steps=3, scale=1000, device="cpu", progress=False)
    a = restore(y[:2], **kwargs)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(restore(y[:2], **kwargs), a)  # same seed, same result
    assert float((restore(y[:2], seed=1, **kwargs) - a).abs().mean()) > 1e-3
    # image i's result depends on (seed, i) and its own observation only, not on the other images of the call
    other = restore(torch.stack([y[0], y[2]]), **kwargs)
    assert float((other[0] - a[0]).abs().max()) < 1e-4
    listed = restore([y[0], y[1]], **kwargs)  # one batch per image
    assert isinstance(listed, list) and [t.shape for t in listed] == [(3, 32, 32)] * 2
    assert float((torch.stack(listed) - a).abs().max()) < 1e-4
    module = build_module("sr4", config, sampler={"steps": "3", "scale": 1000.0}, progress=False)
    assert torch.equal(restore(y[:2], module=module, device="cpu"), a)
    metrics = module._metrics
    assert torch.equal(restore(y[:2], module=module, device="cpu"), a)
    assert module._metrics is metrics  # set up once, not per call
    details = restore(y[:1], details=True, **kwargs)
    assert set(details[0]) == {"image", "std", "phi", "losses", "metrics", "diverged", "retries", "scale_used"}
    assert details[0]["std"] is None  # one sample: no spread
    assert "data" in details[0]["losses"] and details[0]["retries"] == 0


# --------------------------------------------------------------------------------- 10. class-conditional prior
def test_class_conditional_prior(tiny, photos16, tmp_path, capfd):
    prior = ["--config", str(tiny["cond"][0])]
    options = ["--data.input_dir", str(photos16), "--data.batch_size", "3"]
    logs = tmp_path / "logs"

    rc, err = gdp(capfd, logs, "predict", prior, "sr4", *options, "--writer.output_dir", str(tmp_path / "none"))
    assert rc == 2 and "--model.class_label" in error_line(err)
    assert not list((tmp_path / "none").glob("im*"))

    outputs = {}
    for label in ("3", "7"):
        out = tmp_path / f"label{label}"
        rc, err = gdp(capfd, logs, "predict", prior, "sr4", *options, "--model.class_label", label,
                      "--writer.output_dir", str(out))
        assert rc == 0, err
        outputs[label] = [read_image(out / f"im{i}.png").pixels for i in range(3)]
        assert [record(out, f"im{i}")["label"] for i in range(3)] == [int(label)] * 3
    assert not torch.equal(outputs["3"][0], outputs["7"][0])  # the label reaches the prior

    out = tmp_path / "random"
    rc, err = gdp(capfd, logs, "predict", prior, "sr4", *options, "--model.random_labels", "true",
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    assert [r["name"] for r in read_rows(out / "metrics.csv")] == ["im0", "im1", "im2"]
    # image i's class is drawn from its own seed: reproducible, and not one class for all
    drawn = [record(out, f"im{i}")["label"] for i in range(3)]
    assert all(0 <= c < 1000 for c in drawn) and len(set(drawn)) > 1
    rc, err = gdp(capfd, logs, "predict", prior, "sr4", *options, "--model.random_labels", "true",
                  "--writer.output_dir", str(tmp_path / "random2"))
    assert rc == 0, err
    assert [record(tmp_path / "random2", f"im{i}")["label"] for i in range(3)] == drawn

    labels = tmp_path / "labels_all.txt"
    labels.write_text("# name label\nim0 3\nim1.png, 7\n\nim2 3\n")
    out = tmp_path / "file_ok"
    rc, err = gdp(capfd, logs, "predict", prior, "sr4", *options, "--model.labels_file", str(labels),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    assert [record(out, f"im{i}")["label"] for i in range(3)] == [3, 7, 3]
    for i, label in enumerate(("3", "7", "3")):  # the same as a run with that class for every image
        assert torch.equal(read_image(out / f"im{i}.png").pixels, outputs[label][i])

    rc, err = gdp(capfd, logs, "predict", prior, "sr4", *options, "--model.class_label", "1000",
                  "--writer.output_dir", str(tmp_path / "range"))
    assert rc == 2 and "--model.class_label" in error_line(err) and "0..999" in error_line(err)

    labels = tmp_path / "labels.txt"
    labels.write_text("im0 1\nim1.png, 2\n")
    rc, err = gdp(capfd, logs, "predict", prior, "sr4", *options, "--model.labels_file", str(labels),
                  "--writer.output_dir", str(tmp_path / "file"))
    line = error_line(err)
    assert rc == 2 and "--model.labels_file" in line and "'im2'" in line


def test_labels_on_an_unconditional_prior_are_refused(tiny_prior, photos16, tmp_path, capfd):
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos16),
                  "--model.class_label", "3", "--writer.output_dir", str(tmp_path / "out"))
    assert rc == 2 and "--model.class_label" in error_line(err) and "unconditional" in error_line(err)


def test_posterior_samples_write_the_mean_the_std_and_each_sample(tiny_prior, photos16, tmp_path, capfd):
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "sr4", "--data.input_dir", str(photos16),
                  "--data.batch_size", "2", "--model.sampler.num_samples", "3", "--model.sampler.save_samples", "true",
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    for i in range(3):
        name = f"im{i}"
        result = record(out, name)["results"][0]
        assert result["output"] == f"{name}.png" and result["std_output"] == f"{name}.std.png"
        assert result["samples"] == [f"{name}.sample{j}.png" for j in range(3)]
        samples = torch.stack([read_image(out / f"{name}.sample{j}.png").pixels for j in range(3)])
        mean, std = read_image(out / f"{name}.png").pixels, read_image(out / f"{name}.std.png").pixels
        assert png_size(out / f"{name}.std.png") == ((64, 64), "L")
        # the mean and the std of the samples as written (8-bit samples: within a level or two)
        assert float((mean - samples.mean(0)).abs().max()) <= 2 / 255
        expected = (samples.std(0, unbiased=False).mean(0) * 4).clamp(0, 1)
        assert float((std[0] - expected).abs().max()) <= 3 / 255
        assert result["mean_std"] > 0 and "standard deviation" in result["std_scale"]
    assert "im0.std" not in {r["name"] for r in read_rows(out / "metrics.csv")}  # one row per input


def test_tensorboard_hparams_hold_the_task_sampler_prior_and_data_with_the_real_metrics(tiny_prior, crops, tmp_path,
                                                                                         capfd):
    from tensorboard.plugins.hparams import plugin_data_pb2

    clean = write_images(tmp_path / "clean", crops[:2, :, :32, :32], ["c0", "c1"])
    logs = tmp_path / "logs"
    rc, err = gdp(capfd, logs, "test", tiny_prior, "sr4", "--data.input_dir", str(clean), "--data.mode", "synthetic",
                  "--writer.output_dir", str(tmp_path / "out"), "--model.sampler.tile_batch", "8")
    assert rc == 0, err
    acc = events(logs)
    hparams, metric_tags = {}, []
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = dict(data.session_start_info.hparams)
        if data.HasField("experiment"):
            metric_tags = [m.name.tag for m in data.experiment.metric_infos]
    assert hparams["stage"].string_value == "test"
    assert "SuperResolution" in hparams["task/degradation"].string_value
    assert hparams["sampler/steps"].string_value == "3" and hparams["data/mode"].string_value == "synthetic"
    assert hparams["prior/name"].string_value == "tiny_plain" and len(hparams["prior/checkpoint_sha256"].string_value)
    assert not any(k.startswith(("_instantiator", "prior.unet", "class_label")) for k in hparams)
    # the sampler: the key settings always, the others only where they differ from their defaults
    assert {f"sampler/{k}" for k in HPARAM_SAMPLER_KEYS} <= set(hparams)
    assert hparams["sampler/tile_batch"].number_value == 8 and "sampler/eta" not in hparams
    assert hparams["precision"].string_value in ("fp32", "bf16") and len(hparams) < 25
    assert {"hparams/psnr", "hparams/ssim", "hparams/consistency"} <= set(metric_tags)
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())["mean_by_scale"]["1000"]
    assert [e.value for e in acc.Scalars("hparams/psnr")] == [pytest.approx(summary["psnr"], rel=1e-5)]
    assert "hp_metric" not in acc.Tags()["scalars"] and "epoch" not in acc.Tags()["scalars"]  # no placeholders
    [config] = acc.Tensors("run/config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert "    model:" in text and "SuperResolution" in text  # the resolved YAML, as a code block


def test_tensorboard_panels_and_the_metrics_table_judge_each_image(tiny_prior, crops, tmp_path, capfd):
    clean = write_images(tmp_path / "clean", crops[:3, :, :32, :32], ["c0", "c1", "c2"])
    logs = tmp_path / "logs"
    rc, err = gdp(capfd, logs, "test", tiny_prior, "sr4", "--data.input_dir", str(clean), "--data.mode", "synthetic",
                  "--data.batch_size", "2", "--trajectory.panels", "2", "--writer.output_dir", str(tmp_path / "out"))
    assert rc == 0, err
    acc = events(logs)
    panels = sorted(t for t in acc.Tags()["images"] if t.startswith("panels/"))
    assert panels == ["panels/test/c0", "panels/test/c1"]  # --trajectory.panels 2
    [event] = acc.Images("panels/test/c0")
    # input | output | ground truth | |error|, 2 px apart, under a label band; the 32 px outputs shown 4x
    assert (event.width, event.height) == (4 * MIN_SIDE + 3 * 2, MIN_SIDE + LABEL_HEIGHT)
    from PIL import Image
    import io

    picture = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")).astype(float) / 255

    def tile(k):  # tile k at the image's own size (every 4th pixel of its 4x4 blocks)
        left = k * (MIN_SIDE + 2)
        return picture[LABEL_HEIGHT::4, left:left + MIN_SIDE:4]

    truth = crops[0, :, :32, :32].permute(1, 2, 0).numpy()
    assert np.abs(tile(2) - truth).max() <= 1.01 / 255  # the third tile is the ground truth
    output = read_image(tmp_path / "out" / "c0.png").pixels.permute(1, 2, 0).numpy()
    assert np.abs(tile(1) - output).max() <= 1.01 / 255
    error = np.clip(np.abs(output - truth).mean(-1) * 4, 0, 1)
    assert np.abs(tile(3)[..., 0] - error).max() <= 2.01 / 255
    [table] = acc.Tensors("test/metrics/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    assert text.splitlines()[0].startswith("| image | scale | consistency |") and "| c2 | 1000 |" in text
