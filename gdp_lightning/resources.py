"""What a restoration will need: memory estimated from the image's size before it starts, time measured on its first
step.

The sampler keeps the whole image's state (x_t, μ, x̃0, the data term's gradient, the consistency step's vectors)
and runs the UNet on groups of ``tile_batch`` tiles, so its memory is a fixed part (the prior, one group of tiles)
plus a part proportional to the restored pixels. ``BYTES_PER_PIXEL`` is that part with a margin: measured with
``benchmarks/memory_vs_size.py`` (float32, peak resident memory on the CPU, inpainting), 182 to 229 MiB per
megapixel from 1 to 36 megapixels (about 240 bytes a pixel; README "Large images").
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["BYTES_PER_PIXEL", "estimate_bytes", "available_bytes", "format_bytes", "format_seconds"]

#: peak memory per restored pixel (float32 state of the whole image), with a margin over the measured 240 bytes
BYTES_PER_PIXEL = 300


def estimate_bytes(pixels: int, model_bytes: int = 0, tile_bytes: int = 0) -> int:
    """Peak memory of restoring ``pixels`` restored pixels (all the images of a batch) with a prior of
    ``model_bytes`` of weights and ``tile_bytes`` of activations per group of tiles."""
    return int(BYTES_PER_PIXEL * pixels + model_bytes + tile_bytes)


def available_bytes(device: Optional[torch.device] = None) -> Optional[int]:
    """Free memory where the restoration runs: the GPU's free memory, or the machine's available memory (Linux
    ``MemAvailable``, bounded by a cgroup memory limit); ``None`` when unknown."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        return None
    limit = _cgroup_limit()
    if limit is not None and available is not None:
        available = min(available, limit)
    return available


def _cgroup_limit() -> Optional[int]:
    """The container's memory limit minus what it uses (cgroup v2, then v1), if there is one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text == "max":
                return None
            with open(usage_file) as f:
                used = int(f.read().strip())
            limit = int(text)
            if limit >= 1 << 60:  # "no limit" in cgroup v1
                return None
            return max(0, limit - used)
        except (OSError, ValueError):
            continue
    return None


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
