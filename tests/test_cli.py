"""Entry points: the `gdp` console script, the prior sampling tool, the prior configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import gdp_lightning
from gdp_lightning.prior import PriorSpec, get_preset, preset_names
from gdp_lightning.sample_prior import main as sample_main

REPO = Path(__file__).resolve().parents[1]


def _gdp() -> str:
    exe = Path(sys.executable).with_name("gdp")
    assert exe.is_file(), f"the gdp console script is not installed beside {sys.executable}"
    return str(exe)


def test_gdp_version_answers_without_loading_torch_or_lightning():
    out = subprocess.run([_gdp(), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"gdp {gdp_lightning.__version__}"
    check = ("import sys; from gdp_lightning.console import main; rc = main(['--version']); "
             "print(rc, sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"gdp {gdp_lightning.__version__}", "0 []"]


def test_gdp_help(capsys, cli_argv):
    from gdp_lightning.console import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gdp") and "GDP" in out and "{fit,validate,test,predict,export}" in out


def test_sample_prior_writes_a_grid(tmp_path, skimage64_checkpoint, capsys):
    out = tmp_path / "grid.png"
    rc = sample_main(
        ["--preset", "skimage64", "--checkpoint", str(skimage64_checkpoint), "--steps", "3", "--num", "2",
         "--device", "cpu", "--out", str(out)]
    )
    assert rc == 0
    assert Image.open(out).size == (2 * 64 + 3 * 2, 64 + 2 * 2)  # torchvision grid: 2 columns, padding 2
    assert "wrote 2 samples" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_sample_prior_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = sample_main(["--preset", "skimage64", "--checkpoint", str(bad), "--device", "cpu", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "bad.pt" in err and "\n" not in err
    assert not (tmp_path / "x.png").exists()


CONFIGS = sorted((REPO / "configs" / "prior").glob("*.yaml"))


def test_every_preset_has_a_config():
    assert {PriorSpec.from_yaml(p).name for p in CONFIGS} == set(preset_names())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_prior_config_equals_its_preset(path):
    spec = PriorSpec.from_yaml(path)
    preset = get_preset(spec.name)
    assert spec.unet == preset.unet and spec.diffusion == preset.diffusion
    assert Path(spec.checkpoint).name == preset.checkpoint


def test_bad_prior_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  prior:\n    unet:\n      image_size: 64\n      num_chanels: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not a valid prior config: unknown UNet flag"):
        PriorSpec.from_yaml(path)
