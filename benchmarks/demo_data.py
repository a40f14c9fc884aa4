"""Data of the demo prior: skimage64 fine-tuned on scikit-image's grayscale photos and one HDR scene.

    .venv/bin/python benchmarks/demo_data.py            # writes logs/finetune/{train,heldout} and data/demo

Every image (the three HDR exposures count as three) is split by width: the left 75 % (rounded down) is
training data, the right 25 % is held out. The script writes

- ``<out>/train/<name>.png``: the training parts, 8-bit (gray photos as gray PNGs, the HDR parts as RGB);
- ``<out>/heldout/<name>_<k>.png``, k = 0, 1: two 64×64 evaluation crops per held-out part, a square of side
  ``min(128, H, W)`` of the strip at a seeded position, resized (bicubic, antialiased), 8-bit RGB;
- ``<demo-dir>/<name>.png``: copies of the k = 0 crops of the demo photos (``--skip-demo`` leaves them alone).

The HDR scene (from the official GDP repository, licence not stated) is read from ``--hdr-dir``; it may be used
for training and evaluation but is never copied into ``data/``. The output is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import shutil
import zlib
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from gdp_lightning.data.images import read_image, write_image

REPO = Path(__file__).resolve().parents[1]
GRAY_PHOTOS = ["camera", "coins", "moon", "page", "text", "clock", "cell", "brick", "grass", "gravel",
               "microaneurysms"]
HDR_EXPOSURES = ["short", "medium", "long"]
# CC0 / public-domain photos whose k = 0 crop (seed 0) has edges, text or texture for super-resolution to recover
DEMO_PHOTOS = ["brick", "coins", "gravel", "text"]
TRAIN_FRACTION = 0.75
CROP_MAX, CROP_SIZE, CROPS_PER_IMAGE = 128, 64, 2


def domain_images(hdr_dir: Path) -> dict[str, tuple[torch.Tensor, bool]]:
    """name -> (``(C, H, W)`` float32 pixels in [0, 1], whether gray): the gray photos, then the HDR exposures."""
    images = {}
    for name in GRAY_PHOTOS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype != np.uint8 or array.ndim != 2:
            raise SystemExit(f"skimage.data.{name}(): expected a 2-D uint8 array, got {array.dtype} {array.shape}")
        images[name] = (torch.from_numpy(array.copy())[None].float() / 255, True)
    for exposure in HDR_EXPOSURES:
        path = hdr_dir / f"{exposure}.png"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; give the folder of the HDR exposures with --hdr-dir")
        images[f"hdr_{exposure}"] = (read_image(path).pixels, False)
    return images


def heldout_crop(strip: torch.Tensor, seed: int, name: str, k: int) -> torch.Tensor:
    """Crop ``k`` of a held-out strip: a seeded square of side ``min(128, H, W)`` -> ``(3, 64, 64)`` 8-bit levels."""
    height, width = strip.shape[-2:]
    side = min(CROP_MAX, height, width)
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{k}".encode()))
    top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
    square = strip[:, top : top + side, left : left + side].expand(3, -1, -1)
    small = F.interpolate(square[None], size=(CROP_SIZE, CROP_SIZE), mode="bicubic", antialias=True,
                          align_corners=False)[0]
    return (small.clamp(0, 1) * 255).round() / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("logs/finetune"), help="folder of train/ and heldout/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop positions")
    parser.add_argument("--demo-dir", type=Path, default=Path("data/demo"), help="folder of the demo samples")
    parser.add_argument("--skip-demo", action="store_true", help="do not write the demo samples")
    parser.add_argument("--hdr-dir", type=Path, default=REPO.parent / "shared/data/hdr_example",
                        help="folder of the HDR exposures short.png, medium.png, long.png")
    args = parser.parse_args()

    train_dir, heldout_dir = args.out / "train", args.out / "heldout"
    sizes = {}
    for name, (pixels, gray) in domain_images(args.hdr_dir).items():
        split = int(pixels.shape[-1] * TRAIN_FRACTION)
        write_image(train_dir / f"{name}.png", pixels[..., :split], gray=gray)
        sizes[name] = (int(pixels.shape[-2]), split)
        for k in range(CROPS_PER_IMAGE):
            write_image(heldout_dir / f"{name}_{k}.png", heldout_crop(pixels[..., split:], args.seed, name, k))

    print(f"{train_dir}: {len(sizes)} training parts (H x W: "
          + ", ".join(f"{name} {h}x{w}" for name, (h, w) in sizes.items()) + ")")
    print(f"{heldout_dir}: {len(sizes) * CROPS_PER_IMAGE} held-out {CROP_SIZE}x{CROP_SIZE} crops")
    if not args.skip_demo:
        args.demo_dir.mkdir(parents=True, exist_ok=True)
        for name in DEMO_PHOTOS:
            shutil.copyfile(heldout_dir / f"{name}_0.png", args.demo_dir / f"{name}.png")
        print(f"{args.demo_dir}: {len(DEMO_PHOTOS)} demo samples ({', '.join(DEMO_PHOTOS)})")


if __name__ == "__main__":
    main()
