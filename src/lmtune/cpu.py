"""What this CPU can do and how many of its cores this process may use (no torch here).

The thread budget:
- cores: this process's CPU affinity (taskset, numactl, a batch scheduler) capped by the
  cgroup CPU quota (docker --cpus, Kubernetes limits), not os.cpu_count(), which counts the
  whole host; then one thread per physical core, since hyper-threads share the matrix units;
- several lmtune processes on one machine (LOCAL_WORLD_SIZE under torchrun) share them;
- while training, fewer threads when other processes use the cores (CoreWatch).
Measured in benchmarks/busy_machine.py on 2 cores: two runs at once went from 0.37x of alone
each (OpenMP threads spinning against the other run's work) to 0.65x; OpenMP's passive wait
policy gave about as much at two runs but cost 9% alone, so the spin-wait stays.
--threads and OMP_NUM_THREADS win over every choice here, and turn the following off.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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
    adapts: bool = False  # chosen here, not by the user: may follow the machine's load

    def line(self) -> str:
        return f"threads: {self.threads} ({self.why})"


def thread_budget(requested: int | None = None, processes: int = 1) -> ThreadBudget:
    """Threads for one of `processes` lmtune processes on this machine: --threads, else
    OMP_NUM_THREADS, else the usable physical cores shared between the processes."""
    if requested:
        return ThreadBudget(requested, "--threads")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return ThreadBudget(max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS")
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
    if processes == 1:
        where += "; fewer in training while other processes use them"
    return ThreadBudget(threads, where, adapts=processes == 1)


class CoreWatch:
    """Follows what other processes use of this process's CPUs and says when the thread count
    should change: two runs on two cores, each with two threads, spend their time spinning in
    OpenMP against each other's work (0.37x of alone each), where one thread each shares the
    cores cleanly. Reads /proc/stat (the CPUs in this process's affinity) and this process's
    own CPU time; about 50 us a call, and it decides at most every `interval` seconds."""

    def __init__(self, budget: int, interval: float = 3.0):
        self.budget, self.threads, self.interval = budget, budget, interval
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:
            self.cpus = []
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._sample()
        self.others = 0.0

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{i}" for i in self.cpus}
        busy = 0
        for line in lines:
            name, *values = line.split()
            if name in wanted:  # user nice system idle iowait irq softirq steal ...
                v = [int(x) for x in values[:8]]
                busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        own = os.times()
        return time.monotonic(), busy / self.ticks, own.user + own.system

    def threads_now(self) -> int | None:
        """A new thread count when other processes' use of the cores changed it, else None."""
        if self.last is None:
            return None
        now = self._sample()
        wall = now[0] - self.last[0]
        if wall < self.interval:
            return None
        others = max(0.0, (now[1] - self.last[1]) - (now[2] - self.last[2])) / wall
        self.last, self.others = now, others
        free = len(self.cpus) - others
        want = max(1, min(self.budget, int(free + 0.5)))
        if want == self.threads:
            return None
        self.threads = want
        return want

    def why(self) -> str:
        return (f"other processes use {self.others:.1f} of the {len(self.cpus)} CPUs in this "
                f"process's affinity")
