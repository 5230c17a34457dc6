"""Save, find, verify and load training state.

A checkpoint is a folder `checkpoints/step-000100/`:
  model/                  the weights as a loadable artifact (LoRA adapter in PEFT format, or
                          the whole model), with the tokenizer and lmtune.json
  optimizer.safetensors   optimizer tensors; optimizer.json holds the rest of its state
  rng.safetensors         torch RNG states (dropout must continue where it stopped); under
                          several processes every rank's, as rank<r>.cpu and rank<r>.cuda
  state.json              step, data position, counters, best validation loss
  manifest.json           sha256 of every file above, written last

It is written under a temporary name and renamed when complete, so a crash never leaves a
folder that looks whole; resume verifies the manifest and refuses a damaged checkpoint
instead of silently starting over. Nothing here unpickles: tensors go to safetensors and
everything else to JSON.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from lmtune.atomic import disk_errors, is_disk_full, new_folder, remove_folder, sweep
from lmtune.errors import UserError
from lmtune.trust import MANIFEST, verify_manifest, write_manifest

STEP_DIR = re.compile(r"^step-(\d{6,})$")
# Tests set LMTUNE_KILL_AT=POINT@STEP to SIGKILL the process at one moment of a save (a kill
# from outside cannot hit "after the optimizer file, before the manifest" reliably).
KILL_AT = "LMTUNE_KILL_AT"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


REQUIRED = ("state.json", "optimizer.json", "optimizer.safetensors", "rng.safetensors")
DAMAGED_HINT = "delete that checkpoint folder to resume from an older one"


# ---------------------------------------------------------------------------------------------
# Optimizer state <-> safetensors + JSON.

def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, per_param in state["state"].items():
        entry = {}
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                entry[key] = value
        meta["state"][str(idx)] = entry
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    # A parameter is its index, or under FSDP its dotted name (the full state is keyed by
    # name); the state's own keys (exp_avg, step) have no dots.
    def param(i: str):
        return int(i) if i.isdigit() else i

    state: dict[Any, dict[str, Any]] = {param(i): dict(v) for i, v in meta["state"].items()}
    for name, tensor in tensors.items():
        idx, key = name.rsplit(".", 1)
        state.setdefault(param(idx), {})[key] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------------
# Saving.

def save(ckpt_root: Path, step: int, *, save_model: Callable[[Path], None], optimizer,
         state: dict, keep: int, best_step: int | None, optimizer_state: dict | None = None,
         rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `step` atomically, then prune old ones (only after the new one is
    complete, so a failed save never costs the previous checkpoints). `optimizer_state` and
    `rng` replace this process's own when the caller gathered them from every rank."""
    final = ckpt_root / step_name(step)
    try:
        # A re-save of the same step (an interrupt right after a save) replaces it.
        with disk_errors(final), new_folder(final) as tmp:
            save_model(tmp / "model")
            _kill_point("model", step)
            tensors, meta = _flatten_optimizer(optimizer_state or optimizer.state_dict())
            save_file(tensors, tmp / "optimizer.safetensors")
            _write_json(tmp / "optimizer.json", meta)
            _kill_point("optimizer", step)
            save_file(rng or _rng_states(), tmp / "rng.safetensors")
            _write_json(tmp / "state.json", state)
            write_manifest(tmp)
            _kill_point("manifest", step)
        _kill_point("renamed", step)
    except OSError as e:
        full = " (disk full)" if is_disk_full(e) else ""
        earlier = complete_steps(ckpt_root)
        raise UserError(f"could not write checkpoint {final}: {e.strerror or e}{full}",
                        hint=f"free disk space, then resume with --resume (from step "
                             f"{earlier[-1]}; earlier checkpoints were left as they were)"
                        if earlier else "free disk space, then start the run again with "
                                        "--overwrite (no checkpoint was complete yet)")
    prune(ckpt_root, keep=keep, best_step=best_step)
    return final


def _kill_point(point: str, step: int) -> None:
    if os.environ.get(KILL_AT) == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _rng_states() -> dict[str, torch.Tensor]:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    return rng


def _write_json(path: Path, obj: Any) -> None:
    # Inside the checkpoint's temporary folder, which is renamed whole: no rename per file,
    # but fsync, so the manifest never names a file whose bytes are not on disk yet.
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def prune(ckpt_root: Path, *, keep: int, best_step: int | None) -> None:
    steps = complete_steps(ckpt_root)
    # The newest always stays, whatever --keep says: it is what --resume and an interrupted
    # run's message point at.
    keepers = set(steps[-max(1, keep):])
    if best_step is not None:
        keepers.add(best_step)
    for s in steps:
        if s not in keepers:
            # A kill midway leaves a temporary folder, swept at the next start; never a
            # half-deleted checkpoint that still has its manifest.
            remove_folder(ckpt_root / step_name(s))


def clean_partial(ckpt_root: Path) -> None:
    """Remove temporary folders left by a crash during a save."""
    sweep(ckpt_root)


# ---------------------------------------------------------------------------------------------
# Finding and loading.

def is_checkpoint(folder: Path) -> bool:
    """A checkpoint folder (complete or not): its weights and its state."""
    return (folder / "model").is_dir() and (folder / "state.json").is_file()


def complete_steps(ckpt_root: Path) -> list[int]:
    if not ckpt_root.is_dir():
        return []
    steps = []
    for p in ckpt_root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MANIFEST).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def verify(folder: Path) -> None:
    """The checkpoint holds exactly the files its manifest lists, each unchanged, and its
    state and optimizer files have the shape lmtune writes; else it is refused by name."""
    manifest = verify_manifest(folder, "checkpoint", DAMAGED_HINT)
    missing = [n for n in REQUIRED if n not in manifest]
    if missing or not any(n.startswith("model/") for n in manifest):
        raise UserError(f"checkpoint {folder} lacks {(missing or ['its model'])[0]}",
                        hint=DAMAGED_HINT)
    state = _read_json(folder / "state.json")
    if not isinstance(state, dict) or type(state.get("step")) is not int:
        raise UserError(f"checkpoint {folder} has a malformed state.json", hint=DAMAGED_HINT)
    meta = _read_json(folder / "optimizer.json")
    if not (isinstance(meta, dict) and isinstance(meta.get("param_groups"), list)
            and isinstance(meta.get("state"), dict)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    for g in meta["param_groups"])
            and all(isinstance(v, dict) for v in meta["state"].values())):
        raise UserError(f"checkpoint {folder} has a malformed optimizer.json",
                        hint=DAMAGED_HINT)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise UserError(f"{path} is not valid JSON", hint=DAMAGED_HINT) from None


def latest(ckpt_root: Path) -> Path | None:
    steps = complete_steps(ckpt_root)
    return ckpt_root / step_name(steps[-1]) if steps else None


def read_state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text(encoding="utf-8"))


def read_optimizer(folder: Path) -> dict:
    meta = _read_json(folder / "optimizer.json")
    try:
        return _unflatten_optimizer(load_file(folder / "optimizer.safetensors"), meta)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"checkpoint {folder} has a malformed optimizer state",
                        hint=DAMAGED_HINT) from None


def read_rng(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "rng.safetensors")


def all_finite(tensors: list[torch.Tensor], chunk: int = 1 << 20) -> bool:
    """Whether every value is finite, checked a million at a time: torch.isfinite makes an
    abs() copy and two masks of its input, 130 MB for a 49k x 384 embedding, which was the
    peak of a small GPT-2's run. One host sync."""
    def parts(t):  # an FSDP shard (DTensor) is checked whole: its answer covers every rank
        return [t] if hasattr(t, "to_local") else t.detach().reshape(-1).split(chunk)
    return bool(torch.stack([torch.isfinite(part).all() for t in tensors
                             for part in parts(t)]).all())
