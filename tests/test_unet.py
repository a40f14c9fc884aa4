"""The UNet: released architectures, attention, checkpointing with frozen weights, compute dtypes, errors."""

from __future__ import annotations

import functools
import json
import math
import shlex
from pathlib import Path

import pytest
import torch

from gdp_lightning.prior import (
    PRESETS,
    SCRIPT_DEFAULTS,
    DiffusionSettings,
    PriorSpec,
    UNetFlags,
    create_model,
    get_preset,
    parse_model_flags,
    preset_names,
)

from .conftest import SHARED, fixtures_dir
from .helpers import TINY, _tiny

# ------------------------------------------------------------------ presets
MANIFESTS = "guided_diffusion_manifests.json"
# the released architectures the manifests file holds (fixtures README); each must have its preset
RELEASED = (
    "imagenet256_uncond",
    "imagenet256_cond",
    "imagenet64_cond",
    "imagenet128_cond",
    "imagenet512_cond",
    "lsun256",
    "ffhq256_dps",
)


def _manifests_path() -> Path:
    """The manifests in GDP_REFERENCE_FIXTURES; the shared ones where that folder has none (it may hold only
    golden files)."""
    own = fixtures_dir() / MANIFESTS
    return own if own.is_file() else SHARED / "fixtures" / MANIFESTS


@functools.lru_cache(maxsize=None)
def _manifests() -> dict:
    path = _manifests_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def test_manifests_cover_every_released_architecture():
    path = _manifests_path()
    assert path.is_file(), f"{path} is missing: the tests need the shared folder beside the repository"
    missing = [name for name in RELEASED if name not in _manifests()]
    assert not missing, f"{path} has no manifest for {missing}"
    no_preset = sorted(set(_manifests()) - set(PRESETS))
    assert not no_preset, f"no preset for released architectures {no_preset}"


# every released name, whatever the file holds: a missing or empty manifests file fails here, it does not
# parametrize to nothing
@pytest.mark.parametrize("name", sorted(set(RELEASED) | set(_manifests())))
def test_preset_matches_released_manifest(name: str):
    manifest = _manifests().get(name)
    assert manifest is not None, f"{_manifests_path()} has no manifest for {name!r}"
    spec = get_preset(name)
    with torch.device("meta"):
        model = spec.build_unet()
    state = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert state == manifest["state_dict"], "keys, order or shapes differ from the reference"
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    ours = spec.unet.to_dict()
    theirs = dict(manifest["flags"])
    for flag in ("use_fp16", "dropout"):  # not architectural; the manifests do not record the released values
        ours.pop(flag)
        theirs.pop(flag)
    assert ours == theirs


def test_presets_carry_released_training_settings():
    assert get_preset("imagenet64_cond").diffusion.noise_schedule == "cosine"
    for name in preset_names():
        spec = get_preset(name)
        assert spec.unet.learn_sigma and spec.diffusion.diffusion_steps == 1000
        if name != "imagenet64_cond":
            assert spec.diffusion.noise_schedule == "linear", name
    # dropout as released: ImageNet-64 and LSUN trained with 0.1, skimage64 with 0.1, the others 0
    assert {n: get_preset(n).unet.dropout for n in preset_names()} == {
        "ffhq256_dps": 0.0,
        "imagenet128_cond": 0.0,
        "imagenet256_cond": 0.0,
        "imagenet256_uncond": 0.0,
        "imagenet512_cond": 0.0,
        "imagenet64_cond": 0.1,
        "lsun256": 0.1,
        "skimage64": 0.1,
    }


def test_skimage64_preset_matches_its_json():
    flags = json.loads((SHARED / "priors" / "skimage64.json").read_text())["flags"]
    assert get_preset("skimage64").unet.to_dict() == flags


def test_get_preset_returns_a_copy_and_names_unknown():
    spec = get_preset("skimage64")
    spec.unet.num_channels = 1
    assert get_preset("skimage64").unet.num_channels == 64
    with pytest.raises(ValueError, match="unknown prior preset 'nope'.*skimage64"):
        get_preset("nope")


def test_flags_reject_unknown_names():
    with pytest.raises(ValueError, match="unknown UNet flag"):
        UNetFlags.from_dict({"image_size": 64, "num_chanels": 3})


# ------------------------------------------------------- pasted MODEL_FLAGS
# guided-diffusion's README, 256x256 unconditional (the prior of GDP): num_heads is not given
IMAGENET256_UNCOND_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)


def test_model_flags_string_gives_the_released_preset():
    spec = PriorSpec.from_model_flags(IMAGENET256_UNCOND_FLAGS, checkpoint="256x256_diffusion_uncond.pt")
    preset = get_preset("imagenet256_uncond")
    assert spec.unet == preset.unet
    assert spec.diffusion == preset.diffusion
    assert spec.checkpoint == "256x256_diffusion_uncond.pt"
    # pasted as a shell line, with the sampling flags of DIFFUSION_FLAGS / SAMPLE_FLAGS lines
    pasted = parse_model_flags(
        f'MODEL_FLAGS="{IMAGENET256_UNCOND_FLAGS}"\nDIFFUSION_FLAGS="--timestep_respacing ddim25 --use_kl=True"'
    )
    assert pasted.unet == preset.unet and pasted.timestep_respacing == "ddim25" and pasted.diffusion.use_kl


def test_omitted_model_flags_take_the_script_defaults():
    """guided-diffusion's scripts start from model_and_diffusion_defaults(), not from create_model's defaults."""
    flags = parse_model_flags("--image_size 64 --num_channels 32")
    assert flags.unet.num_heads == 4 and UNetFlags().num_heads == 1
    assert flags.unet.attention_resolutions == "16,8" and flags.unet.use_scale_shift_norm
    assert flags.diffusion == DiffusionSettings() and flags.timestep_respacing == ""
    # every flag of the scripts has a home: a UNet flag, a diffusion setting, or the respacing
    homes = {f for f in UNetFlags().to_dict()} | set(DiffusionSettings().__dict__) | {"timestep_respacing"}
    assert set(SCRIPT_DEFAULTS) == homes
    assert parse_model_flags("").unet == UNetFlags(**{k: SCRIPT_DEFAULTS[k] for k in UNetFlags().to_dict()})


def test_model_flags_diffusion_flags_and_value_forms():
    flags = parse_model_flags(
        ["--noise_schedule", "cosine", "--predict_xstart", "yes", "--rescale_timesteps", "1", "--use_kl", "f",
         "--rescale_learned_sigmas", "True", "--sigma_small", "True", "--diffusion_steps", "4000",
         "--dropout", "0.1", "--channel_mult", "1,2,2", "--num_heads", "2", "--num_heads", "8"]
    )
    assert flags.diffusion == DiffusionSettings(
        diffusion_steps=4000, noise_schedule="cosine", sigma_small=True, predict_xstart=True,
        rescale_timesteps=True, use_kl=False, rescale_learned_sigmas=True,
    )
    assert flags.unet.dropout == 0.1 and flags.unet.channel_mult == "1,2,2"
    assert flags.unet.num_heads == 8  # the last of a repeated flag wins, as with argparse
    # a mapping (e.g. from YAML): names with or without "--", typed values
    mapped = parse_model_flags({"--attention_resolutions": [32, 16, 8], "learn_sigma": True, "image_size": "128"})
    assert mapped.unet.attention_resolutions == "32,16,8" and mapped.unet.learn_sigma and mapped.unet.image_size == 128


def test_every_preset_round_trips_through_model_flags():
    for name in preset_names():
        preset = get_preset(name)
        values = {**preset.unet.to_dict(), **preset.diffusion.__dict__}
        text = " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in values.items())
        spec = PriorSpec.from_model_flags(text)
        assert (spec.unet, spec.diffusion) == (preset.unet, preset.diffusion), name


@pytest.mark.parametrize(
    "flags,message",
    [
        ("--batch_size 4", r"^unknown flag --batch_size: not a guided-diffusion model or diffusion flag"),
        ("--num_chanels 3", r"^unknown flag --num_chanels \(did you mean --num_channels\?\)"),
        ({"model_path": "x.pt"}, r"^unknown flag --model_path"),
        ("--use_fp16 --image_size 64", r"^flag --use_fp16 has no value"),
        ("--class_cond maybe", r"^--class_cond expects a boolean"),
        ("--image_size 2.5", r"^--image_size expects an integer"),
        ("python scripts/image_sample.py --image_size 64", r"^expected a flag like --image_size, got 'python'"),
        ("--noise_schedule quadratic", r"noise_schedule must be 'linear' or 'cosine'"),
    ],
)
def test_model_flags_errors_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_model_flags(flags)
    assert "\n" not in str(info.value)


def test_default_channel_mult_per_size_and_error():
    with torch.device("meta"):
        m = create_model(image_size=128, num_channels=32, num_res_blocks=1)
    assert m.channel_mult == (1, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="image_size=96 has no default"):
        create_model(image_size=96, num_channels=32, num_res_blocks=1)


# --------------------------------------------------------------- attention
def _naive_attention(block, x):
    """Multi-head attention written out from the reference's definition (split order, 1/sqrt(d) scaling)."""
    b, c, h, w = x.shape
    heads = block.num_heads
    d = c // heads
    tokens = block.norm(x).reshape(b, c, h * w)
    qkv = torch.nn.functional.conv1d(tokens, block.qkv.weight, block.qkv.bias)  # (b, 3c, L)
    if block.use_new_attention_order:
        q, k, v = (t.reshape(b, heads, d, -1) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b, heads, 3 * d, -1).split(d, dim=2)
    weights = torch.softmax(torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhts,bhds->bhdt", weights, v).reshape(b, c, -1)
    return x + torch.nn.functional.conv1d(out, block.proj_out.weight, block.proj_out.bias).reshape(b, c, h, w)


@pytest.mark.parametrize("new_order", [False, True])
@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_attention_matches_definition(new_order: bool, attention: str):
    model = _tiny(use_new_attention_order=new_order, num_head_channels=8).set_attention(attention)
    block = model.middle_block[1]
    assert block.num_heads == 8
    x = torch.randn(2, block.channels, 5, 7)  # odd, non-square token grid
    with torch.no_grad():
        assert torch.allclose(block(x), _naive_attention(block, x), atol=1e-5)


def test_attention_heads_from_num_heads_and_upsample_heads():
    m = create_model(**{**TINY, "num_head_channels": -1, "num_heads": 2, "num_heads_upsample": 4})
    assert m.input_blocks[3][1].num_heads == 2 and m.middle_block[1].num_heads == 2
    assert m.output_blocks[0][1].num_heads == 4


def test_sdpa_and_reference_attention_agree():
    model = _tiny()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    with torch.no_grad():
        a = model.set_attention("sdpa")(x, t)
        b = model.set_attention("reference")(x, t)
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="attention must be"):
        model.set_attention("flash")


# ---------------------------------------------------- gradient checkpointing
def test_checkpointing_with_frozen_weights_gives_input_gradients():
    plain = _tiny()
    ckpt = _tiny(use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    for m in (plain, ckpt):
        m.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 700])
    grads = []
    for m in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        m(xi, t).square().mean().backward()
        grads.append(xi.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_checkpointing_gives_the_same_weight_gradients():
    plain = _tiny().train()
    ckpt = _tiny(use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    for m in (plain, ckpt):
        m(x, t).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# ----------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_compute_dtype_keeps_float32_interface(dtype):
    model = _tiny()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        ref = model(x, t)
        model.set_compute_dtype(dtype)
        out = model(x, t)
    assert out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert rel < (3e-2 if dtype == torch.bfloat16 else 5e-3), rel
    conv_dtypes = {v.dtype for k, v in model.state_dict().items() if k.startswith("input_blocks.1.0.in_layers.2")}
    assert conv_dtypes == {dtype}
    assert model.time_embed[0].weight.dtype == torch.float32 and model.out[2].weight.dtype == torch.float32
    assert {v.dtype for v in model.float32_state_dict().values()} == {torch.float32}


def test_use_fp16_flag_sets_body_dtype_and_loads_float32_weights():
    ref = _tiny()
    half = create_model(**{**TINY, "use_fp16": True})
    assert half.compute_dtype == torch.float16
    half.load_state_dict(ref.state_dict(), strict=True)
    sd = half.float32_state_dict()
    for k, v in ref.state_dict().items():
        assert torch.allclose(sd[k], v, atol=1e-3), k
    with pytest.raises(ValueError, match="compute dtype"):
        half.set_compute_dtype(torch.float64)


def test_channels_last_gives_the_same_output():
    model = _tiny()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        ref = model(x, t)
        model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last), t)
    assert torch.allclose(out, ref, atol=1e-5)


# ----------------------------------------------------------------- inputs
def test_any_multiple_of_the_downsampling_factor_works():
    model = _tiny(channel_mult="1,2,2")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 20, 36), torch.tensor(5))  # scalar t is broadcast
    assert out.shape == (1, 6, 20, 36)
    with pytest.raises(ValueError, match=r"multiples of 4.*\(21, 36\)"):
        model(torch.randn(1, 3, 21, 36), torch.tensor([5]))


def test_class_labels_are_checked():
    cond = _tiny(class_cond=True)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="class labels y are required"):
        cond(x, t)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cond(x, t, torch.tensor([1]))
    with torch.no_grad():
        a = cond(x, t, torch.tensor([1, 2]))
        b = cond(x, t, torch.tensor([3, 2]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)
    with pytest.raises(ValueError, match="not accepted"):
        _tiny()(x, t, torch.tensor([1, 2]))
