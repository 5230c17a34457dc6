"""Packing must not change the loss: a packed block of documents scores each document exactly
as if it were alone (document-isolated attention, positions restarting per document), and the
EOS that ends a document is a target even though GPT-2's pad id is its EOS id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmtune.data import Example, PackedDataset, PaddedDataset, tokenize_examples
from lmtune.data.packing import IGNORE
from lmtune.models.forward import loss_sum, packed_attention_mask, segment_ids
from lmtune.models.load import load_base, load_tokenizer
from lmtune.models.resolve import resolve

TEXTS = ["the cat sat on the mat", "a dog ran in the park while birds sang",
         "why did the programmer quit", "two plus four",
         "engines weave patterns and the cat sat on the mat", "quote by ada lovelace"]


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_llama"])
def model_and_docs(request):
    resolved = resolve(str(request.getfixturevalue(request.param)))
    tokenizer = load_tokenizer(resolved)
    model = load_base(resolved).eval()
    docs = tokenize_examples([Example("", t) for t in TEXTS], tokenizer)
    return model, tokenizer, docs


def _mean(model, batches) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            total += loss_sum(model, b, "cpu").item()
            count += b.n_target_tokens
    return total / count


def _alone(model, docs) -> tuple[float, int]:
    """Each document in its own forward pass, no mask, no position ids: the reference."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(docs)):
            ids = torch.from_numpy(docs.ids[docs.offsets[i]:docs.offsets[i + 1]].astype(np.int64))
            logits = model(input_ids=ids[None]).logits[0]  # (T, V)
            total += F.cross_entropy(logits[:-1], ids[1:], reduction="sum").item()
            count += len(ids) - 1
    return total / count, count


def test_packed_loss_equals_each_document_alone(model_and_docs):
    model, tokenizer, docs = model_and_docs
    reference, n_targets = _alone(model, docs)
    # One block holds every document (shuffled), so none is cut at a block edge.
    packed = PackedDataset(docs, docs.n_tokens, shuffle=True, seed=3)
    batches = list(packed.batches(0, 1))
    assert len(batches) == 1 and sum(b.n_target_tokens for b in batches) == n_targets
    assert _mean(model, batches) == pytest.approx(reference, abs=1e-4)
    # Two rows in one batch: the documents twice over, each copy filling one block exactly.
    twice = tokenize_examples([Example("", t) for t in TEXTS * 2], tokenizer)
    rows = list(PackedDataset(twice, docs.n_tokens, shuffle=False).batches(0, 2))
    assert len(rows) == 1 and rows[0].input_ids.shape == (2, docs.n_tokens)
    assert _mean(model, rows) == pytest.approx(reference, abs=1e-4)
    padded = PaddedDataset(docs, 64, shuffle=False, seed=0)
    assert _mean(model, padded.batches(0, 4)) == pytest.approx(reference, abs=1e-4)


def test_packed_comparison_is_sensitive(model_and_docs):
    """The same packed row without isolation (plain causal attention, positions 0..T-1)
    scores differently, so the equality above does test the mask and the positions."""
    model, _, docs = model_and_docs
    reference, _ = _alone(model, docs)
    batch = next(PackedDataset(docs, docs.n_tokens, shuffle=True, seed=3).batches(0, 1))
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits
    leaky = F.cross_entropy(logits[0, :-1], batch.labels[0, 1:], ignore_index=IGNORE).item()
    assert abs(leaky - reference) > 1e-3


def test_position_ids_restart_at_every_document(tiny_gpt2):
    tokenizer = load_tokenizer(resolve(str(tiny_gpt2)))
    docs = tokenize_examples([Example("", t) for t in TEXTS], tokenizer)
    batch = next(PackedDataset(docs, docs.n_tokens, shuffle=False).batches(0, 1))
    expected = np.concatenate([np.arange(n) for n in np.diff(docs.offsets)])
    assert batch.position_ids[0].tolist() == expected.tolist()
    # Every document starts with the start token, which for GPT-2 (no BOS) is EOS.
    starts = docs.offsets[:-1]
    assert (batch.input_ids[0, starts] == tokenizer.eos_token_id).all()
    assert segment_ids(batch.position_ids)[0, starts].tolist() == list(range(1, len(TEXTS) + 1))


def test_eos_ending_a_document_is_a_target_even_when_pad_is_eos(tiny_gpt2):
    tokenizer = load_tokenizer(resolve(str(tiny_gpt2)))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the GPT-2 trap this guards
    docs = tokenize_examples([Example("", t) for t in TEXTS], tokenizer)
    for dataset in (PackedDataset(docs, docs.n_tokens, shuffle=False),
                    PaddedDataset(docs, 64, shuffle=False)):
        batch = next(dataset.batches(0, len(TEXTS)))
        is_eos = batch.input_ids == tokenizer.eos_token_id
        starts = batch.position_ids == 0
        ends = is_eos & ~starts
        if batch.attention_mask is not None:
            ends &= batch.attention_mask.bool()
        assert int(ends.sum()) == len(TEXTS)
        assert (batch.labels[ends] == tokenizer.eos_token_id).all()
        # The start-of-document EOS and the padding are never targets.
        assert (batch.labels[is_eos & starts] == IGNORE).all()
        if batch.attention_mask is not None:
            assert (batch.labels[batch.attention_mask == 0] == IGNORE).all()


def test_attention_mask_is_block_diagonal_and_causal():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
    allowed = packed_attention_mask(positions)[0, 0] == 0  # (T, T)
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_prompt_tokens_are_context_not_targets(tiny_llama):
    tokenizer = load_tokenizer(resolve(str(tiny_llama)))
    docs = tokenize_examples([Example("question two plus four", " answer six")], tokenizer)
    batch = next(PackedDataset(docs, docs.n_tokens, shuffle=False).batches(0, 1))
    n_prompt = len(tokenizer("question two plus four", add_special_tokens=False)["input_ids"])
    n_completion = len(tokenizer(" answer six", add_special_tokens=False)["input_ids"])
    assert batch.input_ids[0, 0] == tokenizer.bos_token_id
    assert (batch.labels[0, :1 + n_prompt] == IGNORE).all()
    assert batch.n_target_tokens == n_completion + 1  # the completion and its EOS
