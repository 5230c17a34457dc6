"""Packed attention is an optimisation only: the same logits and gradients as eager attention
for packed blocks, padded batches and no mask, on GPT-2 and a grouped-query Llama."""

import pytest
import torch

from lmtune.fast import packed_attention as pa
from lmtune.models.forward import packed_attention_mask
from lmtune.models.load import load_base
from lmtune.models.resolve import Resolved

POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 0],
                          [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]])


def test_window_starts_are_each_chunks_earliest_document_start(monkeypatch):
    monkeypatch.setattr(pa, "CHUNK", 3)
    monkeypatch.setattr(pa, "START_QUANTUM", 1)
    # chunks start at rows 0, 3, 6, 9; row 0's documents start at 0, 3, 3, 8; row 1's at
    # 0, 0, 6, 6: the earliest over the batch
    assert pa.key_window_starts(POSITIONS) == [0, 0, 3, 6]
    monkeypatch.setattr(pa, "START_QUANTUM", 2)  # rounded down: fewer distinct matmul shapes
    assert pa.key_window_starts(POSITIONS) == [0, 0, 2, 6]


def _run(model, **inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    (logits.float() ** 2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("quantum", [1, 2])
def test_packed_attention_equals_eager(fixture, quantum, request, monkeypatch):
    monkeypatch.setattr(pa, "CHUNK", 3)  # several chunks, a ragged last one
    monkeypatch.setattr(pa, "START_QUANTUM", quantum)
    folder = request.getfixturevalue(fixture)
    model = load_base(Resolved(str(folder), str(folder)))
    model.eval()  # no dropout: both passes must see the same network
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, POSITIONS.shape)
    padding = torch.ones_like(ids)
    padding[0, 8:] = 0
    cases = {"packed": lambda: {"input_ids": ids, "position_ids": POSITIONS,
                                "attention_mask": packed_attention_mask(POSITIONS)},
             "padded": lambda: {"input_ids": ids, "attention_mask": padding},
             "no mask": lambda: {"input_ids": ids}}
    model.set_attn_implementation("eager")
    expected = {name: _run(model, **make()) for name, make in cases.items()}
    assert pa.use_packed_attention(model)
    for name, make in cases.items():
        inputs = make()
        if name == "packed":
            pa.attach_window_starts(inputs["attention_mask"], POSITIONS)
        logits, grads = _run(model, **inputs)
        want_logits, want_grads = expected[name]
        keep = padding.bool() if name == "padded" else torch.ones_like(padding).bool()
        torch.testing.assert_close(logits[keep], want_logits[keep], rtol=1e-5, atol=1e-5)
        assert grads.keys() == want_grads.keys()
        for n in grads:
            torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-4, atol=1e-6)


def test_documents_do_not_see_each_other_through_the_window(tiny_llama, monkeypatch):
    """Changing an earlier document must not change a later one's logits."""
    monkeypatch.setattr(pa, "CHUNK", 4)
    monkeypatch.setattr(pa, "START_QUANTUM", 2)  # windows reach into the earlier document
    model = load_base(Resolved(str(tiny_llama), str(tiny_llama)))
    model.eval()
    assert pa.use_packed_attention(model)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
    ids = torch.randint(0, model.config.vocab_size, pos.shape)
    other = ids.clone()
    other[0, :6] = (other[0, :6] + 1) % model.config.vocab_size

    def logits(x):
        mask = pa.attach_window_starts(packed_attention_mask(pos), pos)
        return model(input_ids=x, position_ids=pos, attention_mask=mask).logits

    with torch.no_grad():
        a, b = logits(ids), logits(other)
    torch.testing.assert_close(a[0, 6:], b[0, 6:])
    assert not torch.allclose(a[0, :6], b[0, :6])


def test_unknown_model_types_keep_their_attention():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM
    model = GPTNeoForCausalLM(GPTNeoConfig(num_layers=1, hidden_size=16, num_heads=2,
                                           attention_types=[[["global"], 1]], vocab_size=50))
    assert not pa.use_packed_attention(model)
    assert model.config._attn_implementation != pa.NAME
