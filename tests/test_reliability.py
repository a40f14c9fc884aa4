"""Reliability of the ``gdp`` command against bad inputs and faults: inputs are never written, runs never mix, a
folder finishes whatever one of its inputs does, every option and file error is one line, and earlier outputs
stay intact. One test per case; the tiny random prior (32×32) and 3 diffusion steps where only the plumbing
matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gdp_lightning.benchmark import quantize
from gdp_lightning.cli import EXIT_FAILED, main
from gdp_lightning.data import write_image
from gdp_lightning.run_folder import LOCK_NAME

from .conftest import REPO
from .test_system import crops, tiny, tiny_prior  # noqa: F401 - the fixtures
from .test_system import error_line, gdp, read_rows, record, write_images

pytestmark = pytest.mark.usefixtures("cli_argv", "one_thread")


def restored(folder: Path) -> set:
    """The names of the restored images in ``folder`` (not the pictures of φ, ``<name>.kernel.png``)."""
    return {p.name[: -len(".png")] for p in folder.glob("*.png") if "." not in p.name[: -len(".png")]}


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def photos(tmp_path, crops) -> Path:
    """Four 32×32 photos (the tiny prior's size) in a folder of their own."""
    return write_images(tmp_path / "photos", quantize(F.avg_pool2d(crops, 2)), ["a", "b", "c", "d"])


@pytest.fixture()
def earlier(tmp_path, photos, tiny_prior, capfd) -> Path:
    """An output folder holding a finished deblurring run of ``photos``."""
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "deblur", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out))
    assert rc == 0, err
    return out


def _deblur(capfd, tmp_path, prior, photos, out, *options):
    return gdp(capfd, tmp_path / "logs", "predict", prior, "deblur", "--data.input_dir", str(photos),
               "--writer.output_dir", str(out), *options)


# ---------------------------------------------------------------------------------- inputs are never written
@pytest.mark.parametrize("where,relation", [(".", "is"), ("sub", "lies inside"), ("..", "contains")])
def test_an_output_folder_in_or_around_the_inputs_is_refused(where, relation, tiny_prior, photos, tmp_path, capfd):
    before = _snapshot(photos)
    out = (photos / where) if where != ".." else photos.parent
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, out)
    assert rc == 2
    line = error_line(err)
    assert f"{relation} the input folder {photos.resolve()}" in line and "--writer.output_dir" in line
    assert _snapshot(photos) == before and not (photos / "sub").exists()


def test_an_output_folder_that_is_a_file_or_cannot_be_made(tiny_prior, photos, tmp_path, capfd):
    afile = tmp_path / "afile"
    afile.write_text("kept")
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, afile)
    assert rc == 2 and "is a file, not a folder" in error_line(err) and afile.read_text() == "kept"
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, afile / "sub")
    assert rc == 2 and f"{afile / 'sub'}: cannot make the folder" in error_line(err)
    readonly = Path("/sys/gdp_lightning_test")  # sysfs: no user makes a folder there, root included
    if Path("/sys").is_dir() and not readonly.exists():
        rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, readonly)
        assert rc == 2 and "cannot make the folder" in error_line(err)


def test_a_run_stopped_before_it_logs_leaves_no_log_folder(earlier, tiny_prior, photos, tmp_path, capfd):
    """An error found in setup (a missing checkpoint) removes the version folder the run made, and the logger's
    folder it made for it, but never a folder that holds what a run logged: the next run takes the version."""
    logs = tmp_path / "logs"
    versions = sorted(p.relative_to(logs).as_posix() for p in logs.glob("*/version_*"))
    assert len(versions) == 1  # the earlier run's, with its logs
    kept = _snapshot(logs)
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out2", "--model.prior.checkpoint",
                      str(tmp_path / "gone.pt"))
    assert rc == 2 and "no such checkpoint file" in error_line(err)
    assert _snapshot(logs) == kept
    assert sorted(p.relative_to(logs).as_posix() for p in logs.glob("*/version_*")) == versions
    # a logger folder of its own (another name) goes with its version folder; the logs folder that held it stays
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out2", "--model.prior.checkpoint",
                      str(tmp_path / "gone.pt"), "--trainer.logger.init_args.name", "other")
    assert rc == 2 and not (logs / "other").exists() and logs.is_dir()


def test_remove_unused_log_folder_keeps_what_a_run_logged(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from gdp_lightning.run_folder import existing_ancestor, remove_unused_log_folder

    def run_folder(name: str, scalar: bool = False, extra: str = "") -> Path:
        folder = tmp_path / "logs" / name / "version_0"
        writer = SummaryWriter(str(folder))
        if scalar:
            writer.add_scalar("validate/psnr", 20.0, 0)
        writer.close()
        (folder / "config.yaml").write_text("model: {}\n")
        if extra:
            (folder / extra).write_bytes(b"x")
        return folder

    empty = run_folder("empty")
    assert existing_ancestor(empty / "a" / "b") == empty.absolute()
    assert remove_unused_log_folder(empty, up_to=tmp_path)
    assert not (tmp_path / "logs").exists() and tmp_path.is_dir()  # the empty parents below up_to went with it
    for folder in (run_folder("logged", scalar=True), run_folder("checkpoint", extra="last.ckpt")):
        assert not remove_unused_log_folder(folder, up_to=tmp_path) and (folder / "config.yaml").is_file()
    assert not remove_unused_log_folder(tmp_path / "never_made")


# ------------------------------------------------------------------------------------------ runs never mix
def test_a_second_run_into_a_folder_in_use_stops_naming_the_first(earlier, tiny_prior, photos, tmp_path, capfd):
    before = _snapshot(earlier)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from gdp_lightning.run_folder import FolderLock
            lock = FolderLock({str(earlier)!r}, ["gdp", "predict", "--model.sampler.scale", "24000"])
            lock.acquire()
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, earlier, "--writer.overwrite", "true")
    finally:
        holder.communicate("")
    assert rc == 2
    line = error_line(err)
    assert f"{earlier} is in use by another gdp run (process {holder.pid}" in line and "scale 24000" in line
    assert {k: v for k, v in _snapshot(earlier).items() if k != LOCK_NAME} == before
    # the holder ended (as a kill -9 would end it): the lock went with it
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, earlier)
    assert rc == 0, err
    assert not (earlier / LOCK_NAME).exists()


def test_half_written_files_of_a_killed_run_are_removed(earlier, tiny_prior, photos, tmp_path, capfd):
    leftovers = [earlier / ".a.phi.x1y2z3.tmp.pt", earlier / ".b.k9.tmp.png", earlier / ".metrics.q.tmp.csv"]
    for path in leftovers:
        path.write_bytes(b"")
    (earlier / "a.json").unlink()  # a was being written when the run was killed
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, earlier)
    assert rc == 0, err
    assert not any(p.exists() for p in leftovers)
    assert any(line.startswith("gdp: removed 3 half-written file(s)") for line in err.splitlines())
    assert sorted(p.name for p in earlier.iterdir() if p.name.startswith(".")) == []


def test_a_missing_checkpoint_into_an_earlier_folder_says_so(earlier, tiny_prior, photos, tmp_path, capfd):
    before = _snapshot(earlier)
    gone = tmp_path / "gone.pt"
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, earlier, "--model.prior.checkpoint", str(gone))
    assert rc == 2
    assert f"{gone}: no such checkpoint file" in error_line(err)
    assert _snapshot(earlier) == before


# ------------------------------------------------------------------------- a failed input never sinks the run
def test_twenty_inputs_with_three_bad_restore_the_other_seventeen(tiny_prior, crops, tmp_path, capfd):
    images = quantize(F.interpolate(crops, size=32, mode="area"))
    photos = write_images(tmp_path / "photos", images[torch.arange(20) % 4], [f"p{i:02d}" for i in range(20)])
    good = {f"p{i:02d}" for i in range(20)} - {"p03", "p07", "p11"}
    data = (photos / "p03.png").read_bytes()
    (photos / "p03.png").write_bytes(data[: len(data) // 2])  # truncated
    (photos / "p07.png").write_text("not an image")
    np.save(photos / "p11_kernel.npy", np.full((5, 5), np.nan))  # a kernel side file holding NaN
    before = _snapshot(photos)
    out = tmp_path / "out"
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, out, "--data.batch_size", "4")
    assert rc == EXIT_FAILED
    assert restored(out) == good
    reasons = {n: record(out, n)["error"] for n in ("p03", "p07", "p11")}
    assert "p03.png: cannot read the image" in reasons["p03"] and "p07.png: cannot read" in reasons["p07"]
    assert "p11_kernel.npy: the blur kernel holds NaN or infinite values" in reasons["p11"]
    assert all(record(out, n)["failed"] for n in reasons)
    rows = {r["name"]: r for r in read_rows(out / "metrics.csv")}
    assert len(rows) == 20 and {n for n, r in rows.items() if r["failed"] == "1"} == set(reasons)
    summary = [line for line in err.splitlines() if line.startswith("gdp: 3 input(s) have no output")]
    assert len(summary) == 1 and all(n in summary[0] for n in reasons) and str(out) in summary[0]
    assert sum(line.startswith("gdp: warning:") and "left out and recorded as failed" in line
               for line in err.splitlines()) == 3
    assert _snapshot(photos) == before
    # fixed, then rerun: only the three are restored
    write_image(photos / "p03.png", images[3])
    write_image(photos / "p07.png", images[3])
    (photos / "p11_kernel.npy").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("p*.png")}
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, out, "--data.batch_size", "4")
    assert rc == 0, err
    assert restored(out) == good | set(reasons)
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.glob("p*.png") if p.name in stamps)
    assert all(r["failed"] == "0" for r in read_rows(out / "metrics.csv"))


def test_an_input_replaced_during_the_run_fails_alone(tiny_prior, photos, tmp_path, capfd, monkeypatch):
    from gdp_lightning.data import module as data_module

    real = data_module.RestorationBatches._real

    def replaced(self, item, size):  # b's file changes size after the check, before it is read
        return real(self, item, (size[0] + 1, size[1]) if item.name == "b" else size)

    monkeypatch.setattr(data_module.RestorationBatches, "_real", replaced)
    out = tmp_path / "out"
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, out, "--data.batch_size", "2")
    assert rc == EXIT_FAILED
    assert restored(out) == {"a", "c", "d"}
    assert "was the file replaced during the run?" in record(out, "b")["error"]


def test_an_input_over_max_pixels_is_left_out(tiny_prior, photos, tmp_path, capfd, crops):
    write_image(photos / "big.png", quantize(F.interpolate(crops[:1], size=(40, 48), mode="area"))[0])
    out = tmp_path / "out"
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, out, "--data.max_pixels", str(32 * 32))
    assert rc == EXIT_FAILED
    assert "big.png: restores to 48x40 = 0.0 megapixels, more than --data.max_pixels 1024" in record(out, "big")["error"]
    assert restored(out) == {"a", "b", "c", "d"}


def test_a_batch_that_would_not_fit_in_memory_is_announced(tiny_prior, photos, tmp_path, capfd, monkeypatch):
    from gdp_lightning import module

    monkeypatch.setattr(module, "available_bytes", lambda device=None: 2**20)  # 1 MiB free
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out", "--data.batch_size", "4")
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("gdp: warning:")]
    assert len(warnings) == 1 and "needs about" in warnings[0] and "1 MiB is free" in warnings[0]
    assert "--data.max_pixels" in warnings[0]


def test_a_long_restoration_says_how_long_it_will_take(capsys):
    from gdp_lightning.module import GDPModule, StepContext
    from gdp_lightning.sampling import StepInfo

    info = StepInfo(1, 20, 999, None, None, {}, None)
    context = StepContext("predict", 0, ["wide"], [0], 1.0, False)
    GDPModule._announce_duration(30.0, info, context, (10, 10000))
    GDPModule._announce_duration(5.0, info, context, (10, 100))  # 100 s in all: nothing to say
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["gdp: wide (10000x10): step 1 of 20 took 30 s; this restoration needs about 10 min"]


_FAULTS = """
import resource, sys, torch
from gdp_lightning.resources import keep_freed_memory
print(keep_freed_memory(default=sys.argv[1] == "keep"))
for _ in range(10):  # a 64 MiB activation written and freed at every step; the heap settles in a few
    torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator thresholds")
def test_large_freed_blocks_are_reused_instead_of_faulted_in_again():
    def faults(mode, **env):  # the three variables unset unless given
        env = {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None, "GDP_KEEP_FREED_MEMORY": None, **env}
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                             env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
        applied, count = out.stdout.split()
        return applied, int(count)

    pages = (64 << 20) // 4096
    applied, default = faults("default")
    assert applied == "False" and default >= 9 * pages  # glibc maps and unmaps each block: every step faults again
    for mode, env in (("keep", None), ("default", "1")):  # asked for by the caller, or by the environment
        applied, kept = faults(mode, GDP_KEEP_FREED_MEMORY=env)
        assert applied == "True" and kept < pages // 4  # the settled heap is reused
    applied, off = faults("keep", GDP_KEEP_FREED_MEMORY="0")
    assert applied == "False" and off >= 9 * pages
    applied, chosen = faults("keep", MALLOC_MMAP_THRESHOLD_="33554432")  # the user's own glibc setting wins
    assert applied == "False" and chosen >= 9 * pages


# ------------------------------------------------------------------------------- masks that observe nothing
def test_masks_that_observe_nothing_or_are_not_black_and_white(tiny_prior, photos, tmp_path, capfd):
    np.save(photos / "a_mask.npy", np.zeros((32, 32)))  # all missing
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(photos / "b_mask.png")  # pure red: 30 % gray, below half
    gray = np.full((32, 32), 255, np.uint8)
    gray[:8] = 100
    Image.fromarray(gray).save(photos / "c_mask.png")  # a quarter in between
    out = tmp_path / "out"
    rc, err = gdp(capfd, tmp_path / "logs", "predict", tiny_prior, "inpaint", "--data.input_dir", str(photos),
                  "--writer.output_dir", str(out), "--data.batch_size", "4")
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("gdp: warning:")]
    assert any("a_mask.npy: the mask observes no pixel" in w for w in warnings)
    assert any("b_mask.png: the mask is not black and white (1024 of 1024" in w and "at least half white" in w
               for w in warnings)
    assert any("c_mask.png: the mask is not black and white (256 of 1024" in w for w in warnings)
    assert any(w.startswith("gdp: warning: a, b: the mask observes no pixel") and "no consistency score" in w
               for w in warnings)
    metrics = {n: record(out, n)["results"][0]["metrics"] for n in "abcd"}
    assert "consistency" not in metrics["a"] and "consistency" not in metrics["b"]
    assert metrics["c"]["consistency"] >= 0 and metrics["d"]["consistency"] >= 0


# --------------------------------------------------------------------------------- every error is one line
@pytest.mark.parametrize("steps,expected", [("-5", "steps -5: give a step count >= 2"), ("0", "steps 0: give a step"),
                                            ("ten", "steps 'ten': give a step count"), ("1", "steps 1: give a step"),
                                            ("5000", "cannot take 5000 steps from a section of 1000")])
def test_bad_step_counts(steps, expected, earlier, tiny_prior, photos, tmp_path, capfd):
    before = _snapshot(earlier)
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, earlier, "--model.sampler.steps", steps)
    assert rc == 2
    line = error_line(err)
    assert "--model.sampler.steps" in line and expected in line
    assert _snapshot(earlier) == before


def test_step_counts_as_numbers_in_yaml(tiny_prior, photos, tmp_path, capfd):
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  sampler:\n    steps: 4\n")
    out = tmp_path / "out"
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, out, "--config", str(config))
    assert rc == 0, err
    assert json.loads((out / "run.json").read_text())["model"]["sampler"]["steps"] == "4"


def test_scales(earlier, tiny_prior, photos, tmp_path, capfd):
    before = _snapshot(earlier)
    for option, value in (("--model.sampler.scale", "-1"), ("--model.sampler.scales", "[100, -5]")):
        rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, earlier, option, value, "--model.sampler.guidance",
                          "gradient", "--writer.overwrite", "true")
        assert rc == 2
        assert f"{option} {value.strip('[]').split(', ')[-1]}: give a scale >= 0" in error_line(err)
    assert _snapshot(earlier) == before
    out = tmp_path / "zero"  # 0: no data guidance, the prior's own samples
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, out, "--model.sampler.scale", "0",
                      "--model.sampler.guidance", "gradient")
    assert rc == 0, err


def test_a_binary_config_file(tiny_prior, photos, tmp_path, capfd):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out", "--config", str(binary))
    assert rc == 2
    assert f"--config {binary}: not a text file" in error_line(err)


def test_checkpoint_messages_say_what_the_file_is(tiny_prior, photos, tmp_path, capfd):
    png = photos / "a.png"
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out", "--model.prior.checkpoint", str(png))
    assert rc == 2 and f"{png}: not a PyTorch checkpoint (it is a PNG image)" in error_line(err)
    assert main(["export", str(png), str(tmp_path / "x.pt")]) == 2
    assert f"{png}: not a PyTorch checkpoint (it is a PNG image)" in error_line(capfd.readouterr().err)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "args": Path("x")}, pickled)  # a pickled object: safe loading refuses it
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out", "--model.prior.checkpoint", str(pickled))
    assert rc == 2
    line = error_line(err)
    assert "holds pickled Python objects" in line and "--model.trust_checkpoint true" in line
    assert "--model.prior.trust_checkpoint" not in line
    assert main(["export", str(pickled), str(tmp_path / "x.pt")]) == 2
    assert "gdp export --trust_checkpoint" in error_line(capfd.readouterr().err)


def test_kernel_and_mask_files_holding_nan(tiny_prior, photos, tmp_path, capfd):
    kernel = tmp_path / "k.txt"
    kernel.write_text("0 1 0\n1 nan 1\n0 1 0\n")
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out",
                      "--model.degradation.init_args.kernel", str(kernel))
    assert rc == 2 and f"{kernel}: the blur kernel holds NaN or infinite values" in error_line(err)


def test_formats_that_are_not_inputs_are_named(tiny_prior, photos, tmp_path, capfd):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(photos / "anim.gif", save_all=True, append_images=frames[1:])
    rc, err = _deblur(capfd, tmp_path, tiny_prior, photos, tmp_path / "out")
    assert rc == 0, err
    assert any(line.startswith("gdp: warning:") and "anim.gif" in line and "convert them to PNG" in line
               for line in err.splitlines())


# ----------------------------------------------------------------------------------------- where things go
def test_logs_follow_the_default_root_dir(tiny_prior, photos, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    rc = main(["predict", *tiny_prior, "--config", str(REPO / "configs/task/deblur.yaml"), "--model.sampler.steps",
               "3", "--model.progress", "false", "--trainer.enable_progress_bar", "false",
               "--data.input_dir", str(photos), "--trainer.default_root_dir", str(root)])
    assert rc == 0, capfd.readouterr().err
    assert sorted(p.name for p in (root / "logs" / "deblur").iterdir()) == ["outputs", "version_0"]
    assert restored(root / "logs" / "deblur" / "outputs") == {"a", "b", "c", "d"}
    assert not (tmp_path / "logs").exists()


def test_help_is_for_people(capfd):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    short = capfd.readouterr().out
    assert short.startswith("usage: gdp predict [--config FILE] [options]")
    assert "--model.sampler.steps" in short and "--data.input_dir" in short and "--writer.output_dir" in short
    assert "--trainer.devices" not in short and "--model.training.lr" not in short and "--help-all" in short
    assert "Restore the images of --data.input_dir" in short
    with pytest.raises(SystemExit):
        main(["predict", "--help-all"])
    full = capfd.readouterr().out
    assert "--trainer.devices" in full and len(full.splitlines()) > len(short.splitlines()) + 300
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capfd.readouterr().out
    assert "{fit,validate,test,predict,export}" in top
    assert "Fine-tune the prior on clean images of a new domain" in top



def test_sigterm_stops_a_long_restoration_and_a_rerun_resumes(tiny, photos, tmp_path, capfd):
    """Lightning's predict loop never looks at SIGTERM: the sampler's step does. The finished outputs stay, the
    folder is unlocked, and a rerun restores the rest."""
    import signal
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "gdp_lightning", "predict", "--config", str(tiny["plain"][0]), "--config",
               str(REPO / "configs/task/deblur.yaml"), "--model.sampler.steps", "60", "--data.input_dir",
               str(photos), "--writer.output_dir", str(out), "--trainer.logger.init_args.save_dir",
               str(tmp_path / "logs"), "--model.progress", "false", "--trainer.enable_progress_bar", "false"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "a.json").exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert (out / "a.json").exists(), process.stderr.read() if process.poll() is not None else "too slow"
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err
    assert time.monotonic() - stopped < 30  # within a step, not at the end of the image
    assert err.strip().splitlines()[-1] == "gdp: stopped by SIGTERM; the finished outputs are kept and a rerun resumes"
    done = restored(out)
    assert done == {"a"} and not (out / LOCK_NAME).exists()  # b was being restored: stopped within a step
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    first = (out / "a.png").read_bytes()
    rc, err = _deblur(capfd, tmp_path, ["--config", str(tiny["plain"][0])], photos, out,
                      "--model.sampler.steps", "60", "--model.sampler.scale", "8000")
    assert rc == 0, err
    assert restored(out) == {"a", "b", "c", "d"} and (out / "a.png").read_bytes() == first
