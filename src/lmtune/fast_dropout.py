"""Dropout with a cheaper mask, for training on CPU.

torch's CPU dropout draws one random number per element. With LoRA dropout on, PEFT applies
it to the input of every adapted layer (210 of them in SmolLM2), and the draws alone took 30%
of a LoRA step at p = 0.05. Here one 32-bit draw makes the mask of two elements: its low 16
bits and its next 15 (torch's int32 draws leave the top bit 0), each compared with p scaled
to its width. The keep probability is 1 - p rounded to 1/32768, and kept values are scaled by
its inverse, so the expectation is unchanged. It draws from torch's default generator, so a
seed (and a resumed run's saved generator state) reproduces the masks. Used on CPU only;
GPUs keep torch's dropout.
"""

from __future__ import annotations

import torch
from torch import nn

_SCALE15 = 1 << 15


def dropout_mask(shape: torch.Size, p: float, device) -> tuple[torch.Tensor, float]:
    """(keep mask of `shape`, the factor for kept values)."""
    threshold = round(p * _SCALE15)  # drop where the 15-bit draw is below this
    n = shape.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()
    halves = bits.view(torch.int16).view(-1, 2)  # (low 16 bits, high 15 bits) per draw
    # The low half is uniform over the whole int16 range, the high half over [0, 32767].
    limits = torch.tensor([2 * threshold - (1 << 15), threshold], dtype=torch.int16,
                          device=device)
    keep = (halves >= limits).view(-1)[:n].view(shape)
    return keep, _SCALE15 / (_SCALE15 - threshold)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p <= 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    keep, scale = dropout_mask(x.shape, p, x.device)
    return (x * keep).mul_(scale)


class FastDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model) -> int:
    """Swap every nn.Dropout in `model` (the model's own and PEFT's LoRA dropouts) for
    FastDropout with the same p; returns how many were swapped. Dropout holds no weights, so
    nothing saved changes."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                replacement = FastDropout(child.p)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped += 1
    return swapped
