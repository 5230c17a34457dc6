"""Device, precision and thread choices, made once per process."""

from __future__ import annotations

import os
import time
from functools import lru_cache

import torch

from lmtune.cpu import ThreadBudget, cpu_has_bf16, thread_budget
from lmtune.errors import UserError

__all__ = ["cpu_has_bf16", "pick_device", "pick_precision", "torch_dtype", "set_threads",
           "precision_warning"]


def pick_device(requested: str) -> str:
    """The device; on the CPU the thread budget is applied too, once per process."""
    device = _pick_device(requested)
    if device == "cpu" and _budget is None:
        set_threads()
    return device


def _pick_device(requested: str) -> str:
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


def set_threads(requested: int | None = None) -> ThreadBudget:
    """Threads for this process's matrix work (cpu.py says how they are chosen); one choice
    per process unless --threads asks again. N processes on one machine (LOCAL_WORLD_SIZE,
    set by torchrun) share the cores."""
    global _budget
    if requested is not None and requested < 1:
        raise UserError(f"--threads must be at least 1 (got {requested})",
                        hint="leave it out to use the cores this process may use")
    if _budget is None or requested:
        _budget = thread_budget(requested, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(_budget.threads)
    return _budget


_budget: ThreadBudget | None = None


@lru_cache(maxsize=1)
def bf16_slowdown() -> tuple[float, float]:
    """(how many times as long a bf16 matmul takes as an fp32 one here, seconds the check
    took). Sized from small timings so it ends well under a second even where bf16 is
    emulated (a 2048^3 bf16 matmul took over a minute on a 2-core AVX2 EPYC)."""
    t_start, n, gen = time.perf_counter(), 64, torch.Generator().manual_seed(0)
    while True:
        a = torch.randn(n, n, generator=gen)
        t32 = _matmul_seconds(a, 3)
        t16 = _matmul_seconds(a.bfloat16(), 1)
        if t16 > 0.02 or n >= 1024:
            return t16 / t32, time.perf_counter() - t_start
        n *= 2


def _matmul_seconds(a: torch.Tensor, reps: int) -> float:
    a @ a  # the first call picks kernels and allocates
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    return (time.perf_counter() - t0) / reps


def precision_warning(precision: str, device: str) -> str | None:
    """One line for an explicit --precision bf16 on a CPU that only emulates it."""
    if precision != "bf16" or device != "cpu" or cpu_has_bf16():
        return None
    ratio, seconds = bf16_slowdown()
    times = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"
    return (f"warning: this CPU has no native bf16 (no AVX512-BF16 or AMX); a bf16 matmul "
            f"took {times}x as long as fp32 (a {seconds:.2f} s check), and this run slows by "
            f"much of that; --precision fp32 (or auto, which picks it here) avoids it")
