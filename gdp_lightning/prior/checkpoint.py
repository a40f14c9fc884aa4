"""Reading, checking and writing prior checkpoints.

Accepted inputs: plain guided-diffusion state dicts (float32 or float16 values,
e.g. ``256x256_diffusion_uncond.pt``, DPS's ``ffhq_10m.pt``) and this project's
Lightning checkpoints (the UNet's weights are found by their key suffixes; EMA
weights are preferred when both are present). Files are read with
``torch.load(weights_only=True)``; arbitrary pickles load only with
``trust_checkpoint=True``.

Every failure raises :class:`CheckpointError` with a one-line message naming the
file and what to do.
"""

from __future__ import annotations

import functools
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import GDPError
from ..io import atomic_path
from .adapters import merge_low_rank
from .presets import PRESETS, get_preset
from .spec import PriorSpec
from .unet import UNetModel

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "extract_unet_state_dict",
    "load_unet_weights",
    "load_prior",
    "load_prior_weights",
    "matching_presets",
    "export_state_dict",
    "save_state_dict",
    "export_checkpoint",
    "blend_state_dicts",
]

PathLike = Union[str, os.PathLike]

_ANCHOR = "time_embed.0.weight"  # the first key of every guided-diffusion UNet
_MAX_LISTED = 4


class CheckpointError(GDPError, ValueError):
    """A checkpoint could not be read or does not fit the model (one-line message)."""


def _file_kind(path: Path) -> Optional[str]:
    """What a file that is not a PyTorch checkpoint is, from its first bytes (``None``: it may be one)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip format, or a legacy pickle
        return None
    kinds = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
             (b"\x1f\x8b", "a gzip archive"), (b"\x93NUMPY", "a NumPy array file"), (b"\x89HDF", "an HDF5 file"))
    for magic, kind in kinds:
        if head.startswith(magic):
            return kind
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file (load it with safetensors and torch.save its state dict)"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "a web page (a failed download?)"
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "a text file"
    return "not a PyTorch file"


def _missing(path: PathLike) -> str:
    """The start of the message of a missing checkpoint: the path, and the folder a relative one was looked for in."""
    where = "" if Path(path).is_absolute() else f" (relative to the working folder {Path.cwd()})"
    return f"{path}: no such checkpoint file{where}"


def read_checkpoint(path: PathLike, *, trust_checkpoint: bool = False,
                    trust_option: str = "trust_checkpoint=True (gdp: --model.trust_checkpoint true)",
                    expected: str = "the .pt file of the weights") -> Any:
    """``torch.load`` the file on the CPU, safely unless ``trust_checkpoint``; clear errors otherwise.
    ``trust_option``: how the caller's user allows pickles (named in the message when safe loading refuses);
    ``expected``: the file to give instead of one that is not a PyTorch checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{_missing(path)}; check the path or give an absolute one")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file; give the path of a .pt checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty; download it again")
    kind = _file_kind(path)
    if kind is not None:
        kind = kind if kind.startswith("not ") else f"it is {kind}"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({kind}); give {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        if trust_checkpoint:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
        raise CheckpointError(
            f"{path}: holds pickled Python objects that safe loading (torch.load weights_only=True) refuses "
            f"({_first_line(e)}); if you trust the file's source, allow them with {trust_option}, or re-save its "
            "state dict with torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, probably truncated or corrupt ({_first_line(e)}); "
            "download or copy it again"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line[:200]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_unet_state_dict(obj: Any, *, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The UNet's state dict out of a plain state dict or a Lightning checkpoint.

    In a Lightning checkpoint (or any dict with a ``state_dict`` entry) the UNet
    is found by its keys' common suffixes; where several copies are present
    (e.g. ``prior.unet.`` and ``ema_unet.``), the one whose prefix mentions
    ``ema`` is taken. Low-rank adapters (of ``gdp fit --model.training.lora_rank``) are merged into the weights
    they adapt.
    """
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if _is_state_dict(obj):
        obj = merge_low_rank(obj)
    if not _is_state_dict(obj):
        if isinstance(obj, Mapping):
            keys = ", ".join(map(str, list(obj)[:6]))
            raise CheckpointError(
                f"{source}: holds a dict with keys [{keys}] but no tensors of a state dict; "
                "save the UNet with torch.save(model.state_dict())"
            )
        raise CheckpointError(
            f"{source}: holds a {type(obj).__name__}, not a state dict; save the UNet with torch.save(model.state_dict())"
        )
    prefixes = sorted({k[: -len(_ANCHOR)] for k in obj if k.endswith(_ANCHOR)})
    if not prefixes or "" in prefixes:
        return dict(obj)
    ema = [p for p in prefixes if "ema" in p.lower()]
    prefix = (ema or prefixes)[0]
    return {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}


@functools.lru_cache(maxsize=None)
def _preset_shapes(name: str) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = get_preset(name).build_unet()
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def matching_presets(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the presets whose keys and shapes equal the state dict's."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    return [name for name in sorted(PRESETS) if dict(_preset_shapes(name)) == shapes]


def _guess_flags(state_dict: Mapping[str, torch.Tensor]) -> str:
    parts = []
    w = state_dict.get("input_blocks.0.0.weight")
    if w is not None and w.ndim == 4:
        parts.append(f"num_channels={w.shape[0]}")
    out = state_dict.get("out.2.weight")
    if out is not None and out.ndim == 4:
        parts.append(f"learn_sigma={out.shape[0] == 6}")
    parts.append(f"class_cond={'label_emb.weight' in state_dict}")
    return ", ".join(parts)


def _listing(items: List[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (", ..." if len(items) > _MAX_LISTED else "")


def state_dict_mismatches(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor],
                names: Tuple[str, str] = ("checkpoint", "model")) -> List[str]:
    """How the keys and shapes of state dict ``got`` differ from ``expected``'s: counted and listed, one string per
    kind (missing, unexpected, wrong shapes); empty where they agree. ``names``: what the shapes are called."""
    want = {k: tuple(v.shape) for k, v in expected.items()}
    have = {k: tuple(v.shape) for k, v in got.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    wrong = [f"{k}: {names[0]} {list(have[k])} vs {names[1]} {list(want[k])}" for k in want
             if k in have and have[k] != want[k]]
    return [f"{len(keys)} {what} ({_listing(keys)})" for keys, what in
            ((missing, "missing keys"), (unexpected, "unexpected keys"), (wrong, "keys with wrong shapes")) if keys]


def load_unet_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Load strictly; on any mismatch raise one :class:`CheckpointError` that counts and lists it."""
    problems = state_dict_mismatches(model.state_dict(), state_dict)
    if problems:
        fits = matching_presets(state_dict)
        if fits:
            from .presets import PRESET_CONFIGS

            hint = (
                f"the checkpoint fits preset {' or '.join(repr(n) for n in fits)}: use its config "
                f"(--config {PRESET_CONFIGS.get(fits[0], fits[0])})"
            )
        else:
            hint = (
                f"no preset fits it ({_guess_flags(state_dict)}); give the UNet flags it was trained with"
            )
        raise CheckpointError(f"{source}: does not fit the UNet: {'; '.join(problems)}; {hint}")
    model.load_state_dict(state_dict, strict=True)


def load_prior(
    spec: Union[str, PriorSpec],
    checkpoint: Optional[PathLike] = None,
    *,
    trust_checkpoint: bool = False,
    device: Union[str, torch.device, None] = None,
) -> UNetModel:
    """Build a prior's UNet from a preset name or spec and load its weights (eval mode).

    :param spec: preset name (see :data:`PRESETS`) or a :class:`PriorSpec`.
    :param checkpoint: weights file; ``None`` leaves the random initialisation.
    :param trust_checkpoint: allow arbitrary pickles (``torch.load(weights_only=False)``).
    :param device: where to put the model.
    """
    if isinstance(spec, str):
        spec = get_preset(spec)
    model = spec.build_unet()
    if checkpoint is not None:
        load_prior_weights(model, spec, checkpoint, trust_checkpoint=trust_checkpoint)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def load_prior_weights(
    model: nn.Module, spec: PriorSpec, checkpoint: PathLike, *, trust_checkpoint: bool = False
) -> None:
    """Load ``checkpoint`` into the UNet ``model`` built from ``spec`` (strict; clear errors that say where the
    released weights come from when the file is missing)."""
    if not Path(checkpoint).exists() and spec.source:
        raise CheckpointError(f"{_missing(checkpoint)}; the weights of prior {spec.name or ''!s} come from "
                              f"{spec.source}; give their path with --model.prior.checkpoint")
    obj = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    state_dict = extract_unet_state_dict(obj, source=str(checkpoint))
    load_unet_weights(model, state_dict, source=str(checkpoint))


def export_state_dict(
    model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]], dtype: torch.dtype = torch.float32
) -> Dict[str, torch.Tensor]:
    """A plain guided-diffusion state dict (reference keys and order, CPU tensors in ``dtype``)."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    sd = extract_unet_state_dict(dict(sd), source="model")
    return {k: v.detach().to(device="cpu", dtype=dtype).clone() for k, v in sd.items()}


def save_state_dict(
    model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]],
    path: PathLike,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a plain guided-diffusion state dict atomically (temporary file, then rename).

    The file loads in guided-diffusion with ``model.load_state_dict(torch.load(path))``.
    """
    path = Path(path)
    sd = export_state_dict(model_or_state_dict, dtype=dtype)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(sd, f)  # through a file object: the archive's inner name does not depend on the temporary name
    return path


def blend_state_dicts(weights: Mapping[str, torch.Tensor], base: Any, base_weight: float, *,
                      source: str = "base", target: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """(1 - base_weight) * weights + base_weight * (the UNet of ``base``), in float32, tensor by tensor; the two
    UNets must have the same keys and shapes."""
    base_sd = extract_unet_state_dict(base, source=source)
    problems = state_dict_mismatches(weights, base_sd, names=("base", "fine-tuned"))
    if problems:
        raise CheckpointError(f"{source}: is not the UNet of {target} ({'; '.join(problems)}); give the prior it "
                              "was fine-tuned from with --base")
    return {k: ((1.0 - base_weight) * v.float() + base_weight * base_sd[k].float()) if v.is_floating_point() else v
            for k, v in weights.items()}


def export_checkpoint(
    checkpoint: PathLike, output: PathLike, *, dtype: torch.dtype = torch.float32, trust_checkpoint: bool = False,
    weights: str = "ema", base_weight: float = 0.0, base: Optional[PathLike] = None,
) -> Tuple[Path, str]:
    """Write the UNet of ``checkpoint`` (the EMA weights of a ``gdp fit`` checkpoint) as a plain guided-diffusion
    state dict at ``output``; returns the path and a one-line description.

    A ``gdp fit`` checkpoint records its prior: the weights are checked against the UNet of that prior (strictly,
    on the meta device) before anything is written. ``weights="trained"`` exports a fit checkpoint's trained
    weights instead of their EMA. ``base_weight`` w > 0 writes the weight-space interpolation
    (1 - w) * weights + w * base, in float32, with the UNet of ``base`` (by default the prior checkpoint the fit
    started from, as the checkpoint records it): a fine-tune pulled back toward its starting prior, which keeps
    more of the prior's own domain and commits less to the new one's detail.
    """
    if weights not in ("ema", "trained"):
        raise CheckpointError(f"--weights {weights}: give ema or trained")
    if not 0.0 <= base_weight <= 1.0:
        raise CheckpointError(f"--base_weight {base_weight:g}: give the starting prior's share, from 0 to 1")
    obj = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint, trust_option="gdp export --trust_checkpoint")
    fit = isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)
    if weights == "trained":
        if not fit or not any(k.startswith("unet.") for k in obj["state_dict"]):
            raise CheckpointError(f"{checkpoint}: --weights trained needs a gdp fit checkpoint (its unet.* weights)")
        obj = {**obj, "state_dict": {k: v for k, v in obj["state_dict"].items() if k.startswith("unet.")}}
    state_dict = extract_unet_state_dict(obj, source=str(checkpoint))
    if _ANCHOR not in state_dict:
        raise CheckpointError(f"{checkpoint}: holds no guided-diffusion UNet (no {_ANCHOR}); give a gdp fit checkpoint "
                              "or a prior's state dict")
    which = "weights"
    prior = (obj.get("hyper_parameters") or {}).get("prior") if fit else None  # what the fit started from
    if fit:
        which = "EMA weights" if any(k.startswith("ema_unet.") for k in obj["state_dict"]) else "trained weights"
        if isinstance(prior, Mapping):
            spec = PriorSpec.from_dict(prior)
            with torch.device("meta"):
                model = spec.build_unet()
            load_unet_weights(model, {k: v.to("meta") for k, v in state_dict.items()}, source=str(checkpoint))
    if base_weight > 0:
        if base is None:
            base = prior.get("checkpoint") if isinstance(prior, Mapping) else None
            if not base:
                raise CheckpointError(f"{checkpoint}: records no starting prior to blend with; give its weights "
                                      "with --base")
            if not Path(base).exists():
                raise CheckpointError(f"{_missing(base)}, the prior {checkpoint} was fine-tuned from; give its "
                                      "weights with --base")
        state_dict = blend_state_dicts(state_dict, read_checkpoint(base, trust_checkpoint=trust_checkpoint,
                                                                   trust_option="gdp export --trust_checkpoint"),
                                       base_weight, source=str(base), target=str(checkpoint))
        which += f" blended with {base_weight:g} of {base}"
    path = save_state_dict(state_dict, output, dtype=dtype)
    count = sum(v.numel() for v in state_dict.values())
    fits = matching_presets(state_dict)
    preset = f"; architecture of preset {fits[0]!r}" if fits else ""
    return path, f"{which}, {len(state_dict)} tensors, {count / 1e6:.2f} M values, {str(dtype).split('.')[-1]}{preset}"
