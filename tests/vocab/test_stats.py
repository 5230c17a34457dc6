"""`lmtune tokenizer stats`: characters per token and the byte-fallback share, side by side."""

from __future__ import annotations

import json

import pytest

from lmtune.cli.main import main
from lmtune.vocab.stats import fallback_ids, measure


def test_chinese_is_mostly_byte_pieces_for_an_english_bpe(tiny_gpt2):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    english = measure("en", tok, ["the cat sat on the mat"])
    assert english.fallback_share == 0 and english.chars_per_token > 1.5
    chinese = measure("zh", tok, ["公园里的猫"])
    assert chinese.tokens == 15 and chinese.fallback_share == 1.0  # three bytes each
    assert chinese.tokens_per_char == pytest.approx(3.0)
    assert len(fallback_ids(tok)) > 0


def test_the_cli_shows_several_tokenizers_side_by_side(tiny_gpt2, tiny_llama, tmp_path, capsys):
    data = tmp_path / "mixed.txt"
    data.write_text("the cat sat on the mat\n公园里的猫\n", encoding="utf-8")
    assert main(["tokenizer", "stats", "--model", str(tiny_gpt2), "--model", str(tiny_llama),
                 "--data", str(data), "--split-on", "\\n"]) == 0
    out = capsys.readouterr().out
    assert "chars/token" in out and str(tiny_gpt2) in out and str(tiny_llama) in out
    assert "lmtune tokenizer extend" in out  # the fix, named
    assert main(["tokenizer", "stats", "--model", str(tiny_gpt2), "--data", str(data),
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["characters"] == len(data.read_text(encoding="utf-8").strip())


def test_data_inspect_names_the_fix_for_a_costly_tokenizer(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "zh.txt"
    data.write_text("公园里的猫\n" * 20, encoding="utf-8")
    assert main(["data", "inspect", str(data), "--model", str(tiny_gpt2), "--split-on",
                 "\\n"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the warning is wrapped
    assert "tokens per character" in out and "lmtune tokenizer extend" in out
