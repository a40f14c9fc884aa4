"""Many devices: two CPU processes (DDP over gloo) against one, on a dataset whose size is not divisible by 2.

Each image is restored exactly once (by the process the data module's sharding gives its batch to), and its
result depends only on (seed, index): with one image per batch the outputs are bit-identical whatever the
number of processes. The batches themselves are formed before sharding, so with larger batches the outputs
are also identical across process counts; against one image per batch they differ by the UNet's float
arithmetic on other batch shapes, far below one 8-bit level (asserted below).

``gdp fit`` on two processes takes the same training samples per step as one process with the same global
batch, with the same timesteps and noise (asserted on the weights after three steps).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdp_lightning.cli import main
from gdp_lightning.data import write_image

from .helpers import KEEP, TINY, _tiny
from .test_unchanged_outputs import check as check_hashes

REPO = Path(__file__).resolve().parents[1]
NUM_IMAGES = 5


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    torch.save(_tiny().state_dict(), root / "tiny.pt")
    prior = {"model": {"prior": {"name": "tiny", "checkpoint": str(root / "tiny.pt"), "unet": TINY,
                                 "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear"}},
                       "sampler": KEEP}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(prior))
    photos = root / "photos"
    g = torch.Generator().manual_seed(3)
    for i in range(NUM_IMAGES):
        write_image(photos / f"img{i}.png", torch.rand(3, 8, 8, generator=g))
    return root


def _args(root: Path, out: Path, batch_size: int):
    return [
        "predict", "--config", str(root / "tiny.yaml"), "--config", str(REPO / "configs/task/sr4.yaml"),
        "--data.input_dir", str(root / "photos"), "--data.batch_size", str(batch_size),
        "--model.sampler.steps", "3", "--model.sampler.scale", "500", "--model.progress", "false",
        "--writer.output_dir", str(out), "--trainer.logger.init_args.save_dir", str(root / "logs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]


def _run_two_processes(root: Path, out: Path, batch_size: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "gdp_lightning", *_args(root, out, batch_size),
           "--trainer.devices", "2", "--trainer.strategy", "ddp", *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run_one_process(root: Path, out: Path, batch_size: int) -> None:
    assert main(_args(root, out, batch_size) + ["--trainer.devices", "1"]) == 0


def _outputs(out: Path):
    images = {p.stem: np.asarray(Image.open(p)) for p in sorted(out.glob("img*.png"))}
    records = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("img*.json"))}
    return images, records


def test_two_processes_restore_each_image_once_and_identically(setup_dir):
    root = setup_dir
    _run_one_process(root, root / "one_b1", 1)
    _run_two_processes(root, root / "two_b1", 1, "--trainer.logger.init_args.save_dir", str(root / "logs_two"))
    one, one_records = _outputs(root / "one_b1")
    two, two_records = _outputs(root / "two_b1")
    assert sorted(one) == sorted(two) == [f"img{i}" for i in range(NUM_IMAGES)]
    for name in one:
        assert one[name].shape == (32, 32, 3)
        assert np.array_equal(one[name], two[name]), name
    # batches are dealt round-robin: process 0 restores images 0, 2, 4 and process 1 images 1, 3, once each
    assert {n: r["process"] for n, r in two_records.items()} == {f"img{i}": i % 2 for i in range(NUM_IMAGES)}
    assert {r["process"] for r in one_records.values()} == {0}
    summary = json.loads((root / "two_b1" / "metrics.json").read_text())
    assert summary["images"] == NUM_IMAGES
    rows = (root / "two_b1" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + NUM_IMAGES
    check_hashes("ddp/predict", root / "two_b1", root)  # and as the recorded run made them
    # TensorBoard: every image's panel, each process's in its own event file of the one run folder
    [run] = [p for p in (root / "logs_two").rglob("version_*") if p.is_dir()]
    panels = {}
    for events_file in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events_file), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            if tag.startswith("panels/predict/"):
                panels[tag.split("/")[-1]] = events_file.name.endswith(".rank1")
    assert panels == {f"img{i}": i % 2 == 1 for i in range(NUM_IMAGES)}


def test_two_processes_resume_with_fewer_inputs_left_than_processes(setup_dir):
    """A resumed run with one input left: process 1 has nothing to do, takes an empty batch and still meets
    process 0 at the summary; the missing image is restored as before and the summary covers all five."""
    root = setup_dir
    if not (root / "one_b1").is_dir():
        _run_one_process(root, root / "one_b1", 1)
    out = root / "resumed"
    shutil.copytree(root / "one_b1", out)
    for path in out.glob("img4.*"):
        path.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("img[0-3].*")}
    _run_two_processes(root, out, 1)
    one, _ = _outputs(root / "one_b1")
    resumed, records = _outputs(out)
    assert np.array_equal(resumed["img4"], one["img4"]) and records["img4"]["process"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("img[0-3].*")} == before  # the others untouched
    assert json.loads((out / "metrics.json").read_text())["images"] == NUM_IMAGES


def test_larger_batches_two_processes(setup_dir):
    root = setup_dir
    if not (root / "one_b1").is_dir():
        _run_one_process(root, root / "one_b1", 1)
    _run_one_process(root, root / "one_b2", 2)
    _run_two_processes(root, root / "two_b2", 2)
    one_b1, _ = _outputs(root / "one_b1")
    one_b2, _ = _outputs(root / "one_b2")
    two_b2, two_records = _outputs(root / "two_b2")
    # batches [0, 1], [2, 3], [4]: process 0 gets the first and the last, process 1 the second
    assert {n: r["process"] for n, r in two_records.items()} == {"img0": 0, "img1": 0, "img2": 1, "img3": 1,
                                                                "img4": 0}
    for name in one_b2:
        assert np.array_equal(one_b2[name], two_b2[name]), name  # same batches, any number of processes
    diffs = [np.abs(one_b1[n].astype(float) - one_b2[n].astype(float)).mean() for n in one_b1]
    assert max(diffs) < 1.0, diffs  # batch composition changes the UNet's arithmetic, not the 8-bit result


def test_two_processes_finish_when_inputs_fail_on_either(setup_dir):
    """One input with a bad file (left out before the run) and one that fails during its restoration on the
    second process (too small for the prior with small_images error): neither process hangs, the others are
    restored, the records of both say why, and the run ends with exit status 3."""
    root = setup_dir
    photos = root / "mixed"
    g = torch.Generator().manual_seed(5)
    for i in range(4):
        write_image(photos / f"img{i}.png", torch.rand(3, 8, 8, generator=g))
    write_image(photos / "img1.png", torch.rand(3, 6, 6, generator=g))  # batch 1: the second process's
    (photos / "img3.png").write_bytes(b"not an image")
    out = root / "mixed_out"
    args = _args(root, out, 1)
    args[args.index("--data.input_dir") + 1] = str(photos)
    cmd = [sys.executable, "-m", "gdp_lightning", *args, "--model.small_images", "error",
           "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert sorted(p.stem for p in out.glob("img*.png")) == ["img0", "img2"]
    records = {n: json.loads((out / f"{n}.json").read_text()) for n in ("img1", "img3")}
    assert records["img1"]["process"] == 1 and "smaller than the prior" in records["img1"]["error"]
    assert "img3.png: cannot read the image" in records["img3"]["error"]
    assert "2 input(s) have no output" in proc.stderr.strip().splitlines()[-1]


def _fit_args(root: Path, logs: Path, batch_size: int):
    photos = root / "train"
    if not photos.is_dir():
        g = torch.Generator().manual_seed(4)
        for i in range(5):
            write_image(photos / f"p{i}.png", torch.rand(3, 48, 40, generator=g))
    return [
        "fit", "--config", str(root / "tiny.yaml"), "--config", str(REPO / "configs/task/sr4.yaml"),
        "--config", str(REPO / "configs/finetune.yaml"), "--data.input_dir", str(photos),
        "--data.batch_size", str(batch_size), "--data.epoch_size", "8", "--trainer.max_steps", "3",
        "--trainer.limit_val_batches", "0", "--model.training.warmup_steps", "0", "--model.training.lr", "1e-3",
        "--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.version", "run",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]


def test_fit_on_two_processes_trains_the_one_process_model(setup_dir):
    """Step k takes the global samples 4k..4k+3 and sample i's timestep and noise come from (seed, i): two
    processes with batches of 2 make the same steps as one process with batches of 4."""
    root = setup_dir
    assert main(_fit_args(root, root / "fit_one", 4) + ["--trainer.devices", "1"]) == 0
    cmd = [sys.executable, "-m", "gdp_lightning", *_fit_args(root, root / "fit_two", 2),
           "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = torch.load(root / "tiny.pt", weights_only=True)
    one = torch.load(root / "fit_one/finetune/run/checkpoints/last.ckpt", weights_only=True)
    two = torch.load(root / "fit_two/finetune/run/checkpoints/last.ckpt", weights_only=True)
    assert one["global_step"] == two["global_step"] == 3
    # Adam's first steps move each weight by about ±lr whatever the size of its gradient: compare the moves
    moved_one = torch.cat([(one["state_dict"][f"unet.{k}"] - v).flatten() for k, v in start.items()])
    moved_two = torch.cat([(two["state_dict"][f"unet.{k}"] - v).flatten() for k, v in start.items()])
    assert moved_one.abs().mean() > 1e-4
    differ = ((moved_one - moved_two).abs() > 1e-5).float().mean().item()
    assert differ < 0.01, differ
