"""Keeping a CPU training step's vocabulary-sized tensors away from the allocator.

The big tensors of a small model's step all come from its vocabulary: the bf16 copy of the LM
head's weight, a chunk's logits and softmax, and the head's weight gradient (49,152 x 384 for
a small GPT-2: 72 MB in fp32). GPT-2 ties that weight to the input embedding, whose backward
builds a second dense gradient of the same size only to add it to the first. glibc serves
each of these straight from the OS and hands it back when freed, so every step page-faulted
them in afresh (a third of a small GPT-2 step); keeping freed memory in the heap instead made
the heap grow step after step (1.2 -> 1.9 GB) as differently sized blocks fragmented it.

Inside `cpu_step_memory(model)` (training, one process, CPU) two things change:
- A workspace: the loss's large buffers (chunked_ce.py) are allocated once and reused.
- Direct gradients: the gradients of the input embedding and of the LM head are accumulated
  into one persistent buffer per weight, set as its `.grad` at the step's first contribution.
  The embedding's backward adds its rows there (`index_add_`) instead of building a dense
  matrix. Autograd does not see these two weights' gradients (their functions return None for
  them), which is why this is for one process only: DDP reduces gradients from autograd's
  hooks. `optimizer.zero_grad(set_to_none=True)` still clears them as usual.
Everything else allocates as before; the large buffers stay until the context ends.
The state lives in a StepMemory that the context owns (`active()` inside it, None outside).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
import torch.nn.functional as F

ROW_QUANTUM = 64


def _rounded(rows: int) -> int:
    return -(-rows // ROW_QUANTUM) * ROW_QUANTUM


class Workspace:
    """Named (rows, cols) buffers that live across steps, grown (to a multiple of ROW_QUANTUM
    rows) when a step needs more. A buffer held for the backward pass is busy until released;
    asking for it meanwhile gets a fresh tensor instead."""

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.busy: set[tuple] = set()

    @staticmethod
    def key(name: str, dtype, device) -> tuple:
        return (name, dtype, str(device))

    def get(self, name: str, rows: int, cols: int, dtype, device) -> torch.Tensor:
        key = self.key(name, dtype, device)
        if key in self.busy:
            return torch.empty((rows, cols), dtype=dtype, device=device)
        buf = self.buffers.get(key)
        if buf is None or buf.shape[1] != cols or buf.shape[0] < rows:
            buf = self.buffers[key] = torch.empty((_rounded(rows), cols), dtype=dtype,
                                                  device=device)
        return buf[:rows]


class StepMemory:
    """What `cpu_step_memory` keeps while it is open: the workspace, the weights whose
    gradients are accumulated directly, and their persistent gradient buffers."""

    def __init__(self):
        self.workspace = Workspace()
        self.direct: set[int] = set()  # id() of the weights accumulated directly
        self.grads: dict[int, torch.Tensor] = {}

    def release(self) -> None:
        """Drop the kept buffers now (training is over); the context stays open."""
        self.workspace.buffers.clear()
        self.grads.clear()


# The open StepMemory, if any: a context variable rather than a module global, so a
# `train()` in one thread never finds another thread's buffers. The autograd functions that
# use it (chunked_ce.py, the embedding below) take it in their forward and keep it on ctx.
_ACTIVE: ContextVar[StepMemory | None] = ContextVar("lmtune_step_memory", default=None)


def active() -> StepMemory | None:
    return _ACTIVE.get()


def buffer(memory: StepMemory | None, name: str, rows: int, cols: int, dtype,
           device) -> torch.Tensor:
    """A (rows, cols) buffer: the workspace's inside `cpu_step_memory`, else a new tensor cut
    from one with rows rounded up to ROW_QUANTUM (the row count changes with every batch, and
    so would these 20-100 MB blocks; fixed sizes let the allocator reuse them). Rows past
    `rows` are never touched, so they cost no memory."""
    if memory is not None:
        return memory.workspace.get(name, rows, cols, dtype, device)
    return torch.empty((_rounded(rows), cols), dtype=dtype, device=device)[:rows]


def hold(memory: StepMemory | None, name: str, dtype, device) -> tuple | None:
    """Mark a workspace buffer as kept for the backward pass; returns the token to release."""
    if memory is None:
        return None
    key = memory.workspace.key(name, dtype, device)
    memory.workspace.busy.add(key)
    return key


def release(memory: StepMemory | None, token: tuple | None) -> None:
    if token is not None and memory is not None:
        memory.workspace.busy.discard(token)


def direct(memory: StepMemory | None, weight: torch.Tensor) -> bool:
    return memory is not None and id(weight) in memory.direct


def _persistent_grad(memory: StepMemory, weight: torch.Tensor) -> torch.Tensor:
    """The weight's kept gradient buffer, set as its .grad (contents left to the caller)."""
    g = memory.grads.get(id(weight))
    if g is None:
        g = memory.grads[id(weight)] = torch.empty_like(weight)
    weight.grad = g
    return g


def accumulate(memory: StepMemory, weight: torch.Tensor, grad: torch.Tensor,
               scale: float = 1.0) -> None:
    """weight.grad += scale * grad, into the weight's persistent buffer (fp32 sums)."""
    if weight.grad is not None:
        weight.grad.add_(grad, alpha=scale)
        return
    g = _persistent_grad(memory, weight).copy_(grad)
    if scale != 1.0:
        g.mul_(scale)


def accumulate_rows(memory: StepMemory, weight: torch.Tensor, index: torch.Tensor,
                    rows: torch.Tensor) -> None:
    """weight.grad[index] += rows (repeated indices add up)."""
    g = weight.grad if weight.grad is not None else _persistent_grad(memory, weight).zero_()
    g.index_add_(0, index, rows.to(g.dtype))


class _EmbeddingDirectGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, padding_idx, memory):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx, ctx.memory = weight, padding_idx, memory
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat_ids = ids.reshape(-1)
        rows = grad.reshape(flat_ids.numel(), -1)
        if ctx.padding_idx is not None:  # nn.Embedding never trains its padding row
            rows = rows.masked_fill((flat_ids == ctx.padding_idx)[:, None], 0)
        accumulate_rows(ctx.memory, ctx.weight, flat_ids, rows)
        return None, None, None, None


def _plain_embedding(module) -> bool:
    return (type(module) is nn.Embedding and module.max_norm is None
            and not module.scale_grad_by_freq and not module.sparse)


@contextmanager
def cpu_step_memory(model):
    """Workspace and direct gradients for the input embedding and the LM head, while training
    `model` in one process on CPU. Yields the StepMemory."""
    memory = StepMemory()
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    patched = None
    if embedding is not None and _plain_embedding(embedding) and embedding.weight.requires_grad:
        def forward(self, ids):
            return _EmbeddingDirectGrad.apply(self.weight, ids, self.padding_idx, memory)
        embedding.forward = types.MethodType(forward, embedding)
        patched = embedding
        memory.direct.add(id(embedding.weight))
    if head is not None and isinstance(getattr(head, "weight", None), nn.Parameter) \
            and head.weight.requires_grad:
        memory.direct.add(id(head.weight))
    token = _ACTIVE.set(memory)
    try:
        yield memory
    finally:
        _ACTIVE.reset(token)
        memory.release()
        memory.direct.clear()
        if patched is not None:
            del patched.forward  # back to the class's forward
