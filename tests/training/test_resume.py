"""Resuming must be invisible: a run stopped and resumed ends with the same weights and the
same per-step losses as one that never stopped (same data order, optimizer state, schedule
position and dropout RNG)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmtune
from lmtune.run import checkpoint
from lmtune.training.result import Interrupted

pytestmark = pytest.mark.faults

# Dropout stays as configured (GPT-2's 0.1, LoRA's 0.05), and samples are drawn during the
# run: neither may disturb the training RNG.
COMMON = dict(seed=7, lr=3e-3, warmup_steps=2, log_every=1, eval_every=5, sample_every=5,
              sample_max_new_tokens=8)
METHODS = {"full": {}, "freeze": {"train_layers": 1}, "lora": {"lr": 1e-2}}


def _weights(final: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (final / "adapter_config.json").exists() \
        else "model.safetensors"
    return load_file(final / name)


def _steps(out: Path) -> list[tuple]:
    """(step, loss, lr, tokens) of every training record, in file order."""
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in records if "loss" in r]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a / "final"), _weights(b / "final")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)
    assert _steps(a) == _steps(b)


@pytest.mark.parametrize("method", list(METHODS))
def test_resume_with_more_steps_equals_a_straight_run(method, tiny_gpt2, lines_file, tmp_path,
                                                     fast):
    opts = {**fast, **COMMON, "model": str(tiny_gpt2), "method": method,
            "lr_schedule": "constant", **METHODS[method]}
    straight = lmtune.train(lines_file, out=str(tmp_path / "straight"), max_steps=20, **opts)
    # Each record logs the rate its step used: warmup 1/3, 2/3, then the constant peak.
    lr = opts["lr"]
    assert [r for _, _, r, _ in _steps(straight.out)] == pytest.approx([lr / 3, 2 * lr / 3]
                                                                       + [lr] * 18)
    first = lmtune.train(lines_file, out=str(tmp_path / "resumed"), max_steps=10, **opts)
    assert first.steps == 10 and (first.out / "checkpoints" / "step-000010").is_dir()
    # What makes it hard: the stop falls mid-epoch of shuffled data, with dropout on.
    epoch_at_10 = [json.loads(x)["epoch"] for x in (first.out / "metrics.jsonl").read_text()
                   .splitlines() if '"loss"' in x][-1]
    assert 0 < epoch_at_10 % 1
    assert json.loads((tiny_gpt2 / "config.json").read_text())["resid_pdrop"] > 0
    at_10 = _weights(first.final)
    resumed = lmtune.train(out=str(tmp_path / "resumed"), resume=True, max_steps=20)
    assert resumed.steps == 20
    assert [s for s, *_ in _steps(resumed.out)] == list(range(1, 21))
    _assert_same_run(straight.out, resumed.out)
    # The comparison can fail: the resumed steps did move the weights.
    assert any(not torch.equal(v, at_10[k]) for k, v in _weights(resumed.final).items())


def test_sigterm_then_resume_equals_an_uninterrupted_cosine_run(tiny_gpt2, lines_file,
                                                                tmp_path, fast):
    opts = {**fast, **COMMON, "model": str(tiny_gpt2), "method": "full", "max_steps": 20,
            "lr_schedule": "cosine"}
    straight = lmtune.train(lines_file, out=str(tmp_path / "straight"), **opts)

    def stop_at_7(event, data):
        if event == "progress" and data["step"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: finish the step, save, raise

    def unhandled(signum, frame):  # instead of SIGTERM's default: killing pytest
        raise AssertionError("SIGTERM was not handled by lmtune")

    out = tmp_path / "interrupted"
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(Interrupted, match="SIGTERM at step 7") as e:
            lmtune.train(lines_file, out=str(out), on_event=stop_at_7, **opts)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # lmtune put it back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert e.value.exit_code == 130 and "--resume" in e.value.hint
    assert checkpoint.latest(out / "checkpoints").name == "step-000007"
    assert not (out / "final").exists() and not (out / ".lock").exists()
    resumed = lmtune.train(out=str(out), resume=True)
    assert resumed.steps == 20
    _assert_same_run(straight.out, resumed.out)


def test_crash_then_resume_leaves_no_duplicate_records(tiny_gpt2, lines_file, tmp_path,
                                                       fast):
    """A crash (not a clean stop) after step 13 loses steps 11-13; metrics.jsonl and
    samples.jsonl must not list them twice after resuming from step 10."""
    opts = {**fast, **COMMON, "model": str(tiny_gpt2), "method": "full", "max_steps": 20,
            "keep": 10, "sample_every": 2, "save_minutes": 0}  # a checkpoint at each evaluation
    straight = lmtune.train(lines_file, out=str(tmp_path / "straight"), **opts)

    def crash_at_13(event, data):
        if event == "progress" and data["step"] == 13:
            raise RuntimeError("simulated crash")

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        lmtune.train(lines_file, out=str(out), on_event=crash_at_13, **opts)
    assert checkpoint.complete_steps(out / "checkpoints") == [5, 10]
    assert max(s for s, *_ in _steps(out)) == 13
    lmtune.train(out=str(out), resume=True)
    _assert_same_run(straight.out, out)
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert (out / name).read_text().count('"step": 12,') == \
            (straight.out / name).read_text().count('"step": 12,'), name


def test_resume_refuses_changed_data_damaged_checkpoint_and_finished_run(tiny_gpt2, lines_file,
                                                                         tmp_path, fast):
    out = tmp_path / "run"
    lmtune.train(lines_file, out=str(out), model=str(tiny_gpt2), method="full", max_steps=4,
                 save_every=2, eval_every=2, sample_every=0, keep=5, **fast)
    with pytest.raises(lmtune.UserError, match="already trained 4 steps"):
        lmtune.train(out=str(out), resume=True)
    with pytest.raises(lmtune.UserError, match="--method changed from 'full' to 'lora'"):
        lmtune.train(out=str(out), resume=True, method="lora", max_steps=6)
    original = lines_file.read_text()
    lines_file.write_text(original.replace("cat", "cow"), encoding="utf-8")
    with pytest.raises(lmtune.UserError, match="training data changed"):
        lmtune.train(out=str(out), resume=True, max_steps=6)
    lines_file.write_text(original, encoding="utf-8")
    state = out / "checkpoints" / "step-000004" / "state.json"
    state.write_text(state.read_text().replace('"step": 4', '"step": 3'))
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(lmtune.UserError, match="does not match its manifest"):
        lmtune.train(out=str(out), resume=True, max_steps=6)
    assert (out / "metrics.jsonl").read_text() == before  # a refused resume writes nothing
    # Deleting the damaged checkpoint resumes from the one before it.
    shutil.rmtree(state.parent)
    assert lmtune.train(out=str(out), resume=True, max_steps=6).steps == 6


def test_entry_point_trains_and_stops_cleanly_on_sigterm(tiny_gpt2, lines_file, tmp_path):
    """The one subprocess test: `python -m lmtune` runs, and SIGTERM mid-run exits 130 with a
    verified checkpoint, one error line and a hint, and no traceback."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(lmtune.__file__).parents[1]))
    cmd = [sys.executable, "-m", "lmtune", "train", str(lines_file), "--model", str(tiny_gpt2),
           "--out", str(out), "--split-on", "\\n", "--method", "full", "--max-steps", "100000",
           "--save-every", "3", "--eval-every", "1000", "--sample-every", "0",
           "--block-size", "64", "--precision", "fp32", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.complete_steps(out / "checkpoints"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGTERM" in errors[0]
    assert f"hint: resume with: lmtune train --resume --out {out}" in stderr
    assert "final model" not in stdout
    latest = checkpoint.latest(out / "checkpoints")
    checkpoint.verify(latest)
    assert checkpoint.read_state(latest)["step"] == int(latest.name.split("-")[1])


def test_resume_trims_logs_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    from lmtune.run.folder import RunFolder

    run = RunFolder(tmp_path)
    run.metrics_file.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "val_loss": 1.5}\n'
                                '{"step": 3, "loss": 1.0}\n{"step": 4, "lo', encoding="utf-8")
    run.drop_records_after(2)  # samples.jsonl is absent: nothing to trim is fine
    assert run.metrics_file.read_text() == ('{"step": 1, "loss": 2.0}\n'
                                            '{"step": 2, "val_loss": 1.5}\n')
    assert not run.samples_file.exists()
