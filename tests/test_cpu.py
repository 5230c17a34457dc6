"""The thread budget: the cores this process may use, not the host's count."""

from __future__ import annotations

import pytest

from lmtune import cpu


@pytest.fixture
def machine(monkeypatch):
    """A pretend 16-CPU host with 8 physical cores and no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(cpu, "physical_cores", lambda: 8)
    monkeypatch.setattr(cpu, "cgroup_cpus", lambda: None)
    return monkeypatch


def test_one_thread_per_physical_core_in_the_affinity(machine):
    assert cpu.thread_budget().threads == 8
    machine.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2})  # taskset -c 0-2
    budget = cpu.thread_budget()
    assert budget.threads == 3 and "3 in this process's CPU affinity" in budget.why


def test_a_cgroup_quota_caps_the_threads_and_processes_share_them(machine):
    machine.setattr(cpu, "cgroup_cpus", lambda: 2.5)  # docker --cpus 2.5
    budget = cpu.thread_budget()
    assert budget.threads == 2 and "cgroup quota 2.5 CPUs" in budget.line()
    assert cpu.thread_budget(processes=2).threads == 1


def test_threads_flag_and_omp_num_threads_win(machine):
    machine.setattr(cpu, "cgroup_cpus", lambda: 1.0)
    assert cpu.thread_budget(requested=6).line() == "threads: 6 (--threads)"
    assert not cpu.thread_budget(requested=6).adapts  # the user's number holds
    machine.setenv("OMP_NUM_THREADS", "3")
    assert cpu.thread_budget().threads == 3


def test_cgroup_quotas_are_read_up_the_tree_and_the_smallest_binds(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "a" / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "a" / "b" / "cpu.max").write_text("400000 100000\n")
    assert sorted(cpu._walk(tmp_path, "/a/b", cpu._v2_quota)) == [1.5, 4.0]
    (tmp_path / "cfs").mkdir()
    (tmp_path / "cfs" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cfs" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu._v1_quota(tmp_path / "cfs") is None


def test_core_watch_gives_threads_back_and_forth_with_the_load(machine, monkeypatch):
    """Two CPUs: another process using 1.2 of them leaves one thread; when it stops, two."""
    machine.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1})
    clock, busy, own = [0.0], [0.0], [0.0]
    watch = cpu.CoreWatch(2, interval=3.0)
    watch._sample = lambda: (clock[0], busy[0], own[0])
    watch.last = watch._sample()

    def after(seconds, others, mine):
        clock[0] += seconds
        busy[0] += (others + mine) * seconds
        own[0] += mine * seconds
        return watch.threads_now()

    assert after(1.0, 1.2, 0.8) is None  # too soon to judge
    assert after(3.0, 1.2, 0.8) == 1 and "use 1.2 of the 2 CPUs" in watch.why()
    assert after(3.0, 1.0, 1.0) is None  # unchanged
    assert after(3.0, 0.1, 1.0) == 2
