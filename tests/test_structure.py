"""The package's layers and its pure-torch restorer.

Below ``module.py`` nothing imports Lightning (``sampling``, ``degradations``, ``diffusion``, ``prior``, ``data``'s
readers, ``metrics``, ...); ``diffusion`` does not import ``prior``. Checked on the source (every import statement
of every file), and by importing the restorer in a fresh interpreter in which Lightning cannot be imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Set

import pytest
import torch

from gdp_lightning.degradations import Blur, Compose, HDR, Inpainting, SuperResolution, gaussian_kernel
from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.metrics import ImageMetrics
from gdp_lightning.prior import PriorSpec
from gdp_lightning.sampling import ClassLabels, Restorer, SamplerSettings

from .conftest import REPO
from .helpers import KEEP, TINY, _tiny

PACKAGE = REPO / "gdp_lightning"
#: the Lightning layer: the modules, the data module, the callbacks, the command and the Python API
LIGHTNING_LAYER = {"module.py", "finetune/module.py", "finetune/report.py", "finetune/__init__.py", "cli.py",
                   "writer.py", "trajectory.py", "callbacks.py", "run_record.py", "api.py", "__main__.py", "data/module.py", "data/__init__.py"}


def imports(path: Path) -> Set[str]:
    """The absolute names ``path`` imports (relative imports resolved against the package)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    package = parts[:-1] if path.name != "__init__.py" else parts[:-1]
    names = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ((node.module,) if node.module else ()))
                names |= {module} | {f"{module}.{a.name}" for a in node.names}
            else:
                names.add(node.module)
    return names


def test_no_module_below_the_lightning_layer_imports_lightning():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() in LIGHTNING_LAYER:
            continue
        if any(n.split(".")[0] in ("lightning", "pytorch_lightning") for n in imports(path)):
            offenders.append(path.relative_to(PACKAGE).as_posix())
    assert offenders == []


def test_diffusion_does_not_import_the_prior():
    for path in sorted((PACKAGE / "diffusion").rglob("*.py")):
        assert not any(n.startswith("gdp_lightning.prior") for n in imports(path)), path


def test_the_restorer_runs_without_lightning(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['lightning'] = None\n"  # any import of Lightning fails
        "import torch\n"
        "from gdp_lightning.sampling import Restorer, SamplerSettings\n"
        "from gdp_lightning.degradations import SuperResolution\n"
        "from gdp_lightning.diffusion import GaussianDiffusion\n"
        "from gdp_lightning.prior import PriorSpec\n"
        f"spec = PriorSpec.from_dict({{'unet': {TINY!r}}})\n"
        "unet = spec.build_unet().eval().requires_grad_(False)\n"
        "settings = SamplerSettings(steps='2', on_divergence='keep')\n"
        "restorer = Restorer(unet, GaussianDiffusion.from_prior(spec, respacing='2'), SuperResolution(2), settings)\n"
        "out = restorer.restore({'y': torch.rand(1, 3, 16, 16), 'name': ['a'], 'index': torch.tensor([0])})\n"
        "print(tuple(out.items[0].results[0].image.shape))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(3, 32, 32)"


def test_the_restorer_gives_typed_results_per_image_and_scale():
    torch.manual_seed(0)
    spec = PriorSpec.from_dict({"unet": TINY})
    unet = _tiny().requires_grad_(False)
    settings = SamplerSettings(steps="2", scales=[100.0, 400.0], guidance="gradient", **KEEP)
    restorer = Restorer(unet, GaussianDiffusion.from_prior(spec, respacing="2"), SuperResolution(2), settings,
                        seed=3, metrics=ImageMetrics(["psnr", "consistency"], groups=["/s100", "/s400"]))
    clean = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = {"y": torch.nn.functional.avg_pool2d(clean, 2), "x": clean, "name": ["a", "b"],
             "index": torch.tensor([4, 7]), "mode": ["RGB", "L"]}
    out = restorer.restore(batch, stage="test")
    assert out.stage == "test" and out.failed == []
    assert [(i.name, i.index, i.seed) for i in out.items] == [
        ("a", 4, restorer.seeds_for([4])[0]), ("b", 7, restorer.seeds_for([7])[0])]
    assert [i.gray for i in out.items] == [False, True]
    for item in out.items:
        assert [r.scale for r in item.results] == [100.0, 400.0]
        for r in item.results:
            assert r.image.shape == (3, 32, 32) and r.steps == 2
            assert set(r.metrics) == {"psnr", "consistency"}
            assert r.diverged_step is not None  # a random prior explains nothing; kept all the same
    # an image's result depends on (seed, index) only: alone in its batch it is the same but for float rounding
    alone = restorer.restore({k: (v[1:] if k in ("y", "x", "index") else v[1:]) for k, v in batch.items()})
    difference = (alone.items[0].results[0].image - out.items[1].results[0].image).abs().max()
    assert float(difference) < 1e-3  # other batch shapes: float arithmetic only


def test_an_input_the_operator_cannot_take_fails_that_batch_alone():
    spec = PriorSpec.from_dict({"unet": TINY})
    restorer = Restorer(_tiny(), GaussianDiffusion.from_prior(spec, respacing="2"), SuperResolution(2),
                        SamplerSettings(steps="2", **KEEP))
    batch = {"y": torch.rand(1, 3, 16, 16), "name": ["a"], "index": torch.tensor([0]), "path": ["a.png"],
             "mask": torch.ones(1, 1, 16, 16)}
    out = restorer.restore_or_fail(batch)
    assert out.items == [] and [(f.name, f.path) for f in out.failed] == [("a", "a.png")]
    assert "takes no mask" in out.failed[0].error


def test_class_labels_are_checked_and_seeded():
    labels = ClassLabels(10, random_labels=True)
    first = labels.for_images(["a", "b"], [5, 6])
    assert first.tolist() == labels.for_images(["x", "y"], [5, 6]).tolist()  # from the seed only
    assert ClassLabels(10, class_label=3).for_samples([1, 2]).tolist() == [3, 3]
    assert ClassLabels(None).for_images(["a"], [1]) is None
    for bad in ({"class_label": 10}, {"class_label": 1, "random_labels": True}):
        try:
            ClassLabels(10, **bad)
        except Exception as e:  # noqa: BLE001
            assert type(e).__name__ == "ConfigError"
        else:
            raise AssertionError(bad)


# ------------------------------------------------------------------ per-batch inputs of the degradations
def test_every_operator_declares_the_inputs_set_inputs_takes():
    assert Inpainting().takes("mask") and not Inpainting().takes("kernel")
    assert Blur(gaussian_kernel(5, 1.0)).takes("kernel")
    assert HDR(3).takes("f") and HDR(3).takes("M")
    assert not SuperResolution(2).takes("mask") and SuperResolution(2).inputs == ()
    try:
        SuperResolution(2).set_inputs(mask=torch.ones(4, 4))
    except ValueError as e:
        assert "takes no 'mask'" in str(e)
    else:
        raise AssertionError("an input the operator does not take is an error")


def test_a_composition_gives_each_input_to_the_part_that_takes_it():
    blur, mask = Blur(gaussian_kernel(5, 1.0), padding="reflect"), Inpainting()
    op = Compose([blur, mask])
    assert op.takes("mask") and op.takes("kernel") and not op.takes("f")
    m = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    k = torch.rand(5, 5, generator=torch.Generator().manual_seed(1))
    op.set_inputs(mask=m, kernel=[k, None])
    assert torch.equal(mask.mask, m)
    op.init_parameters(2, 8, 8)
    kernels = blur.kernel()
    assert kernels.shape == (2, 1, 5, 5) and torch.allclose(kernels[0, 0], k / k.sum())
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(op(x), op(x) * m)  # masked after the blur


def test_kernel_inputs_fall_back_to_the_configured_kernel_and_must_match_in_size():
    configured = gaussian_kernel(5, 1.0)
    blur = Blur(configured)
    blur.set_inputs(kernel=[None, torch.ones(5, 5)])
    blur.init_parameters(2, 16, 16)
    assert torch.allclose(blur.kernel()[0, 0], configured / configured.sum())
    assert torch.allclose(blur.kernel()[1, 0], torch.full((5, 5), 1 / 25))
    blur.set_inputs(kernel=None)  # the next batch has no kernel files: the configured kernel again
    blur.init_parameters(1, 16, 16)
    assert torch.allclose(blur.kernel()[0, 0], configured / configured.sum())
    try:
        blur.set_inputs(kernel=[torch.ones(3, 3), torch.ones(5, 5)])
    except ValueError as e:
        assert "differ in size" in str(e)
    else:
        raise AssertionError("kernels of different sizes in one batch")


# ------------------------------------------------------------------ posterior samples (num_samples)
def _sampling_restorer(**settings) -> Restorer:
    spec = PriorSpec.from_dict({"unet": TINY})
    options = SamplerSettings(steps="3", guidance="gradient", scale=300.0, save_samples=True, **KEEP, **settings)
    return Restorer(_tiny().requires_grad_(False), GaussianDiffusion.from_prior(spec, respacing="3"),
                    Blur(gaussian_kernel(5, 1.0), padding="reflect"), options)


def _observations() -> dict:
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    return {"y": y, "name": ["a", "b"], "index": torch.tensor([0, 1])}


def test_the_mean_of_identical_seed_samples_is_the_sample_and_their_std_is_zero(monkeypatch):
    import gdp_lightning.sampling.restorer as restorer_module

    monkeypatch.setattr(restorer_module, "sample_seed", lambda seed, sample: seed)  # every sample the same draw
    out = _sampling_restorer(num_samples=4).restore(_observations())
    for item in out.items:
        result = item.results[0]
        assert result.samples.shape == (4, 3, 32, 32)
        assert all(torch.equal(s, result.samples[0]) for s in result.samples)
        assert torch.equal(result.image, result.samples[0])
        assert torch.count_nonzero(result.std) == 0


def test_posterior_samples_give_their_mean_and_standard_deviation():
    out = _sampling_restorer(num_samples=3).restore(_observations())
    for item in out.items:
        result = item.results[0]
        assert torch.allclose(result.image, result.samples.mean(0), atol=1e-6)
        assert torch.allclose(result.std, result.samples.std(0, unbiased=False), atol=1e-6)
        assert float(result.std.max()) > 0.01  # other seeds: other samples
    single = _sampling_restorer(num_samples=1).restore(_observations())
    assert single.items[0].results[0].std is None
    with pytest.raises(Exception, match="num_samples must be >= 1"):
        SamplerSettings(num_samples=0)
