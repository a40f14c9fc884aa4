"""Write the held-out evaluation crops: ``data/heldout/*.png``, 64×64 8-bit RGB crops of colour photos that the
skimage64 prior was not trained on and that no setting was chosen on.

    python benchmarks/heldout_data.py    # needs scikit-learn and matplotlib (their bundled sample photos)

Sources (see data/README.md for the licences): scikit-learn's ``china.jpg`` and ``flower.jpg`` and matplotlib's
``grace_hopper.jpg``. Each photo gives 8 crops: a scale drawn from [0.2, 0.5] (antialiased bicubic
downscaling), a position drawn uniformly, both from a generator seeded by the photo's position in the list;
a crop whose values vary less than 0.03 (standard deviation; a patch of sky) is drawn again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PER_PHOTO, SIZE = 8, 64


def photos():
    import matplotlib
    import sklearn.datasets

    images = sklearn.datasets.load_sample_images()
    named = dict(zip([Path(f).stem for f in images.filenames], images.images))
    hopper = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    return [("china", named["china"]), ("flower", named["flower"]), ("hopper", hopper)]


def main() -> None:
    out = ROOT / "data" / "heldout"
    out.mkdir(parents=True, exist_ok=True)
    for p, (name, array) in enumerate(photos()):
        g = torch.Generator().manual_seed(p)
        image = torch.from_numpy(np.array(array)).permute(2, 0, 1).float()[None] / 255
        k = 0
        while k < PER_PHOTO:
            scale = 0.2 + 0.3 * float(torch.rand(1, generator=g))
            small = F.interpolate(image, scale_factor=scale, mode="bicubic", antialias=True, align_corners=False)
            top = int(torch.randint(0, small.shape[-2] - SIZE + 1, (1,), generator=g))
            left = int(torch.randint(0, small.shape[-1] - SIZE + 1, (1,), generator=g))
            crop = small[0, :, top : top + SIZE, left : left + SIZE].clamp(0, 1)
            if float(crop.std()) < 0.03:
                continue
            values = (crop * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(values, "RGB").save(out / f"{name}_{k}.png")
            k += 1
    print(f"wrote {len(list(out.glob('*.png')))} crops to {out}")


if __name__ == "__main__":
    main()
