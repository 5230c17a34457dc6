"""Resuming a run: which checkpoint to start from, and whether the settings and the data still
match the run's. Used by training/train.py before the model loads; putting the weights back
is each method's own (training/methods.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmtune.config import TrainConfig, flag
from lmtune.errors import UserError
from lmtune.run import checkpoint
from lmtune.run.artifact import RUN_FILE
from lmtune.run.folder import RunFolder

# Settings that may differ when resuming; any other change is refused by name.
RESUMABLE_CHANGES = {"max_steps", "epochs", "resume", "overwrite", "log_every", "eval_every",
                     "sample_every", "sample_prompts", "sample_max_new_tokens", "save_every",
                     "save_minutes",
                     "keep", "patience", "device", "threads", "out", "data", "val_data", "report",
                     "dry_run", "force_resume", "allow_pickle",
                     "devices"}  # another world size: see World.check_resume


def find_start(out: Path, cfg: TrainConfig, data_hash: str) -> tuple[Path, list[str]]:
    """The checkpoint to resume from, and what changed since the run started (refused unless
    --force-resume; then the changes are reported)."""
    saved = RunFolder(out).config()
    changes = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES:
            continue
        old, new = getattr(saved, f.name), getattr(cfg, f.name)
        if old != new:
            name = flag(f.name)
            if not cfg.force_resume:
                raise UserError(f"cannot resume {out}: {name} changed from {old!r} to {new!r}",
                                hint=f"resume with the run's own settings (drop {name}), start "
                                     f"a new run with another --out, or pass --force-resume")
            changes.append(f"{name} changed from {old!r} to {new!r}")
    ckpt = checkpoint.latest(out / "checkpoints")
    if ckpt is None:
        raise UserError(f"cannot resume {out}: it has no complete checkpoint",
                        hint="start it again with --overwrite")
    checkpoint.verify(ckpt)
    if checkpoint.read_state(ckpt).get("data_hash") != data_hash:
        if not cfg.force_resume:
            raise UserError(f"cannot resume {out}: the training data changed since the "
                            f"checkpoint", hint="resume with the same data, start a new run, "
                                                "or pass --force-resume")
        changes.append("the training data changed since the checkpoint")
    return ckpt, changes


def final_is_current(out: Path, ckpt: Path | None) -> bool:
    """final/ was written after the newest checkpoint, so it holds that step's weights: the end
    of a run saves the checkpoint first, and a failed final/ save keeps the older final/."""
    try:
        return ckpt is None or ((out / "final" / RUN_FILE).stat().st_mtime_ns
                                >= (ckpt / "manifest.json").stat().st_mtime_ns)
    except FileNotFoundError:
        return False
