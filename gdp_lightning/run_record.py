"""The run record: what decides a run's restorations (for resuming without mixing runs) and the checksums of the
weights it used (``run.json`` beside the outputs, see :class:`gdp_lightning.writer.RestorationWriter`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any, Dict, Optional

import lightning as L

from .sampling.settings import SamplerSettings

__all__ = ["sha256", "checkpoint_sha256", "NEUTRAL_SETTINGS", "HPARAM_SAMPLER_KEYS", "restoration_settings",
           "model_record", "run_hparams"]


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(path: Path) -> str:
    """:func:`sha256` of a checkpoint, read once per content (a resumed run's check and its record both need the
    hash of a file that may be gigabytes): cached by the file's path, size and modification time."""
    stat = Path(path).stat()
    return _cached_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256(Path(path))


#: settings of :meth:`GDPModule.describe` that do not change a restoration (a rerun may change them and resume)
NEUTRAL_SETTINGS = ("checkpoint", "weights", "prior.checkpoint", "prior.source", "prior.description", "prior.name",
                    "sampler.tile_batch", "sampler.on_divergence", "sampler.max_retries", "sampler.save_samples")
#: settings added later, at the value that restores as runs before them did (a record without them resumes)
EARLIER_DEFAULTS = {"sampler.num_samples": 1}


def restoration_settings(model: Dict[str, Any]) -> Dict[str, Any]:
    """The flattened settings of a model description that decide its restorations (the checkpoint by its
    SHA-256 when known, not by its path)."""
    flat: Dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", model)
    checkpoint = model.get("checkpoint")
    if "checkpoint_sha256" not in flat and checkpoint and Path(checkpoint).is_file():
        flat["checkpoint_sha256"] = checkpoint_sha256(Path(checkpoint))
    return {k: v for k, v in flat.items() if k not in NEUTRAL_SETTINGS and EARLIER_DEFAULTS.get(k, ...) != v}


def model_record(trainer: "L.Trainer", pl_module: "L.LightningModule") -> Dict[str, Any]:
    """What the run record says about the model: its settings (``describe()``) and the weights it really
    restores with, by SHA-256: the ``--ckpt_path`` checkpoint's when one is given, else the prior's."""
    describe = getattr(pl_module, "describe", None)
    model = describe() if describe is not None else {}
    ckpt_path = getattr(trainer, "ckpt_path", None)
    weights = Path(ckpt_path) if ckpt_path else (Path(model["checkpoint"]) if model.get("checkpoint") else None)
    if ckpt_path:
        model["weights"] = str(Path(ckpt_path).resolve())
    if weights is not None and weights.is_file():
        model["checkpoint_sha256"] = checkpoint_sha256(weights)
    return model


#: the sampler settings TensorBoard's HParams always show (the others where they differ from their defaults)
HPARAM_SAMPLER_KEYS = ("steps", "guidance", "scale", "scales", "num_samples")


def run_hparams(model: Dict[str, Any], data: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The settings that tell runs apart, flat and plain (TensorBoard's HParams): the task (operator, quality
    terms), the sampler (:data:`HPARAM_SAMPLER_KEYS` and every option that differs from its default), the prior
    (name, checkpoint hash, precision, seed) and the data settings; not the prior's architecture flags (the name
    and the hash say which prior it is)."""
    params: Dict[str, Any] = {"task/degradation": model.get("degradation"),
                              "task/quality": "; ".join(model.get("quality") or []) or "none",
                              "prior/name": (model.get("prior") or {}).get("name"),
                              "prior/checkpoint_sha256": str(model.get("checkpoint_sha256"))[:16],
                              "precision": model.get("precision"), "seed": model.get("seed")}
    defaults = dataclasses.asdict(SamplerSettings())
    params.update({f"sampler/{k}": v for k, v in (model.get("sampler") or {}).items()
                   if k in HPARAM_SAMPLER_KEYS or defaults.get(k, ...) != v})
    params.update({f"data/{k}": v for k, v in (data or {}).items()})
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
