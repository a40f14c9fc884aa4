"""Training speed of a prior: images per second of the fine-tuning step (hybrid loss, backward, AdamW), and on a GPU
the peak memory, with and without gradient checkpointing.

    .venv/bin/python benchmarks/train_speed.py --preset skimage64 --batch 8                   # CPU
    python benchmarks/train_speed.py --preset imagenet256_uncond --batch 8 --precision bf16 \\
        --checkpointing both --device cuda                                                     # GPU

The timed step is the work of one ``gdp fit`` optimizer step (:meth:`GDPModule.training_step` and the EMA update of
:meth:`GDPModule.on_train_batch_end`), written as a plain loop: uniform timesteps and Gaussian noise, the
improved-DDPM hybrid loss of the diffusion core (:meth:`GaussianDiffusion.training_losses`), backward, gradient
clipping at norm 1 (configs/finetune.yaml), AdamW, and the EMA update of the weights
(:func:`gdp_lightning.finetune.training.update_ema`, decay 0.9999 with the warm-up). bf16 runs the UNet under autocast with
float32 weights (Lightning's bf16-mixed). Not timed: data loading, Lightning's loop and logging, the seeded per-sample
generators of the timesteps and noise, validation and checkpoints. Random weights and data: the speed does not
depend on them.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from gdp_lightning.diffusion import GaussianDiffusion
from gdp_lightning.prior import get_preset, preset_names
from gdp_lightning.finetune.training import ema_decay_at, update_ema


def measure(preset: str, batch: int, precision: str, checkpointing: bool, device: str, steps: int, warmup: int):
    spec = get_preset(preset)
    model = spec.build_unet().to(device).train()
    model.set_compute_dtype(torch.float32)
    model.set_gradient_checkpointing(checkpointing)
    diffusion = GaussianDiffusion.from_prior(spec)
    ema = copy.deepcopy(model).requires_grad_(False)
    ema.set_gradient_checkpointing(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = spec.unet.image_size
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    kwargs = {"y": torch.zeros(batch, dtype=torch.long, device=device)} if spec.unet.class_cond else {}
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step(number: int):
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        with autocast:
            loss = diffusion.training_losses(model, x, t, model_kwargs=kwargs)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, model, ema_decay_at(number, 0.9999, True))

    for number in range(warmup):
        step(number)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for number in range(warmup, warmup + steps):
        step(number)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return seconds, batch / seconds, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="skimage64", choices=preset_names())
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="off")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.preset}, batch {args.batch}, {args.precision}, {name}")
    print("| gradient checkpointing | s / step | images / s | peak GPU memory (GiB) |")
    print("|---|---|---|---|")
    for checkpointing in modes:
        seconds, rate, memory = measure(args.preset, args.batch, args.precision, checkpointing, args.device,
                                        args.steps, args.warmup)
        print(f"| {'on' if checkpointing else 'off'} | {seconds:.3f} | {rate:.2f} | {memory:.2f} |")


if __name__ == "__main__":
    main()
