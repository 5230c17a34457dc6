"""Cross-entropy over the LM head without materialising the whole batch's logits.

For a small model the logits dominate activation memory: SmolLM2's 49,152-token vocabulary
makes 8 x 1024 tokens of fp32 logits 1.6 GB, and autograd keeps that tensor, its log-softmax
and its gradient. Here the head and the loss run over row chunks, and each chunk's gradient
with respect to the hidden states (and the head weight, if it trains) is computed right away
in the forward pass (the approach of Liger's fused linear cross-entropy). Peak extra memory is
one chunk of fp32 probabilities and, while they fit in ALL_ROWS_BYTES, the bf16 logit gradients
of all rows, which make the head's weight gradient in one matmul; the FLOPs are the same as
the plain path, with no recomputation.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from lmtune.fast import step_memory, trainable_rows
from lmtune.fast.step_memory import buffer

CHUNK_ROWS = 256  # 256 x 49,152 fp32 probabilities: 50 MB at a time
# The logit gradients of all rows are kept (bf16) for one head-gradient matmul at the end while
# they fit in this; beyond it each chunk's share is added into an fp32 sum (two more
# vocabulary-sized buffers and a pass over them per chunk, so chunks are twice as large there).
ALL_ROWS_BYTES = 256 << 20


def _add_chunk_weight_grad(memory, grad_weight, held, grad_c, h, acc):
    """One chunk's share of the head's weight gradient, grad_c.T @ h, added to the sum so far
    (None before the first chunk); returns (the sum, its held workspace buffer)."""
    vocab, width, dtype, device = grad_c.shape[1], h.shape[1], grad_c.dtype, grad_c.device
    if grad_weight is None:
        grad_weight = torch.mm(grad_c.T, h, out=buffer(memory, "grad_weight", vocab, width,
                                                       dtype, device))
        return grad_weight, step_memory.hold(memory, "grad_weight", dtype, device)
    if grad_weight.dtype != acc:  # several chunks add up in fp32
        grad_weight = buffer(memory, "grad_weight_sum", vocab, width, acc,
                             device).copy_(grad_weight)
        step_memory.release(memory, held)
        held = step_memory.hold(memory, "grad_weight_sum", acc, device)
    grad_weight += torch.mm(grad_c.T, h, out=buffer(memory, "grad_weight_part", vocab, width,
                                                    dtype, device))
    return grad_weight, held


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum over rows with label != -100 of CE(hidden @ weight.T, label)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, compute_dtype, with_grads, rows, row_weight):
        # hidden (N, H), weight (V, H), labels (N,); rows (R,) and row_weight (R, H): the
        # trained rows of an otherwise frozen head, already in place in `weight`, or None.
        memory = step_memory.active()  # the step's workspace, or None: fresh buffers
        need_rows = with_grads and row_weight is not None and row_weight.requires_grad
        need_w = with_grads and (weight.requires_grad or need_rows)
        grad_hidden = torch.zeros_like(hidden) if with_grads else None
        grad_weight, held = None, None
        vocab, device = weight.shape[0], weight.device
        w = weight
        if weight.dtype != compute_dtype:
            w = buffer(memory, "weight", vocab, weight.shape[1], compute_dtype,
                       device).copy_(weight)
        total = torch.zeros((), dtype=torch.promote_types(compute_dtype, torch.float32),
                            device=hidden.device)
        # Rows without a target (document starts, prompts, padding) are skipped: no logits,
        # and their hidden-state gradient stays zero.
        targeted = torch.nonzero(labels != -100).squeeze(1)
        acc = torch.promote_types(compute_dtype, torch.float32)  # softmax sums: fp32 or more
        item = torch.finfo(compute_dtype).bits // 8
        all_rows = need_w and not need_rows and len(targeted) * vocab * item <= ALL_ROWS_BYTES
        grads = buffer(memory, "grad_logits", len(targeted), vocab, compute_dtype, device) \
            if all_rows else None
        chunk = CHUNK_ROWS if all_rows or not need_w else 2 * CHUNK_ROWS
        for start in range(0, len(targeted), chunk):
            idx = targeted[start:start + chunk]
            n = len(idx)
            h = hidden[idx].to(compute_dtype)                       # (n, H)
            y = labels[idx]
            out = grads[start:start + n] if all_rows else buffer(memory, "logits", n, vocab,
                                                                  compute_dtype, device)
            logits = torch.mm(h, w.T, out=out)
            if not with_grads:  # evaluation: the exact loss only
                logp = torch.log_softmax(logits, dim=-1, dtype=acc)
                total -= logp.gather(1, y[:, None]).sum()
                continue
            # Training: d(sum CE)/d(logits) = softmax - onehot, and the loss is -log p[y].
            # An fp32 softmax is half the cost of a log-softmax on CPU (7 against 15 ms for
            # 221 x 49,152), and its p[y] gives the loss to fp32 precision; a p[y] below
            # fp32's smallest normal (a token loss above 87 nats) is counted as 87.
            probs = buffer(memory, "probs", n, vocab, acc, device)
            if device.type == "cpu":
                # torch's CPU softmax with dtype= first makes an fp32 copy of its input (8 ms
                # for 221 x 49,152); copying into the output and working in place: 3 ms.
                torch.softmax(probs.copy_(logits), dim=-1, out=probs)
            else:
                torch.softmax(logits, dim=-1, dtype=acc, out=probs)
            arange = torch.arange(len(y), device=y.device)
            p_y = probs[arange, y]
            total -= p_y.clamp_min(torch.finfo(acc).tiny).log().sum()
            probs[arange, y] = p_y - 1.0  # in fp32: p - 1 of a confident p is tiny
            grad_c = logits.copy_(probs)  # the logits are spent: their buffer holds the grads
            del probs
            grad_hidden[idx] = (grad_c @ w).to(hidden.dtype)
            if need_rows:  # only the trained rows' share: R of the V columns
                part = grad_c.index_select(1, rows).T @ h
                grad_weight = part.to(acc) if grad_weight is None else grad_weight.add_(part)
            elif need_w and not all_rows:
                grad_weight, held = _add_chunk_weight_grad(memory, grad_weight, held, grad_c,
                                                           h, acc)
        if all_rows and len(targeted):
            # One matmul over every row (fp32 sums inside it, one rounding): the head's
            # weight gradient, a vocabulary-sized matrix (19M numbers for a 49k x 384 head).
            h_all = hidden[targeted].to(compute_dtype)
            grad_weight = torch.mm(grads.T, h_all, out=buffer(
                memory, "grad_weight", vocab, h_all.shape[1], compute_dtype, device))
            held = step_memory.hold(memory, "grad_weight", compute_dtype, device)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight = row_weight if need_rows else weight  # what grad_weight is the gradient of
        ctx.held, ctx.memory, ctx.rows = held, memory, need_rows
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is None:
            raise RuntimeError("backward through a loss computed without gradients")
        gw = None
        if grad_weight is not None and ctx.rows:
            rows_grad = grad_weight.to(ctx.weight.dtype).mul_(grad_out)
            return grad_hidden * grad_out.to(grad_hidden.dtype), None, None, None, None, \
                None, rows_grad
        if grad_weight is not None:
            if step_memory.direct(ctx.memory, ctx.weight):  # one CPU process: the kept .grad
                step_memory.accumulate(ctx.memory, ctx.weight, grad_weight, float(grad_out))
            else:
                # A fresh tensor (autograd keeps it as .grad), scaled in place after the cast.
                gw = grad_weight.to(ctx.weight.dtype, copy=True).mul_(grad_out)
            step_memory.release(ctx.memory, ctx.held)
        return grad_hidden * grad_out.to(grad_hidden.dtype), gw, None, None, None, None, None


def head_weights(model) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(weight, rows, row_weight) of the model's LM head for the chunked loss: a plain Linear
    gives its own weight. A head whose new rows train through PEFT's trainable tokens gives
    the frozen weight with the trained rows in place (trainable_rows.merged_weight, without
    autograd: through PEFT's index_copy the loss would compute the gradient of all V rows,
    only for R of them to be kept), the rows' indices and the trained rows."""
    head = model.get_output_embeddings()
    layer = trainable_rows.token_layer(head)
    if layer is None:
        return head.weight, None, None
    adapter = trainable_rows.active_rows(layer)
    if adapter is None:
        raise ValueError("the chunked loss takes one active trainable-tokens adapter")
    if adapter == trainable_rows.BASE:
        return layer.get_base_layer().weight, None, None
    merged = trainable_rows.merged_weight(layer, adapter)
    return merged, trainable_rows.row_index(layer, adapter, merged.device), \
        layer.trainable_tokens_delta[adapter]


def supports_chunked_loss(model) -> bool:
    """Only for plain heads: a bias, logit soft-capping or scaling would need their own
    gradients; such models take the ordinary path."""
    head = model.get_output_embeddings()
    cfg = model.config
    layer = trainable_rows.token_layer(head)
    base = layer.get_base_layer() if layer is not None else head
    if not isinstance(base, nn.Linear) or base.bias is not None:
        return False
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in
           ("final_logit_softcapping", "logits_scaling", "logit_scale", "output_multiplier")):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor,
                             labels: torch.Tensor, rows: torch.Tensor | None = None,
                             row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """hidden (N, H), weight (V, H), labels (N,) with -100 for ignored rows; `rows` and
    `row_weight` as head_weights gives them: the gradient goes to row_weight, not weight."""
    compute_dtype = (torch.get_autocast_dtype(hidden.device.type)
                     if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype)
    # Under no_grad (evaluation) the gradients, half the work, are not computed.
    with_grads = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad
        or (row_weight is not None and row_weight.requires_grad))
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropySum.apply(hidden, weight, labels, compute_dtype, with_grads,
                                            rows, row_weight)
