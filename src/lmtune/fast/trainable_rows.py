"""The new rows of an extended vocabulary under LoRA (train --extend-tokenizer), without
PEFT's vocabulary-sized copies.

PEFT's trainable tokens build the effective matrix on every forward call:
`base.index_copy(0, rows, delta)`, a fresh copy of the whole embedding (160 MB for SmolLM2
with 20,000 new rows), and autograd then takes a vocabulary-sized gradient of it only to keep
the R new rows. Measured on SmolLM2 + 20,000 rows, 8 reviews a step, 2-core AVX2 CPU: the
copies, their zeroed gradients and the row gathers were about 1 s of a 3.7 s step, and every
sampled token paid two such copies.

Here, with the same values and the same gradients:
  embedding  the base row for every token, then the trained row where the token is new
             (a gather of the few new tokens of the batch; the gradient reaches only them)
  head       one kept merged matrix whose R rows are rewritten in place when it is read: by
             the chunked loss (chunked_ce.head_weights), by a forward without autograd, and
             once per generation by the decoding head (head_matmul.decoding_head)
"""

from __future__ import annotations

import types
import weakref

import torch
import torch.nn.functional as F
from torch import nn

_MERGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_layer(module):
    """PEFT's trainable-tokens layer that is `module` or that its wrapper holds, or None."""
    layer = getattr(module, "token_adapter", module)
    return layer if type(layer).__name__ == "TrainableTokensLayer" else None


BASE = ""  # active_rows: the base weight is the effective one


def active_rows(layer) -> str | None:
    """The one active adapter whose rows replace the base's; BASE when adapters are off,
    merged in or have no rows; None for several active ones (PEFT's own forward then)."""
    active = [a for a in layer.active_adapters if a in layer.trainable_tokens_delta]
    if layer.disable_adapters or layer.merged or not active:
        return BASE
    return active[0] if len(active) == 1 else None


def row_index(layer, adapter: str, device) -> torch.Tensor:
    return torch.as_tensor(layer.token_indices[adapter], dtype=torch.long, device=device)


def merged_weight(layer, adapter: str) -> torch.Tensor:
    """base weight with the adapter's rows in place, no autograd; one vocabulary-sized
    matrix kept per head, whose R rows are rewritten on every call. (The trained rows'
    version counter cannot say whether they changed: fused AdamW updates them without
    bumping it.) Only a changed base weight (merged, cast) is copied whole again."""
    weight = layer.get_base_layer().weight
    key = (adapter, weight.data_ptr(), weight._version, weight.dtype)
    kept = _MERGED.get(layer)
    delta = layer.trainable_tokens_delta[adapter].detach().to(weight.dtype)
    with torch.no_grad():
        rows = row_index(layer, adapter, weight.device)
        if kept is not None and kept[0] == key:
            merged = kept[1].index_copy_(0, rows, delta)
        else:
            merged = weight.detach().index_copy(0, rows, delta)
    _MERGED[layer] = (key, merged)
    return merged


def _embedding_forward(self, x, *args, **kwargs):
    adapter = active_rows(self)
    base = self.get_base_layer()
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    if adapter == BASE:
        return base(x, *args, **kwargs)
    out = F.embedding(x, base.weight, base.padding_idx)
    delta = self.trainable_tokens_delta[adapter]
    lookup = self._lmtune_lookup.get(adapter)
    if lookup is None or lookup.device != x.device:
        lookup = torch.full((base.weight.shape[0],), -1, dtype=torch.long, device=x.device)
        lookup[row_index(self, adapter, x.device)] = torch.arange(delta.shape[0],
                                                                  device=x.device)
        self._lmtune_lookup[adapter] = lookup
    slot = lookup[x]
    hit = slot >= 0
    out = torch.where(hit[..., None], F.embedding(slot.clamp_min(0), delta).to(out.dtype),
                      out)
    scale = self._get_embed_scale()
    return out if scale is None else out * scale.to(out.dtype)


def _head_forward(self, x, *args, **kwargs):
    adapter = active_rows(self)
    if adapter is None or torch.is_grad_enabled():  # training through the full logits: PEFT's
        return type(self).forward(self, x, *args, **kwargs)
    if adapter == BASE:
        return self.get_base_layer()(x, *args, **kwargs)
    return F.linear(x, merged_weight(self, adapter))


def use_trainable_rows(model) -> int:
    """Switch every trainable-tokens layer of `model` to the forms above (on the instance);
    returns how many. Embeddings with max_norm, scale_grad_by_freq or sparse gradients, or
    whose padding row is a trained one, keep PEFT's forward."""
    count = 0
    for layer in model.modules():
        if type(layer).__name__ != "TrainableTokensLayer" or "forward" in vars(layer):
            continue
        base = layer.get_base_layer()
        if isinstance(base, nn.Embedding):
            rows = {r for ids in layer.token_indices.values() for r in ids}
            if base.max_norm is not None or base.scale_grad_by_freq or base.sparse \
                    or base.padding_idx in rows:
                continue
            layer._lmtune_lookup = {}
            layer.forward = types.MethodType(_embedding_forward, layer)
        elif isinstance(base, nn.Linear) and base.bias is None:
            layer.forward = types.MethodType(_head_forward, layer)
        else:
            continue
        count += 1
    return count
