"""The data preview: each token's kind as training sees it (context, target, end, padding),
readable text for characters that byte-level BPE cuts into several tokens, and the inspect
report from the same single read of the file."""

from __future__ import annotations

import json
from itertools import groupby

import pytest

from lmtune.analysis.data_preview import data_preview, preview_examples
from lmtune.config import InspectConfig, TrainConfig
from lmtune.data.examples import Example
from lmtune.data.tokenize import tokenize_examples
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve


@pytest.fixture
def tokenizer(tiny_gpt2):
    # A fresh one per test: chat data writes the fallback chat template into it.
    return load_tokenizer(resolve(str(tiny_gpt2)))


def _runs(tokens: list[dict]) -> list[str]:
    """The kinds in order, each run of equal kinds once: start, prompt, target, end."""
    return [kind for kind, _ in groupby(t["kind"] for t in tokens)]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return path


def test_prompt_completion_kinds_and_the_inspect_report(tokenizer, tmp_path):
    data = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "why did the cat", "completion": " sat"},
                                             {"prompt": "two plus", "completion": " four"}] * 3)
    opts = InspectConfig(data=str(data))
    got = data_preview(opts, tokenizer, model="tiny", n=2)
    assert got["format"] == "text" and got["packed"] is True
    assert got["report"]["examples"] == 6 and got["report"]["data"] == str(data)
    first = got["examples"][0]
    assert _runs(first["tokens"]) == ["start", "prompt", "target", "end"]
    assert first["tokens"][-1]["text"] == "<|endoftext|>"
    assert "".join(t["text"] for t in first["tokens"][1:-1]) == "why did the cat sat"
    assert first["target_tokens"] == sum(t["kind"] in ("target", "end")
                                         for t in first["tokens"])
    assert first["n_tokens"] == len(first["tokens"]) and not first["truncated"]
    # The report counts the same documents the preview shows.
    assert got["report"]["target_tokens"] == 3 * sum(e["target_tokens"]
                                                     for e in got["examples"])


def test_chat_turns_are_context_and_answers_are_targets(tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "why did the programmer quit"},
                          {"role": "assistant", "content": "he did not get arrays"}]}] * 2
    got = data_preview(InspectConfig(data=str(_jsonl(tmp_path / "chat.jsonl", rows))),
                       tokenizer, model="tiny", n=1)
    assert got["format"] == "chat"
    tokens = got["examples"][0]["tokens"]
    text_of = lambda kind: "".join(t["text"] for t in tokens if t["kind"] == kind)  # noqa: E731
    assert tokens[0]["kind"] == "start"
    assert "why did the programmer quit" in text_of("turn")
    assert "he did not get arrays" in text_of("target")
    assert "programmer" not in text_of("target") and "arrays" not in text_of("turn")
    assert "end" in _runs(tokens)


def test_characters_cut_into_byte_tokens_read_whole(tokenizer):
    # Emoji and CJK are not in the tiny tokenizer's merges: each is 3-4 byte tokens.
    text = "the cat 😀 sat 中文 on the mat 🐈‍⬛!"
    docs = tokenize_examples([Example("", text)], tokenizer)
    [example] = preview_examples(docs, tokenizer)
    tokens = example["tokens"]
    assert example["n_tokens"] > len(tokens)  # some pieces hold several tokens
    assert not any("\ufffd" in t["text"] for t in tokens)
    assert "".join(t["text"] for t in tokens[1:-1]) == text
    merged = [t for t in tokens if "ids" in t]
    assert merged and all(t["id"] == t["ids"][0] for t in merged)
    assert sum(len(t.get("ids", [t["id"]])) for t in tokens) == example["n_tokens"]


def test_padding_and_truncation(tokenizer, tmp_path):
    docs = tokenize_examples([Example("", "the cat sat"), Example("", "the dog ran " * 20)],
                             tokenizer)
    short, long = preview_examples(docs, tokenizer, max_tokens=30, pad_to=24)
    assert _runs(short["tokens"]) == ["start", "target", "end", "pad"]
    assert len(short["tokens"]) == 24 == short["n_tokens"] + short["pad_tokens"]
    assert short["tokens"][-1]["text"] == "<|endoftext|>"  # GPT-2 pads with its end token
    assert long["truncated"] and len(long["tokens"]) == 30 and long["pad_tokens"] == 0
    assert "pad" not in _runs(long["tokens"])
    assert all(t["kind"] != "pad" for e in preview_examples(docs, tokenizer) for t in e["tokens"])


def test_unpacked_data_shows_its_padding(tokenizer, tmp_path):
    data = tmp_path / "lines.txt"
    data.write_text("the cat sat\nthe dog ran in the park while birds sang\n", encoding="utf-8")
    opts = TrainConfig(data=str(data), split_on="\n", pack=False)
    got = data_preview(opts, tokenizer, model="tiny", block_size=64)
    assert got["packed"] is False
    short, long = got["examples"]
    assert short["n_tokens"] + short["pad_tokens"] == long["n_tokens"]
    assert long["pad_tokens"] == 0 and short["tokens"][-1]["kind"] == "pad"
