"""Restore images from Python in one call, with the same components and configs as ``gdp predict``.

>>> from gdp_lightning import restore
>>> out = restore(y, task="sr4", prior="skimage64", checkpoint="../shared/priors/skimage64.pt", steps=50)

``task`` is the name of a config in ``configs/task`` (``"sr4"``, ``"paper/deblur"``), a YAML path, or a
:class:`~gdp_lightning.degradations.Degradation`; ``prior`` a preset name, a YAML path or a
:class:`~gdp_lightning.prior.PriorSpec`.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import yaml

from .degradations import Degradation
from .errors import ConfigError
from .precision import resolve_precision
from .prior import PRESET_CONFIGS, PRESETS, PriorSpec
from .sampling import GuidanceDivergedError
from .sampling.consistency import supports_consistency

__all__ = ["restore", "build_module", "CONFIG_DIR", "task_config", "prior_options"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

ImageLike = Union[torch.Tensor, str, Path]


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None


def task_config(task: Union[str, Path]) -> Path:
    """The YAML file of a task: a path, or a name in ``configs/task`` (``"sr4"``, ``"paper/sr4"``)."""
    path = Path(task)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        return path
    candidate = CONFIG_DIR / "task" / f"{task}.yaml"
    if not candidate.is_file():
        known = sorted(p.relative_to(CONFIG_DIR / "task").with_suffix("").as_posix()
                       for p in (CONFIG_DIR / "task").rglob("*.yaml"))
        raise ConfigError(f"unknown task {task!r}; known tasks: {known}, or give a YAML path or a Degradation")
    return candidate


def prior_options(prior: Union[str, Path]) -> Dict[str, Any]:
    """The ``model`` options of a prior's config (``prior``, often ``sampler``): a preset name (its file in
    ``configs/prior``) or a YAML path."""
    path = Path(prior)
    if path.suffix not in (".yaml", ".yml"):
        if str(prior) not in PRESETS:
            raise ConfigError(f"unknown prior {prior!r}; presets: {sorted(PRESETS)}, or give a YAML path")
        path = CONFIG_DIR.parent / PRESET_CONFIGS[str(prior)]
    return _read_yaml(path).get("model", {})


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_module(
    task: Union[str, Path, Degradation],
    prior: Union[str, Path, PriorSpec] = "skimage64",
    checkpoint: Optional[Union[str, Path]] = None,
    **model_options: Any,
):
    """A :class:`~gdp_lightning.module.GDPModule` from a task and a prior, parsed like ``gdp``'s configs.

    :param model_options: any ``model`` option: ``seed``, ``metrics``, ``precision``, ``sampler={"steps": 50}``,
        ``quality=[...]`` (dicts are merged into the task config's).
    """
    from jsonargparse import ArgumentParser

    from .module import GDPModule

    model: Dict[str, Any] = {}
    if isinstance(prior, PriorSpec):
        model["prior"] = dataclasses.asdict(prior)
    else:
        model = _merge(model, prior_options(prior))
    degradation: Optional[Degradation] = None
    if isinstance(task, Degradation):
        degradation = task
    else:
        model = _merge(model, _read_yaml(task_config(task)).get("model", {}))
    if checkpoint is not None:
        model.setdefault("prior", {})["checkpoint"] = str(checkpoint)
    quality = model_options.pop("quality", None)
    model = _merge(model, model_options)
    if degradation is not None:  # a placeholder for the parser; the object replaces it below
        model["degradation"] = {"class_path": "gdp_lightning.degradations.Identity"}
    if quality is not None:
        model.pop("quality", None)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(GDPModule, "model")
    try:
        module = parser.instantiate(parser.parse_object({"model": model})).model
    except Exception as e:  # noqa: BLE001 - jsonargparse reports config problems in several types
        raise ConfigError(f"invalid options for the task: {' '.join(str(e).split())}") from None
    module.set_task(degradation=degradation, quality=quality)
    return module


def _as_batch_tensor(image: ImageLike) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        from .data.images import read_image

        return read_image(image).pixels[None]
    t = torch.as_tensor(image, dtype=torch.float32)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ConfigError(f"an image must be (C, H, W) or (N, C, H, W) in [0, 1], got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t


def restore(
    images: Union[ImageLike, Sequence[ImageLike]],
    task: Union[str, Path, Degradation] = "sr4",
    prior: Union[str, Path, PriorSpec] = "skimage64",
    checkpoint: Optional[Union[str, Path]] = None,
    *,
    steps: Optional[Union[int, str]] = None,
    scale: Optional[float] = None,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    details: bool = False,
    module=None,
    **model_options: Any,
):
    """Restore degraded images with GDP.

    :param images: a tensor ``(N, C, H, W)`` or ``(C, H, W)`` in [0, 1] (one batch), or a list of tensors or
        image files (restored one by one; sizes may differ).
    :param task: task config name, YAML path or degradation.
    :param prior: preset name, YAML path or spec; ``checkpoint`` its weights (default: the config's).
    :param steps: diffusion steps (default: the task config's).
    :param scale: guidance scale (default: the task config's; required with a Degradation).
    :param seed: image i of the call gets the seed (seed, i).
    :param device: where to run (default: CUDA when available).
    :param details: also return the learned φ, loss terms and metrics per image.
    :param module: reuse a module from :func:`build_module` (skips building and loading).
    :return: restored images in [0, 1] (a tensor for a tensor, a list for a list); with ``details``, a list of
        dicts ``{"image", "std", "phi", "losses", "metrics", "diverged", "retries", "scale_used"}`` (``std``: the
        samples' per-pixel standard deviation with ``sampler={"num_samples": K}``, else ``None``; ``diverged``:
        ``None`` or ``{"step", "of"}``; a diverged image's ``image`` is ``None`` unless ``on_divergence`` is ``keep``).
        Without ``details``, an image that diverged raises :class:`~gdp_lightning.sampling.GuidanceDivergedError`.
    """
    if module is None:
        sampler: Dict[str, Any] = dict(model_options.pop("sampler", {}) or {})
        if steps is not None:
            sampler["steps"] = str(steps)
        if scale is not None:
            sampler["scale"] = float(scale)
        elif isinstance(task, Degradation) and (sampler.get("guidance", "auto") == "gradient"
                                                or supports_consistency(task) is not None):
            # the data-consistency rule (a known linear operator) needs no scale; GDP's gradient does
            raise ConfigError("give the guidance scale (scale=...) with a Degradation object that the "
                              "data-consistency rule does not cover (non-linear, blind, or guidance 'gradient')")
        module = build_module(task, prior, checkpoint, seed=seed, sampler=sampler, **model_options)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)  # first: setup resolves precision "auto" on the module's device
    if (getattr(module, "prepared_stage", None) != "predict"  # a reused module is set up once per device
            or module.precision_used != resolve_precision(module.precision_name, module.device)):
        module.setup("predict")
    module._start_restoring()
    single = isinstance(images, torch.Tensor)
    batches = [_as_batch_tensor(images)] if single else [_as_batch_tensor(im) for im in images]
    results: List[Dict[str, Any]] = []
    offset = 0
    for y in batches:
        n = y.shape[0]
        batch = {"y": y, "name": [str(offset + i) for i in range(n)], "index": torch.arange(offset, offset + n)}
        out = module.restore_batch(batch)
        for item in out.items:
            r = item.results[0]
            diverged = None if r.diverged_step is None else {"step": r.diverged_step, "of": r.steps}
            results.append({"image": r.image, "std": r.std, "phi": r.phi, "losses": r.losses, "metrics": r.metrics,
                            "diverged": diverged, "retries": r.retries,
                            "scale_used": r.scale_used if r.retries else r.scale})
        offset += n
    if details:
        return results
    failed = [f"{i} (step {r['diverged']['step']})" for i, r in enumerate(results) if r["image"] is None]
    if failed:
        raise GuidanceDivergedError(
            f"the restoration of image {', '.join(failed)} diverged: use a smaller scale, "
            "sampler={'on_divergence': 'retry'}, or details=True to keep the other images"
        )
    if single:
        return torch.stack([r["image"] for r in results])
    return [r["image"] for r in results]
