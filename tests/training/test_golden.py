"""Golden losses, in the torchtune style: a tiny model, a fixed seed, the first losses pinned.
A change anywhere in the step (data order, packing, loss, clipping, optimizer, schedule,
dropout draws) shows up here as a number, not as a vague "the loss fell less"."""

from __future__ import annotations

import json

import pytest

import lmtune

# Recorded after the package layout change, whose code gave bit-identical losses and weights
# to the code before it. A tolerance, not equality: another CPU may round a matmul
# differently in the last bits. Change a value only with a commit that says why it moved.
GOLDEN = {
    "gpt2_full": [5.899481, 5.323862, 4.979433, 4.732256, 4.53451, 4.443637],
    "llama_lora_dropout": [5.880474, 5.636358, 5.415921, 5.25237, 5.147451, 5.100299],
}
TOLERANCE = dict(rel=1e-4, abs=1e-4)


def _losses(out) -> list[float]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_first_losses_match_the_golden_values(name, tiny_gpt2, tiny_llama, session_lines,
                                              tmp_path):
    opts = dict(split_on="\n", block_size=64, precision="fp32", device="cpu", seed=0,
                max_steps=6, log_every=1, eval_every=6, sample_every=0, report=False)
    if name == "gpt2_full":
        opts.update(model=str(tiny_gpt2), method="full", lr=3e-3)
    else:
        opts.update(model=str(tiny_llama), method="lora", lora_dropout=0.1, lr=2e-2)
    result = lmtune.train(session_lines, out=str(tmp_path / name), **opts)
    assert _losses(result.out) == pytest.approx(GOLDEN[name], **TOLERANCE)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_gradient_checkpointing_recomputes_layers_and_keeps_the_losses(
        name, tiny_gpt2, tiny_llama, session_lines, tmp_path):
    """--gradient-checkpointing runs each layer again in the backward pass (its forward is
    called twice a step) and, with dropout in the layers, replays the same draws: the same
    golden losses."""
    import torch

    calls = []

    def count(module, args):  # each layer's MLP (GPT2MLP, LlamaMLP) in training
        if type(module).__name__.endswith("MLP") and module.training:
            calls.append(id(module))
    # The layer's own hooks do not run again in the recomputation; its parts' forwards do.
    remove = torch.nn.modules.module.register_module_forward_pre_hook(count).remove
    opts = dict(split_on="\n", block_size=64, precision="fp32", device="cpu", seed=0,
                max_steps=6, log_every=1, eval_every=100, sample_every=0, report=False,
                gradient_checkpointing=True)
    if name == "gpt2_full":
        opts.update(model=str(tiny_gpt2), method="full", lr=3e-3)
    else:
        opts.update(model=str(tiny_llama), method="lora", lora_dropout=0.1, lr=2e-2)
    try:
        result = lmtune.train(session_lines, out=str(tmp_path / name), **opts)
    finally:
        remove()
    assert _losses(result.out) == pytest.approx(GOLDEN[name], **TOLERANCE)
    layers = len(set(calls))
    assert layers >= 2 and len(calls) == 2 * 6 * layers  # forward and recompute, 6 steps
