"""Memorisation: an exact copy of a training example is flagged, a novel string passes, a
copy inside other text is measured; training writes the figures and the copy rate; generate
--check-memorization reports them per sample."""

from __future__ import annotations

import json

import pytest

import lmtune
from lmtune.analysis.memorization import NGRAM, MemorizationIndex
from lmtune.cli import main
from lmtune.data import Example, tokenize_examples

TRAIN = ["the cat sat on the mat and a dog ran in the park",
         "why did the programmer quit because he did not get arrays",
         "engines weave patterns while birds sang in the park"]


@pytest.fixture(scope="module")
def index_and_tokenizer(tiny_gpt2):
    _, tokenizer = lmtune.load(tiny_gpt2)
    docs = tokenize_examples([Example("", t) for t in TRAIN], tokenizer)
    return MemorizationIndex(docs, tokenizer), tokenizer


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_an_exact_copy_is_flagged(index_and_tokenizer):
    index, tokenizer = index_and_tokenizer
    check = index.check("", TRAIN[1])
    assert check.verbatim and check.copied_tokens == _n_tokens(tokenizer, TRAIN[1])
    # A prompt that is the start of the example: the whole sample is still the example.
    check = index.check("why did the", " programmer quit because he did not get arrays")
    assert check.verbatim and check.copied_tokens >= NGRAM


def test_a_novel_string_passes(index_and_tokenizer):
    index, _ = index_and_tokenizer
    check = index.check("", "the dog sat on the park and a bird ran in the mat")
    assert not check.verbatim and check.copied_tokens < NGRAM


def test_a_copied_run_inside_new_text_is_measured_but_not_verbatim(index_and_tokenizer):
    index, tokenizer = index_and_tokenizer
    inner = " quit because he did not get arrays"
    check = index.check("", "my friend" + inner + " today")
    assert not check.verbatim
    assert check.copied_tokens == _n_tokens(tokenizer, inner)
    # A run may not cross from one training example into the next.
    joined = index.check("", TRAIN[0] + " " + TRAIN[1])
    assert joined.copied_tokens == max(_n_tokens(tokenizer, t) for t in TRAIN[:2])


def test_training_records_memorisation_and_the_copy_rate(full_run):
    samples = [json.loads(x) for x in (full_run.out / "samples.jsonl").open()]
    rates = {r["step"]: r for r in map(json.loads, (full_run.out / "metrics.jsonl").open())
             if "copy_rate" in r}
    assert sorted(rates) == sorted({s["step"] for s in samples})
    for step, record in rates.items():
        mine = [s for s in samples if s["step"] == step]
        assert record["samples"] == len(mine)
        assert record["copy_rate"] == pytest.approx(sum(s["verbatim"] for s in mine) / len(mine))
        assert record["max_copied_tokens"] == max(s["copied_tokens"] for s in mine)


def test_generate_check_memorization(full_run, session_lines, tmp_path, capsys):
    novel = tmp_path / "other.txt"
    novel.write_text("answer two plus four\nquote by ada lovelace\n", encoding="utf-8")
    args = ["generate", str(full_run.out), "-n", "8", "--seed", "0", "--max-new-tokens", "20",
            "--json", "--check-memorization"]
    # The run learned the lines; its data file is read as training read it (one per line).
    lines = set(session_lines.read_text().splitlines())
    assert main(args + [str(session_lines)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 8 and any(r["verbatim"] for r in rows)
    for r in rows:
        assert r["verbatim"] == (r["text"] in lines), r
        assert r["copied_tokens"] >= NGRAM or not r["verbatim"]
    assert main(args + [str(novel)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert not any(r["verbatim"] for r in rows)
    assert main(args[:-2] + ["--check-memorization", str(session_lines)]) == 0
    assert "[memorization: longest copied run" in capsys.readouterr().out


def test_check_memorization_api_takes_strings(full_run, session_lines):
    got = lmtune.check_memorization(["the cat sat on the mat", "engines weave arrays"],
                                    session_lines, model=full_run.out)
    assert [c.verbatim for c in got] == [True, False]
