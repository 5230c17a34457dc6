"""A model artifact: the folder a run's final model (`final/`) or a checkpoint's weights
(`checkpoints/step-N/model/`) live in. It loads with transformers or PEFT as it is:

  model.safetensors (or adapter_model.safetensors and adapter_config.json for LoRA), config
  files, the tokenizer, and lmtune.json: what later commands need to know (the base model,
  the method, the templates the data was read with, for a classifier its labels), and
  manifest.json, the sha256 of every file, checked before the folder is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmtune.atomic import disk_errors, new_folder
from lmtune.errors import UserError
from lmtune.progress import stage
from lmtune.trust import MANIFEST, verify_manifest, write_manifest
from lmtune.version import __version__

RUN_FILE = "lmtune.json"


def save_artifact(folder: Path, model, tokenizer, info: dict,
                  state_dict: dict | None = None) -> None:
    """Weights (safetensors), tokenizer and lmtune.json, written beside `folder` and swapped
    in whole: a crash or a full disk never leaves a `folder` that looks complete but is
    half-written, and a previous `folder` stays until the new one is complete. `state_dict`:
    the weights when the model holds only a shard of them (FSDP)."""
    given = {} if state_dict is None else {"state_dict": state_dict}
    with disk_errors(folder), new_folder(folder) as tmp, stage(f"saving {folder}"):
        model.save_pretrained(tmp, safe_serialization=True, **given)
        tokenizer.save_pretrained(tmp)
        finish_artifact(tmp, info)


def finish_artifact(folder: Path, info: dict) -> None:
    """lmtune.json, then the manifest of every file (last: it says the folder is whole)."""
    (folder / RUN_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    write_manifest(folder)


def read_run_info(folder: Path) -> dict | None:
    """The lmtune.json of an artifact folder; None when it has none (a plain model folder)."""
    f = Path(folder) / RUN_FILE
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{f} is not valid JSON; the run folder is damaged") from None
    if not isinstance(info, dict):
        raise UserError(f"{f} does not hold a JSON object; the run folder is damaged")
    return info


def run_info(cfg, base_model: str) -> dict:
    """What a language-model run's lmtune.json records (a task adds its own keys)."""
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


# Files a person may add beside a model without changing what loads: notes, model cards.
_NOTES = (".md", ".txt")


def verify_artifact(folder: Path) -> None:
    """A folder lmtune wrote (it has lmtune.json and a manifest) is checked against its
    manifest before it is loaded: a flipped byte in the weights is refused, not used. An
    artifact written before lmtune kept manifests has none and loads as it is."""
    if not ((folder / RUN_FILE).is_file() and (folder / MANIFEST).is_file()):
        return
    verify_manifest(folder, "model folder", "the files were changed after lmtune wrote "
                                            "them; restore them, or train the run again",
                    extra_ok=lambda name: "/" not in name and Path(name).suffix in _NOTES)
