"""The UNet's compute precision when restoring (``--model.precision auto|fp32|bf16|fp16``) and the trainer's when
fine-tuning (``gdp fit --trainer.precision auto``, :func:`training_precision`).

``auto`` picks the fastest precision that keeps quality on the device at hand:

- a CUDA GPU: ``bf16`` where the GPU supports it (compute capability 8.0 and above), else ``fp16`` (what
  guided-diffusion's ``use_fp16`` runs);
- a CPU with native bfloat16 instructions (AVX512-BF16 or AMX): ``bf16``;
- any other CPU, and other devices: ``fp32`` (without those instructions bfloat16 is converted in software, and
  float16 convolutions on a CPU are slower than float32).

``benchmarks/precision.py`` measures the choice on a machine (speed, PSNR and the difference to fp32 per task).
For training, ``auto`` picks Lightning's ``bf16-mixed`` where ``auto`` picks ``bf16``, ``16-mixed`` where it picks
``fp16`` and ``32-true`` otherwise: the weights stay float32 in every case.
"""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["PRECISIONS", "PRECISION_OPTIONS", "auto_precision", "cpu_has_bf16", "resolve_precision",
           "accelerator_device", "training_precision"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_OPTIONS = ("auto", *PRECISIONS)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX) and torch's CPU kernels use it."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def auto_precision(device: torch.device) -> Tuple[str, str]:
    """The precision ``auto`` picks on ``device`` and the reason, in words."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU computes bfloat16"
        return "fp16", "this GPU has no bfloat16 (compute capability below 8.0)"
    if device.type == "cpu":
        if cpu_has_bf16():
            return "bf16", "this CPU computes bfloat16 natively (AVX512-BF16/AMX)"
        return "fp32", "this CPU has no native bfloat16 (AVX512-BF16/AMX)"
    return "fp32", f"no faster precision is known for {device.type} devices"


def resolve_precision(option: str, device: torch.device) -> str:
    """The precision name an option means on ``device`` (``auto`` resolved; others as given)."""
    return auto_precision(device)[0] if option == "auto" else option


#: Lightning's precision for each restoring precision (mixed: autocast over float32 weights)
TRAINING_PRECISIONS = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


def accelerator_device(accelerator: object) -> torch.device:
    """The device type a trainer's ``accelerator`` option runs on (``auto``: a GPU where one is available)."""
    name = (accelerator if isinstance(accelerator, str) else type(accelerator).__name__).lower()
    if name.startswith(("cuda", "gpu")) or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def training_precision(accelerator: object = "auto") -> Tuple[str, str]:
    """The trainer precision ``auto`` picks for ``accelerator`` (``bf16-mixed``, ``16-mixed`` or ``32-true``) and
    the reason, in words."""
    name, reason = auto_precision(accelerator_device(accelerator))
    return TRAINING_PRECISIONS[name], reason
