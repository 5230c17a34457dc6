"""GPT-2's GELU as one fused op.

GPT-2, GPT-Neo and GPT-J use transformers' `NewGELUActivation`, the tanh approximation
of GELU written as eight elementwise ops, each of which keeps its output for the backward
pass. torch's `gelu(approximate="tanh")` is the same function in one op: within 2.4e-7 in fp32
(closer to exact in bf16, where the chain rounds after every op), 3.3x faster forward and
backward on a 770 x 1536 activation on CPU, and it keeps only its input: about 19 MB less per
layer for a 770-token block of a 384-wide GPT-2. transformers calls it "gelu_pytorch_tanh"
and describes it as a faster equivalent of "gelu_new". The module holds no weights, so nothing
saved changes, and the config still names gelu_new.
"""

from __future__ import annotations

from torch import nn


def use_fused_gelu(model: nn.Module) -> int:
    """Swap every NewGELUActivation in `model` for the fused op; returns how many."""
    from transformers.activations import NewGELUActivation, get_activation

    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, get_activation("gelu_pytorch_tanh"))
                swapped += 1
    return swapped
