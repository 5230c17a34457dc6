"""Device, precision and thread choices, made once per process."""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from lmtune.errors import UserError


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast made a 135M LoRA step about 1.5x faster on such a CPU.
    Without them bf16 matmuls are emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(requested: str) -> str:
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available",
                        hint="use --device cpu or --device auto")
    if requested == "mps" and not (getattr(torch.backends, "mps", None)
                                   and torch.backends.mps.is_available()):
        raise UserError("--device mps was asked for but MPS is not available",
                        hint="use --device cpu or --device auto")
    return requested


def pick_precision(requested: str, device: str) -> str:
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device == "cpu":
            return "bf16" if cpu_has_bf16() else "fp32"
        return "fp32"
    if requested == "fp16" and device != "cuda":
        raise UserError(f"--precision fp16 needs a CUDA GPU (device is {device})",
                        hint="use --precision bf16 or fp32")
    return requested


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def set_threads() -> None:
    """One thread per physical core: hyper-threads share the matrix units and slow a step.
    N processes on one machine (LOCAL_WORLD_SIZE, set by torchrun) share the cores."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    torch.set_num_threads(threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def threads_per_process(processes: int = 1) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    physical = _physical_cores() or cores
    return max(1, min(cores, physical) // max(1, processes))


def _physical_cores() -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            pairs = {(block.split("physical id")[1].split("\n")[0],
                      block.split("core id")[1].split("\n")[0])
                     for block in f.read().split("\n\n") if "core id" in block}
        return len(pairs) or None
    except (OSError, IndexError):
        return None
