"""The run folder under an outside red team's cases: a user's folder that only looks like a run,
a disk full at the start or inside a log line, a resume between two log steps, a run extended
past its schedule, a second trainer during a save, a config.yaml cut short."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

import lmtune
from lmtune.cli import main
from lmtune.run.folder import JsonlWriter, RunFolder, RunLock
from lmtune.training.result import Interrupted

pytestmark = pytest.mark.faults


def _train_argv(model, data, out, *extra) -> list[str]:
    return ["train", str(data), "--split-on", "\\n", "--model", str(model), "--max-steps", "1",
            "--block-size", "64", "--precision", "fp32", "--device", "cpu",
            "--sample-every", "0", "--no-report", "--out", str(out), *extra]


def _users_folder(root: Path) -> Path:
    """The red team's folder: names a run uses, holding a user's own files."""
    folder = root / "P"
    for sub in ("checkpoints", "final", "src"):
        (folder / sub).mkdir(parents=True)
    (folder / "config.yaml").write_text("lr\n")
    (folder / "checkpoints" / "epoch_99.pt").write_text("x")
    (folder / "final" / "thesis.tex").write_text("t")
    (folder / "metrics.jsonl").write_text("mine\n")
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("flag", [[], ["--overwrite"], ["--resume"]])
def test_a_users_folder_named_like_a_run_is_refused_and_left_alone(flag, tiny_gpt2,
                                                                    lines_file, tmp_path,
                                                                    capsys):
    folder = _users_folder(tmp_path)
    before = _tree(folder)
    assert main(_train_argv(tiny_gpt2, lines_file, folder, *flag)) == 2
    err = capsys.readouterr().err
    assert "holds no run" in err and "Traceback" not in err
    assert "--overwrite to replace" not in err  # never suggested for a folder that is no run
    assert _tree(folder) == before


def test_overwrite_removes_only_what_lmtune_wrote(tiny_gpt2, lines_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(tiny_gpt2, lines_file, out)) == 0
    mine = {"checkpoints/keep.txt": "k", "thesis.tex": "t"}
    for name, text in mine.items():
        (out / name).write_text(text)
    assert main(_train_argv(tiny_gpt2, lines_file, out, "--overwrite", "--max-steps", "2")) == 0
    after = _tree(out)
    for name, text in mine.items():
        assert after[name] == text.encode()
    assert "max_steps: 2" in after["config.yaml"].decode()  # the run was replaced
    # A file in a folder that a run replaces whole would be lost: the run refuses first.
    (out / "final" / "NOTES.md").write_text("my notes")
    before = _tree(out)
    for flag in ("--overwrite", "--resume"):
        assert main(_train_argv(tiny_gpt2, lines_file, out, flag, "--max-steps", "3")) == 2
        err = capsys.readouterr().err
        assert "NOTES.md is not a file lmtune wrote" in err and "hint: move it" in err
    assert _tree(out) == before


def test_a_full_disk_at_the_start_leaves_no_lock_that_blocks_the_folder(tiny_gpt2, lines_file,
                                                                        tmp_path, monkeypatch,
                                                                        capsys):
    out = tmp_path / "run"
    out.mkdir()
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    assert main(_train_argv(tiny_gpt2, lines_file, out)) == 2
    err = capsys.readouterr().err
    assert "disk full" in err and "Traceback" not in err
    assert list(out.iterdir()) == []  # no .lock left behind
    monkeypatch.undo()
    assert main(_train_argv(tiny_gpt2, lines_file, out)) == 0  # space freed: it runs


def test_a_log_line_torn_by_a_full_disk_is_undone_and_resume_works(tiny_gpt2, lines_file,
                                                                    tmp_path, monkeypatch):
    out = tmp_path / "run"
    lmtune.train(lines_file, model=str(tiny_gpt2), out=str(out), max_steps=2, split_on="\n",
                 block_size=64, precision="fp32", device="cpu", sample_every=0, report=False,
                 log_every=1, save_every=1, method="full")
    metrics = out / "metrics.jsonl"
    real_write = os.write

    def half(fd, data):  # half of the line reaches the disk, cutting a character in two
        if os.readlink(f"/proc/self/fd/{fd}") == str(metrics):
            real_write(fd, bytes(data)[:7])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    before = metrics.read_bytes()
    monkeypatch.setattr(os, "write", half)
    with pytest.raises(OSError) as e:
        JsonlWriter(metrics).write({"step": 3, "text": "ééééé"})
    assert e.value.filename == str(metrics)
    assert metrics.read_bytes() == before  # whole lines only
    monkeypatch.undo()
    metrics.write_bytes(before + '{"step": 3, "te\u00e9'.encode()[:-1])  # torn mid-character
    result = lmtune.train(out=str(out), resume=True, max_steps=3)
    assert result.steps == 3
    assert all(json.loads(line) for line in metrics.read_text().splitlines())


def test_losses_logged_after_a_resume_between_log_steps_equal_a_straight_run(
        tiny_gpt2, lines_file, tmp_path):
    opts = dict(model=str(tiny_gpt2), split_on="\n", block_size=64, precision="fp32",
                device="cpu", sample_every=0, report=False, method="full", lr=3e-3,
                log_every=4, eval_every=1000, seed=0)
    straight = lmtune.train(lines_file, out=str(tmp_path / "a"), max_steps=8, **opts)

    def sigterm_at_step_3(event, data):  # as the red team stopped it: between two log steps
        if event == "progress" and data["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted):
        lmtune.train(lines_file, out=str(tmp_path / "b"), max_steps=8,
                     on_event=sigterm_at_step_3, **opts)
    resumed = lmtune.train(out=str(tmp_path / "b"), resume=True)

    def losses(run):
        return [(r["step"], r["loss"]) for r in RunFolder(run.out).records(
            run.out / "metrics.jsonl") if "loss" in r]
    assert losses(resumed) == losses(straight)  # steps 3 and 4 are one record: step 4


def test_extending_a_decaying_schedule_says_what_happens_to_the_learning_rate(
        tiny_gpt2, lines_file, tmp_path):
    opts = dict(model=str(tiny_gpt2), split_on="\n", block_size=64, precision="fp32",
                device="cpu", sample_every=0, report=False, warmup_steps=1)
    out = str(tmp_path / "run")
    lmtune.train(lines_file, out=out, max_steps=4, **opts)
    messages = []
    lmtune.train(out=out, resume=True, max_steps=8,
                 on_event=lambda e, d: messages.append(d.get("text", "")))
    note = next(m for m in messages if "schedule now spans" in m)
    assert "8 steps instead of 4" in note and "docs/RELIABILITY.md" in note


def test_a_second_trainer_is_told_another_process_holds_the_run(tiny_gpt2, lines_file,
                                                                 tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(tiny_gpt2, lines_file, out)) == 0
    with RunLock(out):  # the first trainer, mid-way through a save or a prune
        assert main(["train", "--resume", "--out", str(out), "--max-steps", "2"]) == 2
    assert "another lmtune process is training" in capsys.readouterr().err


def test_a_config_yaml_cut_short_is_called_damaged_not_a_changed_setting(tiny_gpt2,
                                                                          lines_file,
                                                                          tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(tiny_gpt2, lines_file, out)) == 0
    config = out / "config.yaml"
    config.write_text("\n".join(config.read_text().splitlines()[:5]) + "\n")
    assert main(["train", "--resume", "--out", str(out), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "incomplete" in err and "changed from None" not in err


def test_safetensors_running_out_of_disk_at_the_first_checkpoint_says_start_again(
        tiny_gpt2, lines_file, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    from lmtune.run import checkpoint

    def full(*args, **kwargs):  # the message safetensors gives on a full disk
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save_file", full)
    assert main(_train_argv(tiny_gpt2, lines_file, out, "--max-steps", "2")) == 2
    err = capsys.readouterr().err
    assert "disk full" in err and "Traceback" not in err
    assert "start the run again with --overwrite" in err
    monkeypatch.undo()
    assert main(_train_argv(tiny_gpt2, lines_file, out, "--max-steps", "2", "--overwrite")) == 0
