"""Outputs that must not change: the SHA-256 of every output of a fixed set of runs, against the values in
``tests/fixtures/output_hashes.json``.

The runs: ``gdp predict`` with every task config (``configs/task/*.yaml`` and ``paper/*.yaml``), a ``gdp test``
in synthetic mode with its metrics, a scale sweep, a ``gdp fit`` of a few steps with its exported weights (and a
predict with them); ``tests/test_ddp.py`` checks a two-process predict against the same file. A tiny random prior
(32x32) and 2 to 3 diffusion steps keep them fast; every restoration is kept (``on_divergence: keep``).

What is hashed: every image's decoded pixels (mode, size, bytes), the text of every record and table with the
run's temporary folder replaced by ``<root>``, and every tensor of ``.pt`` files; not ``run.json``/``run.yaml``
(times, versions, the command line).

Bit-identity holds for one build of torch on one CPU kernel set (``torch.backends.cpu.get_cpu_capability()``, and
whether the CPU computes bfloat16, which decides ``--model.precision auto``) with one intra-op thread, and for how
its kernels round (``kernel_fingerprint``), so the file holds one record per such platform; on a platform without
one the test is skipped with the reason. After a change that is meant to change outputs, remake this platform's
record: ``GDP_UPDATE_OUTPUT_HASHES=1 python -m pytest tests/test_unchanged_outputs.py tests/test_ddp.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from gdp_lightning.benchmark import quantize, skimage_crops
from gdp_lightning.cli import main
from gdp_lightning.data import write_image
from gdp_lightning.precision import auto_precision

from .conftest import REPO
from .helpers import KEEP, TINY, _tiny

pytestmark = pytest.mark.usefixtures("cli_argv", "one_thread")

HASHES = Path(__file__).parent / "fixtures" / "output_hashes.json"
UPDATE = os.environ.get("GDP_UPDATE_OUTPUT_HASHES") == "1"
TASKS = sorted((REPO / "configs" / "task").glob("*.yaml")) + sorted((REPO / "configs" / "task").glob("paper/*.yaml"))
QUIET = ["--model.progress", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu"]
NOT_HASHED = {"run.json", "run.yaml"}


@functools.lru_cache(maxsize=None)
def kernel_fingerprint() -> str:
    """The SHA-256 (first 16 hex digits) of what this machine's float32 kernels compute for a fixed little network
    written in plain torch (a grouped 9x9 blur, 3x3 and 1x1 convolutions, GroupNorm, SiLU, a linear layer, softmax
    attention, nearest upsampling at the tiny UNet's sizes) and of its gradients, on one thread; computed once per
    process. Two machines with the same torch and kernel set can still round differently (oneDNN and MKL pick code
    paths by more than the instruction set); this tells them apart. It depends on torch and the machine only, never
    on this project's code, so a change to the project cannot move a run onto another record."""
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights = [torch.randn(32, 3, 3, 3, generator=g) * 0.2, torch.randn(64, 32, 3, 3, generator=g) * 0.1,
                   torch.randn(192, 64, 1, generator=g) * 0.1, torch.randn(16, 64, generator=g),
                   torch.randn(1, 1, 9, 9, generator=g) / 81]
        for w in weights:
            w.requires_grad_(True)
        x = torch.randn(2, 3, 32, 32, generator=g)
        # a per-image blur as a grouped convolution, as the blur operators apply their (learned) kernels
        x = F.conv2d(F.pad(x, (4, 4, 4, 4), mode="reflect").reshape(1, 6, 40, 40),
                     weights[4].expand(6, 1, 9, 9), groups=6).reshape(2, 3, 32, 32)
        for w in weights[:2]:
            x = F.silu(F.group_norm(F.conv2d(x, w, padding=1), 8))
            x = F.avg_pool2d(x, 2)
        b, c, h, w = x.shape
        q, k, v = F.conv1d(x.reshape(b, c, h * w), weights[2]).chunk(3, dim=1)
        attn = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / c ** 0.5, dim=-1)
        x = x + torch.einsum("bts,bcs->bct", attn, v).reshape(b, c, h, w)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        out = F.linear(x.mean(dim=(2, 3)), weights[3]) + x.square().mean()
        grads = torch.autograd.grad(out.square().sum(), weights)
    finally:
        torch.set_num_threads(threads)
    digest = hashlib.sha256(out.detach().numpy().tobytes())
    for grad in grads:
        digest.update(grad.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def platform() -> Dict[str, str]:
    """What bit-identity depends on: torch, the CPU kernel set and how its kernels round, and the precision
    ``--model.precision auto`` picks on this CPU."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "auto_precision": auto_precision(torch.device("cpu"))[0], "kernels": kernel_fingerprint()}


def matches(recorded: Dict[str, str], here: Dict[str, str]) -> bool:
    """A record made on ``recorded`` holds here when every property it records is the same here (a record made
    before a property was recorded leaves it open)."""
    return all(here.get(key) == value for key, value in recorded.items())


def file_hash(path: Path, root: Path) -> str:
    if path.suffix == ".png":
        with Image.open(path) as im:
            pixels = np.asarray(im)
            head = f"{im.mode} {im.size}".encode()
        return hashlib.sha256(head + pixels.tobytes()).hexdigest()
    if path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=True)
        digest = hashlib.sha256()
        for key in sorted(state):
            value = state[key]
            digest.update(key.encode())
            if isinstance(value, torch.Tensor):
                digest.update(f"{value.dtype} {tuple(value.shape)}".encode())
                digest.update(value.detach().contiguous().view(torch.uint8).numpy().tobytes()
                              if value.numel() else b"")
            else:
                digest.update(repr(value).encode())
        return digest.hexdigest()
    text = path.read_text().replace(str(root), "<root>")
    return hashlib.sha256(text.encode()).hexdigest()


def folder_hashes(folder: Path, root: Path) -> Dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_hash(p, root) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in NOT_HASHED}


def records() -> List[Dict]:
    """The recorded runs, one record per platform: ``{"records": [{"platform": ..., "runs": ...}, ...]}``."""
    data = json.loads(HASHES.read_text()) if HASHES.is_file() else {}
    return data.get("records", [])


def expected(run: str) -> Dict[str, str]:
    """``run``'s recorded hashes on this platform; skips the test where this platform has no record."""
    if UPDATE:
        return {}
    here, recorded = platform(), records()
    for r in recorded:
        if matches(r["platform"], here):
            return r["runs"].get(run, {})
    pytest.skip(f"output hashes were recorded on {[r['platform'] for r in recorded]}, this is {here}")


def record(run: str, got: Dict[str, str]) -> None:
    """Store ``got`` as ``run``'s hashes on this platform (replacing the record that held here), leaving the
    other platforms' records as they are."""
    here, kept = platform(), records()
    mine = next((r for r in kept if matches(r["platform"], here)), None)
    if mine is None:
        mine = {"platform": here, "runs": {}}
        kept.append(mine)
    mine["platform"] = here
    mine["runs"][run] = got
    kept.sort(key=lambda r: json.dumps(r["platform"], sort_keys=True))
    HASHES.parent.mkdir(parents=True, exist_ok=True)
    HASHES.write_text(json.dumps({"records": kept}, indent=1, sort_keys=True) + "\n")


def check(run: str, folder: Path, root: Path) -> None:
    """The hashes of ``folder``'s outputs equal the recorded ones (or are recorded, when updating)."""
    got = folder_hashes(folder, root)
    assert got, f"{run}: no outputs in {folder}"
    if UPDATE:
        record(run, got)
        return
    want = expected(run)
    assert want, f"{run}: no recorded hashes in {HASHES}"
    changed = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert not changed, f"{run}: outputs changed: {changed}"


def test_a_record_holds_where_every_property_it_records_is_the_same():
    here = {"torch": "2.14.1", "cpu_capability": "AVX2", "auto_precision": "fp32", "kernels": "664539b4e1534a92"}
    assert matches(dict(here), here)
    assert matches({k: v for k, v in here.items() if k != "kernels"}, here)  # recorded before fingerprints
    assert not matches({**here, "kernels": "0" * 16}, here)  # same instruction set, other rounding
    assert not matches({**here, "cpu_capability": "AVX512"}, here)
    first = kernel_fingerprint()
    assert len(first) == 16 and first == kernel_fingerprint.__wrapped__()  # computed afresh: the same bits
    assert platform()["kernels"] == first


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny random prior and the inputs of every task."""
    root = tmp_path_factory.mktemp("unchanged")
    torch.save(_tiny().state_dict(), root / "tiny.pt")
    spec = {"name": "tiny", "unet": TINY, "diffusion": {"diffusion_steps": 1000}, "checkpoint": str(root / "tiny.pt")}
    (root / "tiny.yaml").write_text(yaml.safe_dump({"model": {"prior": spec, "sampler": KEEP}}))
    crops = skimage_crops(6, size=64, seed=11)
    for i in range(2):
        write_image(root / "low" / f"a{i}.png", quantize(F.avg_pool2d(crops[i : i + 1], 4))[0])  # 16x16
        write_image(root / "photos" / f"b{i}.png", quantize(crops[i + 2 : i + 3, :, :32, :40])[0])  # 32x40
        gray = (crops[i + 4].mean(0)[:32, :32] * 255).round().byte().numpy()
        (root / "gray").mkdir(exist_ok=True)
        Image.fromarray(gray, "L").save(root / "gray" / f"g{i}.png")
        write_image(root / "masked" / f"b{i}.png", quantize(crops[i + 2 : i + 3, :, :32, :40])[0])
        mask = (torch.rand(32, 40, generator=torch.Generator().manual_seed(i)) > 0.3).numpy().astype(np.uint8) * 255
        Image.fromarray(mask, "L").save(root / "masked" / f"b{i}_mask.png")
    scene = crops[0, :, :32, :32]
    for k, gain in enumerate((0.3, 0.7, 1.6)):
        write_image(root / "scenes" / "s0" / f"e{k}.png", quantize((scene * gain).clamp(0, 1)[None])[0])
    for i, crop in enumerate(skimage_crops(6, size=64, seed=5)):
        write_image(root / ("train" if i < 4 else "held") / f"t{i}.png", crop)
    return root


def inputs_for(config: Path, root: Path) -> List[str]:
    name = config.stem
    if name.startswith("hdr"):
        return ["--data.input_dir", str(root / "scenes")]
    if name.startswith("colorize"):
        return ["--data.input_dir", str(root / "gray")]
    if config == REPO / "configs" / "task" / "inpaint.yaml":
        return ["--data.input_dir", str(root / "masked")]
    if "sr4" in name:
        return ["--data.input_dir", str(root / "low")]
    return ["--data.input_dir", str(root / "photos")]


def run(root: Path, command: str, config: Path, out: Path, *options: str, steps: int = 3) -> None:
    argv = [command, "--config", str(root / "tiny.yaml"), "--config", str(config),
            "--model.sampler.steps", str(steps), "--model.sampler.on_divergence", "keep", *QUIET,
            "--trainer.logger.init_args.save_dir", str(out.parent / f"{out.name}_logs"),
            "--writer.output_dir", str(out), *options]
    assert main(argv) == 0


@pytest.mark.parametrize("config", TASKS, ids=lambda p: p.relative_to(REPO / "configs" / "task").as_posix())
def test_predict_outputs_are_unchanged(config, root, capfd):
    key = f"predict/{config.relative_to(REPO / 'configs' / 'task').as_posix()}"
    expected(key)
    out = root / key.replace("/", "_")
    run(root, "predict", config, out, *inputs_for(config, root), "--data.batch_size", "2")
    check(key, out, root)


#: run name: the command, the task config and the options (inputs), beside the task configs' predicts
RUNS = {
    "test/sr4": ("test", "sr4.yaml", ["--data.input_dir", "train", "--data.mode", "synthetic",
                                      "--data.batch_size", "2"]),
    "predict/sweep": ("predict", "deblur.yaml", ["--data.input_dir", "photos", "--model.sampler.guidance", "gradient",
                                                  "--model.sampler.scales", "[300, 3000]"]),
}


@pytest.mark.parametrize("key", sorted(RUNS))
def test_evaluation_and_sweep_outputs_are_unchanged(key, root, capfd):
    """A test in synthetic mode (metrics against the ground truth) and a scale sweep (grids, one output per scale)."""
    expected(key)
    command, config, options = RUNS[key]
    options = [str(root / o) if options[i - 1] == "--data.input_dir" else o for i, o in enumerate(options)]
    out = root / key.replace("/", "_")
    run(root, command, REPO / "configs" / "task" / config, out, *options)
    check(key, out, root)


def test_fit_export_and_its_restorations_are_unchanged(root, capfd):
    expected("fit/export")
    logs = root / "fit_logs"
    argv = ["fit", "--config", str(root / "tiny.yaml"), "--config", str(REPO / "configs" / "task" / "sr4.yaml"),
            "--config", str(REPO / "configs" / "finetune.yaml"), "--data.input_dir", str(root / "train"),
            "--data.val_dir", str(root / "held"), "--data.batch_size", "2", "--data.epoch_size", "4",
            "--trainer.max_steps", "3", "--model.sampler.steps", "2", "--model.training.val_samples", "2",
            "--model.training.val_sample_steps", "2", "--trainer.logger.init_args.save_dir", str(logs),
            "--trainer.logger.init_args.version", "run", *QUIET]
    assert main(argv) == 0
    exported = root / "fit_export" / "weights.pt"
    exported.parent.mkdir()
    assert main(["export", str(logs / "finetune" / "run" / "checkpoints" / "last.ckpt"), str(exported)]) == 0
    out = root / "fit_restored"
    run(root, "predict", REPO / "configs" / "task" / "sr4.yaml", out, "--data.input_dir", str(root / "low"),
        "--model.prior.checkpoint", str(exported))
    check("fit/export", exported.parent, root)
    check("fit/restored", out, root)
