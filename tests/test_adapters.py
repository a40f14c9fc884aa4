"""Training part of a UNet (:mod:`gdp_lightning.prior.adapters`): named parts, low-rank adapters, their merge into
plain guided-diffusion weights, and the EMA of adapted weights."""

from __future__ import annotations

import copy

import pytest
import torch

from gdp_lightning.finetune.training import update_ema
from gdp_lightning.prior import (
    add_low_rank_adapters,
    adapter_parameters,
    create_model,
    extract_unet_state_dict,
    has_adapters,
    merge_low_rank,
    select_modules,
    select_parameters,
    trainable_summary,
)
from gdp_lightning.prior.adapters import LowRankDelta
from gdp_lightning.prior.unet import AttentionBlock

from .helpers import TINY, _tiny


def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 700])


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for delta in (m for m in model.modules() if isinstance(m, LowRankDelta)):
            delta.up.copy_(torch.randn(delta.up.shape, generator=g) * 0.05)


def test_parts_name_the_parameters_they_say():
    model = _tiny()
    names = [n for n, _ in model.named_parameters()]
    blocks = [m for m, module in model.named_modules() if isinstance(module, AttentionBlock)]
    attention = select_parameters(model, ["attention"])
    assert blocks and set(attention) == {n for n in names if any(n.startswith(b + ".") for b in blocks)}
    assert {n.rsplit(".", 2)[-2] for n in attention} == {"norm", "qkv", "proj_out"}
    assert set(select_parameters(model, ["output_blocks"])) == {n for n in names if n.startswith("output_blocks.")}
    assert select_parameters(model, ["out"]) == [n for n in names if n.startswith("out.")]
    assert select_parameters(model, ["all"]) == names
    # several parts: their union, in the UNet's order
    both = select_parameters(model, ["out", "attention"])
    assert both == [n for n in names if n in set(attention) | {n for n in names if n.startswith("out.")}]
    norms = select_parameters(model, ["norm"])
    assert norms and all(isinstance(model.get_submodule(n.rpartition(".")[0]), torch.nn.GroupNorm) for n in norms)
    assert select_parameters(model, ["*.qkv.*"]) == [n for n in attention if ".qkv." in n]
    with pytest.raises(ValueError, match="'nothing' names no parameter"):
        select_parameters(model, ["attention", "nothing"])


def test_adapter_targets_name_the_layers_they_say():
    model = _tiny()
    one = select_modules(model, ["1x1"])
    for name in one:
        assert all(k == 1 for k in model.get_submodule(name).kernel_size)
    assert any(n.endswith(".qkv") for n in one) and any(n.endswith(".proj_out") for n in one)
    assert any(n.endswith(".skip_connection") for n in one)  # the 1x1 skips where the channels change
    assert {n.rsplit(".", 1)[-1] for n in select_modules(model, ["attention"])} == {"qkv", "proj_out"}
    convs = select_modules(model, ["conv"])
    assert set(one) < set(convs) and "input_blocks.0.0" in convs
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in select_modules(model, ["linear"]))
    with pytest.raises(ValueError, match="'\\*.nothing' names no convolution"):
        select_modules(model, ["*.nothing"])


def test_adapters_start_at_the_prior_and_merge_into_plain_weights():
    model = _tiny()
    plain_keys = list(model.state_dict())
    x, t = inputs()
    with torch.no_grad():
        before = model(x, t)
    names = add_low_rank_adapters(model, ["1x1"], rank=2, alpha=4.0)
    assert names == select_modules(_tiny(), ["1x1"]) and has_adapters(model)
    with torch.no_grad():
        assert torch.equal(model(x, t), before)  # up = 0: the adapted UNet computes what the prior computed
    randomize_adapters(model)
    with torch.no_grad():
        after = model(x, t)
    assert (after - before).abs().max() > 1e-3
    state = model.state_dict()
    merged = merge_low_rank(state)
    assert list(merged) == plain_keys  # guided-diffusion's keys, in its order
    # by hand for one layer: W + (alpha / rank) up @ down
    layer = names[0]
    p = f"{layer}.parametrizations.weight."
    expected = state[p + "original"] + (2.0 * state[p + "0.up"] @ state[p + "0.down"]).reshape(
        state[p + "original"].shape)
    torch.testing.assert_close(merged[f"{layer}.weight"], expected)
    plain = create_model(**TINY).eval()
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t), after, rtol=1e-5, atol=1e-5)
    # with any prefix (a Lightning checkpoint's "unet."), and through the checkpoint reader
    prefixed = merge_low_rank({"unet." + k: v for k, v in state.items()})
    assert list(prefixed) == ["unet." + k for k in plain_keys]
    extracted = extract_unet_state_dict({"state_dict": {"unet." + k: v for k, v in state.items()}})
    assert all(torch.equal(extracted[k], merged[k]) for k in plain_keys)
    # a plain state dict comes back as it is
    assert list(merge_low_rank(merged)) == plain_keys


def test_adapters_on_linear_layers_keep_the_anchor_key():
    model = _tiny()
    add_low_rank_adapters(model, ["linear"], rank=1, alpha=1.0)
    randomize_adapters(model)
    extracted = extract_unet_state_dict(model.state_dict())
    assert list(extracted) == list(_tiny().state_dict()) and "time_embed.0.weight" in extracted


def test_trainable_summary_counts_the_weights_apart_from_their_adapters():
    model = _tiny()
    weights = sum(p.numel() for p in model.parameters())
    assert trainable_summary(model) == (weights, weights, 0)
    names = add_low_rank_adapters(model, ["1x1"], rank=2, alpha=2.0)
    model.requires_grad_(False)
    for p in adapter_parameters(model):
        p.requires_grad_(True)
    # a c_out x c_in 1x1 convolution's rank-2 adapter: down 2 x c_in, up c_out x 2
    adapters = sum(2 * sum(model.get_submodule(n).weight.shape[:2]) for n in names)
    assert adapters > 0 and trainable_summary(model) == (adapters, weights, adapters)
    model.out.requires_grad_(True)  # a part trained beside the adapters
    head = sum(p.numel() for p in model.out.parameters())
    assert trainable_summary(model) == (adapters + head, weights, adapters)


def test_gradients_reach_the_adapters_and_not_the_frozen_weights():
    model = _tiny().train()
    add_low_rank_adapters(model, ["attention"], rank=3, alpha=3.0)
    model.requires_grad_(False)
    for p in adapter_parameters(model):
        p.requires_grad_(True)
    x, t = inputs()
    model(x, t).square().mean().backward()
    deltas = [m for m in model.modules() if isinstance(m, LowRankDelta)]
    assert len(deltas) == 2 * len([m for m in model.modules() if isinstance(m, AttentionBlock)])
    assert all(d.up.grad is not None and d.up.grad.abs().max() > 0 for d in deltas)
    # up starts at zero, so down's first gradient is zero; it is not once up has moved
    assert all(d.down.grad is not None and d.down.grad.abs().max() == 0 for d in deltas)
    assert all(p.grad is None for n, p in model.named_parameters() if "parametrizations.weight.0." not in n)
    randomize_adapters(model)
    model.zero_grad()
    model(x, t).square().mean().backward()
    assert all(d.down.grad.abs().max() > 0 for d in deltas)


def test_ema_of_an_adapted_unet_averages_its_merged_weights():
    ema = _tiny()
    model = copy.deepcopy(ema)
    add_low_rank_adapters(model, ["1x1"], rank=2, alpha=2.0)
    randomize_adapters(model)
    with torch.no_grad():
        for p in model.out.parameters():  # an unadapted weight that differs too
            p.add_(0.1)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, model, 0.75)
    merged = merge_low_rank(model.state_dict())
    for name, value in ema.named_parameters():
        torch.testing.assert_close(value, 0.75 * start[name] + 0.25 * merged[name])
    assert any(not torch.equal(ema.state_dict()[k], start[k]) for k in merged if k.startswith("out."))
