"""A run (or any model folder) as one GGUF file that llama.cpp, Ollama and LM Studio load,
written in pure Python with the `gguf` package: no compiler, no llama.cpp checkout.

What llama.cpp reads is mirrored from its own converter (convert_hf_to_gguf.py):
- GPT-2: Conv1D weights (c_attn, c_proj, c_fc) transposed to (out, in); the attention mask
  buffers dropped; the output head written as a copy of the tied token embedding.
- Llama family: q_proj and k_proj permuted from transformers' rotary layout to llama.cpp's
  (grouped KV heads permute with the KV head count); a tied head is not written (llama.cpp
  reads the token embedding); linear and Llama 3 rope scaling as llama.cpp's rope_freqs.
- The tokenizer (gguf_vocab.py): what llama.cpp would split differently is refused there.
A LoRA run is merged first (models.merge's numerically checked merge, in memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmtune.atomic import write_file
from lmtune.deploy.gguf_vocab import read_vocab, write_vocab
from lmtune.errors import UserError
from lmtune.models.load import load, peek_config
from lmtune.models.resolve import resolve
from lmtune.progress import iterate, stage
from lmtune.version import __version__

# --type -> (the file type llama.cpp records, the tensor type of 2-D weights)
TYPES = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"),
         "bf16": ("MOSTLY_BF16", "BF16"), "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
         "q4_0": ("MOSTLY_Q4_0", "Q4_0")}
ARCHS = {"gpt2": "GPT2", "llama": "LLAMA"}


@dataclass
class ExportResult:
    out: Path
    architecture: str
    type: str
    tensors: int
    bytes: int
    eos_token: str  # the text of the end token: a stop for Ollama and llama.cpp's servers


def export_gguf(model: str, out: str, *, type: str = "f16", trust_remote_code: bool = False,
                allow_pickle: bool = False) -> ExportResult:
    import gguf

    if type not in TYPES:
        raise UserError(f"--type {type} is not one lmtune writes",
                        hint=f"one of {', '.join(TYPES)}")
    target = Path(out)
    if target.exists():
        raise UserError(f"--out {target} already exists", hint="pass a new file name")
    if not target.parent.is_dir():
        raise UserError(f"the folder {target.parent} does not exist",
                        hint="create it first, or pass --out inside an existing folder")
    # The architecture is checked from the config alone, before any weight loads.
    model_type = peek_config(resolve(model), trust_remote_code).model_type
    arch = ARCHS.get(model_type)
    if arch is None:
        raise UserError(f"GGUF export supports GPT-2 and Llama-family models, not "
                        f"{model_type}", hint="merge the run (lmtune merge) and convert "
                                              "it with llama.cpp's convert_hf_to_gguf.py")
    hf, tokenizer, resolved = load(model, dtype=torch.float32, merge=True,
                                   trust_remote_code=trust_remote_code,
                                   allow_pickle=allow_pickle)
    cfg = hf.config
    vocab = read_vocab(tokenizer, cfg.vocab_size)  # refuses what llama.cpp would misread
    file_type, tensor_type = TYPES[type]
    tensors = list(_tensors(hf, cfg, arch))

    def write(tmp: Path) -> None:
        # Streamed: every tensor's layout goes in the header first, then each is converted
        # and written in turn, so memory holds the model and one converted tensor.
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch]])
        _metadata(writer, cfg, arch, resolved, getattr(gguf.LlamaFileType, file_type))
        write_vocab(writer, tokenizer, vocab)
        kinds = [_kind(gguf, w, tensor_type) for _, w in tensors]
        for (name, w), kind in zip(tensors, kinds):
            writer.add_tensor_info(name, *_layout(gguf, w, kind, tensor_type), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (name, w), kind in iterate(list(zip(tensors, kinds)), f"writing {target.name}",
                                       unit="tensor"):
            writer.write_tensor_data(_convert(gguf, w, kind, tensor_type))
        writer.close()

    with stage(f"exporting {model} to GGUF ({type})"):
        write_file(target, write)
    return ExportResult(out=target, architecture=cfg.model_type, type=type,
                        tensors=len(tensors), bytes=target.stat().st_size,
                        eos_token=tokenizer.eos_token)


def _metadata(writer, cfg, arch: str, resolved, file_type) -> None:
    info = resolved.info or {}
    writer.add_type("model")
    writer.add_name(Path(str(resolved.spec)).name or "model")
    if info.get("base_model"):
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, str(info["base_model"]))
    writer.add_string("general.tool", f"lmtune {__version__}")
    license = _license(resolved)
    if license:
        writer.add_license(license)
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)
    if arch == "GPT2":
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
        return
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads or cfg.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)


def _license(resolved) -> str | None:
    """The license a model card states in its front matter (`license: apache-2.0`), from the
    run's folder or its base's, when either is a local folder with a README.md."""
    for folder in (resolved.adapter, resolved.path):
        card = Path(str(folder)) / "README.md" if folder else None
        if card is None or not card.is_file():
            continue
        lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
        if not lines or lines[0].strip() != "---":
            continue
        for line in lines[1:]:
            if line.strip() == "---":
                break
            key, _, value = line.partition(":")
            if key.strip() == "license" and value.strip():
                return value.strip().strip("'\"")
    return None


def _rope_theta(cfg) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        params = getattr(cfg, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0) if isinstance(params, dict) else 10000.0
    return float(theta)


def rope_freqs(model, cfg) -> torch.Tensor | None:
    """llama.cpp's rope_freqs tensor: the factor each rotary frequency is divided by, taken
    from the frequencies the model itself uses (its rotary embedding's inv_freq) against the
    unscaled ones, so every scaling that only rescales frequencies (linear, Llama 3's) is
    written exactly as transformers computes it; None when nothing is scaled. Scalings that
    change with the sequence length or scale attention (dynamic, YaRN, LongRoPE) have no
    such fixed form and are refused."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    kind = getattr(rotary, "rope_type", "default")
    if rotary is None or kind == "default":
        return None
    if kind not in ("linear", "llama3") or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        raise UserError(f"this model uses {kind} rope scaling, which a GGUF file cannot hold "
                        f"as fixed frequency factors", hint="convert the merged model with "
                                                            "llama.cpp's convert_hf_to_gguf.py")
    scaled = rotary.inv_freq.detach().float().cpu()
    dim = 2 * scaled.numel()
    unscaled = 1.0 / (_rope_theta(cfg) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return unscaled / scaled


def permute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' rotary layout (halves) -> llama.cpp's (interleaved pairs), per head."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _tensors(model, cfg, arch: str):
    """(GGUF name, tensor) for every weight llama.cpp reads, in llama.cpp's layout."""
    import gguf

    n_blocks = cfg.n_layer if arch == "GPT2" else cfg.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch], n_blocks)
    tied = getattr(cfg, "tie_word_embeddings", True)
    for hf_name, w in model.state_dict().items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # buffers, not weights
        if hf_name == "lm_head.weight" and tied:
            continue  # GPT-2 gets a copy below; Llama reads the token embedding
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"no GGUF name for the weight {hf_name}",
                            hint="this model has weights llama.cpp's architecture lacks")
        w = w.detach()
        if arch == "GPT2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight",
                                                ".c_fc.weight")):
            w = w.T  # Conv1D keeps (in, out)
        if arch == "LLAMA" and hf_name.endswith("q_proj.weight"):
            w = permute_rotary(w, cfg.num_attention_heads)
        if arch == "LLAMA" and hf_name.endswith("k_proj.weight"):
            w = permute_rotary(w, cfg.num_key_value_heads or cfg.num_attention_heads)
        yield name, w
        if arch == "GPT2" and name == "token_embd.weight":
            yield "output.weight", w
    factors = rope_freqs(model, cfg) if arch == "LLAMA" else None
    if factors is not None:
        yield "rope_freqs.weight", factors


def _half(w: torch.Tensor, tensor_type: str) -> bool:
    """Written as f16: a matrix at --type f16, or one whose rows do not fill whole blocks of
    a quantised type (as llama.cpp does); norms and biases stay f32 at every type."""
    return w.dim() >= 2 and tensor_type not in ("F32", "BF16") and (
        tensor_type == "F16" or not _fills_blocks(w, tensor_type))


def _fills_blocks(w: torch.Tensor, tensor_type: str) -> bool:
    import gguf

    return w.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[tensor_type]][0] == 0


def _kind(gguf, w: torch.Tensor, tensor_type: str):
    """The quantised type a tensor is written in, or None for plain f16/f32."""
    if w.dim() < 2 or tensor_type in ("F32", "F16") or (
            tensor_type != "BF16" and not _fills_blocks(w, tensor_type)):
        return None
    return gguf.GGMLQuantizationType[tensor_type]


def _layout(gguf, w: torch.Tensor, kind, tensor_type: str) -> tuple[list[int], np.dtype, int]:
    """(shape as GGUFWriter takes it, numpy dtype, bytes) of a tensor as written: quantised
    blocks are described by their byte shape (uint8), bf16 as uint16 words."""
    shape = list(w.shape)
    if kind is None:
        dtype = np.dtype(np.float16 if _half(w, tensor_type) else np.float32)
        return shape, dtype, w.numel() * dtype.itemsize
    if kind == gguf.GGMLQuantizationType.BF16:
        return shape, np.dtype(np.uint16), w.numel() * 2
    byte_shape = list(gguf.quant_shape_to_byte_shape(shape, kind))
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))


def _convert(gguf, w: torch.Tensor, kind, tensor_type: str) -> np.ndarray:
    data = w.float().contiguous().numpy()
    if kind is not None:
        return gguf.quants.quantize(data, kind)
    return data.astype(np.float16 if _half(w, tensor_type) else np.float32)
