"""Preference pairs in `lmtune data inspect` and the data preview: counts from the tokens
training uses, the pairs that teach nothing, and the length bias DPO learns instead of the
preference."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_clean_error, run_cli

from lmtune.analysis.data_preview import data_preview
from lmtune.config import InspectConfig
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve


@pytest.fixture
def tokenizer(tiny_gpt2):
    return load_tokenizer(resolve(str(tiny_gpt2)))


def _inspect(capsys, data, model, *flags):
    return run_cli(capsys, ["data", "inspect", str(data), "--model", str(model), *flags])


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def _pairs(n: int = 12) -> list[dict]:
    # chosen: the whole sentence; rejected: its first words (always shorter)
    out = []
    for i in range(n):
        words = f"the cat number {i} sat on the warm mat all day long".split()
        out.append({"prompt": f"tell me about cat {i}:", "chosen": " " + " ".join(words),
                    "rejected": " " + " ".join(words[:4])})
    return out


def test_inspect_counts_pairs_and_warns_of_length_bias_and_dead_pairs(tiny_gpt2, tmp_path, capsys):
    rows = _pairs(12)
    rows.append(dict(rows[0]))                                            # a duplicate
    rows.append({"prompt": "same?", "chosen": " yes it is", "rejected": " yes it is"})
    data = _jsonl(tmp_path / "prefs.jsonl", rows)
    code, out, err = _inspect(capsys, data, tiny_gpt2, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["kind"] == "pairs" and r["pairs"] == 14 and r["chat"] is False
    assert r["duplicates"] == 1 and r["identical"] == 1
    # 13 pairs of unequal answers, all with the longer chosen
    assert r["chosen_longer"] == 1.0
    assert r["chosen_tokens"]["median"] > r["rejected_tokens"]["median"]
    assert r["rendered_pair"]["prompt"].endswith("tell me about cat 0:")
    assert r["rendered_pair"]["chosen"].startswith(" the cat number 0")
    assert r["rendered_pair"]["rejected"] == " the cat number 0<|endoftext|>"
    warnings = " ".join(r["warnings"])
    assert "longer one in 100% of the pairs" in warnings and "simpo" in warnings
    assert "same chosen and rejected answer" in warnings and "duplicates" in warnings
    # A cut that leaves some prompts without an answer token: named, as training drops them.
    code, out, err = _inspect(capsys, data, tiny_gpt2, "--block-size", "8")
    assert code == 0, err
    assert "preference pairs" in out and "keep no answer token within 8" in out
    assert "cut at 8 tokens" in out


def test_openai_and_column_pairs_read_as_training_reads_them(tiny_gpt2, tmp_path, capsys):
    rows = [{"input": {"messages": [{"role": "user", "content": f"joke {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": "a short one"}],
             "non_preferred_output": [{"role": "assistant", "content": "no jokes today, sorry"}]}
            for i in range(10)]
    code, out, err = _inspect(capsys, _jsonl(tmp_path / "oa.jsonl", rows), tiny_gpt2, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["pairs"] == 10 and r["chat"] is True and r["chosen_longer"] == 0.0
    assert "joke 0?" in r["rendered_pair"]["prompt"]
    assert "shorter one in 100%" in " ".join(r["warnings"])
    csv = tmp_path / "prefs.csv"
    csv.write_text("q,good,bad\n" + "".join(f"q{i},yes {i},no\n" for i in range(10)))
    code, out, err = _inspect(capsys, csv, tiny_gpt2, "--chosen-column", "good",
                              "--rejected-column", "bad", "--prompt-template", "{q}: ", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["pairs"] == 10 and r["rendered_pair"]["prompt"].endswith("q0: ")
    # A wrong column is one line naming it, as in training.
    code, out, err = _inspect(capsys, csv, tiny_gpt2, "--chosen-column", "best")
    assert_clean_error(code, out, err, "best")


def test_preview_shows_each_pair_with_both_answers_as_targets(tokenizer, tmp_path):
    data = _jsonl(tmp_path / "prefs.jsonl", _pairs(3))
    got = data_preview(InspectConfig(data=str(data)), tokenizer, model="tiny", n=2)
    assert got["format"] == "pairs" and len(got["examples"]) == 2
    assert got["report"]["pairs"] == 3
    pair = got["examples"][1]
    for side, answer in (("chosen", " the cat number 1 sat on the warm mat all day long"),
                         ("rejected", " the cat number 1")):
        tokens = pair[side]["tokens"]
        text = lambda *kinds: "".join(t["text"] for t in tokens if t["kind"] in kinds)  # noqa: E731
        assert text("prompt") == "tell me about cat 1:"
        assert text("target") == answer
        assert tokens[-1]["kind"] == "end" and tokens[0]["kind"] == "start"
        assert pair[side]["target_tokens"] == sum(t["kind"] in ("target", "end")
                                                  for t in tokens)
