"""The new output rows calibrated to the corpus (vocab/calibrate.py): a piece that repeats one
token starts with exactly that token's row, so it takes that token's probability; after the
calibration each new piece's mean predicted probability on the corpus is its frequency."""

from __future__ import annotations

import random

import pytest
import torch

from lmtune.vocab.calibrate import _mean_probabilities, calibrate_rows


@pytest.fixture()
def model_with_new_rows(tiny_llama):
    """The tiny untied Llama grown by 3 rows: a repeat of token 40 ("。。"), a common pair
    and a pair the corpus never holds, each the mean of its parts, as extend.py makes them."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    n = model.config.vocab_size
    model.resize_token_embeddings(n + 3, mean_resizing=False)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            w = layer.weight
            w[n], w[n + 1], w[n + 2] = w[40], (w[41] + w[42]) / 2, (w[43] + w[44]) / 2
    return model, n


def _corpus(n: int) -> list[list[int]]:
    """Texts of old tokens 40-60 and the new pieces: the repeat once in the whole corpus,
    the common pair in every text, the third never."""
    rng = random.Random(0)
    texts = [[rng.randint(40, 60) for _ in range(rng.randint(10, 30))] + [n + 1]
             for _ in range(60)]
    texts[0].append(n)
    return texts


def test_each_new_piece_is_predicted_as_often_as_the_corpus_holds_it(model_with_new_rows):
    model, n = model_with_new_rows
    texts = _corpus(n)
    flat = torch.tensor([i for t in texts for i in t])
    counts = torch.bincount(flat[flat >= n] - n, minlength=3).double()
    head_before = model.get_output_embeddings().weight.detach().clone()
    before = _mean_probabilities(model, texts, n, None)[0]
    token_40 = _mean_probabilities(model, texts, 40, None)[0][0]
    freq = counts / len(flat)
    assert before[0] == pytest.approx(float(token_40))  # the repeat takes token 40's share
    assert before[0] > 2 * freq[0]
    result = calibrate_rows(model, texts, counts, len(flat), n, None)
    assert result.done, result.why
    after = _mean_probabilities(model, texts, n, None)[0]
    # each piece lands near its frequency, the unseen one near half a count
    freq[2] = 0.5 / len(flat)
    for k in range(3):
        assert abs(torch.log(after[k] / freq[k])) < 0.5, (k, after, freq)
    head = model.get_output_embeddings().weight.detach()
    assert torch.equal(head[:n], head_before[:n])  # old rows untouched
    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(emb[n], emb[40])  # an untied model's input rows stay the averages


def test_a_model_without_a_shared_direction_keeps_the_averages(model_with_new_rows,
                                                               monkeypatch):
    import lmtune.vocab.calibrate as calibrate
    model, n = model_with_new_rows
    monkeypatch.setattr(calibrate, "RATIO", 0.0)  # no spread is small enough
    head_before = model.get_output_embeddings().weight.detach().clone()
    result = calibrate_rows(model, _corpus(n), torch.tensor([1.0, 60.0, 0.0]), 1000, n, None)
    assert not result.done and "no dominant direction" in result.why
    assert torch.equal(model.get_output_embeddings().weight.detach(), head_before)
