"""What fine-tuning a prior needs in memory, by part: weights, gradients, AdamW's state, the EMA copy, and the
activations kept for the backward pass per image, in float32 and under bf16 autocast, with and without gradient
checkpointing; and the largest batch that fits a 24 GB and an 80 GB GPU.

    .venv/bin/python benchmarks/finetune_memory.py --preset imagenet256_uncond     # about 2 minutes on 2 CPU cores

Weights, gradients, AdamW (two float32 moments) and the EMA copy are computed from the parameter count: ``gdp fit``
keeps all of them in float32 (``--trainer.precision bf16-mixed`` computes in bfloat16 under autocast and keeps
the weights float32). The activations are measured: one training forward of the hybrid loss
(:meth:`GaussianDiffusion.training_losses`) on one image at the prior's size, on the CPU, counting every tensor
autograd saves for the backward pass (distinct storages; the weights themselves not; autocast's bfloat16 copies of
the weights, made once per forward, counted apart). With gradient checkpointing only the blocks' inputs are kept,
and the backward pass recomputes one block at a time: the largest block's own activations (measured block by
block without checkpointing) are added once. Not counted: the CUDA context and cuDNN workspaces, the allocator's
fragmentation, the gradient buffers of the layer being back-propagated; the batch sizes below leave 15 % of the
GPU for them.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Dict, List

import torch

from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.prior import get_preset, preset_names

GB = 1e9
HEADROOM = 0.15


class SavedBytes:
    """Sums the bytes of the tensors autograd saves (distinct storages, parameters and their casts apart)."""

    def __init__(self, parameters: List[torch.Tensor]):
        self.parameters = {p.untyped_storage().data_ptr() for p in parameters}
        self.seen: Dict[int, int] = {}
        self.weight_copies: Dict[int, int] = {}

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.parameters:
            # autocast's low-precision copy of a weight: a leaf-less tensor with a parameter's shape
            target = self.weight_copies if self._is_weight_copy(tensor) else self.seen
            target.setdefault(key, storage.nbytes())
        return tensor

    def _is_weight_copy(self, tensor: torch.Tensor) -> bool:
        return tensor.dtype == torch.bfloat16 and tuple(tensor.shape) in self.weight_shapes

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def hooks(self, model: torch.nn.Module):
        self.weight_shapes = {tuple(p.shape) for p in model.parameters() if p.ndim > 1}
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def activations(spec, model, diffusion, precision: str, checkpointing: bool) -> Dict[str, float]:
    """Bytes kept for the backward pass of one image (and, without checkpointing, the largest block's share)."""
    model.set_gradient_checkpointing(checkpointing)
    size = spec.unet.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    t = torch.tensor([diffusion.num_timesteps // 2])
    kwargs = {"y": torch.zeros(1, dtype=torch.long)} if spec.unet.class_cond else {}
    counter = SavedBytes(list(model.parameters()))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    marks: List[int] = []
    handles = []
    if not checkpointing:  # the running total at every block's start and end: the largest block's own share
        for block in [*model.input_blocks, model.middle_block, *model.output_blocks]:
            handles.append(block.register_forward_pre_hook(lambda m, a: marks.append(counter.total)))
            handles.append(block.register_forward_hook(lambda m, a, o: marks.append(counter.total)))
    else:  # a checkpointed block keeps its inputs (outside autograd's saved tensors)
        def keep_inputs(module, args):
            for a in args:
                if isinstance(a, torch.Tensor):
                    counter.seen.setdefault(a.untyped_storage().data_ptr(), a.untyped_storage().nbytes())

        for block in model.modules():
            if block is not model and getattr(block, "use_checkpoint", False):
                handles.append(block.register_forward_pre_hook(keep_inputs))
    with counter.hooks(model), autocast:
        diffusion.training_losses(model, x, t, noise=torch.randn(x.shape, generator=g), model_kwargs=kwargs)
    for h in handles:
        h.remove()
    largest = max((marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)), default=0)
    return {"kept": counter.total, "largest_block": largest, "weight_copies": sum(counter.weight_copies.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="imagenet256_uncond", choices=preset_names())
    parser.add_argument("--gpus", type=float, nargs="+", default=[24, 80], help="GPU memory in GB")
    args = parser.parse_args()
    spec = get_preset(args.preset)
    model = spec.build_unet().train()
    model.set_compute_dtype(torch.float32)
    diffusion = GaussianDiffusion.from_prior(spec)
    n = sum(p.numel() for p in model.parameters())
    static = {"weights (fp32)": 4 * n, "gradients (fp32)": 4 * n, "AdamW moments (2 × fp32)": 8 * n,
              "EMA weights (fp32)": 4 * n}
    print(f"{args.preset}: {n / 1e6:.1f} M parameters, {spec.unet.image_size}² images")
    print("\n| part | GB | |\n|---|---|---|")
    for part, value in static.items():
        print(f"| {part} | {value / GB:.2f} | computed |")
    fixed = sum(static.values())
    print(f"| sum | {fixed / GB:.2f} | computed |")
    rows = []
    for precision in ("fp32", "bf16"):
        plain = activations(spec, model, diffusion, precision, checkpointing=False)
        ckpt = activations(spec, model, diffusion, precision, checkpointing=True)
        rows.append((precision, "off", plain["kept"], plain["weight_copies"]))
        rows.append((precision, "on", ckpt["kept"] + plain["largest_block"], ckpt["weight_copies"]))
    print("\n| precision | gradient checkpointing | activations per image (GB, measured) | bf16 weight copies (GB) |"
          + "".join(f" largest batch, {gb:g} GB |" for gb in args.gpus))
    print("|---|---|---|---|" + "---|" * len(args.gpus))
    for precision, ckpt, per_image, copies in rows:
        fits = []
        for gb in args.gpus:
            room = gb * GB * (1 - HEADROOM) - fixed - copies
            fits.append(str(max(0, int(room // per_image))) if room > 0 else "0 (the fixed parts do not fit)")
        print(f"| {precision} | {ckpt} | {per_image / GB:.2f} | {copies / GB:.2f} |" + "".join(f" {f} |" for f in fits))


if __name__ == "__main__":
    main()
