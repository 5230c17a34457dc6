"""The chunked LM-head loss is an optimisation only: same loss and same gradients as the
plain full-logits path, for tied (GPT-2) and untied (Llama) heads, full and LoRA."""

import pytest
import torch
from loss_helpers import grads as _grads, packed_batch as _batch

from lmtune.fast import chunked_ce
from lmtune.models.forward import loss_sum
from lmtune.models.load import load_base
from lmtune.models.resolve import Resolved
from lmtune.training.methods import apply_lora


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("chunk_rows", [7, 4096])  # several chunks with a ragged last; one
@pytest.mark.parametrize("all_rows_bytes", [256 << 20, 0])  # one head-gradient matmul; a sum
def test_chunked_loss_and_grads_equal_plain(fixture, lora, chunk_rows, all_rows_bytes, request,
                                            monkeypatch):
    folder = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    model = load_base(Resolved(str(folder), str(folder)))
    if lora:
        model = apply_lora(model, r=4, alpha=8, dropout=0.0, targets=None)
        # LoRA B starts at zero; move it so the adapter's gradients are not trivially equal
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.02)
    model.train()
    batch = _batch(folder)
    monkeypatch.setattr(chunked_ce, "CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(chunked_ce, "ALL_ROWS_BYTES", all_rows_bytes)
    results = []
    for chunked in (False, True):
        model.zero_grad()
        torch.manual_seed(1)  # GPT-2 has dropout on: both passes draw the same masks
        loss = loss_sum(model, batch, "cpu", chunked=chunked)
        loss.backward()
        results.append((loss.item(), _grads(model)))
    (plain, g_plain), (fast, g_fast) = results
    assert fast == pytest.approx(plain, rel=1e-5)
    assert g_plain.keys() == g_fast.keys() and g_plain
    for name in g_plain:  # fp32: softmax and log-softmax round differently (exact in fp64)
        torch.testing.assert_close(g_fast[name], g_plain[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_grad", [True, False])
@pytest.mark.parametrize("all_rows_bytes", [256 << 20, 0])
def test_chunked_loss_is_exact_in_float64(with_grad, all_rows_bytes, monkeypatch):
    monkeypatch.setattr(chunked_ce, "CHUNK_ROWS", 16)
    monkeypatch.setattr(chunked_ce, "ALL_ROWS_BYTES", all_rows_bytes)
    torch.manual_seed(0)
    h = torch.randn(50, 16, dtype=torch.float64, requires_grad=with_grad)
    w = torch.randn(300, 16, dtype=torch.float64, requires_grad=with_grad)
    y = torch.randint(0, 300, (50,))
    y[::7] = -100
    with torch.set_grad_enabled(with_grad):
        fast = chunked_ce.linear_cross_entropy_sum(h, w, y)
        plain = torch.nn.functional.cross_entropy(h @ w.T, y, reduction="sum")
    assert float(fast) == pytest.approx(float(plain), rel=1e-12)
    if with_grad:
        g_fast = torch.autograd.grad(fast / 3, (h, w))
        g_plain = torch.autograd.grad(plain / 3, (h, w))
        for a, b in zip(g_fast, g_plain):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_path_is_used_for_plain_heads(tiny_gpt2):
    model = load_base(Resolved(str(tiny_gpt2), str(tiny_gpt2)))
    assert chunked_ce.supports_chunked_loss(model)
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    assert not chunked_ce.supports_chunked_loss(model)  # a head bias takes the plain path


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_chunked_path_under_bf16_autocast_matches_plain(fixture, request):
    """The training set-up: bf16 autocast, LoRA inputs left in bf16, frozen weights in bf16
    for LoRA. Gradients agree with the plain path to bf16 precision."""
    from lmtune.training.methods import keep_lora_inputs_in_autocast_dtype
    folder = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    model = load_base(Resolved(str(folder), str(folder)))
    model.train()
    batch = _batch(folder)
    results = []
    for chunked in (False, True):
        model.zero_grad()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_sum(model, batch, "cpu", chunked=chunked)
        (loss / 7).backward()  # the loop divides by the target count: grad_out is not 1
        results.append((loss.item(), _grads(model)))
    (plain, g_plain), (fast, g_fast) = results
    assert fast == pytest.approx(plain, rel=2e-2)
    assert g_plain.keys() == g_fast.keys()
    for name in g_plain:
        error = (g_fast[name] - g_plain[name]).norm() / g_plain[name].norm()
        assert error < 0.05, (name, float(error))
    keep_lora_inputs_in_autocast_dtype(apply_lora(model, r=4, alpha=8, dropout=0.0,
                                                  targets=None))
    assert not any(getattr(m, "cast_input_dtype_enabled", False) for m in model.modules())


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])  # tied head; untied head
@pytest.mark.parametrize("chunk_rows", [7, 4096])
def test_trained_rows_of_an_extended_vocabulary_take_the_chunked_path(fixture, chunk_rows,
                                                                      request, monkeypatch):
    """LoRA with new embedding rows (train --extend-tokenizer): PEFT's trainable tokens wrap
    the head, and the chunked loss gives the same loss and the same gradients for the new
    rows, the LoRA weights and nothing else, as the full-logits path; and with the adapter
    switched off (the report's "before" model) the head is the base model's."""
    folder = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    model = load_base(Resolved(str(folder), str(folder)))
    vocab = model.get_input_embeddings().weight.shape[0]
    new_rows = list(range(vocab - 12, vocab))
    model = apply_lora(model, r=4, alpha=8, dropout=0.0, targets=None, new_rows=new_rows)
    for n, p in model.named_parameters():  # move B and the new rows off their start
        if "lora_B" in n or "trainable_tokens_delta" in n:
            p.data.normal_(0, 0.05)
    assert chunked_ce.supports_chunked_loss(model)
    model.train()
    batch = _batch(folder)
    batch.labels[0, 5:9] = torch.tensor(new_rows[:4])  # some targets are new pieces
    monkeypatch.setattr(chunked_ce, "CHUNK_ROWS", chunk_rows)
    results = []
    for chunked in (False, True):
        model.zero_grad()
        torch.manual_seed(1)
        loss = loss_sum(model, batch, "cpu", chunked=chunked)
        (loss / 3).backward()
        results.append((loss.item(), _grads(model)))
    (plain, g_plain), (fast, g_fast) = results
    assert fast == pytest.approx(plain, rel=1e-5)
    assert g_plain.keys() == g_fast.keys()
    assert any("trainable_tokens_delta" in n for n in g_fast)
    for name in g_plain:
        torch.testing.assert_close(g_fast[name], g_plain[name], rtol=1e-4, atol=1e-5)
    model.eval()  # no dropout: the passes below draw nothing
    with torch.no_grad():
        on = loss_sum(model, batch, "cpu", chunked=True).item()
        with model.disable_adapter():
            weight, rows, _ = chunked_ce.head_weights(model)
            assert rows is None
            off = loss_sum(model, batch, "cpu", chunked=True).item()
            assert off == pytest.approx(loss_sum(model, batch, "cpu", chunked=False).item(),
                                        rel=1e-5)
    assert off != pytest.approx(on, rel=1e-3)
