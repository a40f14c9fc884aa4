"""The README's pictures of ``gdp predict``: a scale sweep and the x̃0 trajectory read back from TensorBoard.

    python benchmarks/readme_figures.py --out docs

Degrades two held-out 64×64 crops of scikit-image's photos (SR ×4, 8-bit), restores them with
``gdp predict`` on the skimage64 prior (100 steps, scales 2000/8000/32000, trajectory every 10 steps), then
writes ``predict_sr4_sweep.png`` (input upsampled, the three scales, the ground truth) and
``predict_sr4_trajectory.png`` (the ``trajectory/...`` image of the TensorBoard event file).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image

from gdp_lightning.benchmark import skimage_crops
from gdp_lightning.cli import main
from gdp_lightning.data import read_image, write_image
from gdp_lightning.degradations import SuperResolution
from gdp_lightning.metrics import to_8bit

REPO = Path(__file__).resolve().parents[1]
SCALES = [2000, 8000, 32000]


def _row(images, gap=2):
    tiles = [(im.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy() for im in images]
    h = max(t.shape[0] for t in tiles)
    out = np.zeros((h, sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1), 3), np.uint8)
    x = 0
    for t in tiles:
        out[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"))
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean = skimage_crops(2, size=64, seed=args.seed)
        y = to_8bit(SuperResolution(4)(clean))
        for i in range(2):
            write_image(tmp / "inputs" / f"crop{i}.png", y[i])
        rc = main([
            "predict", "--config", str(REPO / "configs/prior/skimage64.yaml"),
            "--config", str(REPO / "configs/task/sr4.yaml"), "--data.input_dir", str(tmp / "inputs"),
            "--model.sampler.steps", str(args.steps), "--model.sampler.guidance", "gradient", "--model.sampler.scales", str(SCALES),
            "--trajectory.every_n_steps", "10", "--trajectory.num_images", "1",
            "--writer.output_dir", str(tmp / "outputs"), "--trainer.logger.init_args.save_dir", str(tmp / "logs"),
            "--model.progress", "false", "--trainer.enable_progress_bar", "false",
        ])
        assert rc == 0
        rows = []
        for i in range(2):
            up = F.interpolate(y[i : i + 1], scale_factor=4, mode="nearest")[0]
            restored = [read_image(tmp / "outputs" / f"crop{i}_s{s}.png").pixels for s in SCALES]
            rows.append(_row([up, *restored, clean[i]]))
        Image.fromarray(np.concatenate([np.pad(r, ((0, 2), (0, 0), (0, 0))) for r in rows])).save(
            out / "predict_sr4_sweep.png")

        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(next((tmp / "logs").rglob("events.out.tfevents.*")).parent),
                                  size_guidance={"images": 0})
        events.Reload()
        tag = next(t for t in events.Tags()["images"] if t.startswith("trajectory/") and t.endswith("_s8000"))
        picture = Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string))
        picture.resize((picture.width * 2, picture.height * 2), Image.NEAREST).save(out / "predict_sr4_trajectory.png")
        print(f"wrote {out / 'predict_sr4_sweep.png'} and {out / 'predict_sr4_trajectory.png'} ({tag})")


if __name__ == "__main__":
    cli()
