"""A LoRA run's adapter alone as a GGUF LoRA file, for `llama-cli -m BASE.gguf --lora FILE`
and Ollama's ADAPTER, on the Llama family (as llama.cpp's convert_lora_to_gguf.py writes it):
`general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`; for each adapted
weight `NAME.lora_a` (r x in) and `NAME.lora_b` (out x r) under the base weight's GGUF name.
llama.cpp scales by alpha / r, as PEFT does. q_proj and k_proj rows are permuted in the base
file (gguf.py), so their lora_b rows are permuted the same way. The base model goes with it:
`lmtune export BASE --out base.gguf`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmtune.atomic import write_file
from lmtune.deploy.gguf import ExportResult, permute_rotary
from lmtune.errors import UserError
from lmtune.models.resolve import resolve
from lmtune.progress import stage


def _adapter_config(folder: Path) -> dict:
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise UserError("this adapter uses DoRA or rsLoRA, which a GGUF LoRA cannot hold",
                        hint="export the merged model instead: lmtune export RUN --out M.gguf")
    if cfg.get("modules_to_save"):
        raise UserError("this adapter trains whole modules besides LoRA (modules_to_save)",
                        hint="export the merged model instead: lmtune export RUN --out M.gguf")
    if cfg.get("trainable_token_indices"):
        raise UserError("this adapter trains new token rows (train --extend-tokenizer), which "
                        "a GGUF LoRA cannot hold",
                        hint="export the merged model instead: lmtune export RUN --out M.gguf")
    return cfg


def export_gguf_lora(run: str, out: str, *, type: str = "f32", trust_remote_code: bool = False,
                     allow_pickle: bool = False) -> ExportResult:
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    target = Path(out)
    if target.exists():
        raise UserError(f"--out {target} already exists", hint="pass a new file name")
    if type not in ("f32", "f16"):
        raise UserError(f"--type {type} does not fit a LoRA adapter (small and precise)",
                        hint="--type f32 or f16")
    resolved = resolve(run)
    if resolved.adapter is None:
        raise UserError(f"{run} holds a full model, not a LoRA adapter",
                        hint="--format gguf writes the whole model")
    cfg = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    if cfg.model_type != "llama":
        raise UserError(f"GGUF LoRA export supports the Llama family, not {cfg.model_type}",
                        hint="export the merged model instead: lmtune export RUN --out M.gguf")
    adapter = _adapter_config(resolved.adapter)
    weights = load_file(str(resolved.adapter / "adapter_model.safetensors"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tensors = list(_lora_tensors(weights, names, cfg))
    dtype = np.float16 if type == "f16" else np.float32

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter["lora_alpha"]))
        writer.add_name(Path(str(run)).name)
        for name, w in tensors:
            writer.add_tensor(name, w.float().contiguous().numpy().astype(dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    with stage(f"exporting the adapter of {run} to GGUF"):
        write_file(target, write)
    return ExportResult(out=target, architecture="llama", type=type, tensors=len(tensors),
                        bytes=target.stat().st_size, eos_token="")


def _lora_tensors(weights: dict, names, cfg):
    for key, w in sorted(weights.items()):
        # PEFT: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        if ".lora_A." not in key and ".lora_B." not in key:
            raise UserError(f"the adapter holds {key}, which a GGUF LoRA cannot hold",
                            hint="export the merged model instead: lmtune export RUN --out "
                                 "M.gguf")
        module, part = key.split(".lora_A." if ".lora_A." in key else ".lora_B.")
        hf_name = module.removeprefix("base_model.model.") + ".weight"
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise UserError(f"no GGUF name for the adapted weight {hf_name}")
        is_b = ".lora_B." in key
        if is_b and hf_name.endswith("q_proj.weight"):
            w = permute_rotary(w, cfg.num_attention_heads)
        if is_b and hf_name.endswith("k_proj.weight"):
            w = permute_rotary(w, cfg.num_key_value_heads or cfg.num_attention_heads)
        yield f"{name}.lora_{'b' if is_b else 'a'}", w.to(torch.float32)
