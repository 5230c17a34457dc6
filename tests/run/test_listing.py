"""Runs as the web page lists and follows them, from their folders alone."""

from __future__ import annotations

import json
import os
import shutil

from lmtune.run.folder import LOCK, RunFolder
from lmtune.run.listing import JsonlTail, find_run, list_runs, merge_losses, run_status


def test_a_tail_sends_each_whole_record_once_and_restarts_when_the_log_shrinks(tmp_path):
    log = tmp_path / "metrics.jsonl"
    tail = JsonlTail(log)
    assert tail.read() == ([], False)  # no file yet
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    assert tail.read() == ([{"step": 1, "loss": 2.0}], False)  # the torn line waits
    with open(log, "a", encoding="utf-8") as f:
        f.write('ss": 1.5}\nnot json\n')
    assert tail.read() == ([{"step": 2, "loss": 1.5}], False)
    assert tail.read() == ([], False)
    log.write_text('{"step": 1, "loss": 2.5}\n', encoding="utf-8")  # a resume dropped records
    assert tail.read() == ([{"step": 1, "loss": 2.5}], True)


def test_losses_move_on_with_newer_records():
    losses = {"train_loss": 2.0, "valid_loss": 2.2, "step": 10, "total_steps": None}
    moved = merge_losses(losses, [{"step": 12, "loss": 1.8}, {"step": 12, "samples": 1}])
    assert moved == {"train_loss": 1.8, "valid_loss": 2.2, "step": 12, "total_steps": None}


def test_runs_are_found_inside_the_folder_only(lora_run, tmp_path):
    runs = lora_run.out.parent
    assert [r["name"] for r in list_runs(runs)] == [lora_run.out.name]
    row = list_runs(runs)[0]
    assert row["status"] == "succeeded" and row["method"] == "lora" and row["train_loss"]
    assert find_run(runs, lora_run.out.name).path == lora_run.out
    for name in ("..", ".", "../" + lora_run.out.name, "/etc", "nope"):
        assert find_run(runs, name) is None
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(lora_run.out, tmp_path / "outside")
    os.symlink(tmp_path / "outside", runs / "link-out")  # a way out of the runs folder
    try:
        assert find_run(tmp_path, "elsewhere") is None
        assert find_run(runs, "link-out") is None
    finally:
        (runs / "link-out").unlink()


def test_a_run_is_running_while_a_live_process_holds_its_lock(lora_run):
    run = RunFolder(lora_run.out)
    lock = run.path / LOCK
    try:
        lock.write_text(str(os.getpid()), encoding="utf-8")
        assert run_status(run) == "running"
        lock.write_text("999999999", encoding="utf-8")  # a crashed trainer's stale lock
        assert run_status(run) == "succeeded"
    finally:
        lock.unlink(missing_ok=True)
    assert json.loads((run.final / "lmtune.json").read_text())["method"] == "lora"


def test_the_services_runs_are_never_command_line_runs(lora_run):
    """Should --runs name the service's own runs folder, a job's run (its key's alone) is
    neither listed nor found as run:NAME."""
    runs = lora_run.out.parent
    assert list_runs(runs, exclude=runs) == []
    assert find_run(runs, lora_run.out.name, exclude=runs) is None
    assert list_runs(runs.parent, exclude=runs) == []  # the folder holding it: skipped too
    assert find_run(runs, lora_run.out.name, exclude=runs.parent / "elsewhere") is not None
