"""What a training run returns, in a module of its own so that launch.py (which hands rank 0's
result back from a --devices launch) and train.py need not import each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import UserError


class Interrupted(UserError):
    """Stopped by a signal after saving a checkpoint; the CLI exits 130."""
    exit_code = 130


@dataclass
class TrainResult:
    out: Path
    final: Path
    steps: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None  # --task generate; None for classify
    best_step: int | None
    stopped: str  # "completed", "patience"
    task: str = "generate"
    best_metric: str = "val_loss"  # what picked the best checkpoint: val_loss or macro_f1
    best_score: float | None = None  # its value at best_step
    metrics: dict | None = None  # the last evaluation record (classify: accuracy, macro_f1...)
