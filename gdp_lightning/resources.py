"""What a restoration will need: memory estimated from the image's size before it starts, time measured on its first
step.

The sampler keeps the whole image's state (x_t, μ, x̃0, the data term's gradient, the consistency step's vectors)
and runs the UNet on groups of ``tile_batch`` tiles, so its memory is a fixed part (the prior, one group of tiles)
plus a part proportional to the restored pixels. ``BYTES_PER_PIXEL`` is that part with a margin: measured with
``benchmarks/memory_vs_size.py`` (float32, peak resident memory on the CPU, inpainting), 182 to 229 MiB per
megapixel from 1 to 36 megapixels (about 240 bytes a pixel; README "Large images").
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

import torch

__all__ = ["BYTES_PER_PIXEL", "estimate_bytes", "available_bytes", "format_bytes", "format_seconds",
           "keep_freed_memory"]

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


#: glibc's mallopt parameters and the threshold ``keep_freed_memory`` sets for both
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30


def keep_freed_memory(default: bool = True) -> bool:
    """Let glibc's allocator reuse freed blocks of up to 1 GiB instead of unmapping them; True where it did.

    glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free, so a CPU restoration
    of a large batch of small images (the activations of 32 64×64 crops are 64 MiB a layer) pays a page fault for
    every 4 KiB of every activation, at every step: with 4 posterior samples of 8 crops most of the time went to
    the kernel. Raising both thresholds keeps those blocks in the heap for the next step
    (``benchmarks/finetune_gain.py``, deblurring of 8 crops, 4 samples, 5 steps: 66 → 36 s on two cores) at the
    cost of a higher peak where freed blocks cannot be merged (1.59 → 1.91 GiB there; a 4000×4000 photo's first
    step 4.64 → 6.21 GiB, README "Large batches on the CPU"). Hence ``default``: the benchmarks' ``restore_crops``
    turn it on, the ``gdp`` command leaves glibc as it is. ``GDP_KEEP_FREED_MEMORY=1`` or ``=0`` in the
    environment overrides ``default``. Does nothing off glibc, or where ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` is set in the environment (the user's own choice, which glibc has applied
    already)."""
    wanted = os.environ.get("GDP_KEEP_FREED_MEMORY", "1" if default else "0") != "0"
    if not wanted or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl and macOS have no such thresholds
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
