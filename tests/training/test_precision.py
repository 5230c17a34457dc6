"""An explicit --precision bf16 on a CPU that only emulates bf16: a warning with a measured
slowdown, and training starts at once (it once stood still for 15 minutes timing a bf16 peak)."""

from __future__ import annotations

import re
import time

import lmtune
from lmtune import cpu
from lmtune.device import bf16_slowdown
from lmtune.training.flops import peak_flops


def test_bf16_without_native_support_warns_with_a_measured_figure_and_starts_in_seconds(
        tiny_gpt2, lines_file, tmp_path, monkeypatch, fast):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # no bf16
    peak_flops.cache_clear()
    events = []
    t0 = time.monotonic()
    lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "run"), method="full",
                 max_steps=2, sample_every=0, report=False,
                 on_event=lambda e, d: events.append((time.monotonic() - t0, e, d)),
                 **{**fast, "precision": "bf16"})
    peak_flops.cache_clear()
    warnings = [d["text"] for _, e, d in events if e == "message"
                and d["text"].startswith("warning: this CPU has no native bf16")]
    assert len(warnings) == 1
    assert re.search(r"a bf16 matmul took [\d.]+x as long as fp32 \(a 0\.\d\d s check\)",
                     warnings[0]), warnings[0]
    start = next(t for t, e, d in events if e == "start")
    first_step = next(t for t, e, d in events if e == "progress" and d["step"] == 1)
    assert first_step - start < 10, f"{first_step - start:.1f} s from the plan to step 1"
    assert [d["precision"] for _, e, d in events if e == "start"] == ["bf16"]


def test_the_bf16_check_is_sized_to_stay_well_under_a_second():
    ratio, seconds = bf16_slowdown()
    assert ratio > 0 and seconds < 1.0
