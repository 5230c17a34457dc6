"""Training under faults: killed (SIGKILL) at any moment, out of disk, interrupted twice,
fed non-finite losses, raced by a second process, resumed with changed settings. Nothing
that was saved is lost, and nothing half-written is ever taken for a checkpoint."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmtune
from lmtune.cli import main
from lmtune.atomic import TMP_PREFIX
from lmtune.run import checkpoint
from lmtune.run.folder import RunLock
from lmtune.tasks.generate import LanguageModeling

pytestmark = pytest.mark.faults

SRC = str(Path(lmtune.__file__).parents[1])
# Constant schedule: a resumed run may be given another --max-steps and still match a
# straight one. GPT-2's dropout (0.1) is on and the data is shuffled.
OPTS = dict(method="full", lr=3e-3, warmup_steps=2, lr_schedule="constant", log_every=1,
            save_every=2, keep=2, eval_every=1000, sample_every=0, report=False)


def _cli_args(opts: dict) -> list[str]:
    args = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else ["--no-" + k.replace("_", "-")] if v is False \
            else [flag, str(v)]
    return args


def _spawn(argv: list[str], kill_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    env.pop(checkpoint.KILL_AT, None)
    if kill_at:
        env[checkpoint.KILL_AT] = kill_at
    return subprocess.Popen([sys.executable, "-m", "lmtune", "train", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _losses(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _model_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model" / "model.safetensors")


def _partials(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir()
                  if p.name.startswith(TMP_PREFIX))


def test_sigkill_anywhere_then_resume_continues_from_the_newest_complete_checkpoint(
        tiny_gpt2, lines_file, tmp_path, fast):
    """Killed once from outside at a random moment, then inside a save at three points (model
    and optimizer written; manifest written but not renamed; renamed but not pruned): each
    resume starts from the newest complete checkpoint, removes the partial one, and the run
    ends exactly as one that was never killed."""
    out = tmp_path / "run"
    base = [str(lines_file), "--model", str(tiny_gpt2), "--out", str(out),
            *_cli_args({**fast, **OPTS})]
    endless = ["--max-steps", "100000"]
    proc = _spawn(base + endless)
    delay = random.uniform(0, 0.3)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.complete_steps(out / "checkpoints"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        proc.kill()  # SIGKILL: no handler runs, whatever it was doing
        proc.communicate()
    at = checkpoint.complete_steps(out / "checkpoints")[-1]

    resume = ["--out", str(out), "--resume", *endless]
    for point, step, complete in [("optimizer", at + 2, [at]),
                                  ("manifest", at + 2, [at]),
                                  ("renamed", at + 4, [at, at + 2, at + 4])]:
        proc = _spawn(resume, kill_at=f"{point}@{step}")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, err
        assert checkpoint.complete_steps(out / "checkpoints")[-len(complete):] == complete
        if point != "renamed":  # the half-written one is under a name resume never reads
            assert _partials(out) == [TMP_PREFIX + checkpoint.step_name(step)]
            if point == "manifest":
                assert (out / "checkpoints" / _partials(out)[0] / "manifest.json").is_file()
        else:
            assert _partials(out) == []  # the resume cleaned what the last kill left

    total = at + 6
    events = []
    resumed = lmtune.train(out=str(out), resume=True, max_steps=total,
                           on_event=lambda e, d: events.append((e, d)))
    assert [d["start_step"] for e, d in events if e == "start"] == [at + 4]
    assert resumed.steps == total and _partials(out) == []
    straight = lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "straight"),
                            max_steps=total, **{**fast, **OPTS})
    assert _losses(out) == _losses(straight.out), f"first kill after {delay:.3f} s"
    a, b = load_file(out / "final" / "model.safetensors"), \
        load_file(straight.out / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def _short_run(tiny_gpt2, lines_file, out, fast, **extra):
    return ["train", str(lines_file), "--model", str(tiny_gpt2), "--out", str(out),
            *_cli_args({**fast, **OPTS, "keep": 1, "max_steps": 6, **extra})]


@pytest.mark.parametrize("where", ["checkpoint", "metrics"])
def test_disk_full_is_one_clear_error_and_keeps_the_previous_checkpoint(
        where, tiny_gpt2, lines_file, tmp_path, fast, monkeypatch, capsys):
    out = tmp_path / "run"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "checkpoint":
        real = checkpoint.save_file

        def save_file(tensors, path, *a, **kw):
            if checkpoint.step_name(4) in str(path):
                raise full
            return real(tensors, path, *a, **kw)
        monkeypatch.setattr(checkpoint, "save_file", save_file)
    else:
        from lmtune.run import folder as runs
        real_write = runs.JsonlWriter.write

        def write(self, record):
            if record.get("step") == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            real_write(self, record)
        monkeypatch.setattr(runs.JsonlWriter, "write", write)
    code = main(_short_run(tiny_gpt2, lines_file, out, fast))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-2].startswith("error: ") and "No space left on device" in lines[-2]
    assert "disk full" in lines[-2] and lines[-1].startswith("hint: free disk space")
    named = out / "checkpoints" / "step-000004" if where == "checkpoint" else out / "metrics.jsonl"
    assert str(named) in lines[-2]
    # The checkpoint of step 2 survives whole (--keep 1 would have pruned it after a good
    # save of step 4); nothing half-written is left under any name.
    assert checkpoint.complete_steps(out / "checkpoints") == [2]
    checkpoint.verify(out / "checkpoints" / "step-000002")
    assert _partials(out) == [] and not (out / "final").exists()
    assert not (out / ".lock").exists()


def _leftovers(out: Path) -> list[str]:
    """Temporary files and folders of any save, in the run folder or its checkpoints."""
    return sorted(p.name for p in out.rglob("*") if p.name.startswith(TMP_PREFIX))


def test_disk_full_during_the_final_save_keeps_the_previous_final_and_resume_writes_it(
        tiny_gpt2, lines_file, tmp_path, fast, monkeypatch, capsys):
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel

    out = tmp_path / "run"
    assert main(_short_run(tiny_gpt2, lines_file, out, fast, max_steps=2)) == 0
    before = _snapshot(out / "final")
    real_save = PreTrainedModel.save_pretrained

    def save_pretrained(self, folder, *a, **kw):
        real_save(self, folder, *a, **kw)  # the weights are written; the tokenizer is not
        if "final" in Path(folder).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          str(Path(folder) / "model.safetensors"))
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
    capsys.readouterr()
    code = main(["train", "--resume", "--out", str(out), "--max-steps", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    error, hint = err.strip().splitlines()[-2:]
    assert error.startswith("error: disk full while writing ") and "No space left" in error
    assert hint == f"hint: free disk space, then resume with: lmtune train --resume --out {out}"
    assert _snapshot(out / "final") == before  # the step-2 model, whole
    assert checkpoint.complete_steps(out / "checkpoints") == [4]
    assert _leftovers(out) == []
    monkeypatch.undo()

    # What a SIGKILL inside the swap leaves: the new folder half-written, the old one renamed
    # away, no final/. The hint's resume has no steps left: it cleans up and writes final/
    # from the step-4 checkpoint (and a report, whose own full disk is one message).
    (out / "final").rename(out / ".tmp-old-final")
    (out / ".tmp-final").mkdir()
    (out / ".tmp-final" / "model.safetensors").write_bytes(b"half")

    def savefig(self, path, *a, **kw):
        Path(path).write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(Figure, "savefig", savefig)
    code = main(["train", "--resume", "--out", str(out), "--max-steps", "4", "--report"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"run report not written: disk full while writing {out / 'loss.png'}" in err
    final, ckpt = load_file(out / "final" / "model.safetensors"), \
        load_file(out / "checkpoints" / "step-000004" / "model" / "model.safetensors")
    assert final.keys() == ckpt.keys() and all(torch.equal(final[k], ckpt[k]) for k in final)
    assert _leftovers(out) == [] and not (out / "loss.png").exists()
    # Now it is finished: a further resume is refused as before.
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out), "--max-steps", "4"]) == 2
    assert "already trained 4 steps" in capsys.readouterr().err
    # lmtune report on a full disk: one error line, the old report kept, no temporary file.
    assert main(["report", str(out), "--no-compare"]) == 0
    report = (out / "report.html").read_bytes()
    monkeypatch.setattr(Figure, "savefig", savefig)
    capsys.readouterr()
    code = main(["report", str(out), "--no-compare"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[0] == (f"error: disk full while writing {out / 'loss.png'}: "
                                   f"No space left on device")
    assert (out / "report.html").read_bytes() == report and _leftovers(out) == []


def test_ctrl_c_twice_during_a_save_exits_at_once_without_a_complete_looking_checkpoint(
        tiny_gpt2, lines_file, tmp_path, fast, monkeypatch, capsys):
    out = tmp_path / "run"
    real = checkpoint.save_file

    def save_file(tensors, path, *a, **kw):
        real(tensors, path, *a, **kw)
        if checkpoint.step_name(4) in str(path):
            os.kill(os.getpid(), signal.SIGINT)  # the first: finish the step, save, stop
            os.kill(os.getpid(), signal.SIGINT)  # the second, mid-save: stop now
    monkeypatch.setattr(checkpoint, "save_file", save_file)
    code = main(_short_run(tiny_gpt2, lines_file, out, fast))
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted; no checkpoint")
    assert checkpoint.complete_steps(out / "checkpoints") == [2]
    assert _partials(out) == [] and not (out / ".lock").exists()


def test_non_finite_losses_are_skipped_counted_and_stop_the_run_after_five(
        tiny_gpt2, lines_file, tmp_path, fast, monkeypatch):
    real, calls = LanguageModeling.loss_sum, []

    def loss_sum(self, model, batch, device):
        calls.append(1)
        loss = real(self, model, batch, device)
        step = len(calls)  # one micro-batch per step
        return loss * float("inf") if step == 3 else loss * float("nan") if step >= 6 else loss
    monkeypatch.setattr(LanguageModeling, "loss_sum", loss_sum)
    out = tmp_path / "run"
    with pytest.raises(lmtune.UserError, match="not finite for 5 steps in a row \\(step 10\\)"):
        lmtune.train(lines_file, model=str(tiny_gpt2), out=str(out),
                     **{**fast, **OPTS, "save_every": 1, "keep": 100, "max_steps": 20})
    steps = checkpoint.complete_steps(out / "checkpoints")
    assert steps == list(range(1, 10))
    ckpt = {s: out / "checkpoints" / checkpoint.step_name(s) for s in steps}
    weights = {s: _model_weights(ckpt[s]) for s in steps}
    for s, w in weights.items():  # every checkpoint ever written is finite
        assert all(torch.isfinite(t).all() for t in w.values()), s
    same = lambda a, b: all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])  # noqa: E731
    assert same(2, 3) and not same(3, 4)  # step 3's update was skipped, step 4's was not
    assert same(5, 9)
    assert [checkpoint.read_state(ckpt[s])["skipped_steps"] for s in (2, 3, 5, 9)] == [0, 1, 1, 5]
    logged = {r["step"]: r.get("skipped_steps", 0) for r in
              map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert [logged[s] for s in (2, 3, 9)] == [0, 1, 5]


def test_weights_that_turn_non_finite_are_never_saved(tiny_gpt2, lines_file, tmp_path, fast,
                                                       monkeypatch):
    real = torch.optim.AdamW.step
    count = []

    def step(self, *a, **kw):
        result = real(self, *a, **kw)
        count.append(1)
        if len(count) == 3:  # an overflow inside the update itself, past the gradient check
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "run"
    with pytest.raises(lmtune.UserError, match="weights became non-finite at step 4"):
        lmtune.train(lines_file, model=str(tiny_gpt2), out=str(out),
                     **{**fast, **OPTS, "max_steps": 6})
    assert checkpoint.complete_steps(out / "checkpoints") == [2] and _partials(out) == []


@pytest.fixture
def two_steps(tiny_gpt2, lines_file, tmp_path, fast):
    return lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                        **{**fast, **OPTS, "max_steps": 2}).out


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_second_trainer_on_the_same_folder_is_refused(two_steps, tiny_gpt2, lines_file,
                                                       fast):
    with RunLock(two_steps):  # as a running `lmtune train` holds it
        before = _snapshot(two_steps)
        with pytest.raises(lmtune.UserError, match="another lmtune process is training"):
            lmtune.train(out=str(two_steps), resume=True, max_steps=4)
        with pytest.raises(lmtune.UserError, match="another lmtune process is training"):
            lmtune.train(lines_file, model=str(tiny_gpt2), out=str(two_steps), overwrite=True,
                         **{**fast, **OPTS, "max_steps": 2})
        assert _snapshot(two_steps) == before  # the refused ones touched nothing


CHANGES = [("lr", 0.01, "--lr changed from 0.003 to 0.01"),
           ("batch_size", 7, "--batch-size changed from"),
           ("seed", 5, "--seed changed from 0 to 5")]


def test_changed_settings_on_resume_are_refused_by_name_unless_forced(two_steps, tiny_gpt2,
                                                                      lines_file, tmp_path):
    other_model = Path(shutil.copytree(tiny_gpt2, tmp_path / "other-model"))
    lines_file.write_text(lines_file.read_text().replace("cat", "cow"), encoding="utf-8")
    assert yaml.safe_load((two_steps / "config.yaml").read_text())["batch_size"] != 7
    refusals = [(dict(model=str(other_model)), f"--model changed from '{tiny_gpt2}' to "
                                               f"'{other_model}'"),
                ({}, "the training data changed")] + [({k: v}, m) for k, v, m in CHANGES]
    before = _snapshot(two_steps)
    for change, message in refusals:
        with pytest.raises(lmtune.UserError, match=re.escape(message)) as e:
            lmtune.train(out=str(two_steps), resume=True, max_steps=4, **change)
        assert "--force-resume" in e.value.hint
    assert _snapshot(two_steps) == before

    said = []
    everything = {"model": str(other_model), **{k: v for k, v, _ in CHANGES}}
    forced = lmtune.train(out=str(two_steps), resume=True, max_steps=4, force_resume=True,
                          on_event=lambda e, d: said.append(d["text"]) if e == "message"
                          else None, **everything)
    assert forced.steps == 4
    told = [t for t in said if t.startswith("--force-resume: ")]
    for _, message in refusals:
        assert sum(message in t for t in told) == 1, (message, told)
    # The run now carries the new settings: a plain resume goes on without --force-resume.
    assert lmtune.train(out=str(two_steps), resume=True, max_steps=6).steps == 6


def test_same_seed_same_losses_other_seed_other_losses(tiny_gpt2, lines_file, tmp_path, fast):
    def losses(name, seed):
        run = lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / name),
                           **{**fast, **OPTS, "max_steps": 4, "save_every": 4, "seed": seed})
        return [loss for _, loss in _losses(run.out)]

    first, again, other = losses("a", 0), losses("b", 0), losses("c", 1)
    assert len(first) == 4 and first == again
    assert other != first
