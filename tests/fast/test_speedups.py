"""The one seam for speed-ups: what a model gets on the CPU, and that the step memory is the
context's own and ends with it."""

from __future__ import annotations

from lmtune.fast import speedups
from lmtune.fast import step_memory
from lmtune.fast.dropout import FastDropout
from lmtune.fast.packed_attention import NAME as PACKED
from lmtune.models.load import load_base
from lmtune.models.resolve import Resolved
from lmtune.training.methods import apply_lora


def test_a_cpu_run_gets_packed_attention_fused_gelu_fast_dropout_and_step_memory(tiny_gpt2):
    model = apply_lora(load_base(Resolved(str(tiny_gpt2), str(tiny_gpt2))), r=4, alpha=8,
                       dropout=0.1, targets=None)
    fast = speedups(model, device="cpu", block_size=64, one_process=True)
    hf = model.get_base_model()
    assert hf.config._attn_implementation == PACKED
    assert any(isinstance(m, FastDropout) for m in model.modules())
    assert not any(type(m).__name__ == "NewGELUActivation" for m in model.modules())
    assert step_memory.active() is None
    with fast:
        assert step_memory.active() is fast.memory is not None
    assert step_memory.active() is None


def test_a_trained_embedding_gets_its_direct_gradient_only_inside_the_context(tiny_gpt2):
    model = load_base(Resolved(str(tiny_gpt2), str(tiny_gpt2)))
    with speedups(model, device="cpu", block_size=64, one_process=True):
        assert "forward" in vars(model.get_input_embeddings())
    assert "forward" not in vars(model.get_input_embeddings())


def test_several_processes_get_no_step_memory(tiny_gpt2):
    model = load_base(Resolved(str(tiny_gpt2), str(tiny_gpt2)))
    with speedups(model, device="cpu", block_size=64, one_process=False) as fast:
        assert fast.memory is None and step_memory.active() is None
