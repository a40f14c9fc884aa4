"""UNet forward speed: milliseconds per image for a preset, eager and compiled, in float32/float16/bfloat16.

    python benchmarks/unet_speed.py --preset imagenet256_uncond --batch-sizes 1 32 \\
        --dtypes float16 bfloat16 --modes eager compile --channels-last --device cuda

With ``--reference PATH`` (a folder holding openai/guided-diffusion's
``guided_diffusion`` package, e.g. a checkout made for this comparison and
never committed), the reference UNet is timed at the same settings. Weights are
random (the speed does not depend on them); both models get the same ones.
Results are printed as a Markdown table and, with ``--json``, saved.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gdp_lightning.prior import get_preset  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_ours(spec, dtype):
    model = spec.build_unet(use_fp16=False)
    model.set_compute_dtype(dtype)
    return model


def build_reference(spec, dtype, reference_path):
    sys.path.insert(0, str(reference_path))
    from guided_diffusion.script_util import create_model  # type: ignore

    model = create_model(**{**spec.unet.to_dict(), "use_fp16": False})
    if dtype != torch.float32:
        # the reference converts the convolutions of its body and casts its input to model.dtype
        for part in (model.input_blocks, model.middle_block, model.output_blocks):
            for m in part.modules():
                if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
                    m.to(dtype)
        model.dtype = dtype
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, batch, size, device, classes, iters, warmup):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.to(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device) if classes else None
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            model(x, t, y)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="imagenet256_uncond")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile"])
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for weights and input")
    p.add_argument("--reference", type=Path, help="folder containing guided-diffusion's guided_diffusion package")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5, help="timed forwards per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting; the median is reported")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = get_preset(args.preset)
    size, classes = spec.unet.image_size, spec.unet.class_cond
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# {args.preset} at {size}x{size}, {hw}, torch {torch.__version__}", flush=True)
    print("| UNet | dtype | mode | batch | ms per image, median (range over rounds) | peak memory |\n|---|---|---|---|---|---|", flush=True)

    results = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        torch.manual_seed(0)
        models = {"ours": build_ours(spec, dtype)}
        if args.reference:
            models["reference"] = build_reference(spec, dtype, args.reference)
            models["reference"].load_state_dict(models["ours"].state_dict())
        for model in models.values():
            model.eval().requires_grad_(False).to(device)
            if args.channels_last:
                model.to(memory_format=torch.channels_last)
        for mode in args.modes:
            runners = {k: m if mode == "eager" else torch.compile(m, mode=args.compile_mode) for k, m in models.items()}
            for batch in args.batch_sizes:
                # alternate the implementations round by round so that both see the same machine state
                samples = {k: [] for k in runners}
                peak = {}
                failed = {}
                for _ in range(args.rounds):
                    for impl, runner in runners.items():
                        if impl in failed:
                            continue
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        try:
                            samples[impl].append(
                                time_forward(runner, batch, size, device, classes, args.iters, args.warmup)
                            )
                        except (RuntimeError, NotImplementedError) as e:  # e.g. a dtype the device lacks
                            failed[impl] = str(e).splitlines()[0][:80]
                            continue
                        if device.type == "cuda":
                            peak[impl] = torch.cuda.max_memory_allocated(device) / 2**30
                for impl in runners:
                    if impl in failed:
                        print(f"| {impl} | {dtype_name} | {mode} | {batch} | failed: {failed[impl]} | |", flush=True)
                        continue
                    ms = statistics.median(samples[impl])
                    mem = peak.get(impl)
                    results.append(dict(impl=impl, dtype=dtype_name, mode=mode, batch=batch, ms_per_image=ms,
                                        rounds_ms=samples[impl], peak_gib=mem, channels_last=args.channels_last))
                    mem_s = f"{mem:.1f} GiB" if mem is not None else "-"
                    spread = f"{min(samples[impl]):.1f}–{max(samples[impl]):.1f}"
                    print(f"| {impl} | {dtype_name} | {mode} | {batch} | {ms:.1f} ({spread}) | {mem_s} |", flush=True)
        del models
    if args.json:
        args.json.write_text(json.dumps(dict(preset=args.preset, hardware=hw, torch=torch.__version__,
                                             results=results), indent=1))


if __name__ == "__main__":
    main()
