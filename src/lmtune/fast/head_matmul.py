"""The LM head's product while decoding: a few hidden rows (rows, H) against the head weight
(V, H), on the CPU in the shape MKL's fp32 GEMM runs fastest.

Measured on a 2-core AMD EPYC with AVX2 (benchmarks/RESULTS.md, issue 15), for a 49,152 x 384
head: `h @ w.T` took 14 ms for one row and 21-33 ms for 2-16 rows (MKL packs the whole 75 MB
weight first), against 6-7 ms as `(w @ h.T).T` for 2-16 rows, which reads the weight once at
the memory's speed. A single row has no fast path in MKL (its GEMV ran at a quarter of the
memory bandwidth), so it is computed as two. The sums run in another order: logits differ in
the last bits (6e-7 here). A fixed rule, not a timed choice, so a seeded sample is the same
every time on a machine. Sampling two rows went from 60 to 30 ms per token for a 6-layer GPT-2.
(Training's 186-row product was timed too, as 1,024-column slices of the vocabulary: 40% faster
alone, no faster inside a step, so training keeps the plain product.)
"""

from __future__ import annotations

import torch

from lmtune.fast import trainable_rows

SMALL_HEAD = 8192  # fewer rows than this fit in cache whole: the plain product
DECODE_ROWS = 32   # at most this many hidden rows take the decoding formulation


def decode_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h @ w.T for a few rows (h: (..., H)), as decoding needs it; other shapes and devices
    take the plain product."""
    rows = h.shape[:-1].numel()
    if h.device.type != "cpu" or w.shape[0] < SMALL_HEAD or not 0 < rows <= DECODE_ROWS \
            or h.dtype != w.dtype:
        return h @ w.T
    flat = h.reshape(rows, h.shape[-1])
    if rows == 1:
        flat = flat.repeat(2, 1)  # a real copy: an expanded (stride 0) view took 16 ms
    return (w @ flat.T).T[:rows].reshape(*h.shape[:-1], w.shape[0])


class decoding_head:  # noqa: N801 (a context manager)
    """`with decoding_head(model):` the model's plain LM head computes its logits with
    `decode_logits` (CPU only; other heads, a LoRA-wrapped one for instance, are left alone).
    A head whose new rows train under LoRA (trainable_rows.py) reads its merged matrix once
    here, on any device, instead of PEFT copying the whole head for every token. Only the
    head's forward is replaced, on the instance: the module, its tied weight and every
    reference to it stay as they are."""

    def __init__(self, model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        self.head, self.weight = None, None  # the weight: a callable, read on entering
        if head is None or "forward" in vars(head):
            return
        layer = trainable_rows.token_layer(head)
        if layer is not None:
            adapter = trainable_rows.active_rows(layer)
            if adapter not in (None, trainable_rows.BASE):
                self.head = head
                self.weight = lambda: trainable_rows.merged_weight(layer, adapter)
        elif type(head) is torch.nn.Linear and head.bias is None \
                and head.weight.device.type == "cpu":
            self.head, self.weight = head, lambda: head.weight

    def __enter__(self):
        if self.head is not None:
            weight = self.weight()
            self.head.forward = lambda h: decode_logits(h, weight)
        return self

    def __exit__(self, *exc) -> None:
        if self.head is not None:
            del self.head.forward
