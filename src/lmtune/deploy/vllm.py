"""A run as what vLLM serves: a LoRA adapter folder for `vllm serve BASE --enable-lora
--lora-modules NAME=DIR` where vLLM can serve LoRA on the model, else a standalone model
folder for `vllm serve DIR`; either way the exact command comes back with it.

The rules mirror what vLLM checks when it loads an adapter (vllm/lora/peft_helper.py,
PEFTHelper.validate_legal, and its --max-lora-rank choices) and which of its model classes
implement SupportsLoRA (vllm/model_executor/models: Llama, Mistral, Qwen2/3, Gemma, Phi-3;
GPT-2 does not). An adapter vLLM would refuse at load time is refused here, with the reason,
before anything is written. No vLLM import: the folder is checked as a file format, so no GPU
is needed to write it.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.atomic import new_folder, refuse_filled_folder
from lmtune.errors import UserError
from lmtune.models.resolve import refuse_classifier, resolve
from lmtune.progress import stage

LORA_MODELS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"}
LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm serve --max-lora-rank choices
DEFAULT_MAX_LORA_RANK = 16
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class VllmResult:
    out: Path
    kind: str            # "adapter" (served over `base`) or "model" (served on its own)
    base: str | None
    command: str
    note: str = ""       # why a LoRA run became a model folder, when it did


def export_vllm(run: str, out: str, *, type: str = "bf16", trust_remote_code: bool = False,
                allow_pickle: bool = False) -> VllmResult:
    target = Path(out)
    refuse_filled_folder(target)
    if type not in DTYPES:
        raise UserError(f"--type {type} is not a type vLLM loads from a model folder",
                        hint="--type bf16 (vLLM's usual), f16 or f32")
    resolved = resolve(run)
    refuse_classifier(resolved)
    if resolved.adapter is not None:
        from lmtune.models.load import peek_config

        model_type = peek_config(resolved, trust_remote_code).model_type
        if model_type in LORA_MODELS:
            return _adapter(resolved, target)
        note = (f"vLLM serves no LoRA adapters on {model_type} models, so the adapter is "
                f"merged into a model folder")
    else:
        note = ""
    return _model(run, target, type, note, trust_remote_code, allow_pickle)


def check_adapter(config: dict, tensor_names: list[str]) -> int:
    """The --max-lora-rank vLLM needs for this adapter; a UserError for what it refuses."""
    refuse = lambda why: UserError(f"vLLM cannot load this adapter: {why}",  # noqa: E731
                                   hint="export a model folder instead: merge the run "
                                        "(lmtune merge) and serve it with vllm serve DIR")
    if config.get("peft_type", "LORA") != "LORA":
        raise refuse(f"it is a {config['peft_type']} adapter, not LoRA")
    if config.get("use_dora"):
        raise refuse("it uses DoRA")
    if config.get("modules_to_save"):
        raise refuse(f"it trains whole modules besides LoRA ({config['modules_to_save']})")
    if config.get("bias", "none") != "none":
        raise refuse(f"it trains biases (bias={config['bias']!r})")
    rank = int(config.get("r", 0))
    if not 0 < rank <= MAX_LORA_RANKS[-1]:
        raise refuse(f"its rank {rank} is outside 1-{MAX_LORA_RANKS[-1]}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    unknown = sorted(set(targets) - LORA_TARGETS)
    if unknown:
        raise refuse(f"it adapts {', '.join(unknown)}, which vLLM's LoRA layers do not cover "
                     f"(it covers {', '.join(sorted(LORA_TARGETS))})")
    bad = [n for n in tensor_names if not n.endswith((".lora_A.weight", ".lora_B.weight"))]
    if bad:
        raise refuse(f"it holds tensors other than lora_A/lora_B weights ({bad[0]})")
    return next(r for r in MAX_LORA_RANKS if r >= rank)


def _adapter(resolved, target: Path) -> VllmResult:
    from safetensors import safe_open

    folder = resolved.adapter
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    max_rank = check_adapter(config, names)
    base = _base_name(resolved.path)
    name = _served_name(target)
    with new_folder(target) as tmp:
        for file in ADAPTER_FILES:
            shutil.copyfile(folder / file, tmp / file)
        # vLLM matches an adapter to its base by this name; a local base is written as the
        # absolute folder, the same string the command passes to vllm serve.
        config["base_model_name_or_path"] = base
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2),
                                                 encoding="utf-8")
    parts = ["vllm", "serve", base, "--enable-lora", "--lora-modules",
             f"{name}={target.resolve()}"]
    if max_rank > DEFAULT_MAX_LORA_RANK:
        parts += ["--max-lora-rank", str(max_rank)]
    return VllmResult(out=target, kind="adapter", base=base, command=shlex.join(parts))


def _model(run: str, target: Path, type: str, note: str, trust_remote_code: bool,
           allow_pickle: bool) -> VllmResult:
    from lmtune.models.load import load

    model, tokenizer, resolved = load(run, dtype=DTYPES[type], merge=True,
                                      trust_remote_code=trust_remote_code,
                                      allow_pickle=allow_pickle)
    with new_folder(target) as tmp, stage(f"writing {target}"):
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    parts = ["vllm", "serve", str(target.resolve()), "--served-model-name",
             _served_name(target), "--dtype", {"f32": "float32", "f16": "float16",
                                               "bf16": "bfloat16"}[type]]
    return VllmResult(out=target, kind="model", base=None, command=shlex.join(parts),
                      note=note)


def _base_name(path: str) -> str:
    local = Path(path)
    return str(local.resolve()) if local.exists() else path


def _served_name(target: Path) -> str:
    return target.resolve().name or "lmtune-model"
