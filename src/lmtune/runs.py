"""The run folder is the contract: everything a later command needs sits in it.

  config.yaml      the resolved config (pass it back with --config)
  metrics.jsonl    one JSON object per log step and per evaluation
  samples.jsonl    samples generated during training
  checkpoints/     resumable training state
  final/           the model: LoRA adapter (PEFT format) or the whole model, the tokenizer,
                   and lmtune.json (base model, method, templates)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from lmtune.checkpoint import TMP_PREFIX
from lmtune.errors import UserError
from lmtune.models import RUN_FILE

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "samples.jsonl")
RUN_OUTPUTS = RUN_MARKERS + ("loss.png", "report.html")  # what --overwrite removes


def default_out(data: str) -> Path:
    name = Path(data.rstrip("/")).stem or "run"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / m).exists() for m in RUN_MARKERS)


def check_out(out: Path, *, resume: bool, overwrite: bool, model_path: str | None,
              data_path: str | None = None) -> None:
    """Refuse unsafe output folders before anything is loaded or written.

    Absolute paths are taken as meant. Refused: a relative path whose `..` leads out of the
    current folder (a typo or a config file written elsewhere), a symlink (as --out or as a
    run output inside it) whose target lies outside the folder it sits in, a folder that is or
    holds the base model (--overwrite would delete it), one that would overwrite the data, and
    a non-empty folder that holds no run."""
    if not out.is_absolute() and ".." in out.parts:
        here = Path.cwd().resolve()
        if not (here / out).resolve().is_relative_to(here):
            raise UserError(f"--out {out} leads outside the current folder (to "
                            f"{(here / out).resolve()})",
                            hint="pass it as an absolute path if that is where the run belongs")
    _refuse_symlink_out(out, out.parent, f"--out {out}",
                        "pass the real folder ({real}) if that is where the run belongs")
    for name in RUN_OUTPUTS:
        _refuse_symlink_out(out / name, out, f"{out / name}",
                            "remove the link (--overwrite and prune would delete through it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", hint="pass a folder path")
    target = out.resolve()
    if model_path and Path(model_path).exists():
        model = Path(model_path).resolve()
        if target == model or target in model.parents:
            what = "is" if target == model else "holds"
            raise UserError(f"--out {out} {what} the base model's own folder ({model})",
                            hint="write the run to a new folder")
    if data_path and Path(data_path).exists():
        data = Path(data_path).resolve()
        if any(data == target / n or (target / n) in data.parents for n in RUN_OUTPUTS):
            raise UserError(f"the data {data_path} lies where the run writes its outputs in "
                            f"--out {out}", hint="move the data file or pass another --out")
    if resume:
        if not holds_run(out) or not (out / "config.yaml").is_file():
            raise UserError(f"--resume: {out} holds no run to resume",
                            hint="drop --resume to start a new run there")
        return
    if holds_run(out) and not overwrite:
        raise UserError(f"{out} already holds a run",
                        hint="pass --resume to continue it, --overwrite to replace it, or "
                             "another --out")
    if out.is_dir() and any(out.iterdir()) and not holds_run(out):
        raise UserError(f"{out} is not empty and holds no run",
                        hint="pass an empty or new folder as --out")


def _refuse_symlink_out(path: Path, within: Path, what: str, hint: str) -> None:
    if not path.is_symlink():
        return
    real, home = path.resolve(), within.resolve()
    if real != home and not real.is_relative_to(home):
        raise UserError(f"{what} is a symlink to {real}, outside {home}",
                        hint=hint.format(real=real))


def clear_run(out: Path) -> None:
    """--overwrite: remove what a run wrote, nothing else."""
    for name in RUN_OUTPUTS + (RUN_FILE,):
        p = out / name
        if p.is_symlink():  # the link goes, never what it points to
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


class RunLock:
    """An exclusive lock on the run folder: a second `lmtune train` on it refuses."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
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


def run_info(cfg, base_model: str) -> dict:
    from lmtune import __version__

    return {
        "lmtune_version": __version__,
        "task": "generate",
        "base_model": base_model,
        "method": cfg.method,
        "template": cfg.template,
        "prompt_template": cfg.prompt_template,
        "completion_template": cfg.completion_template,
        "column": cfg.column,
        # Every training example started with this token; generation prepends it too.
        "start_token": "bos_or_eos",
    }


def save_artifact(folder: Path, model, tokenizer, info: dict,
                  state_dict: dict | None = None) -> None:
    """Weights (safetensors), tokenizer and lmtune.json: loadable by transformers or PEFT.
    `state_dict`: the weights when the model holds only a shard of them (FSDP).

    Written beside `folder` under a temporary name and swapped in whole, as checkpoints are:
    a crash or a full disk during the save never leaves a `folder` that looks complete but is
    half-written, and a previous `folder` stays until the new one is complete."""
    tmp = folder.with_name(TMP_PREFIX + folder.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    given = {} if state_dict is None else {"state_dict": state_dict}
    try:
        model.save_pretrained(tmp, safe_serialization=True, **given)
        tokenizer.save_pretrained(tmp)
        (tmp / RUN_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    """Rename the old folder away, the new one in, then delete the old one. A kill between
    the renames leaves no `target` at all (never a mix), and the next `lmtune train --resume`
    writes it again from the last checkpoint."""
    old = target.with_name(TMP_PREFIX + "old-" + target.name)
    shutil.rmtree(old, ignore_errors=True)
    if target.is_symlink():  # the link goes, never what it points to
        target.unlink()
    elif target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def clean_partial_artifacts(out: Path) -> None:
    """Remove what a crash during `save_artifact` left in the run folder."""
    for name in ("final", "old-final"):
        shutil.rmtree(out / (TMP_PREFIX + name), ignore_errors=True)


class JsonlWriter:
    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def drop_records_after(path: Path, step: int) -> None:
    """Keep only the records of steps up to `step` (resuming from that step's checkpoint),
    and drop a last line torn by a crash mid-write."""
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
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
