"""Draw unconditional samples from a prior: the quickest check that a checkpoint loads and works.

    python -m gdp_lightning.sample_prior --preset skimage64 \\
        --checkpoint ../shared/priors/skimage64.pt --steps 50 --num 16 --out logs/samples/skimage64.png

Writes a grid PNG and prints the time taken and the mean correlation of
horizontally neighbouring pixels (about 0.9 or more for photos, about 0 for noise).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torchvision.utils import save_image

from .diffusion import GaussianDiffusion, randn
from .io import atomic_path
from .prior import CheckpointError, get_preset, load_prior, preset_names
from .ranges import to_image
from .seeds import DATA, generator, stream_seed

__all__ = ["neighbour_correlation", "sample_prior", "main"]


def neighbour_correlation(images: torch.Tensor) -> torch.Tensor:
    """Per image, the Pearson correlation between horizontally adjacent pixels, shape ``(N,)``."""
    left = images[..., :, :-1].flatten(1).double()
    right = images[..., :, 1:].flatten(1).double()
    left = left - left.mean(1, keepdim=True)
    right = right - right.mean(1, keepdim=True)
    denom = left.norm(dim=1) * right.norm(dim=1)
    return ((left * right).sum(1) / denom.clamp_min(1e-12)).float()


@torch.no_grad()
def draw_samples(unet: torch.nn.Module, diffusion: GaussianDiffusion, generators: Sequence[torch.Generator],
                 size: int, *, labels: Optional[torch.Tensor] = None, method: str = "ddpm", batch_size: int = 16,
                 device: Union[str, torch.device, None] = None, progress: bool = False) -> torch.Tensor:
    """Samples of the prior in [0, 1], ``(len(generators), 3, size, size)``: sample i starts from noise drawn with
    ``generators[i]``, which also draws its later noise (so it does not depend on the batch), and has class
    ``labels[i]`` where the prior is class-conditional. ``gdp fit``'s validation samples and :func:`sample_prior`
    are both drawn here."""
    out = []
    for start in range(0, len(generators), batch_size):
        batch = list(generators[start : start + batch_size])
        noise = randn((len(batch), 3, size, size), batch, device=batch[0].device).to(device)
        kwargs = {} if labels is None else {"y": labels[start : start + len(batch)].to(device)}
        x = diffusion.sample(unet, noise=noise, method=method, generator=batch, model_kwargs=kwargs, progress=progress)
        out.append(to_image(x).clamp(0, 1).float().cpu())
    return torch.cat(out)


def sample_prior(
    preset: str,
    checkpoint: Optional[str],
    *,
    num: int = 16,
    steps: str = "50",
    method: str = "ddpm",
    batch_size: int = 8,
    seed: int = 0,
    class_label: Optional[int] = None,
    trust_checkpoint: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """``num`` samples in [0, 1], shape ``(num, 3, S, S)``; sample ``i`` is seeded by ``(seed, i)``."""
    spec = get_preset(preset)
    model = load_prior(spec, checkpoint, trust_checkpoint=trust_checkpoint, device=device)
    diffusion = GaussianDiffusion.from_prior(spec, respacing=steps)
    generators = [generator(stream_seed(seed, i, DATA), device) for i in range(num)]
    labels = None
    if spec.unet.class_cond:  # the one class, else a random class per sample (drawn before its noise)
        labels = torch.tensor([class_label if class_label is not None else int(torch.randint(1000, (1,), generator=g))
                               for g in generators], device=device)
    return draw_samples(model, diffusion, generators, spec.unet.image_size, labels=labels, method=method,
                        batch_size=batch_size, device=device, progress=progress)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gdp_lightning.sample_prior", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, choices=preset_names(), help="the prior's architecture")
    parser.add_argument("--checkpoint", help="weights file (a guided-diffusion state dict or a gdp-lightning checkpoint)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs full unpickling")
    parser.add_argument("--num", type=int, default=16, help="number of samples")
    parser.add_argument("--steps", default="50", help="respacing: '50', 'ddim50', '10,10,10' or '' (all steps)")
    parser.add_argument("--method", choices=["ddpm", "ddim"], default="ddpm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-label", type=int, help="class of a class-conditional prior (default: random per sample)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="grid PNG to write")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        images = sample_prior(
            args.preset,
            args.checkpoint,
            num=args.num,
            steps=args.steps,
            method=args.method,
            batch_size=args.batch_size,
            seed=args.seed,
            class_label=args.class_label,
            trust_checkpoint=args.trust_checkpoint,
            device=args.device,
            progress=True,
        )
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    with atomic_path(args.out) as tmp:
        save_image(images, tmp, nrow=max(1, int(math.ceil(math.sqrt(len(images))))))
    corr = neighbour_correlation(images).mean().item()
    print(f"wrote {len(images)} samples to {Path(args.out)} in {elapsed:.1f} s; neighbour correlation {corr:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
