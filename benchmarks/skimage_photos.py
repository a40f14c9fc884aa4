"""Write the photos the skimage64 prior was trained on (scikit-image's bundled photos, as its
``../shared/priors/skimage64.json`` lists them) to ``data/replay/skimage``, for ``gdp fit --data.replay_dir``:
fine-tuning that mixes crops of the prior's own domain into the new domain's, against forgetting.

    .venv/bin/python benchmarks/skimage_photos.py [--out data/replay/skimage]

The files are not committed (``.gitignore``); scikit-image (a dev dependency) carries the photos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from gdp_lightning.benchmark import SKIMAGE_PHOTOS

OUT = Path(__file__).resolve().parents[1] / "data" / "replay" / "skimage"


def main() -> None:
    from skimage import data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    photos = {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}
    left, right, _ = data.stereo_motorcycle()
    photos.update(stereo_motorcycle_left=left, stereo_motorcycle_right=right)
    for name, pixels in photos.items():
        Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").save(args.out / f"{name}.png")
    print(f"{len(photos)} photos in {args.out}")


if __name__ == "__main__":
    main()
