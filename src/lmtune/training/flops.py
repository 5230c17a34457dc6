"""Model FLOPs utilisation: how much of the machine's matrix-multiply peak training uses.

FLOPs per trained token: 6N for full fine-tuning (forward 2N, backward 4N) and about 4N when
the base weights are frozen (LoRA, freeze: no weight gradients for most of N), N = parameters.
The peak is looked up for known GPUs (dense bf16 tensor-core figures from the vendors' data
sheets) and measured on CPUs with a short matmul burst on one thread (about 0.15 s, once per
process, sized from a first small timing), times the threads; a CPU that only emulates bf16
reports no bf16 peak (the figure would measure the emulation), so bf16 runs there log no MFU.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

from lmtune.device import cpu_has_bf16

# Dense (no sparsity) bf16 peaks in FLOP/s, by a substring of torch.cuda.get_device_name().
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                 "A10G": 125e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


BUDGET_S = 0.15  # the peak measurement's time, about, on any CPU


def flops_per_token(n_params: int, n_trainable: int) -> float:
    frozen_most = n_trainable < 0.5 * n_params
    return (4 if frozen_most else 6) * n_params


@lru_cache(maxsize=4)
def peak_flops(device: str, precision: str) -> float | None:
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in GPU_BF16_PEAK.items() if k in name), None)
        return peak if precision in ("bf16", "fp16") else None  # fp32/TF32 peaks vary too much
    if device != "cpu":
        return None
    if precision == "bf16" and not cpu_has_bf16():
        # Emulated bf16 (AVX2 CPUs): five 2048^3 matmuls took six minutes on a 2-core EPYC,
        # before the first step, and the figure would measure the emulation, not the machine.
        return None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # Timed on one thread, then times the threads training uses. A team of threads timed
    # while other processes hold the cores spins against them (OpenMP's wait policy): such a
    # peak came out 50x low on a busy 2-core EPYC, and MFU read 15 (1,500%). One thread has no
    # team to wait for, and the fastest of its matmuls is the one least disturbed. On a big
    # server this reads a little high (one core's clock and cache to itself), so MFU a little
    # low.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _one_thread_peak(dtype) * threads
    finally:
        torch.set_num_threads(threads)


def _one_thread_peak(dtype) -> float:
    # Sized from a first small timing so the burst stays near BUDGET_S on any CPU.
    gen = torch.Generator().manual_seed(0)
    n = 128
    a = torch.randn(n, n, generator=gen).to(dtype)
    a @ a
    t0 = time.perf_counter()
    a @ a
    rate = 2 * n**3 / max(time.perf_counter() - t0, 1e-9)
    while n < 1024 and 2 * (2 * n) ** 3 * 3 / rate < BUDGET_S:
        n *= 2  # bigger matmuls run nearer the peak; three of them must fit the budget
    a = torch.randn(n, n, generator=gen).to(dtype)
    a @ a
    best = float("inf")
    for _ in range(max(1, min(5, int(BUDGET_S * rate / (2 * n**3))))):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / max(best, 1e-9)
