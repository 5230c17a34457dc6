"""What this CPU can do and how many of its cores this process may use; no torch import here,
because the OpenMP wait policy must be chosen before torch loads its OpenMP runtime.

The thread budget:
- cores: this process's CPU affinity (taskset, numactl, a batch scheduler) capped by the
  cgroup CPU quota (docker --cpus, Kubernetes limits), not os.cpu_count(), which counts the
  whole host; then one thread per physical core, since hyper-threads share the matrix units;
- several lmtune processes on one machine (LOCAL_WORLD_SIZE under torchrun) share them;
- waiting threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), measured in
  benchmarks/busy_machine.py: with the default spin-wait, two runs on two cores each
  spin against the other's work.
OMP_NUM_THREADS, OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user win over every choice here.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"
# Read by libgomp (torch's OpenMP on Linux) when it loads; also by Intel's OpenMP.
_WAIT_VARS = (WAIT_POLICY, "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def choose_wait_policy() -> str:
    """Make OpenMP's idle threads sleep rather than spin, unless the user chose, and say
    which policy holds. Must run before torch is imported to take effect (lmtune/__init__
    calls it); later, whatever the runtime already read holds."""
    if any(v in os.environ for v in _WAIT_VARS):
        return os.environ.get(WAIT_POLICY, "set by the user").lower()
    if "torch" in sys.modules:
        return "spin (torch was imported before lmtune)"
    os.environ[WAIT_POLICY] = "PASSIVE"
    return "passive"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast made a 135M LoRA step about 1.5x faster on such a
    CPU. Without them bf16 matmuls are emulated, many times slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup and its ancestors, in cores (None: no quota)."""
    quotas = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max is "max 100000" or "QUOTA PERIOD"
            quotas += _walk(Path("/sys/fs/cgroup"), rel, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: cpu.cfs_quota_us, -1 for none
            for root in (Path("/sys/fs/cgroup/cpu,cpuacct"), Path("/sys/fs/cgroup/cpu")):
                if root.is_dir():
                    quotas += _walk(root, rel, _v1_quota)
                    break
    return min(quotas) if quotas else None


def _walk(root: Path, rel: str, read) -> list[float]:
    """Quotas from the process's own cgroup up to the root (a parent's limit binds too);
    inside a container the path may not exist below the mounted root, which then holds it."""
    found, path = [], root / rel.lstrip("/")
    while True:
        q = read(path)
        if q is not None:
            found.append(q)
        if path == root or root not in path.parents:
            return found
        path = path.parent


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


@lru_cache(maxsize=1)
def physical_cores() -> int | None:
    """Distinct (socket, core) pairs in /proc/cpuinfo; None where it does not say."""
    try:
        blocks = Path("/proc/cpuinfo").read_text(encoding="utf-8").split("\n\n")
    except OSError:
        return None
    pairs = set()
    for block in blocks:
        fields = dict(ln.split(":", 1) for ln in block.splitlines() if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            pairs.add((fields.get("physical id", "0"), fields["core id"]))
    return len(pairs) or None


@dataclass(frozen=True)
class ThreadBudget:
    threads: int
    why: str          # for the start line: where the number came from

    def line(self) -> str:
        return f"threads: {self.threads} ({self.why})"


def thread_budget(requested: int | None = None, processes: int = 1) -> ThreadBudget:
    """Threads for one of `processes` lmtune processes on this machine: --threads, else
    OMP_NUM_THREADS, else the usable physical cores shared between the processes."""
    wait = os.environ.get(WAIT_POLICY, "default").lower()
    if requested:
        return ThreadBudget(requested, f"--threads; OpenMP wait {wait}")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return ThreadBudget(max(1, int(os.environ["OMP_NUM_THREADS"])),
                            f"OMP_NUM_THREADS; OpenMP wait {wait}")
    try:
        allowed = len(os.sched_getaffinity(0))
        where = f"{allowed} in this process's CPU affinity"
    except AttributeError:  # macOS, Windows: no affinity call
        allowed = os.cpu_count() or 1
        where = f"{allowed} CPUs"
    cores = allowed
    quota = cgroup_cpus()
    if quota is not None and quota < cores:
        cores = max(1, math.floor(quota))
        where += f", cgroup quota {quota:g} CPUs"
    physical = physical_cores()
    if physical is not None and physical < cores:
        cores = physical
        where += f", {physical} physical cores"
    threads = max(1, cores // max(1, processes))
    if processes > 1:
        where += f", shared by {processes} processes"
    return ThreadBudget(threads, f"{where}; OpenMP wait {wait}")
