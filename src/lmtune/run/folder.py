"""The run folder is the contract: everything a later command needs sits in it.

  .lmtune-run      lmtune's mark: this folder is a run (what --resume and --overwrite act on)
  config.yaml      the resolved config (pass it back with --config)
  metrics.jsonl    one JSON object per log step and per evaluation
  samples.jsonl    samples generated during training
  checkpoints/     resumable training state (checkpoint.py)
  final/           the model artifact (artifact.py): LoRA adapter or whole model, tokenizer,
                   lmtune.json
  loss.png, report.html   the report (analysis/report.py)

`RunFolder` is the one place that knows these names; every command that reads or writes a
run goes through it. A folder is a run only by lmtune's mark (or, for runs made before the
mark, by a complete config.yaml beside lmtune's layout): a file that happens to be named
config.yaml never makes a user's folder one, and --overwrite removes only files lmtune wrote
(those its manifests list, or its own names), never anything else.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lmtune.atomic import is_disk_full, sweep, write_json, write_text
from lmtune.config import (RESOLVED_AT_START, TrainConfig, build, read_saved, saved_form,
                           to_yaml)
from lmtune.errors import UserError
from lmtune.run.artifact import RUN_FILE, read_run_info
from lmtune.run.checkpoint import STEP_DIR, complete_steps
from lmtune.trust import MANIFEST, read_manifest
from lmtune.version import __version__

MARKER = ".lmtune-run"
LOCK = ".lock"
OWN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "loss.png", "report.html",
             "learned.json")  # learned.json: analysis/learned.py's answer for the web page
RUN_OUTPUTS = OWN_FILES + ("checkpoints", "final")
# What a model artifact written before lmtune kept manifests holds (transformers, PEFT and
# tokenizer files): --overwrite removes these from such a final/, and leaves anything else.
LEGACY_ARTIFACT_FILES = (RUN_FILE, "config.json", "generation_config.json",
                         "adapter_config.json", "adapter_model.safetensors",
                         "model.safetensors", "model.safetensors.index.json",
                         "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                         "chat_template.jinja", "README.md")


def train_config(overrides: dict, config_file: str | None = None) -> TrainConfig:
    """`lmtune train`'s config. On --resume the run's saved config is the base layer, so
    `lmtune train --resume --out RUN` needs no other flag (flags given again are then checked
    against it); only a folder lmtune marked as a run lends its config.yaml."""
    if overrides.get("resume") and overrides.get("out") and not config_file:
        run = RunFolder(overrides["out"])
        if run.config_file.is_file() and run.holds_run():
            return build(TrainConfig, overrides, run.config_file, required=RESOLVED_AT_START)
    return build(TrainConfig, overrides, config_file)


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
        """The folder is a run lmtune made: it has lmtune's mark, or (a run made before the
        mark) a config.yaml lmtune wrote beside a log, a checkpoint or a final model."""
        if not self.path.is_dir():
            return False
        if (self.path / MARKER).is_file():  # a mark alone (a start that failed) is no run
            return any((self.path / name).exists() for name in RUN_OUTPUTS)
        if not self.config_file.is_file():
            return False
        try:
            self.config()
        except UserError:
            return False
        return (self.metrics_file.is_file() or (self.final / RUN_FILE).is_file()
                or bool(complete_steps(self.checkpoints)))

    @classmethod
    def containing(cls, spec: str | Path | None) -> "RunFolder | None":
        """The run that `spec` (a run folder, its final/ folder or a checkpoint) belongs to."""
        if spec is None:
            return None
        p = Path(spec).expanduser()
        for folder in (p, p.parent, p.parent.parent, p.parent.parent.parent):
            run = cls(folder)
            if run.config_file.is_file() and run.holds_run():
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
        """The JSON records of metrics.jsonl or samples.jsonl; a line torn by a crash (even
        inside a character) is skipped."""
        return [record for record, _ in _read_records(path)]

    # --- writing (rank 0 of a training run, under its lock)

    def write_config(self, cfg: TrainConfig) -> None:
        write_text(self.config_file, to_yaml(saved_form(cfg)))

    def mark(self) -> None:
        """lmtune's mark, written before anything else of a run (and added to a run made
        before marks existed, when it is resumed or overwritten)."""
        if not (self.path / MARKER).is_file():
            write_json(self.path / MARKER, {"lmtune": __version__,
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def clean_partial(self) -> None:
        """Remove what a crash during a save left behind: lmtune's temporary folders among
        the checkpoints, and the temporary copies of the run's own files (and nothing else
        that happens to start with the same prefix)."""
        sweep(self.checkpoints)
        sweep(self.path, names=RUN_OUTPUTS + (MARKER,))

    def clear(self) -> None:
        """--overwrite: remove what the run wrote, nothing else. Folders lmtune writes whole
        (each checkpoint, final/) lose the files their manifest lists; a folder is removed
        only once it is empty, so a file someone put there stays."""
        for name in OWN_FILES:
            p = self.path / name
            if p.is_symlink() or p.is_file():  # a link goes, never what it points to
                p.unlink()
        if self.checkpoints.is_symlink():
            self.checkpoints.unlink()
        elif self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                if STEP_DIR.match(p.name) and p.is_dir() and not p.is_symlink():
                    _remove_written(p, legacy=())
            sweep(self.checkpoints)
            _remove_if_empty(self.checkpoints)
        if self.final.is_symlink():
            self.final.unlink()
        elif self.final.is_dir():
            _remove_written(self.final, legacy=LEGACY_ARTIFACT_FILES)

    def drop_records_after(self, step: int) -> None:
        """Keep only the log records of steps up to `step` (resuming from that step's
        checkpoint), and drop a last line torn by a crash mid-write."""
        for path in (self.metrics_file, self.samples_file):
            _drop_records_after(path, step)

    def lock(self, now: bool = True) -> "RunLock":
        return RunLock(self.path, now=now)

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
        is_run = self.holds_run()
        if is_run and (resume or overwrite):
            foreign = self.foreign_file()
            if foreign is not None:
                where = ("final/" if foreign.is_relative_to(self.final)
                         else "its checkpoint folders")
                raise UserError(f"{foreign} is not a file lmtune wrote, and the run replaces "
                                f"{where} whole",
                                hint="move it out of the run folder, then run the same "
                                     "command again")
        if resume:
            if not is_run or not self.config_file.is_file():
                raise UserError(f"--resume: {out} holds no run to resume",
                                hint="drop --resume to start a new run there")
            return
        if is_run and not overwrite:
            raise UserError(f"{out} already holds a run",
                            hint="pass --resume to continue it, --overwrite to replace it, or "
                                 "another --out")
        if not is_run and not self._is_empty():
            also = " (--overwrite replaces only a run that lmtune made)" if overwrite else ""
            raise UserError(f"{out} is not empty and holds no run{also}",
                            hint="pass an empty or new folder as --out")

    def foreign_file(self) -> Path | None:
        """A file someone else put in a folder lmtune replaces whole (final/, a checkpoint):
        writing the run would delete it, so the run refuses first."""
        folders = [self.final] if self.final.is_dir() and not self.final.is_symlink() else []
        if self.checkpoints.is_dir():
            folders += [p for p in self.checkpoints.iterdir()
                        if STEP_DIR.match(p.name) and p.is_dir() and not p.is_symlink()]
        for folder in folders:
            written = set(_written(folder, LEGACY_ARTIFACT_FILES if folder == self.final
                                   else ()))
            for p in sorted(folder.rglob("*")):
                if not p.is_dir() and p.relative_to(folder).as_posix() not in written:
                    return p
        return None

    def _is_empty(self) -> bool:
        """Nothing in the folder but what a failed start of lmtune may leave (its lock and
        its mark)."""
        return not self.path.is_dir() or all(p.name in (LOCK, MARKER)
                                             for p in self.path.iterdir())

    def disk_full_hint(self, resume_command: str) -> str:
        """What to do after a full disk stopped the run: resume if a checkpoint is complete,
        else start again."""
        if complete_steps(self.checkpoints):
            return f"free disk space, then resume with: {resume_command}"
        return ("free disk space, then run the same command again with --overwrite (no "
                "checkpoint was complete yet)")

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


def _read_records(path: Path) -> list[tuple[dict, bytes]]:
    """(record, its line) of a JSONL log, skipping lines that are not whole JSON objects:
    a line torn by a crash or a full disk, even mid-character."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            out.append((record, line + b"\n"))
    return out


def _drop_records_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = b"".join(line for record, line in _read_records(path)
                    if isinstance(record.get("step", 0), int) and record.get("step", 0) <= step)
    if kept != path.read_bytes():
        write_text(path, kept.decode("utf-8"))


def _remove_if_empty(folder: Path) -> None:
    """Remove `folder` and its empty subfolders; a folder that holds anything stays."""
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _written(folder: Path, legacy: tuple[str, ...]) -> list[str]:
    """The files lmtune wrote into `folder` (paths relative to it): those its manifest lists,
    or (a folder written before manifests) the `legacy` names."""
    if (folder / MANIFEST).is_file():
        try:
            return list(read_manifest(folder, "folder", "")) + [MANIFEST]
        except UserError:  # a damaged manifest names nothing safely
            return []
    return [p.name for p in folder.iterdir() if p.name in legacy
            or (p.name.startswith("model-") and p.suffix == ".safetensors")]


def _remove_written(folder: Path, legacy: tuple[str, ...]) -> None:
    """The files lmtune wrote into `folder`, then the folder, if nothing else is left."""
    for name in _written(folder, legacy):
        p = folder / name
        if p.is_symlink() or p.is_file():
            p.unlink()
    if folder.is_dir():
        _remove_if_empty(folder)


class RunLock:
    """An exclusive lock on the run folder: a second `lmtune train` on it refuses. As a
    context it locks on entering (when `now` and the folder exists) or at `acquire()`, and
    unlocks on leaving."""

    def __init__(self, out: Path, now: bool = True):
        self.path = Path(out) / LOCK
        self.now = now
        self.fd: int | None = None

    def __enter__(self):
        if self.now and self.path.parent.is_dir():
            self.acquire()
        return self

    def acquire(self) -> None:
        if self.fd is not None:
            return
        try:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise self._cannot(e) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise UserError(f"another lmtune process is training in {self.path.parent}",
                            hint="wait for it to finish or use another --out")
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, str(os.getpid()).encode())
        except OSError as e:  # a full disk: leave nothing behind that blocks the folder
            self.__exit__()
            raise self._cannot(e) from None

    def _cannot(self, e: OSError) -> UserError:
        full = " (disk full)" if is_disk_full(e) else ""
        return UserError(f"cannot write {self.path}: {e.strerror or e}{full}",
                         hint="free disk space, then run the same command again" if full
                         else "check that the folder is writable")

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            self.path.unlink(missing_ok=True)


class JsonlWriter:
    """Appends one JSON record per line (metrics.jsonl, samples.jsonl). A write that fails
    (a full disk) is undone to the last whole line, so every reader, and --resume, finds
    whole lines only; the error names the file."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as e:
                os.ftruncate(fd, size)  # shrinking a file needs no free space
                raise OSError(e.errno, e.strerror, str(self.path)) from None
        finally:
            os.close(fd)


class NoWriter:
    """What ranks other than 0 log to."""

    def __init__(self, path: Path):
        pass

    def write(self, record: dict) -> None:
        pass
