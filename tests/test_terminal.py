"""What a user sees in the terminal or a log file: ``gdp`` run as a console command (a subprocess whose output is
not a TTY, as in a log file): no framework chatter, one line per batch, a summary at the end; ``--verbose`` brings
Lightning's lines back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from gdp_lightning.benchmark import quantize, skimage_crops
from gdp_lightning.data import write_image
from gdp_lightning.outputs import run_summary

from .conftest import REPO
from .helpers import KEEP, TINY, _tiny

CHATTER = ("Tip:", "GPU available", "TPU available", "LeafSpec", "Seed set", "No seed found", "LOCAL_RANK")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("terminal")
    torch.save(_tiny().state_dict(), root / "tiny.pt")
    spec = {"name": "tiny", "unet": TINY, "diffusion": {"diffusion_steps": 1000}, "checkpoint": str(root / "tiny.pt")}
    (root / "tiny.yaml").write_text(yaml.safe_dump({"model": {"prior": spec, "sampler": KEEP}}))
    for i, image in enumerate(quantize(F.avg_pool2d(skimage_crops(5, size=64, seed=8), 4))):
        write_image(root / "in" / f"p{i}.png", image)
    return root


def gdp(root: Path, out: str, *options: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gdp_lightning", "predict", "--config", str(root / "tiny.yaml"), "--config",
           str(REPO / "configs/task/sr4.yaml"), "--model.sampler.steps", "3", "--data.input_dir", str(root / "in"),
           "--data.batch_size", "2", "--writer.output_dir", str(root / out), "--trainer.logger.init_args.save_dir",
           str(root / "logs"), *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_a_log_file_gets_a_line_per_batch_and_a_summary_without_framework_chatter(setup):
    proc = gdp(setup, "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""  # no progress bar
    lines = proc.stderr.splitlines()
    assert not [line for line in lines if any(c in line for c in CHATTER)], lines
    assert "\r" not in proc.stderr
    batches = [line for line in lines if ": batch " in line]
    assert [b.split(":")[1].strip() for b in batches] == ["p0, p1", "p2, p3", "p4"]
    assert all(b.startswith("gdp: ") and " of 3 done" in b for b in batches)
    assert lines[-3:] == [
        "gdp: 5 restored, 0 skipped (restored before), 0 without output",
        lines[-2],
        f"gdp: outputs in {setup / 'out'} (metrics.csv); TensorBoard: tensorboard --logdir "
        f"{setup / 'logs' / 'sr4' / 'version_0'}",
    ]
    assert lines[-2].startswith("gdp: mean consistency ")
    assert len(lines) == 3 + 3  # a few lines for five images: one per batch and the summary
    again = gdp(setup, "out")  # everything is done: all skipped, said once
    assert again.returncode == 0
    assert "gdp: 0 restored, 5 skipped (restored before), 0 without output" in again.stderr.splitlines()
    assert not [line for line in again.stderr.splitlines() if any(c in line for c in CHATTER)]


def test_verbose_shows_what_lightning_prints(setup):
    proc = gdp(setup, "verbose", "--verbose")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GPU available" in proc.stderr


def test_the_summary_counts_restored_skipped_and_failed_and_shows_means_per_scale(tmp_path):
    rows = [{"name": "a", "scale": 1.0, "failed": 0, "psnr": 30.0, "consistency": 2.0, "diverged": 0},
            {"name": "b", "scale": 1.0, "failed": 0, "psnr": 20.0, "consistency": 4.0, "diverged": 0},
            {"name": "c", "scale": 1.0, "failed": 1, "error": "diverged"},
            {"name": "d", "scale": None, "failed": 1, "error": "bad file"}]
    lines = run_summary(rows, {"1": {"psnr": 25.0, "consistency": 3.0, "diverged": 0.0}}, 1, tmp_path, None)
    assert lines == ["1 restored, 1 skipped (restored before), 2 without output", "mean psnr 25, consistency 3",
                     f"outputs in {tmp_path} (metrics.csv)"]
    sweep = run_summary(rows[:2], {"500": {"psnr": 24.0}, "2000": {"psnr": 26.5}}, 0, tmp_path, "logs/x")
    assert sweep[1:3] == ["mean psnr 24 (scale 500)", "mean psnr 26.5 (scale 2000)"]
    assert sweep[-1].endswith("TensorBoard: tensorboard --logdir logs/x")
