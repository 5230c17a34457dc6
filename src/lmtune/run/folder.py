"""The run folder is the contract: everything a later command needs sits in it.

  config.yaml      the resolved config (pass it back with --config)
  metrics.jsonl    one JSON object per log step and per evaluation
  samples.jsonl    samples generated during training
  checkpoints/     resumable training state (checkpoint.py)
  final/           the model artifact (artifact.py): LoRA adapter or whole model, tokenizer,
                   lmtune.json
  loss.png, report.html   the report (analysis/report.py)

`RunFolder` is the one place that knows these names; every command that reads or writes a
run goes through it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lmtune.atomic import sweep, write_text
from lmtune.config import TrainConfig, read_saved, saved_form, to_yaml
from lmtune.errors import UserError
from lmtune.run.artifact import RUN_FILE, read_run_info

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "samples.jsonl")
RUN_OUTPUTS = RUN_MARKERS + ("loss.png", "report.html")  # what --overwrite removes


def default_out(data: str) -> Path:
    name = Path(data.rstrip("/")).stem or "run"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # --- the layout

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_file(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def loss_png(self) -> Path:
        return self.path / "loss.png"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def holds_run(self) -> bool:
        return self.path.is_dir() and any((self.path / m).exists() for m in RUN_MARKERS)

    @classmethod
    def containing(cls, spec: str | Path | None) -> "RunFolder | None":
        """The run that `spec` (a run folder, its final/ folder or a checkpoint) belongs to."""
        if spec is None:
            return None
        p = Path(spec).expanduser()
        for folder in (p, p.parent, p.parent.parent, p.parent.parent.parent):
            run = cls(folder)
            if run.config_file.is_file() and run.metrics_file.exists():
                return run
        return None

    # --- reading

    def config(self) -> TrainConfig:
        """The config the run trained with, as the typed config (never a raw dict)."""
        return read_saved(self.config_file)

    def info(self) -> dict:
        """final/lmtune.json ({} before the run has a final model)."""
        return read_run_info(self.final) or {}

    def records(self, path: Path) -> list[dict]:
        """The JSON records of metrics.jsonl or samples.jsonl; a line torn by a crash is
        skipped."""
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    # --- writing (rank 0 of a training run, under its lock)

    def write_config(self, cfg: TrainConfig) -> None:
        write_text(self.config_file, to_yaml(saved_form(cfg)))

    def clean_partial(self) -> None:
        """Remove what a crash during a save left behind: temporary checkpoint folders, and
        temporary files and folders of the run's own outputs."""
        sweep(self.checkpoints)
        sweep(self.path)

    def clear(self) -> None:
        """--overwrite: remove what a run wrote, nothing else."""
        for name in RUN_OUTPUTS + (RUN_FILE,):
            p = self.path / name
            if p.is_symlink():  # the link goes, never what it points to
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def drop_records_after(self, step: int) -> None:
        """Keep only the log records of steps up to `step` (resuming from that step's
        checkpoint), and drop a last line torn by a crash mid-write."""
        for path in (self.metrics_file, self.samples_file):
            _drop_records_after(path, step)

    def lock(self) -> "RunLock":
        return RunLock(self.path)

    # --- before anything is written

    def check_out(self, *, resume: bool, overwrite: bool, model_path: str | None,
                  data_path: str | None = None) -> None:
        """Refuse unsafe output folders before anything is loaded or written.

        Absolute paths are taken as meant. Refused: a relative path whose `..` leads out of
        the current folder (a typo or a config file written elsewhere), a symlink (as --out or
        as a run output inside it) whose target lies outside the folder it sits in, a folder
        that is or holds the base model (--overwrite would delete it), one that would
        overwrite the data, and a non-empty folder that holds no run."""
        out = self.path
        if not out.is_absolute() and ".." in out.parts:
            here = Path.cwd().resolve()
            if not (here / out).resolve().is_relative_to(here):
                raise UserError(f"--out {out} leads outside the current folder (to "
                                f"{(here / out).resolve()})",
                                hint="pass it as an absolute path if that is where the run "
                                     "belongs")
        _refuse_symlink_out(out, out.parent, f"--out {out}",
                            "pass the real folder ({real}) if that is where the run belongs")
        for name in RUN_OUTPUTS:
            _refuse_symlink_out(out / name, out, f"{out / name}",
                                "remove the link (--overwrite and prune would delete through "
                                "it)")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file", hint="pass a folder path")
        self._refuse_inputs_inside(model_path, data_path)
        if resume:
            if not self.holds_run() or not self.config_file.is_file():
                raise UserError(f"--resume: {out} holds no run to resume",
                                hint="drop --resume to start a new run there")
            return
        if self.holds_run() and not overwrite:
            raise UserError(f"{out} already holds a run",
                            hint="pass --resume to continue it, --overwrite to replace it, or "
                                 "another --out")
        if out.is_dir() and any(out.iterdir()) and not self.holds_run():
            raise UserError(f"{out} is not empty and holds no run",
                            hint="pass an empty or new folder as --out")

    def _refuse_inputs_inside(self, model_path: str | None, data_path: str | None) -> None:
        out, target = self.path, self.path.resolve()
        if model_path and Path(model_path).exists():
            model = Path(model_path).resolve()
            if target == model or target in model.parents:
                what = "is" if target == model else "holds"
                raise UserError(f"--out {out} {what} the base model's own folder ({model})",
                                hint="write the run to a new folder")
        if data_path and Path(data_path).exists():
            data = Path(data_path).resolve()
            if any(data == target / n or (target / n) in data.parents for n in RUN_OUTPUTS):
                raise UserError(f"the data {data_path} lies where the run writes its outputs "
                                f"in --out {out}", hint="move the data file or pass another "
                                                        "--out")


def _refuse_symlink_out(path: Path, within: Path, what: str, hint: str) -> None:
    if not path.is_symlink():
        return
    real, home = path.resolve(), within.resolve()
    if real != home and not real.is_relative_to(home):
        raise UserError(f"{what} is a symlink to {real}, outside {home}",
                        hint=hint.format(real=real))


def _drop_records_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:
            return False

    kept = [line for line in lines if line.strip() and keep(line)]
    if len(kept) != len(lines):
        write_text(path, "".join(kept))


class RunLock:
    """An exclusive lock on the run folder: a second `lmtune train` on it refuses."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.fd: int | None = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise UserError(f"another lmtune process is training in {self.path.parent}",
                            hint="wait for it to finish or use another --out")
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.path.unlink(missing_ok=True)


class JsonlWriter:
    """Appends one JSON record per line (metrics.jsonl, samples.jsonl)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


class NoWriter:
    """What ranks other than 0 log to."""

    def __init__(self, path: Path):
        pass

    def write(self, record: dict) -> None:
        pass
