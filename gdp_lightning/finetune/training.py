"""Fine-tuning the prior: the settings of ``gdp fit``, timestep samplers, the EMA of the weights, the learning rate.

``gdp fit`` trains the UNet with the improved-DDPM objective of the diffusion core
(:meth:`~gdp_lightning.diffusion.GaussianDiffusion.training_losses`: ε MSE plus the variational-bound term
when the variance is learned), as guided-diffusion's training loop does: AdamW, a linear learning-rate warm-up,
timesteps drawn uniformly or by importance (the loss-second-moment sampler of improved DDPM), and an exponential
moving average (EMA) of the weights that sampling, validation and export use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..diffusion import GaussianDiffusion, randn
from ..diffusion.schedules import respacing_string
from ..errors import ConfigError
from ..seeds import TRAINING, dropout_seed, generator, stream_seed

__all__ = [
    "TrainingSettings",
    "UniformTimesteps",
    "LossSecondMomentTimesteps",
    "make_timestep_sampler",
    "ema_decay_at",
    "update_ema",
    "warmup_factor",
    "sample_generator",
    "dropout_seed",
    "denoising_loss",
]

TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")


@dataclass(frozen=True)
class TrainingSettings:
    """How ``gdp fit`` fine-tunes the prior (gradient clipping and precision are the trainer's:
    ``--trainer.gradient_clip_val 1.0 --trainer.precision bf16-mixed``).

    :param lr: AdamW learning rate after the warm-up (guided-diffusion trains at 1e-4; fine-tuning a few hundred
        steps works with 1e-4 to 2e-5).
    :param weight_decay: AdamW weight decay.
    :param betas: AdamW betas.
    :param warmup_steps: linear learning-rate warm-up from 0 over this many optimizer steps.
    :param timestep_sampler: ``uniform``, or ``loss-second-moment`` (importance sampling: each timestep with
        probability ∝ sqrt(E[loss²]) over its last 10 losses, mixed with 0.1 % uniform; uniform until every timestep
        has 10 losses).
    :param timesteps: ``[first, end)``: train on the timesteps of this range only (of the prior's training
        schedule, e.g. ``[0, 200]`` of 1000: the low noise levels, where a sample's fine detail is made); default
        every timestep. Outside the range the weights are shared, so the prior's behaviour there moves too, less.
    :param ema_decay: decay of the EMA of the weights (0 = no EMA: sampling and export use the trained weights).
    :param ema_warmup: use decay min(ema_decay, (1 + n) / (10 + n)) after n updates, so that a short fine-tuning
        is not averaged away into the starting weights.
    :param gradient_checkpointing: recompute the UNet's activations in the backward pass (less memory, ~30 % slower).
    :param trainable: the parts of the UNet that train; the others stay frozen (see
        :mod:`gdp_lightning.prior.adapters`: ``all``, ``attention``, ``norm``, ``input_blocks``, ``middle_block``,
        ``output_blocks``, ``out``, ``time_embed``, or patterns over parameter names). Default: every weight, or
        with ``lora_rank`` none but the adapters.
    :param lora_rank: > 0: train low-rank adapters of this rank on the layers ``lora_targets`` names instead of
        their weights (the UNet's weights stay frozen, except the parts ``trainable`` names); the EMA, validation
        and ``gdp export`` use the adapted weights merged into a plain guided-diffusion state dict.
    :param lora_alpha: the adapters' update is scaled by ``lora_alpha / lora_rank`` (default ``lora_rank``: 1).
    :param lora_targets: the layers that get adapters: ``1x1`` (every 1×1 convolution: the attention's ``qkv`` and
        ``proj_out`` and the 1×1 skip connections), ``attention``, ``conv``, ``linear``, or patterns over module names.
    :param val_samples: validation: unconditional samples logged to TensorBoard as a grid (0 = none).
    :param val_sample_steps: validation: sampling steps of those samples (respacing string).
    :param baseline_validation: a fresh run (not a resumed one) first validates the starting prior on the whole
        validation set and logs it at step 0 (metrics, restorations and samples), so that TensorBoard shows the
        prior improve from where it started. It runs as Lightning's sanity check, which it replaces (the trainer's
        ``num_sanity_val_steps`` applies to resumed runs only). A resumed run does not repeat it: with
        configs/finetune.yaml a checkpoint is written after each validation, so the step it resumes at was
        validated already. Validations are logged at the number of optimizer steps done (0, then e.g. 100, 200).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    timestep_sampler: str = "uniform"
    timesteps: Optional[Tuple[int, int]] = None
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    gradient_checkpointing: bool = False
    trainable: Optional[List[str]] = None
    lora_rank: int = 0
    lora_alpha: Optional[float] = None
    lora_targets: List[str] = field(default_factory=lambda: ["1x1"])
    val_samples: int = 16
    val_sample_steps: Union[int, str] = "50"
    baseline_validation: bool = True

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"--model.training.lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"--model.training.warmup_steps must be 0 or more, got {self.warmup_steps}")
        if self.timestep_sampler not in TIMESTEP_SAMPLERS:
            raise ConfigError(f"--model.training.timestep_sampler must be one of {', '.join(TIMESTEP_SAMPLERS)}, "
                              f"got {self.timestep_sampler!r}")
        if self.timesteps is not None:
            check_timestep_range(self.timesteps)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--model.training.ema_decay must be in [0, 1), got {self.ema_decay}")
        try:
            object.__setattr__(self, "val_sample_steps", respacing_string(self.val_sample_steps))
        except ValueError as e:
            raise ConfigError(f"--model.training.val_sample_steps {e}") from None
        if self.lora_rank < 0:
            raise ConfigError(f"--model.training.lora_rank must be 0 (no adapters) or more, got {self.lora_rank}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ConfigError(f"--model.training.lora_alpha must be positive, got {self.lora_alpha}")
        if self.lora_rank and not self.lora_targets:
            raise ConfigError("--model.training.lora_targets is empty: name the layers that get adapters, e.g. [1x1]")
        if self.trainable is not None and not self.trainable and not self.lora_rank:
            raise ConfigError("--model.training.trainable is empty and there are no adapters: nothing would train; "
                              "name the parts to train (e.g. [all]) or set --model.training.lora_rank")
        if self.val_samples < 0:
            raise ConfigError(f"--model.training.val_samples must be 0 or more, got {self.val_samples}")


def check_timestep_range(timesteps: Tuple[int, int], num_timesteps: Optional[int] = None) -> None:
    """Raise :class:`ConfigError` unless ``timesteps`` is a range ``[first, end)`` with ``0 <= first < end``
    (``<= num_timesteps`` where the prior's schedule is known)."""
    first, end = timesteps
    if 0 <= first < end and (num_timesteps is None or end <= num_timesteps):
        return
    of = f" of the prior's {num_timesteps} timesteps" if num_timesteps is not None else ""
    bound = f" <= {num_timesteps}" if num_timesteps is not None else ""
    raise ConfigError(f"--model.training.timesteps [{first}, {end}] is not a range{of}: give [first, end) with "
                      f"0 <= first < end{bound}")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based): linear from 1/warmup to 1, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def ema_decay_at(updates: int, decay: float, warmup: bool) -> float:
    """The EMA decay of update number ``updates`` (0-based)."""
    if not warmup:
        return decay
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _value(model: nn.Module, name: str) -> torch.Tensor:
    """``model``'s tensor called ``name`` as the forward pass sees it (an adapted weight merged)."""
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module) if module else model, attr)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · model`` for every parameter of ``ema``, by name; buffers are copied.
    ``model`` may carry low-rank adapters: the EMA (a plain UNet) averages the weights they give."""
    ema_params = [p for _, p in ema.named_parameters()]
    params = [_value(model, n).detach().to(p.dtype) for n, p in ema.named_parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for name, e in ema.named_buffers():
        e.copy_(_value(model, name))


class UniformTimesteps(nn.Module):
    """Timesteps drawn uniformly (from ``[first, end)`` of ``timesteps`` when given); every loss weighs 1."""

    #: whether :meth:`update` uses the losses (then the training step gathers them from every process)
    uses_losses = False

    def __init__(self, num_timesteps: int, timesteps: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.num_timesteps = num_timesteps
        first, end = timesteps if timesteps is not None else (0, num_timesteps)
        check_timestep_range((first, end), num_timesteps)
        self.allowed = torch.zeros(num_timesteps, dtype=torch.bool)
        self.allowed[first:end] = True

    def weights(self) -> torch.Tensor:
        return self.allowed.double()

    def sample(self, generators: Sequence[torch.Generator], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(t, weight)``: one timestep per generator, ``(N,)`` long, and the importance weights ``(N,)`` float32
        of their losses (1 on average over the allowed timesteps)."""
        w = self.weights()
        p = w / w.sum()
        t = torch.cat([torch.multinomial(p, 1, generator=g) for g in generators])
        weight = 1.0 / (int(self.allowed.sum()) * p[t])
        return t.to(device), weight.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the losses of the timesteps ``t`` (of every process)."""


class LossSecondMomentTimesteps(UniformTimesteps):
    """Importance sampling of improved DDPM: p(t) ∝ sqrt(mean of the last ``history`` losses² at t), mixed with
    ``uniform_prob`` of uniform; uniform until every timestep has ``history`` losses. The history is a buffer, so
    it is saved in checkpoints and a resumed run samples as the interrupted one would have."""

    uses_losses = True

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001,
                 timesteps: Optional[Tuple[int, int]] = None):
        super().__init__(num_timesteps, timesteps)
        self.history, self.uniform_prob = history, uniform_prob
        self.register_buffer("loss_history", torch.zeros(num_timesteps, history, dtype=torch.float64))
        self.register_buffer("loss_counts", torch.zeros(num_timesteps, dtype=torch.long))

    def warmed_up(self) -> bool:
        return bool((self.loss_counts[self.allowed] >= self.history).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return self.allowed.double()
        w = self.loss_history.cpu().pow(2).mean(-1).sqrt() * self.allowed
        w = w / w.sum()
        return (w * (1 - self.uniform_prob) + self.uniform_prob / int(self.allowed.sum())) * self.allowed

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for step, loss in zip(t.flatten().tolist(), losses.flatten().double().tolist()):
            count = int(self.loss_counts[step])
            if count == self.history:  # drop the oldest
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, count] = loss
                self.loss_counts[step] += 1


def make_timestep_sampler(name: str, num_timesteps: int,
                          timesteps: Optional[Tuple[int, int]] = None) -> UniformTimesteps:
    if name == "uniform":
        return UniformTimesteps(num_timesteps, timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentTimesteps(num_timesteps, timesteps=timesteps)
    raise ConfigError(f"--model.training.timestep_sampler must be one of {', '.join(TIMESTEP_SAMPLERS)}, got {name!r}")


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of training sample ``index``'s timestep and noise: a function of (seed, index) only, so a
    step trains on the same (crop, timestep, noise) triples however many processes share it and after a resume."""
    return generator(stream_seed(seed, index, TRAINING))


@torch.no_grad()
def denoising_loss(
    diffusion: GaussianDiffusion, model: nn.Module, x: torch.Tensor, generators: Sequence[torch.Generator], num_timesteps: int = 8,
    model_kwargs: Optional[dict] = None,
) -> Dict[str, torch.Tensor]:
    """How well a prior models clean images ``x`` (``(N, 3, S, S)`` in [-1, 1]): per image, the training loss
    (``"loss"``, and its ``"mse"`` term; plus ``"vb"`` for a learned variance) averaged over ``num_timesteps``
    evenly spread timesteps, image i's noise drawn from ``generators[i]``: comparable between priors and between
    validations."""
    total: Dict[str, torch.Tensor] = {}
    for k in range(num_timesteps):
        t = torch.full((len(x),), int((k + 0.5) * diffusion.num_timesteps / num_timesteps), device=x.device)
        noise = randn(x.shape, generators).to(x.device)
        terms = diffusion.training_losses(model, x, t, noise=noise, model_kwargs=model_kwargs)
        for key, value in terms.items():
            total[key] = total.get(key, 0) + value.float() / num_timesteps
    return total
