"""Screenshots of TensorBoard as a user sees it, for the README (``docs/tensorboard_*.png``).

    apt-get install chromium
    .venv/bin/python benchmarks/tensorboard_screenshots.py [--out docs]

Runs, into one fresh log folder: a ``gdp predict`` of SR×4 with a scale sweep on the demo crops, a ``gdp test`` of
deblurring in synthetic mode with 4 posterior samples, and a short ``gdp fit`` (skimage64, 30 steps); then starts
``tensorboard --host 127.0.0.1`` on it and takes headless-Chromium screenshots of the images, time-series, text and
HParams dashboards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRIOR = REPO.parent / "shared" / "priors" / "skimage64.pt"
DASHBOARDS = {"images": "#images", "timeseries": "#timeseries", "text": "#text", "hparams": "#hparams"}


def gdp(*args: str) -> None:
    cmd = [sys.executable, "-m", "gdp_lightning", *args, "--config", str(REPO / "configs/prior/skimage64.yaml"),
           "--model.prior.checkpoint", str(PRIOR)]
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs"))
    parser.add_argument("--port", type=int, default=6123)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    root = Path(tempfile.mkdtemp())
    logs, demo = root / "logs", REPO / "data" / "demo"
    common = ["--trainer.logger.init_args.save_dir", str(logs)]
    make_low_resolution(demo, root / "low")
    gdp("predict", "--config", str(REPO / "configs/task/sr4.yaml"), "--data.input_dir", str(root / "low"),
        "--model.sampler.steps", "25", "--model.sampler.guidance", "gradient",
        "--model.sampler.scales", "[2000, 8000, 32000]", "--writer.output_dir", str(root / "sweep"), *common)
    gdp("test", "--config", str(REPO / "configs/task/deblur.yaml"), "--data.input_dir", str(demo), "--data.mode",
        "synthetic", "--model.sampler.steps", "25", "--model.sampler.num_samples", "4",
        "--writer.output_dir", str(root / "test"), *common)
    gdp("fit", "--config", str(REPO / "configs/task/sr4.yaml"), "--config", str(REPO / "configs/finetune.yaml"),
        "--data.input_dir", str(demo), "--data.val_dir", str(demo), "--trainer.max_steps", "30",
        "--data.epoch_size", "60", "--data.batch_size", "4", "--model.sampler.steps", "10",
        "--model.training.val_samples", "4", "--model.training.val_sample_steps", "10", *common)
    board = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logs), "--host",
                              "127.0.0.1", "--port", str(args.port), "--samples_per_plugin", "images=100"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(15)
        out = Path(args.out)
        for name, anchor in DASHBOARDS.items():
            target = out / f"tensorboard_{name}.png"
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--window-size=1400,1000", "--virtual-time-budget=20000", f"--screenshot={target}",
                            f"http://127.0.0.1:{args.port}/?forceSVG=true{anchor}"], check=True,
                           env={**os.environ, "HOME": str(root)}, capture_output=True)
            print(f"wrote {target}")
    finally:
        board.terminate()


def make_low_resolution(demo: Path, low: Path) -> None:
    """4×4 block averages of the demo crops: SR×4's inputs."""
    import torch.nn.functional as F

    from gdp_lightning.benchmark import quantize
    from gdp_lightning.data import read_image, write_image

    for path in sorted(demo.glob("*.png")):
        image = read_image(path).pixels[None]
        write_image(low / path.name, quantize(F.avg_pool2d(image, 4))[0])


if __name__ == "__main__":
    main()
