"""A UNet with the parameter layout of openai/guided-diffusion's ``UNetModel``.

Every module below is created in the same order and under the same attribute
names as in the reference, so ``state_dict()`` has the reference's keys, shapes
and key order and every released checkpoint loads with ``strict=True``.

What differs from the reference is how the forward pass is computed:

* attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`
  on a ``(batch, tokens, channels)`` layout (the ``qkv`` and ``proj_out``
  parameters keep their ``Conv1d`` shapes);
* gradient checkpointing uses :func:`torch.utils.checkpoint.checkpoint` without
  re-entrancy, so it works when the UNet's parameters are frozen (the case of
  guided sampling, where only the input or the degradation needs gradients);
* the compute dtype of the body (``input_blocks``, ``middle_block``,
  ``output_blocks``) is a setting, :meth:`UNetModel.set_compute_dtype`, that
  accepts float16 and bfloat16; the time embedding and the output head stay in
  float32 as in the reference, and :meth:`UNetModel.float32_state_dict` always
  returns float32 values.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["UNetModel", "timestep_embedding"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape ``(N, dim)``, float32.

    The first half of the features are cosines, the second half sines, with
    frequencies ``max_period ** (-i / (dim // 2))``; an odd ``dim`` gets one
    zero feature at the end.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps[:, None].float() * torch.exp(exponent)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """Group normalisation computed in float32 whatever the input's dtype; output in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _maybe_checkpoint(enabled: bool, fn, *args):
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers that passes the timestep embedding to the layers that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, optionally followed by a 3×3 convolution (parameter ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """×2 downsampling: a strided 3×3 convolution (parameter ``op``) or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        elif self.out_channels != channels:
            raise ValueError("average-pool downsampling cannot change the number of channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) if self.use_conv else F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling (``up``/``down``).

    Parameter names: ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}`` and,
    when the channel count changes, ``skip_connection``.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        self.resample = "up" if up else ("down" if down else None)
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            _normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return _maybe_checkpoint(self.use_checkpoint, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.resample is not None:
            h = self._resample(h)
            x = self._resample(x)
        h = conv(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_act, out_drop, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + emb_out)
        h = out_conv(out_drop(out_act(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions.

    The parameters keep the reference's ``Conv1d`` shapes (``qkv``: ``(3C, C, 1)``,
    ``proj_out``: ``(C, C, 1)``). ``use_new_attention_order`` selects how the
    ``3C`` projection is split: the legacy order is heads outermost
    (``[head][q,k,v][channel]``), the new order ``[q,k,v][head][channel]``.

    ``attention`` is ``"sdpa"`` (fused scaled-dot-product attention on a
    ``(batch, tokens, channels)`` layout) or ``"reference"`` (guided-diffusion's
    own operations: slower, and on the same hardware equal to the reference bit
    for bit, which golden tests at ill-conditioned timesteps need).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"attention: {channels} channels are not divisible by num_head_channels={num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"attention: {channels} channels are not divisible by num_heads={self.num_heads}")
        self.use_checkpoint = use_checkpoint
        self.use_new_attention_order = use_new_attention_order
        self.attention = "sdpa"
        self.norm = _normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _maybe_checkpoint(self.use_checkpoint, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention == "reference":
            return self._forward_reference(x)
        b, c, height, width = x.shape
        heads, d = self.num_heads, c // self.num_heads
        h = self.norm(x).flatten(2)  # (b, c, L), a view in either memory format
        length = h.shape[-1]
        # projections as batched matmuls on strided views: no copies of the activations
        w_qkv = self.qkv.weight.squeeze(-1)
        qkv = torch.baddbmm(self.qkv.bias.expand(b, 1, 3 * c), h.transpose(1, 2), w_qkv.t().expand(b, c, 3 * c))
        if self.use_new_attention_order:
            q, k, v = qkv.unflatten(-1, (3, heads, d)).unbind(2)  # each (b, L, heads, d)
        else:
            q, k, v = qkv.unflatten(-1, (heads, 3, d)).unbind(3)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        a = a.transpose(1, 2).reshape(b, length, c)  # channels ordered [head][channel]
        w_out = self.proj_out.weight.squeeze(-1)
        if x.is_contiguous():  # NCHW: produce the update channel-first
            out = torch.baddbmm(self.proj_out.bias.view(1, c, 1).expand(b, c, 1), w_out.expand(b, c, c), a.transpose(1, 2))
            return x + out.view(b, c, height, width)
        # channels-last: produce it token-first, which is the same memory order
        out = torch.baddbmm(self.proj_out.bias.expand(b, 1, c), a, w_out.t().expand(b, c, c))
        return x + out.transpose(1, 2).reshape(b, c, height, width)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """guided-diffusion's own sequence of operations (einsum attention, float32 softmax)."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        heads, length = self.num_heads, qkv.shape[-1]
        d = c // heads
        scale = 1 / math.sqrt(math.sqrt(d))
        if self.use_new_attention_order:
            q, k, v = (t.reshape(b * heads, d, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * heads, d * 3, length).split(d, dim=1)
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """The guided-diffusion UNet (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021).

    Arguments have the names and meaning of guided-diffusion's ``UNetModel``;
    most users build it from ``create_model`` flags with
    :func:`gdp_lightning.prior.create_model` or a preset.

    :param image_size: the training resolution (informational; any size whose
        sides are multiples of ``2 ** (len(channel_mult) - 1)`` is accepted).
    :param in_channels: channels of the input image.
    :param model_channels: base channel count.
    :param out_channels: output channels (6 when the variance is learned).
    :param num_res_blocks: residual blocks per resolution.
    :param attention_resolutions: downsampling rates (1, 2, 4, ...) at which
        attention is used.
    :param dropout: dropout probability inside residual blocks.
    :param channel_mult: channel multiplier per resolution level.
    :param conv_resample: learned convolutions for up/downsampling.
    :param num_classes: number of classes of a class-conditional model, else ``None``.
    :param use_checkpoint: gradient checkpointing of every block (saves memory
        when gradients flow; a no-op without autograd).
    :param use_fp16: compute the body in float16 (see :meth:`set_compute_dtype`).
    :param num_heads: attention heads (when ``num_head_channels == -1``).
    :param num_head_channels: channels per attention head; overrides ``num_heads``.
    :param num_heads_upsample: heads in the decoder's attention; -1 = ``num_heads``.
    :param use_scale_shift_norm: FiLM-like conditioning on the timestep.
    :param resblock_updown: residual blocks for up/downsampling.
    :param use_new_attention_order: split q, k, v before heads.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: Optional[int] = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        attention_resolutions = tuple(attention_resolutions)
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.compute_dtype = torch.float32

        def res_block(ch_in: int, ch_out: int, **kw) -> ResBlock:
            return ResBlock(
                ch_in,
                time_embed_dim,
                dropout,
                out_channels=ch_out,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
                **kw,
            )

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(
                ch,
                num_heads=heads,
                num_head_channels=num_head_channels,
                use_checkpoint=use_checkpoint,
                use_new_attention_order=use_new_attention_order,
            )

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        ch = input_ch = int(self.channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(self.channel_mult) - 1:
                down = res_block(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch),
            attention(ch, num_heads),
            res_block(ch, ch),
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = input_block_chans.pop()
                layers = [res_block(ch + skip_ch, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    up = res_block(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            _normalization(ch),
            nn.SiLU(),
            _zeroed(nn.Conv2d(input_ch, out_channels, 3, padding=1)),
        )
        if use_fp16:
            self.set_compute_dtype(torch.float16)

    # ------------------------------------------------------------------ dtype
    def _body(self) -> Iterable[nn.Module]:
        return (self.input_blocks, self.middle_block, self.output_blocks)

    def set_compute_dtype(self, dtype: torch.dtype) -> "UNetModel":
        """Run the body in ``dtype`` (float32, float16 or bfloat16).

        As in guided-diffusion, the convolutions of the body hold their weights
        in ``dtype``; normalisations compute in float32; the time embedding and
        the output head stay float32 and the output is in the input's dtype.
        """
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"compute dtype must be float32, float16 or bfloat16, not {dtype}")
        for part in self._body():
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.to(dtype)
        self.compute_dtype = dtype
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> "UNetModel":
        """Turn gradient checkpointing of every residual and attention block on or off (the ``use_checkpoint``
        flag, changeable after building: it adds no parameters)."""
        for m in self.modules():
            if m is not self and hasattr(m, "use_checkpoint"):
                m.use_checkpoint = bool(enabled)
        return self

    def set_attention(self, attention: str) -> "UNetModel":
        """Choose the attention implementation: ``"sdpa"`` (default, fast) or ``"reference"`` (see AttentionBlock)."""
        if attention not in ("sdpa", "reference"):
            raise ValueError(f"attention must be 'sdpa' or 'reference', got {attention!r}")
        for m in self.modules():
            if isinstance(m, AttentionBlock):
                m.attention = attention
        return self

    def float32_state_dict(self) -> "dict[str, torch.Tensor]":
        """The state dict with float32 values, in the reference's key order (detached copies)."""
        return {k: v.detach().float().clone() for k, v in self.state_dict().items()}

    # ---------------------------------------------------------------- forward
    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Apply the model.

        :param x: ``(N, C, H, W)`` images at diffusion scale ([-1, 1] for data).
        :param timesteps: ``(N,)`` timesteps (a scalar is broadcast to the batch).
        :param y: ``(N,)`` integer class labels, required iff the model is class-conditional.
        :return: ``(N, out_channels, H, W)`` in ``x``'s dtype.
        """
        if (y is None) != (self.num_classes is None):
            raise ValueError(
                "class labels y are required for a class-conditional model and not accepted otherwise "
                f"(num_classes={self.num_classes}, y {'missing' if y is None else 'given'})"
            )
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"input height and width must be multiples of {m} for this UNet, got {tuple(x.shape[-2:])}; "
                "pad the image or restore it in tiles"
            )
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb_in = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(emb_in.to(self.time_embed[0].weight.dtype))
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"class labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)

        skips = []
        h = x.to(self.compute_dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))
