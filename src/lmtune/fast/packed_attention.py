"""Attention for packed blocks on CPU that computes only the keys a query can see.

A packed block holds many short documents and each token attends only within its own
document, yet eager attention and SDPA both compute the full T x T score matrix and mask most
of it away. Here queries go in chunks of `CHUNK` rows, and each chunk is scored against the
keys from the start of its earliest document to its own last row: every key left out is
masked for the whole chunk, so the result is the same as full attention. For 29-token jokes in
a 229-token block that skips 44% of the score matrix; in 1024-token blocks of 200-token
documents, 70% of it, and the memory that autograd keeps for it (SmolLM2 LoRA on one such
block: 2.4 GB peak instead of 4.3, and 1.3x the tokens/s of eager attention).

The window starts are computed once per batch from the position ids (`key_window_starts`) and
travel on the mask tensor, which transformers hands to every layer unchanged. Anything else
(a padding mask, generation with a cache) takes the full window, i.e. plain eager attention.
Used on CPU only, for model types whose attention goes through transformers' attention
interface with nothing extra (no soft-capping, sinks or sliding windows); GPUs keep SDPA or
flash attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.fast import dropout as fast_dropout

CHUNK = 128  # query rows per chunk: smaller skips more keys but runs more, smaller matmuls;
# 128 ran SmolLM2 LoRA on 1024-token blocks of 200-token documents at 483 tokens/s against 455
# for 64, 361 for 32 and 373 for full eager attention (one thread)
NAME = "lmtune_packed"
MODEL_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3"}
_STARTS = "lmtune_key_starts"
START_QUANTUM = 16  # window starts rounded down to this: see key_window_starts


def key_window_starts(position_ids: torch.Tensor) -> list[int]:
    """For each chunk of CHUNK query rows, the first key any of them may attend to: the start
    of the document of the chunk's first row (positions count up from 0 in each document),
    the earliest over the batch, rounded down to START_QUANTUM. The extra keys are masked like
    any other from another document; without the rounding nearly every batch had new matmul
    shapes, and oneDNN's primitive caches grew by about 1 MB a step, for 2-3 hundred steps."""
    firsts = torch.arange(0, position_ids.shape[1], CHUNK, device=position_ids.device)
    starts = (firsts - position_ids[:, firsts]).amin(dim=0).clamp_min(0)
    return (starts // START_QUANTUM * START_QUANTUM).tolist()


def attach_window_starts(mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    setattr(mask, _STARTS, key_window_starts(position_ids))
    return mask


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     **kwargs):
    """query (B, H, T, D); key and value (B, H_kv, S, D); attention_mask additive float or
    boolean (B, 1, T, S) or None. Returns (B, T, H, D) and no weights, as transformers'
    attention functions do."""
    q_len, k_len = query.shape[2], key.shape[2]
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    starts = getattr(attention_mask, _STARTS, None)
    if starts is None or q_len != k_len:
        starts = [0] * len(range(0, q_len, CHUNK))
    offset = k_len - q_len  # keys held from earlier steps (a cache): query i sees key i+offset
    outs = []
    for first, start in zip(range(0, q_len, CHUNK), starts):
        last = min(first + CHUNK, q_len) + offset  # causal: no key after the chunk's last row
        scores = torch.matmul(query[:, :, first:first + CHUNK],
                              key[:, :, start:last].transpose(-1, -2)) * scaling
        if attention_mask is not None:
            mask = attention_mask[:, :, first:first + CHUNK, start:last]
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + mask
        else:  # no mask given: causal within the chunk's window
            rows = torch.arange(first, first + scores.shape[2], device=scores.device) + offset
            cols = torch.arange(start, last, device=scores.device)
            scores = scores.masked_fill(cols[None] > rows[:, None],
                                        torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        probs = fast_dropout.dropout(probs, dropout, module.training)
        outs.append(torch.matmul(probs, value[:, :, start:last]))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def use_packed_attention(model) -> bool:
    """Switch `model` to packed_attention if its type is known to work with it."""
    if getattr(model.config, "model_type", None) not in MODEL_TYPES:
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, eager_mask)  # padded batches: eager's float mask
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return True


def prefer_eager_attention(model) -> None:
    """On CPU, eager attention with our block-diagonal mask ran a SmolLM2 LoRA step about 15%
    faster than SDPA at 256-token blocks (SDPA's CPU backward is slow) and about the same at
    1024. Eager keeps every layer's (B, heads, T, T) attention weights for the backward pass
    (4.5 GB for SmolLM2 at 8 x 1024), so it is used for short blocks only; GPUs keep SDPA."""
    try:
        model.set_attn_implementation("eager")
    except (ValueError, AttributeError, NotImplementedError):
        pass  # architectures that fix their attention at load time keep it
