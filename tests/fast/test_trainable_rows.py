"""The new rows of an extended vocabulary under LoRA, without PEFT's vocabulary-sized copies:
the same outputs and the same gradients as PEFT's own forward, and a merged head that follows
every optimizer step (fused AdamW leaves the rows' version counter alone)."""

import pytest
import torch
from loss_helpers import grads as _grads, packed_batch as _batch

from lmtune.fast.head_matmul import decoding_head
from lmtune.fast.trainable_rows import use_trainable_rows
from lmtune.models.forward import loss_sum
from lmtune.models.load import load_base
from lmtune.models.resolve import Resolved
from lmtune.training.methods import apply_lora


def _extended_lora(folder):
    torch.manual_seed(0)
    model = load_base(Resolved(str(folder), str(folder)))
    vocab = model.get_input_embeddings().weight.shape[0]
    rows = list(range(vocab - 12, vocab))
    model = apply_lora(model, r=4, alpha=8, dropout=0.0, targets=None, new_rows=rows)
    for n, p in model.named_parameters():
        if "lora_B" in n or "trainable_tokens_delta" in n:
            p.data.normal_(0, 0.05)
    return model, rows


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])  # tied head; untied head
def test_the_new_rows_forms_equal_peft_in_outputs_and_gradients(fixture, request):
    folder = request.getfixturevalue(fixture)
    model, rows = _extended_lora(folder)
    model.eval()  # no dropout: both passes see the same network
    batch = _batch(folder)
    batch.input_ids[0, 3:7] = torch.tensor(rows[:4])  # new pieces in the input and targets
    batch.labels[0, 3:7] = torch.tensor(rows[:4])
    results = []
    for patched in (False, True):
        if patched:
            assert use_trainable_rows(model) == 2  # the embedding and the head
        model.zero_grad()
        loss = loss_sum(model, batch, "cpu", chunked=False)
        loss.backward()
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids[:, :9]).logits
        results.append((loss.item(), _grads(model), logits))
    (l0, g0, z0), (l1, g1, z1) = results
    assert l1 == pytest.approx(l0, rel=1e-6)
    assert g0.keys() == g1.keys() and any("trainable_tokens_delta" in n for n in g1)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z1, z0, rtol=1e-5, atol=1e-5)


def test_the_merged_head_follows_each_fused_adamw_step(tiny_llama):
    model, rows = _extended_lora(tiny_llama)
    use_trainable_rows(model)
    model.train()
    batch = _batch(tiny_llama)
    batch.labels[0, 3:7] = torch.tensor(rows[:4])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, fused=True)
    ids = batch.input_ids[:, :9]
    for _ in range(2):
        loss_sum(model, batch, "cpu").backward()  # the chunked loss reads the merged head
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            with decoding_head(model):
                decoded = model(input_ids=ids).logits
            layer = model.get_output_embeddings().token_adapter
            delta = layer.trainable_tokens_delta["default"]
            head = layer.get_base_layer().weight.index_copy(0, torch.tensor(rows), delta)
            expected = out.hidden_states[-1] @ head.T  # PEFT's merged head, made here
        torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-4)
