"""Training part of a UNet: named parts to train while the rest stays frozen, and low-rank adapters (LoRA).

Parts (:func:`select_parameters`) are named by group or by a pattern over the parameter names:

- ``all``: every parameter;
- ``attention``: the self-attention blocks (their normalisation, ``qkv`` and ``proj_out``);
- ``norm``: every GroupNorm's scale and shift;
- ``input_blocks``, ``middle_block``, ``output_blocks`` (the decoder half), ``out`` (the output head),
  ``time_embed``, ``label_emb``: the UNet's top-level parts, as guided-diffusion names them;
- anything else: an :mod:`fnmatch` pattern over parameter names, e.g. ``output_blocks.1*`` or ``*.emb_layers.*``.

Low-rank adapters (:func:`add_low_rank_adapters`) add ``scale · up @ down`` (rank ``r``, ``up`` zero at the start,
so the adapted UNet starts as the prior) to the weight of chosen convolutions and linear layers, as a
:mod:`torch.nn.utils.parametrize` parametrization. Targets are named like parts, by module: ``1x1`` (every 1×1
convolution: the attention's ``qkv`` and ``proj_out``, the residual blocks' 1×1 skip connections), ``attention``
(the convolutions of the attention blocks), ``conv`` (every convolution), ``linear`` (every linear layer: the time
embedding and the residual blocks' embedding projections), or a pattern over module names.

An adapted UNet's state dict holds, for each adapted layer ``L``, ``L.parametrizations.weight.original`` (the
frozen weight) and ``L.parametrizations.weight.0.{down,up,scale}``. :func:`merge_low_rank` turns any state dict
holding such keys (with any prefix) back into plain ``L.weight`` keys in guided-diffusion's order: exported
weights, and checkpoints read for restoring, are always plain guided-diffusion state dicts.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .unet import AttentionBlock

__all__ = [
    "PARTS",
    "LORA_TARGETS",
    "LowRankDelta",
    "select_parameters",
    "select_modules",
    "add_low_rank_adapters",
    "has_adapters",
    "adapter_parameters",
    "merge_low_rank",
    "trainable_summary",
]

#: the named groups of :func:`select_parameters` (besides patterns over parameter names)
PARTS = ("all", "attention", "norm", "input_blocks", "middle_block", "output_blocks", "out", "time_embed",
         "label_emb")
#: the named groups of :func:`select_modules` (besides patterns over module names)
LORA_TARGETS = ("1x1", "attention", "conv", "linear")

_MARK = ".parametrizations.weight."


class LowRankDelta(nn.Module):
    """A weight plus a low-rank update: ``W + scale · (up @ down)`` reshaped to ``W``'s shape (a convolution's
    weight ``(out, in, k...)`` is updated as the ``(out, in · k...)`` matrix it is).

    :param out_features: the weight's first dimension.
    :param in_features: the product of its other dimensions.
    :param rank: the rank of the update.
    :param alpha: the update's scale is ``alpha / rank`` (so that the learning rate need not change with the rank).
    """

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.register_buffer("scale", torch.tensor(float(alpha) / rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.up @ self.down) * self.scale
        return weight + delta.reshape(weight.shape).to(weight.dtype)


def _part_names(unet: nn.Module, part: str) -> List[str]:
    named = dict(unet.named_parameters())
    if part == "all":
        return list(named)
    if part == "attention":
        return [f"{m}.{p}" for m, module in unet.named_modules() if isinstance(module, AttentionBlock)
                for p, _ in module.named_parameters()]
    if part == "norm":
        return [f"{m}.{p}" for m, module in unet.named_modules() if isinstance(module, nn.GroupNorm)
                for p, _ in module.named_parameters(recurse=False)]
    if part in PARTS:
        return [name for name in named if name.split(".")[0] == part]
    return [name for name in named if fnmatch.fnmatchcase(name, part)]


def select_parameters(unet: nn.Module, parts: Sequence[str]) -> List[str]:
    """The names of the parameters of ``unet`` in any of ``parts`` (in the UNet's order); a part that names no
    parameter raises :class:`ValueError`."""
    chosen = set()
    for part in parts:
        names = _part_names(unet, part)
        if not names:
            raise ValueError(f"{part!r} names no parameter of the UNet: give one of {', '.join(PARTS)} or a pattern "
                             "over parameter names such as 'output_blocks.*'")
        chosen.update(names)
    return [name for name, _ in unet.named_parameters() if name in chosen]


def _is_target(name: str, module: nn.Module, target: str, attention: set) -> bool:
    conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
    if target == "1x1":
        return conv and all(k == 1 for k in module.kernel_size)
    if target == "attention":
        return conv and name.rpartition(".")[0] in attention
    if target == "conv":
        return conv
    if target == "linear":
        return isinstance(module, nn.Linear)
    return (conv or isinstance(module, nn.Linear)) and fnmatch.fnmatchcase(name, target)


def select_modules(unet: nn.Module, targets: Sequence[str]) -> List[str]:
    """The names of the convolutions and linear layers of ``unet`` that ``targets`` name (in the UNet's order);
    a target that names none raises :class:`ValueError`."""
    attention = {m for m, module in unet.named_modules() if isinstance(module, AttentionBlock)}
    layers = [(n, m) for n, m in unet.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    chosen = set()
    for target in targets:
        names = [n for n, m in layers if _is_target(n, m, target, attention)]
        if not names:
            raise ValueError(f"{target!r} names no convolution or linear layer of the UNet: give one of "
                             f"{', '.join(LORA_TARGETS)} or a pattern over module names such as '*.qkv'")
        chosen.update(names)
    return [n for n, _ in layers if n in chosen]


def add_low_rank_adapters(unet: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> List[str]:
    """Add a :class:`LowRankDelta` of ``rank`` to the weight of every layer ``targets`` name; returns their names.
    The adapters start at zero: the UNet computes what it computed before."""
    if rank < 1:
        raise ValueError(f"the adapters' rank must be at least 1, got {rank}")
    names = select_modules(unet, targets)
    for name in names:
        layer = unet.get_submodule(name)
        weight = layer.weight
        delta = LowRankDelta(weight.shape[0], weight[0].numel(), rank, alpha).to(weight.device)
        parametrize.register_parametrization(layer, "weight", delta)
    return names


def has_adapters(unet: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in unet.modules())


def adapter_parameters(unet: nn.Module) -> List[nn.Parameter]:
    """The adapters' own parameters (``down`` and ``up`` of every :class:`LowRankDelta`)."""
    return [p for m in unet.modules() if isinstance(m, LowRankDelta) for p in (m.down, m.up)]


def _merged_weights(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``{L.weight: merged value}`` for every adapted layer ``L`` of ``state`` (computed in float32, stored in the
    frozen weight's dtype)."""
    merged = {}
    for key, original in state.items():
        if not key.endswith(_MARK + "original"):
            continue
        layer = key[: -len(_MARK + "original")]
        weight = original.float()
        index = 0
        while f"{layer}{_MARK}{index}.down" in state:
            p = f"{layer}{_MARK}{index}."
            delta = (state[p + "up"].float() @ state[p + "down"].float()) * state[p + "scale"].float()
            weight = weight + delta.reshape(weight.shape)
            index += 1
        merged[f"{layer}.weight"] = weight.to(original.dtype)
    return merged


def merge_low_rank(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` with every adapted layer's keys replaced by its merged ``L.weight`` (before ``L.bias``, as in
    guided-diffusion); a state dict without adapters comes back as it is (a new dict)."""
    merged = _merged_weights(state)
    if not merged:
        return dict(state)
    out: Dict[str, torch.Tensor] = {}

    def emit(layer: str) -> None:
        key = f"{layer}.weight"
        if key not in out:
            out[key] = merged[key]

    for key, value in state.items():
        if _MARK in key:
            emit(key.split(_MARK)[0])
            continue
        layer, _, leaf = key.rpartition(".")
        if leaf == "bias" and f"{layer}.weight" in merged:
            emit(layer)
        out[key] = value
    return out


def trainable_summary(unet: nn.Module) -> Tuple[int, int, int]:
    """``(trainable, weights, adapters)`` parameter counts of ``unet``: what trains (adapters included), the UNet's
    own weights (what an exported state dict holds) and the low-rank adapters' parameters."""
    adapters = {id(p) for p in adapter_parameters(unet)}
    params: Iterable[nn.Parameter] = unet.parameters()
    counts = [(p.numel(), p.requires_grad, id(p) in adapters) for p in params]
    return (sum(n for n, g, _ in counts if g), sum(n for n, _, a in counts if not a),
            sum(n for n, _, a in counts if a))
