"""Cross-entropy over the LM head without materialising the whole batch's logits.

For a small model the logits dominate activation memory: SmolLM2's 49,152-token vocabulary
makes 8 x 1024 tokens of fp32 logits 1.6 GB, and autograd keeps that tensor, its log-softmax
and its gradient. Here the head and the loss run over row chunks, and each chunk's gradient
with respect to the hidden states (and the head weight, if it trains) is computed right away
in the forward pass (the approach of Liger's fused linear cross-entropy). Peak extra memory is
one chunk of logits; the FLOPs are the same as the plain path, with no recomputation.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

CHUNK_ROWS = 1024


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum over rows with label != -100 of CE(hidden @ weight.T, label)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, compute_dtype):
        # hidden (N, H), weight (V, H), labels (N,)
        need_w = weight.requires_grad
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32,
                                  device=weight.device) if need_w else None
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            h = hidden[start:start + CHUNK_ROWS].to(compute_dtype)
            y = labels[start:start + CHUNK_ROWS]
            logits = (h @ w.T).float()                            # (n, V)
            valid = y != -100
            safe_y = torch.where(valid, y, 0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe_y[:, None]).squeeze(1)
            total += ((lse - picked) * valid).sum()
            # d(sum CE)/d(logits) = softmax - onehot, zero on ignored rows
            grad = torch.exp(logits - lse[:, None])
            grad[torch.arange(len(y), device=y.device), safe_y] -= 1.0
            grad *= valid[:, None]
            grad_c = grad.to(compute_dtype)
            grad_hidden[start:start + CHUNK_ROWS] = (grad_c @ w).to(hidden.dtype)
            if need_w:
                grad_weight += (grad_c.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if need_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        gw = None if grad_weight is None else (grad_weight * grad_out).to(ctx.weight_dtype)
        return grad_hidden * grad_out.to(grad_hidden.dtype), gw, None, None


def supports_chunked_loss(model) -> bool:
    """Only for plain heads: a bias, logit soft-capping or scaling would need their own
    gradients; such models take the ordinary path."""
    head = model.get_output_embeddings()
    cfg = model.config
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return False
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in
           ("final_logit_softcapping", "logits_scaling", "logit_scale", "output_multiplier")):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor,
                             labels: torch.Tensor) -> torch.Tensor:
    """hidden (N, H), weight (V, H), labels (N,) with -100 for ignored rows."""
    compute_dtype = (torch.get_autocast_dtype(hidden.device.type)
                     if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropySum.apply(hidden, weight, labels, compute_dtype)
