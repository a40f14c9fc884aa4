"""What a prior is: guided-diffusion's model flags plus the diffusion settings it was trained with.

:class:`UNetFlags` carries openai guided-diffusion's ``create_model`` arguments
with the same names, meaning and defaults. :class:`DiffusionSettings` carries
the diffusion arguments (``diffusion_steps``, ``noise_schedule``, ...) that
describe how the prior was trained. A :class:`PriorSpec` holds both, so one
YAML file can say everything about a prior.

A ``MODEL_FLAGS``/``DIFFUSION_FLAGS`` string as given to guided-diffusion's
scripts is read with :meth:`PriorSpec.from_model_flags` (or
:func:`parse_model_flags`): the scripts apply the flags on top of
``model_and_diffusion_defaults()``, whose defaults differ from ``create_model``'s
(``num_heads=4``, ``attention_resolutions="16,8"``, ``use_scale_shift_norm=True``),
so an omitted flag takes the script's default there, not ``UNetFlags``'s.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ..diffusion.settings import DiffusionSettings
from .unet import UNetModel

__all__ = [
    "UNetFlags",
    "DiffusionSettings",
    "PriorSpec",
    "ModelFlags",
    "SCRIPT_DEFAULTS",
    "parse_model_flags",
    "create_model",
    "default_channel_mult",
    "parse_channel_mult",
    "parse_attention_resolutions",
]

NUM_CLASSES = 1000

_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def default_channel_mult(image_size: int) -> tuple:
    """guided-diffusion's channel multipliers for ``channel_mult=""`` (sizes 64, 128, 256, 512)."""
    try:
        return _DEFAULT_CHANNEL_MULT[image_size]
    except KeyError:
        raise ValueError(
            f"channel_mult is empty and image_size={image_size} has no default; "
            "give channel_mult explicitly, e.g. '1,2,2,2'"
        ) from None


def parse_channel_mult(channel_mult: Union[str, Sequence[float]], image_size: int) -> tuple:
    """``"1,2,2"`` or a sequence to a tuple; ``""`` to the per-size default."""
    if isinstance(channel_mult, str):
        if channel_mult.strip() == "":
            return default_channel_mult(image_size)
        try:
            return tuple(int(m) for m in channel_mult.split(","))
        except ValueError:
            raise ValueError(f"channel_mult must be comma-separated integers like '1,2,2,2', got {channel_mult!r}") from None
    return tuple(channel_mult)


def parse_attention_resolutions(attention_resolutions: Union[str, Sequence[int]], image_size: int) -> tuple:
    """Resolutions (``"32,16,8"``) to downsampling rates (``image_size // resolution``)."""
    if isinstance(attention_resolutions, str):
        items = [r for r in attention_resolutions.split(",") if r.strip()]
    else:
        items = list(attention_resolutions)
    try:
        return tuple(image_size // int(r) for r in items)
    except ValueError:
        raise ValueError(
            f"attention_resolutions must be comma-separated resolutions like '32,16,8', got {attention_resolutions!r}"
        ) from None


@dataclass
class UNetFlags:
    """openai guided-diffusion ``create_model`` flags (same names, meaning and defaults).

    The defaults are ``create_model``'s signature defaults. guided-diffusion's
    scripts start from other ones (:data:`SCRIPT_DEFAULTS`): to read a pasted
    ``MODEL_FLAGS`` string the way the scripts do, use
    :meth:`PriorSpec.from_model_flags`.

    :param image_size: training resolution; picks the default ``channel_mult``.
    :param num_channels: base channel count.
    :param num_res_blocks: residual blocks per resolution.
    :param channel_mult: comma-separated multipliers; "" = guided-diffusion's default for the size.
    :param learn_sigma: the model also outputs the variance (6 output channels).
    :param class_cond: class-conditional on the 1000 ImageNet classes.
    :param use_checkpoint: gradient checkpointing (less memory when gradients flow through the UNet).
    :param attention_resolutions: comma-separated resolutions at which attention is used.
    :param num_heads: attention heads (when num_head_channels is -1).
    :param num_head_channels: channels per attention head; -1 = use num_heads.
    :param num_heads_upsample: heads in the decoder; -1 = num_heads.
    :param use_scale_shift_norm: FiLM-like timestep conditioning.
    :param dropout: dropout probability in residual blocks (active only in training).
    :param resblock_updown: residual blocks for up- and downsampling.
    :param use_fp16: compute the body in float16 (weights load and export as float32).
    :param use_new_attention_order: split q, k, v before the heads.
    """

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: str = ""
    learn_sigma: bool = False
    class_cond: bool = False
    use_checkpoint: bool = False
    attention_resolutions: str = "16"
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    dropout: float = 0.0
    resblock_updown: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False

    @classmethod
    def from_dict(cls, flags: Mapping[str, Any]) -> "UNetFlags":
        """Build from a mapping of ``create_model`` flags; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flags) - names)
        if unknown:
            raise ValueError(f"unknown UNet flag(s) {unknown}; known flags: {sorted(names)}")
        return cls(**dict(flags))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PriorSpec:
    """A whole prior: UNet flags, diffusion settings and where its weights come from.

    :param unet: guided-diffusion ``create_model`` flags.
    :param diffusion: the diffusion the prior was trained with.
    :param name: preset name, if the spec is one.
    :param checkpoint: file name (or path) of the released weights.
    :param source: where to get the weights.
    :param description: one line on what the prior is.
    """

    unet: UNetFlags = field(default_factory=UNetFlags)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    name: Optional[str] = None
    checkpoint: Optional[str] = None
    source: Optional[str] = None
    description: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PriorSpec":
        d = dict(d)
        unet = d.pop("unet", {}) or {}
        diffusion = d.pop("diffusion", {}) or {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown prior field(s) {unknown}; known fields: {sorted(names)}")
        return cls(
            unet=unet if isinstance(unet, UNetFlags) else UNetFlags.from_dict(unet),
            diffusion=diffusion if isinstance(diffusion, DiffusionSettings) else DiffusionSettings(**diffusion),
            **d,
        )

    @classmethod
    def from_yaml(cls, path: Union[str, "os.PathLike[str]"]) -> "PriorSpec":
        """Read a prior config (``configs/prior/*.yaml``): the ``model.prior`` section, or a bare spec."""
        import yaml

        with open(path) as f:
            d = yaml.safe_load(f) or {}
        if "model" in d:
            d = d["model"]
        if "prior" in d:
            d = d["prior"]
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid prior config: {e}") from None

    @classmethod
    def from_model_flags(
        cls, flags: Union[str, Mapping[str, Any], Sequence[str]], **fields: Any
    ) -> "PriorSpec":
        """The prior that guided-diffusion's scripts build from ``MODEL_FLAGS`` (and ``DIFFUSION_FLAGS``).

        ``flags`` is the flag string as pasted (``"--image_size 256 --learn_sigma True ..."``,
        also ``MODEL_FLAGS="..."`` lines), a list of its words, or a mapping of flag names
        to values. A flag that is not given takes the value of guided-diffusion's
        ``model_and_diffusion_defaults()`` (:data:`SCRIPT_DEFAULTS`), as in the scripts.
        UNet flags go to :attr:`unet`, diffusion flags to :attr:`diffusion`.
        ``--timestep_respacing`` is accepted but is a sampling setting, not part of
        the prior: read it with :func:`parse_model_flags` and pass it as the sampler's
        ``steps`` (``GaussianDiffusion.from_prior(spec, respacing=...)``). An unknown
        flag (``--batch_size``, ``--model_path``, a typo) is a ``ValueError`` that names it.

        :param fields: the other fields of the spec (``name``, ``checkpoint``, ``source``, ``description``).
        """
        return parse_model_flags(flags).to_spec(**fields)

    def build_unet(self, **overrides: Any) -> UNetModel:
        flags = dataclasses.replace(self.unet, **overrides) if overrides else self.unet
        return create_model(**flags.to_dict())


# ----------------------------------------------------------- pasted MODEL_FLAGS
# The value each flag takes in guided-diffusion's scripts (image_sample.py, image_train.py, ...) when it is not
# given: their argparse defaults, ``model_and_diffusion_defaults()``. The UNet ones differ from create_model's
# signature defaults (UNetFlags) in num_heads, attention_resolutions and use_scale_shift_norm.
SCRIPT_DEFAULTS: Dict[str, Any] = {
    # UNet (create_model)
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "channel_mult": "",
    "learn_sigma": False,
    "class_cond": False,
    "use_checkpoint": False,
    "attention_resolutions": "16,8",
    "num_heads": 4,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    # diffusion (create_gaussian_diffusion)
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    # improved-diffusion's scripts also have it; guided-diffusion's always use False
    "sigma_small": False,
}

_TRUE = ("yes", "true", "t", "y", "1")
_FALSE = ("no", "false", "f", "n", "0")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=(.*)$", re.DOTALL)


@dataclass(frozen=True)
class ModelFlags:
    """guided-diffusion script flags, split: the UNet's, the diffusion's, and the sampling respacing.

    :param unet: the ``create_model`` flags.
    :param diffusion: the diffusion the prior was trained with.
    :param timestep_respacing: ``--timestep_respacing`` ("" = all steps): how to sample, not part of the prior.
    """

    unet: UNetFlags
    diffusion: DiffusionSettings
    timestep_respacing: str = ""

    def to_spec(self, **fields: Any) -> PriorSpec:
        """A :class:`PriorSpec` of these flags (``fields``: ``name``, ``checkpoint``, ``source``, ``description``)."""
        return PriorSpec(unet=dataclasses.replace(self.unet), diffusion=dataclasses.replace(self.diffusion), **fields)


def _flag_words(text: str) -> list:
    """The words of a pasted flag string; ``NAME="--a 1 --b 2"`` shell assignments are opened up."""
    words = []
    for word in shlex.split(text, comments=True):
        m = _ASSIGNMENT.match(word)
        if m and not word.startswith("-"):
            words.extend(shlex.split(m.group(1), comments=True))
        else:
            words.append(word)
    return words


def _flag_pairs(words: Sequence[str]) -> list:
    """``["--a", "1", "--b=2"]`` to ``[("a", "1"), ("b", "2")]``, argparse-style (every flag takes one value)."""
    pairs = []
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or word == "--":
            raise ValueError(f"expected a flag like --image_size, got {word!r}")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise ValueError(f"flag --{name} has no value (guided-diffusion's flags all take one, e.g. True)")
            value = words[i + 1]
            i += 1
        pairs.append((name, value))
        i += 1
    return pairs


def _unknown_flag(name: str) -> ValueError:
    close = difflib.get_close_matches(name, SCRIPT_DEFAULTS, n=1, cutoff=0.8)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return ValueError(
        f"unknown flag --{name}{hint}: not a guided-diffusion model or diffusion flag; "
        f"known: {', '.join(SCRIPT_DEFAULTS)}"
    )


def _convert_flag(name: str, value: Any) -> Any:
    """A flag value as the scripts' argparse reads it (type of the default; booleans as str2bool)."""
    default = SCRIPT_DEFAULTS[name]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"--{name} expects a boolean (True or False), got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"--{name} expects an integer, got {value!r}") from None
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            raise ValueError(f"--{name} expects a number, got {value!r}") from None
    # strings: "32,16,8"; a YAML or Python mapping may give 16 or [32, 16, 8]
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        raise ValueError(f"--{name} expects a string, got {value!r}")
    return str(value)


def parse_model_flags(flags: Union[str, Mapping[str, Any], Sequence[str]]) -> ModelFlags:
    """Read guided-diffusion script flags (``MODEL_FLAGS``, ``DIFFUSION_FLAGS``) as the scripts do.

    ``flags``: the string as pasted (``"--attention_resolutions 32,16,8 --class_cond False ..."``;
    ``--name=value`` and ``MODEL_FLAGS="..."`` lines work too), its words as a list, or a mapping
    ``{name: value}`` (names with or without ``--``; values typed or strings). Values are read as the
    scripts' argparse reads them (``True``/``False``/``yes``/``0`` for booleans; the last of a repeated
    flag wins); every flag not given takes its :data:`SCRIPT_DEFAULTS` value. Names that are not model
    or diffusion flags (sampling flags such as ``--batch_size``, typos) raise a ``ValueError`` naming them.
    """
    if isinstance(flags, str):
        pairs = _flag_pairs(_flag_words(flags))
    elif isinstance(flags, Mapping):
        pairs = [(str(k)[2:] if str(k).startswith("--") else str(k), v) for k, v in flags.items()]
    else:
        pairs = _flag_pairs([str(w) for w in flags])
    values = dict(SCRIPT_DEFAULTS)
    for name, value in pairs:
        if name not in SCRIPT_DEFAULTS:
            raise _unknown_flag(name)
        values[name] = _convert_flag(name, value)
    unet = UNetFlags(**{f.name: values[f.name] for f in dataclasses.fields(UNetFlags)})
    diffusion = DiffusionSettings(**{f.name: values[f.name] for f in dataclasses.fields(DiffusionSettings)})
    return ModelFlags(unet=unet, diffusion=diffusion, timestep_respacing=values["timestep_respacing"])


def create_model(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: Union[str, Sequence[float]] = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: Union[str, Sequence[int]] = "16",
    num_heads: int = 1,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = False,
    dropout: float = 0.0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    use_new_attention_order: bool = False,
) -> UNetModel:
    """Build the UNet from guided-diffusion ``create_model`` flags (same signature and defaults)."""
    return UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=parse_attention_resolutions(attention_resolutions, image_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, image_size),
        num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )
