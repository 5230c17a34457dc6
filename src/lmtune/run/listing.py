"""Runs as a list and as a live record: what the web page and `lmtune serve` show of the run
folders that `lmtune train` wrote, read from the folders alone (no database), so a run
trained from the command line shows up beside the service's jobs.

A run's state comes from its files: training holds `.lock` (with its pid) while it runs, and
final/ appears when it has finished. `JsonlTail` reads a log from where it last stopped,
so a page that follows a run is sent each record once; a resumed run rewrites its logs
(records past its checkpoint are dropped), which the tail sees as a shorter file and reads
again from the start.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from lmtune.errors import UserError
from lmtune.run.checkpoint import complete_steps
from lmtune.run.folder import LOCK, RunFolder

# Any name one folder can have: list_runs lists whatever `lmtune train --out` made (spaces,
# accents, brackets), and each run it lists must open. Containment is checked on the
# resolved path below, not by the characters.
RUN_NAME = re.compile(r"^[^/\\\x00]{1,255}$")
MAX_TAIL_BYTES = 8 * 1024 * 1024  # a page is sent at most this much of a log at once


def training_pid(run: RunFolder) -> int | None:
    """The pid of the process training in `run`, if one is alive."""
    try:
        pid = int((run.path / LOCK).read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid


def run_status(run: RunFolder) -> str:
    if training_pid(run) is not None:
        return "running"
    if run.info():
        return "succeeded"
    return "stopped"  # stopped before its final model: resumable from a checkpoint


def last_losses(metrics: list[dict]) -> dict:
    out = {"train_loss": None, "valid_loss": None, "step": 0, "total_steps": None}
    for record in metrics:
        if "loss" in record:
            out["train_loss"] = record["loss"]
        if "val_loss" in record:
            out["valid_loss"] = record["val_loss"]
        if isinstance(record.get("step"), int):
            out["step"] = max(out["step"], record["step"])
        if record.get("total_steps"):
            out["total_steps"] = record["total_steps"]
    return out


def merge_losses(losses: dict, records: list[dict]) -> dict:
    """`losses` (last_losses of earlier records) moved on by newer `records`."""
    new = last_losses(records)
    return {key: max(losses[key], new[key]) if key == "step" else
            (new[key] if new[key] is not None else losses[key]) for key in losses}


def summarize(run: RunFolder, metrics: list[dict] | None = None,
              losses: dict | None = None) -> dict:
    """One line of the runs list; `losses` saves reading the whole log again."""
    cfg = run.config()
    if losses is None:
        losses = last_losses(run.records(run.metrics_file) if metrics is None else metrics)
    info = run.info()
    created = (run.path / ".lmtune-run")
    stamp = created if created.is_file() else run.config_file
    return {"id": f"run:{run.path.name}", "kind": "run", "name": run.path.name,
            "status": run_status(run), "model": info.get("base_model") or cfg.model,
            "method": cfg.method, "task": cfg.task, "data": Path(str(cfg.data)).name,
            "created_at": int(stamp.stat().st_mtime), "checkpoints": complete_steps(
                run.checkpoints), **losses}


def list_runs(folder: Path, exclude: Path | None = None) -> list[dict]:
    """The runs directly inside `folder`, newest first; a folder that is no run is skipped,
    as is `exclude` (the service's own runs, listed as jobs)."""
    if not folder.is_dir():
        return []
    skip = exclude.resolve() if exclude is not None else None
    rows = []
    for child in folder.iterdir():
        run = RunFolder(child)
        if child.is_symlink():
            continue  # a link may lead out of the folder: find_run would refuse it
        if skip is not None and skip in (child.resolve(), child.resolve().parent):
            continue  # the service's runs (or its folder of them), listed as jobs
        try:
            if child.is_dir() and run.holds_run():
                rows.append(summarize(run))
        except (UserError, OSError, ValueError):
            continue  # a folder being written or damaged: not listed rather than an error
    return sorted(rows, key=lambda r: r["created_at"], reverse=True)


def find_run(folder: Path, name: str, exclude: Path | None = None) -> RunFolder | None:
    """The run `name` directly inside `folder`; never a path outside it, nor one of
    `exclude`'s (the service's runs, each its key's alone)."""
    if not RUN_NAME.match(name) or name in (".", ".."):
        return None
    run = RunFolder(folder / name)
    try:
        inside = run.path.resolve().parent == folder.resolve()
    except OSError:
        return None
    if inside and exclude is not None:
        skip = exclude.resolve()
        inside = skip not in (run.path.resolve(), run.path.resolve().parent)
    return run if inside and run.holds_run() else None


class JsonlTail:
    """New whole records of a JSONL log since the last read. `reset` is True when the file
    got shorter (a resumed run dropped records): the records returned are then all of
    them, from the start."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read(self) -> tuple[list[dict], bool]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return [], False
        reset = size < self.offset
        if reset:
            self.offset = 0
        if size == self.offset:
            return [], reset
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(min(size - self.offset, MAX_TAIL_BYTES))
        end = chunk.rfind(b"\n")
        if end < 0:  # a line still being written, or one longer than a read: skipped
            if len(chunk) == MAX_TAIL_BYTES:
                self.offset += len(chunk)
            return [], reset
        self.offset += end + 1
        records = []
        for line in chunk[:end].split(b"\n"):
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue  # a line torn by a crash
            if isinstance(record, dict):
                records.append(record)
        return records, reset
