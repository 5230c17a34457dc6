"""Model FLOPs utilisation: how much of the machine's matrix-multiply peak training uses.

FLOPs per trained token: 6N for full fine-tuning (forward 2N, backward 4N) and about 4N when
the base weights are frozen (LoRA, freeze: no weight gradients for most of N), N = parameters.
The peak is looked up for known GPUs (dense bf16 tensor-core figures from the vendors' data
sheets) and measured on CPUs with a short 2048^3 matmul burst (about 0.1 s, once per process);
a CPU that only emulates bf16 reports no bf16 peak, so bf16 runs there log no MFU.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

from lmtune.device import cpu_has_bf16

# Dense (no sparsity) bf16 peaks in FLOP/s, by a substring of torch.cuda.get_device_name().
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                 "A10G": 125e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


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
    # A private generator: drawing from the global one would shift dropout masks and break
    # the same-seed, same-losses guarantee for whichever run measures first.
    a = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0)).to(dtype)
    a @ a
    n, t0 = 5, time.perf_counter()
    for _ in range(n):
        a @ a
    return n * 2 * 2048**3 / (time.perf_counter() - t0)
