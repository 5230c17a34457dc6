"""data inspect and train --dry-run: counts match the tokenizer's own, lengths against the
block size, padding waste, duplicates, warnings; a dry run times steps and writes nothing."""

from __future__ import annotations

import json

import pytest

import lmtune
from lmtune.cli import main


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_inspect_counts_match_the_tokenizer(tiny_gpt2, quotes_file):
    _, tokenizer = lmtune.load(tiny_gpt2)
    template = "Quote by {author}: {text}"
    rows = json.loads(quotes_file.read_text())
    texts = [template.format(**r) for r in rows]
    report = lmtune.inspect_data(quotes_file, model=str(tiny_gpt2), template=template)
    assert report.examples == report.records == len(rows) == 40
    assert report.characters == sum(len(t) for t in texts)
    assert report.text_tokens == sum(_tokens(tokenizer, t) for t in texts)
    assert report.tokens == report.text_tokens + 2 * len(texts)  # start and end token each
    assert report.tokens_per_character == pytest.approx(report.text_tokens /
                                                        report.characters, abs=1e-4)
    assert sum(h["count"] for h in report.histogram) == 40
    assert report.duplicates == 36  # four distinct quotes, ten times each
    assert any("duplicates" in w for w in report.warnings)
    assert report.rendered_example == "<|endoftext|>" + texts[0] + "<|endoftext|>"


def test_inspect_block_size_padding_and_prompt_completion(tiny_gpt2, tmp_path):
    _, tokenizer = lmtune.load(tiny_gpt2)
    rows = [{"q": "why did the cat", "a": "sat"},
            {"q": "two plus four", "a": " ".join(["the cat sat on the mat"] * 6)}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    report = lmtune.inspect_data(data, model=str(tiny_gpt2), prompt_template="Q: {q} A:",
                                 completion_template=" {a}", block_size=32)
    lengths = [2 + _tokens(tokenizer, f"Q: {r['q']} A:") + _tokens(tokenizer, f" {r['a']}")
               for r in rows]
    assert report.length["max"] == max(lengths) > 32 > min(lengths)
    assert report.over_block_size == 1 and any("longer than the block" in w
                                               for w in report.warnings)
    rows_padded = sum(-(-n // 32) for n in lengths)  # --no-pack cuts the long one in two
    assert report.padding_waste == pytest.approx(1 - sum(lengths) / (rows_padded * 32),
                                                 abs=1e-4)
    assert report.packing_waste < report.padding_waste
    assert report.learned_part == " sat<|endoftext|>"  # the prompt is context only
    assert report.target_tokens == sum(_tokens(tokenizer, f" {r['a']}") + 1 for r in rows)


def test_inspect_warns_about_an_often_empty_field(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "quotes.csv"
    data.write_text("author,text\n" + "".join(f",line {i}\n" if i % 2 else f"ada,line {i}\n"
                                              for i in range(10)), encoding="utf-8")
    code = main(["data", "inspect", str(data), "--model", str(tiny_gpt2), "--template",
                 "{author}: {text}", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and {"examples", "characters", "tokens"} <= set(out)
    assert any("'author' is empty or missing in 50%" in w for w in out["warnings"])
    assert main(["data", "inspect", str(data), "--model", str(tiny_gpt2), "--template",
                 "{author}: {text}"]) == 0
    text = capsys.readouterr().out
    assert "tokens per character" in text and "warnings:" in text


def test_dry_run_prints_the_plan_and_an_estimate_and_writes_nothing(tiny_gpt2, lines_file,
                                                                     tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(lines_file), "--model", str(tiny_gpt2), "--out", str(out),
                 "--split-on", "\\n", "--block-size", "64", "--precision", "fp32",
                 "--device", "cpu", "--epochs", "2", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert not out.exists()
    assert "plan:" in captured.err  # the same plan train prints at start
    assert "per epoch" in captured.out and "nothing was trained or written" in captured.out
    assert "tokens per character" in captured.out  # the data report
    result = lmtune.train(lines_file, model=str(tiny_gpt2), out=str(out), split_on="\n",
                          block_size=64, precision="fp32", device="cpu", dry_run=True)
    assert not out.exists()
    assert result.measured_steps >= 1 and result.seconds_per_step > 0
    assert result.seconds_per_epoch == pytest.approx(
        result.seconds_per_step * result.plan["steps_per_epoch"])
    assert result.data.examples == 120  # the data file, as `data inspect` reports it
