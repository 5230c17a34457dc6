"""The forward pass on our batches: document-isolated attention and a token-summed loss.

Packed rows hold several documents. Each document must see only itself, so we give the model
a block-diagonal causal mask built from the position ids (a new document starts wherever the
position does not continue from the previous token). An additive float mask is the one form
that every attention path of GPT-2, GPT-Neo and Llama honours unchanged, eager and SDPA, under
autocast too (a boolean 4D mask is misread by the eager paths). Cost: B x T x T floats, 32 MB
for 8 x 1024. Flash-attention kernels take the position ids instead and need no mask.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from lmtune.fast.chunked_ce import (
    head_weights,
    linear_cross_entropy_sum,
    supports_chunked_loss,
)
from lmtune.fast.packed_attention import NAME as PACKED
from lmtune.fast.packed_attention import attach_window_starts

_CHUNKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T) index of the document each token belongs to."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.cumsum(dim=1)


def packed_attention_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids -> (B, 1, T, T) additive mask: 0 where attention is allowed."""
    seg = segment_ids(position_ids)
    T = position_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, T, T)
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=position_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]


def model_inputs(model, batch, device) -> dict:
    input_ids = batch.input_ids.to(device, non_blocking=True)
    position_ids = batch.position_ids.to(device, non_blocking=True)
    inputs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask.to(device, non_blocking=True)
    else:
        attn = str(getattr(getattr(model, "module", model).config,  # DDP: .module
                           "_attn_implementation", ""))
        if "flash" not in attn:  # flash attention takes the position ids instead
            inputs["attention_mask"] = packed_attention_mask(position_ids)
            if attn == PACKED:
                attach_window_starts(inputs["attention_mask"], position_ids)
    return inputs


def _chunked_ok(model) -> bool:
    inner = getattr(model, "module", model)  # the DDP wrapper keeps the model in .module
    if inner not in _CHUNKED:
        # FSDP2 reshards the LM head's weight when the forward ends, so the chunked loss,
        # which reads that weight after the forward, takes the ordinary path there.
        _CHUNKED[inner] = supports_chunked_loss(inner) and not _is_fsdp(inner)
    return _CHUNKED[inner]


def _backbone(model):
    """The transformer under the LM head (`model.model` for Llama, `.transformer` for GPT-2),
    to be called directly in one process. Going through the full model runs its head even
    when it is asked for no logits, and under autocast the head's fp32 weight is cast to bf16
    on every call: 4% of a small GPT-2 step, for nothing. Under DDP or FSDP the forward must
    go through the wrapper (it prepares the gradient reduction), so there it returns None."""
    if hasattr(model, "module") or (torch.distributed.is_available()
                                    and torch.distributed.is_initialized()
                                    and torch.distributed.get_world_size() > 1):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    inner = getattr(base, getattr(base, "base_model_prefix", ""), None)
    return inner if isinstance(inner, torch.nn.Module) and inner is not base else None


def _is_fsdp(model) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def loss_sum(model, batch, device, chunked: bool = True) -> torch.Tensor:
    """Sum (not mean) of the token losses, so gradient accumulation can divide by the exact
    number of target tokens in the whole optimizer step."""
    labels = batch.labels.to(device, non_blocking=True)
    # Position t predicts token t+1: the label of a document's first token is -100, so the
    # last token of one document never learns to predict the start of the next.
    targets = labels[:, 1:].flatten()
    inputs = model_inputs(model, batch, device)
    if chunked and _chunked_ok(model):
        backbone = _backbone(model)
        if backbone is not None:
            last = backbone(**inputs).last_hidden_state  # after the final norm
        else:
            # An empty index for logits_to_keep: the head computes no logits. (With
            # logits_to_keep=1, Llama under autocast copied its transposed 49k x 576 head
            # weight on every step: 12% of the step.)
            none = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
            out = model(**inputs, output_hidden_states=True, logits_to_keep=none)
            last = out.hidden_states[-1]
        hidden = last[:, :-1].flatten(0, 1)  # (B*(T-1), H)
        weight, rows, row_weight = head_weights(getattr(model, "module", model))
        return linear_cross_entropy_sum(hidden, weight, targets, rows, row_weight)
    logits = model(**inputs).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets,
                           ignore_index=-100, reduction="sum")


LOGP_CHUNK_ROWS = 1024  # answer tokens whose logits exist at once: 200 MB for 49k words


def _token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                 ) -> torch.Tensor:
    """(N,) log-probability of each target under the head, in fp32 (the logits under autocast
    are in its dtype, the log-softmax is not)."""
    logits = F.linear(hidden, weight).float()  # (N, V)
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """((R,) summed log-probabilities, (R,) counts) of each row's target tokens: those whose
    label is not -100 (a preference pair's answer tokens), each predicted from the position
    before it. Only those positions go through the LM head, in chunks whose logits are
    recomputed in the backward pass rather than kept (torch.utils.checkpoint): the logits of
    a batch of long answers would otherwise be rows x vocabulary floats, three times over."""
    labels = batch.labels.to(device, non_blocking=True)
    targets = labels[:, 1:]                                   # (R, T-1)
    rows, cols = (targets != -100).nonzero(as_tuple=True)     # (N,), (N,)
    inputs = model_inputs(model, batch, device)
    counts = (targets != -100).sum(dim=1)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
    backbone = _backbone(model) if _chunked_ok(model) else None
    if backbone is None:  # a head with a bias, soft-capping ... or DDP/FSDP: the whole model
        logits = model(**inputs).logits[:, :-1][rows, cols].float()  # (N, V)
        logp = logits.gather(1, targets[rows, cols][:, None]).squeeze(1) \
            - torch.logsumexp(logits, dim=-1)
        return sums.index_add(0, rows, logp), counts
    hidden = backbone(**inputs).last_hidden_state[:, :-1][rows, cols]  # (N, H), after the norm
    weight, token_rows, row_weight = head_weights(getattr(model, "module", model))
    if token_rows is not None:  # trained rows of an extended vocabulary: autograd reaches them
        weight = weight.index_copy(0, token_rows, row_weight.to(weight.dtype))
    parts = []
    for start in range(0, len(rows), LOGP_CHUNK_ROWS):
        h, y = hidden[start:start + LOGP_CHUNK_ROWS], targets[rows, cols][start:start
                                                                         + LOGP_CHUNK_ROWS]
        if torch.is_grad_enabled():
            parts.append(torch.utils.checkpoint.checkpoint(_token_logps, h, weight, y,
                                                           use_reentrant=False))
        else:
            parts.append(_token_logps(h, weight, y))
    logp = torch.cat(parts) if parts else sums.new_zeros(0)
    return sums.index_add(0, rows, logp), counts
