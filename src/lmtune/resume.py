"""Resuming a run: which checkpoint to start from, whether the settings still match the
run's, and putting the checkpoint's weights back. Used by train.py before the loop starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmtune import checkpoint, config as config_mod
from lmtune.config import TrainConfig
from lmtune.errors import UserError
from lmtune.models import RUN_FILE

# Settings that may differ when resuming; any other change is refused by name.
RESUMABLE_CHANGES = {"max_steps", "epochs", "resume", "overwrite", "log_every", "eval_every",
                     "sample_every", "sample_prompts", "sample_max_new_tokens", "save_every",
                     "keep", "patience", "device", "out", "data", "val_data", "report",
                     "dry_run", "force_resume", "allow_pickle",
                     "devices"}  # another world size: see World.check_resume


def find_start(out: Path, cfg: TrainConfig, data_hash: str) -> tuple[Path, list[str]]:
    """The checkpoint to resume from, and what changed since the run started (refused unless
    --force-resume; then the changes are reported)."""
    saved = config_mod.build(TrainConfig, {}, str(out / "config.yaml"))
    changes = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES:
            continue
        old, new = getattr(saved, f.name), getattr(cfg, f.name)
        if old != new:
            flag = "--" + f.name.replace("_", "-")
            if not cfg.force_resume:
                raise UserError(f"cannot resume {out}: {flag} changed from {old!r} to {new!r}",
                                hint=f"resume with the run's own settings (drop {flag}), start "
                                     f"a new run with another --out, or pass --force-resume")
            changes.append(f"{flag} changed from {old!r} to {new!r}")
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


def load_weights(model, folder: Path) -> None:
    """A full or freeze run's checkpoint weights into the freshly loaded base (a LoRA run's
    adapter is set after the method is applied). Refused when some are missing or do not
    fit, rather than training on from base weights."""
    from safetensors.torch import load_file

    missing = {n for n, _ in model.named_parameters()}
    for f in sorted(folder.glob("*.safetensors")):
        sd = load_file(f)
        try:
            model.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shapes differ: --force-resume onto another base model
            raise UserError(f"checkpoint weights in {f} do not fit the model "
                            f"({str(e).splitlines()[-1].strip()})",
                            hint="resume with the run's own --model") from None
        missing -= set(sd)
    head = model.get_output_embeddings()  # None for a classifier: it has a label head
    tied = {n for n, p in model.named_parameters() if head is not None and p is head.weight}
    if missing - tied:
        raise UserError(f"checkpoint {folder} lacks weights: {sorted(missing - tied)[:3]}")
