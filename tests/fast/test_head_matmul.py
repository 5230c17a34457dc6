"""The decoding head (fast/head_matmul.py): the same logits as the plain head within float
rounding, the module and its tied weight untouched, and left alone where it does not apply."""

from __future__ import annotations

import pytest
import torch

from lmtune.fast import head_matmul
from lmtune.fast.head_matmul import decode_logits, decoding_head


@pytest.mark.parametrize("rows", [1, 2, 5, 32])
def test_decode_logits_equal_the_plain_product(rows):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(head_matmul.SMALL_HEAD, 48, generator=g)
    h = torch.randn(rows, 1, 48, generator=g)
    out = decode_logits(h, w)
    assert out.shape == (rows, 1, head_matmul.SMALL_HEAD)
    torch.testing.assert_close(out, h @ w.T, rtol=1e-5, atol=1e-5)


def test_greedy_generation_is_unchanged_and_the_head_restored(tiny_gpt2, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.models.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.pad_token = tok.eos_token
    head = model.get_output_embeddings()
    monkeypatch.setattr(head_matmul, "SMALL_HEAD", 1 << 30)  # the tiny head: plain
    plain = generate(model, tok, ["the cat", "a dog ran"], n=2, max_new_tokens=12,
                     temperature=0)
    calls = []
    real = head_matmul.decode_logits
    monkeypatch.setattr(head_matmul, "SMALL_HEAD", 0)  # every head takes the decoding path
    monkeypatch.setattr(head_matmul, "decode_logits",
                        lambda h, w: calls.append(h.shape) or real(h, w))
    fast = generate(model, tok, ["the cat", "a dog ran"], n=2, max_new_tokens=12,
                    temperature=0)
    assert calls, "the decoding head was not used"
    assert [s.text for s in fast] == [s.text for s in plain]
    assert "forward" not in vars(head)  # restored: the class's forward again
    assert model.get_output_embeddings() is head
    assert head.weight is model.get_input_embeddings().weight  # still tied


def test_a_lora_wrapped_head_is_left_alone(tiny_gpt2, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(head_matmul, "SMALL_HEAD", 0)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    model.config.tie_word_embeddings = False
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head"]))
    swap = decoding_head(peft)
    assert swap.head is None
    plain = decoding_head(AutoModelForCausalLM.from_pretrained(tiny_gpt2))
    assert plain.head is not None
    with plain:
        assert "forward" in vars(plain.head)
    assert "forward" not in vars(plain.head)
