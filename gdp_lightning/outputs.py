"""The files of a restoration run (no Lightning): per input ``<name>.png`` (per scale in a sweep, with a
side-by-side grid), ``<name>.phi.pt`` and pictures of learned kernels and maps, and ``<name>.json`` (written last:
it marks the input done, or records why it failed); per run ``metrics.csv`` and ``metrics.json``. Every file is
written atomically. :class:`gdp_lightning.writer.RestorationWriter` decides when and where.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from .data.images import write_image
from .io import atomic_path
from .panels import MAP_GAIN, std_map
from .sampling.restorer import ImageResult, InputFailure, ScaleResult

__all__ = ["Failure", "phi_summary", "run_summary", "metrics_table", "write_spread", "write_record",
           "write_failure_record", "write_sweep", "summarize_records", "json_dump", "number"]


class Failure(NamedTuple):
    """An input without output: its name, why, and whether its restoration diverged (else a file of it is bad)."""

    name: str
    why: str
    diverged: bool

    def __str__(self) -> str:
        return f"{self.name} ({self.why})"


def number(x: float) -> float:
    return float(f"{float(x):.6g}")


def phi_summary(value: torch.Tensor) -> Any:
    """A small tensor as its values (6 significant digits), a large one as shape, mean, min and max."""
    value = value.detach().float().cpu()
    if value.numel() <= 16:
        return [number(v) for v in value.flatten().tolist()] if value.numel() > 1 else number(value.item())
    return {"shape": list(value.shape), "mean": number(value.mean()), "min": number(value.min()),
            "max": number(value.max())}


def is_map(value: torch.Tensor) -> bool:
    """Kernel- or map-shaped φ (spatial, at least 3×3): worth a picture."""
    return value.ndim >= 2 and value.shape[-1] >= 3 and value.shape[-2] >= 3


def map_image(value: torch.Tensor, min_side: int = 64) -> torch.Tensor:
    """A φ map or kernel as a gray image in [0, 1] (scaled by its range; small kernels enlarged, nearest)."""
    v = value.detach().float().cpu().reshape(-1, *value.shape[-2:])
    v = torch.cat(list(v), dim=-1)[None]  # groups side by side
    lo, hi = float(v.min()), float(v.max())
    v = (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)
    factor = max(1, math.ceil(min_side / min(v.shape[-2:])))
    if factor > 1:
        v = F.interpolate(v[None], scale_factor=factor, mode="nearest")[0]
    return v


def json_dump(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")


def write_failure_record(directory: Path, failure: InputFailure, process: int = 0) -> None:
    """The record of an input that could not be restored: no image, ``"failed": true`` and why; a rerun tries
    it again."""
    json_dump(directory / f"{failure.name}.json", {
        "name": failure.name, "input": failure.path, "index": failure.index,
        "process": process, "failed": True, "error": failure.error, "results": []})


def write_record(directory: Path, item: ImageResult, process: int = 0, save_phi: bool = True) -> None:
    """``<name>.png`` per scale (``<name>_s<scale>.png`` in a sweep, with ``<name>_scales.png``), the learned φ
    (``<name>.phi.pt``, pictures of kernels and maps) and last ``<name>.json``, which marks the input done."""
    name = item.name
    out = directory
    results = item.results
    multi = len(results) > 1
    record: Dict[str, Any] = {
        "name": name,
        "input": str(item.path) if item.path is not None else None,
        "index": item.index,
        "seed": item.seed,
        "process": process,
        "results": [],
    }
    if item.label is not None:
        record["label"] = item.label
    for result in results:
        suffix = f"_s{result.scale:g}" if multi else ""
        retried = {"retries": result.retries, "scale_used": result.scale_used} if result.retries else {}
        flags = ({"diverged": True, "diverged_step": result.diverged_step, "steps": result.steps}
                 if result.diverged_step is not None else {})
        if result.image is None:  # no output: where it went wrong, and its last loss terms
            record["failed"] = True
            record["results"].append({
                "scale": result.scale, **flags, **retried,
                "losses": {k: number(v) for k, v in result.losses.items()},
            })
            continue
        image_path = out / f"{name}{suffix}.png"
        write_image(image_path, result.image, bits=item.bits, alpha=item.alpha, gray=item.gray)
        entry: Dict[str, Any] = {
            "scale": result.scale,
            "output": image_path.name,
            "diverged": False,
            **flags,  # on_divergence keep: written all the same, marked
            **retried,
            "losses": {k: number(v) for k, v in result.losses.items()},
            "metrics": {k: number(v) for k, v in result.metrics.items()},
            "phi": {k: phi_summary(v) for k, v in result.phi.items()},
        }
        if result.std is not None:  # posterior samples: their spread, and each sample when asked
            entry.update(write_spread(out, f"{name}{suffix}", item, result))
        if save_phi and result.phi:
            phi_path = out / f"{name}{suffix}.phi.pt"
            with atomic_path(phi_path) as tmp:
                torch.save({k: v.detach().cpu().clone() for k, v in result.phi.items()}, tmp)
            entry["phi_file"] = phi_path.name
            for key, value in result.phi.items():
                if is_map(value):
                    picture = out / f"{name}{suffix}.{key}.png"
                    write_image(picture, map_image(value))
                    entry.setdefault("phi_pictures", {})[key] = picture.name
        record["results"].append(entry)
    if multi:
        write_sweep(item, out / f"{name}_scales.png")
        record["grid"] = f"{Path(name).name}_scales.png"
    json_dump(out / f"{name}.json", record)  # last: marks the input done

def write_sweep(item: ImageResult, path: Path) -> None:
    """The outputs of every scale side by side, each labelled with its scale."""
    from PIL import Image, ImageDraw

    tiles = []
    for result in item.results:
        image = result.image
        if image is None:
            continue
        array = (image.double().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        tile = Image.fromarray(array, "RGB")
        ImageDraw.Draw(tile).text((3, 2), f"s={result.scale:g}", fill=(255, 255, 0))
        tiles.append(tile)
    if not tiles:
        return
    width = sum(t.width for t in tiles) + 2 * (len(tiles) - 1)
    grid = Image.new("RGB", (width, max(t.height for t in tiles)), (0, 0, 0))
    x = 0
    for tile in tiles:
        grid.paste(tile, (x, 0))
        x += tile.width + 2
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def summarize_records(directory: Path, names: Sequence[str], dataset: Dict[str, float]) -> tuple:
    """``metrics.csv`` (one row per image and scale) and ``metrics.json`` (means by scale, failures, the dataset
    metrics) from the records of ``names`` in ``directory``: also those an earlier, interrupted run restored.
    Returns the rows, the failures and the means by scale."""
    rows: List[Dict[str, Any]] = []
    failures: List[Failure] = []
    for name in names:
        path = directory / f"{name}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if record.get("error"):  # an input that could not be used: no result
            rows.append({"name": name, "scale": None, "failed": 1, "error": record["error"]})
            failures.append(Failure(name, record["error"], diverged=False))
            continue
        for entry in record.get("results", []):
            if entry.get("diverged") and "output" not in entry:
                rows.append({"name": name, "scale": entry["scale"], "diverged": 1, "failed": 1,
                             "diverged_step": entry.get("diverged_step"), "error": "diverged"})
                reason = f"diverged at step {entry.get('diverged_step')} of {entry.get('steps')}"
                failures.append(Failure(name, reason, diverged=True))
            elif "metrics" in entry:
                rows.append({"name": name, "scale": entry["scale"], "diverged": int(bool(entry.get("diverged"))),
                             "failed": 0, "diverged_step": entry.get("diverged_step"), **entry["metrics"]})
    extra = ["diverged", "diverged_step", "failed", "error"]
    columns = ["name", "scale"] + sorted({k for r in rows for k in r} - {"name", "scale", *extra}) + extra
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(directory / "metrics.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    means: Dict[str, Dict[str, float]] = {}
    for scale in sorted({r["scale"] for r in rows if r["scale"] is not None}):
        chosen = [r for r in rows if r["scale"] == scale]
        means[f"{scale:g}"] = {
            k: number(sum(r[k] for r in chosen if k in r) / max(1, sum(k in r for r in chosen)))
            for k in columns[2:] if k not in ("diverged_step", "failed", "error")
        }
    summary = {"images": len({r["name"] for r in rows}), "failed": [str(f) for f in failures],
               "mean_by_scale": means, "dataset": {k: number(v) for k, v in dataset.items()}}
    json_dump(directory / "metrics.json", summary)
    return rows, failures, means


#: the metrics a summary line shows first (the others follow, up to five in all)
SHOWN_FIRST = ("psnr", "ssim", "lpips", "consistency", "loe", "kernel_error")


def run_summary(rows: List[Dict[str, Any]], means: Dict[str, Dict[str, float]], skipped: int, directory: Path,
                log_dir: Optional[str]) -> List[str]:
    """The end of a run in a few lines: images restored, skipped (restored before) and failed, the mean metrics per
    scale, where the outputs are and the TensorBoard command."""
    with_output = {r["name"] for r in rows if not r.get("failed")}
    failed = {r["name"] for r in rows if r.get("failed")} - with_output
    lines = [f"{max(0, len(with_output) - skipped)} restored, {skipped} skipped (restored before), "
             f"{len(failed)} without output"]
    for scale, mean in means.items():
        names = [k for k in SHOWN_FIRST if k in mean] + sorted(k for k in mean if k not in SHOWN_FIRST
                                                                and k != "diverged")
        values = ", ".join(f"{k} {mean[k]:.4g}" for k in names[:5])
        if values:
            lines.append(f"mean {values}" + (f" (scale {scale})" if len(means) > 1 else ""))
    lines.append(f"outputs in {directory} (metrics.csv)"
                 + (f"; TensorBoard: tensorboard --logdir {log_dir}" if log_dir else ""))
    return lines


def write_spread(directory: Path, stem: str, item: ImageResult, result: ScaleResult) -> Dict[str, Any]:
    """``<stem>.std.png`` (:func:`~gdp_lightning.panels.std_map`: gray level g is a standard deviation of
    g / 255 / MAP_GAIN) and, when kept, ``<stem>.sample<j>.png``; their record entries."""
    write_image(directory / f"{stem}.std.png", std_map(result.std).expand(3, -1, -1), gray=True)
    entry: Dict[str, Any] = {"std_output": f"{Path(stem).name}.std.png", "mean_std": number(result.std.float().mean()),
                             "std_scale": f"gray level / 255 / {MAP_GAIN:g} = standard deviation on the [0, 1] scale"}
    if result.samples is not None:
        names = []
        for j, sample in enumerate(result.samples):
            path = directory / f"{stem}.sample{j}.png"
            write_image(path, sample, bits=item.bits, alpha=item.alpha, gray=item.gray)
            names.append(path.name)
        entry["samples"] = names
    return entry


def metrics_table(rows: List[Dict[str, Any]]) -> str:
    """The per-image metrics as a Markdown table keyed by image name (TensorBoard's text dashboard)."""
    skip = {"name", "scale", "diverged_step", "failed", "error"}
    columns = sorted({k for r in rows for k in r} - skip)
    lines = ["| image | scale | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else str(r.get(k, "")) for k in columns]
        scale = "" if r.get("scale") is None else f"{r['scale']:g}"
        lines.append(f"| {r['name']}{' (failed: ' + str(r.get('error')) + ')' if r.get('failed') else ''} | {scale} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
