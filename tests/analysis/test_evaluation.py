"""eval and compare: the loss matches a hand computation and training's own validation loss;
a model compared with itself changes nothing; a trained run beats its base on its data."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import lmtune
from lmtune.cli import main
from lmtune.data import Example, split_examples
from lmtune.data.readers import read_records

EXACT = dict(precision="fp32", device="cpu")


def _same_length_lines(tokenizer, path):
    """Lines that all tokenize to the same length L, so blocks of 4 L hold whole documents
    and the packed loss must equal the loss of each document alone."""
    words = ["cat", "dog", "bird", "mat", "park", "arrays", "engines", "patterns"]
    lines = [f"the {a} sat on the {b}" for a in words for b in words]
    lengths = [len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in lines]
    length, _ = Counter(lengths).most_common(1)[0]
    chosen = [x for x, n in zip(lines, lengths) if n == length][:24]
    path.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return chosen, length + 2  # + start and end token


@torch.no_grad()
def _hand_loss(model, tokenizer, lines, start_id) -> tuple[float, int]:
    total, count = 0.0, 0
    for line in lines:
        ids = [start_id] + tokenizer(line, add_special_tokens=False)["input_ids"] + \
            [tokenizer.eos_token_id]
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        total += F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
        count += len(ids) - 1
    return total / count, count


@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_llama"])
def test_eval_matches_a_hand_computed_loss(which, request, tmp_path):
    folder = request.getfixturevalue(which)
    model, tokenizer = lmtune.load(folder)
    lines, doc_len = _same_length_lines(tokenizer, tmp_path / "same.txt")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    want, count = _hand_loss(model, tokenizer, lines, start)
    got = lmtune.evaluate_model(folder, tmp_path / "same.txt", split_on="\n",
                                block_size=4 * doc_len, **EXACT)
    assert got.tokens == count and got.examples == len(lines)
    assert got.loss == pytest.approx(want, abs=1e-5)
    assert got.perplexity == pytest.approx(torch.tensor(want).exp().item(), rel=1e-5)


def test_eval_of_a_run_repeats_its_logged_validation_loss(full_run, session_lines, tmp_path):
    examples = [r["text"] for r in read_records(session_lines, split_on="\n")]
    _, val = split_examples([Example("", t) for t in examples], 0.1, 0)
    (tmp_path / "val.txt").write_text("\n".join(e.completion for e in val) + "\n")
    logged = [json.loads(x) for x in (full_run.out / "metrics.jsonl").open()
              if "val_loss" in x][-1]["val_loss"]
    # No data flags: the run's own --split-on, block size and precision are the defaults.
    got = lmtune.evaluate_model(full_run.out, tmp_path / "val.txt")
    assert got.loss == pytest.approx(logged, abs=2e-5)
    assert got.block_size == 64


def test_eval_cli_prints_json_with_loss_perplexity_and_tokens(full_run, session_lines,
                                                              capsys):
    assert main(["eval", str(full_run.out), "--data", str(session_lines), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"loss", "perplexity", "tokens"} <= set(out)
    assert out["tokens"] > 0 and out["perplexity"] == pytest.approx(
        torch.tensor(out["loss"]).exp().item(), rel=1e-6)
    assert main(["eval", str(full_run.out), "--data", str(session_lines)]) == 0
    assert "perplexity" in capsys.readouterr().out


def _classifier_folder(tiny_gpt2, tmp_path):
    import shutil
    folder = tmp_path / "clf"
    shutil.copytree(tiny_gpt2, folder)
    (folder / "lmtune.json").write_text(json.dumps({"task": "classify"}))
    return folder


def test_eval_sends_a_classification_run_to_the_classifier_eval(tiny_gpt2, tmp_path,
                                                                 monkeypatch, capsys):
    import lmtune.tasks.classify.evaluate as classify_eval

    folder = _classifier_folder(tiny_gpt2, tmp_path)
    calls = []

    def fake(run, data, **kw):
        calls.append((run, data, kw))
        return {"task": "classify", "accuracy": 0.5}
    monkeypatch.setattr(classify_eval, "evaluate_classifier", fake)
    assert main(["eval", str(folder), "--data", "labels.csv", "--label-column", "y",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "classify", "accuracy": 0.5}
    assert calls[0][0] == str(folder) and calls[0][2]["label_column"] == "y"


def test_compare_a_model_with_itself_shows_no_change(tiny_gpt2, lines_file):
    result = lmtune.compare(tiny_gpt2, tiny_gpt2, data=lines_file, split_on="\n",
                            prompts=["the cat", "a dog"], n=2, max_new_tokens=8, **EXACT)
    (row,) = result.perplexity
    assert row.base_loss == row.tuned_loss and row.base_tokens == row.tuned_tokens
    assert [g.prompt for g in result.generations] == ["the cat", "a dog"]
    for g in result.generations:
        assert g.base == g.tuned and len(g.base) == 2


def test_compare_run_against_its_own_base(full_run, tiny_gpt2, session_lines, tmp_path):
    reference = tmp_path / "reference.txt"
    reference.write_text("why did the programmer quit because he did not get arrays. "
                         "engines weave patterns while birds sang.\n", encoding="utf-8")
    result = lmtune.compare(full_run.out, data=session_lines, reference=reference,
                            prompts=["the"], n=3, max_new_tokens=10, seed=1, **EXACT)
    assert result.base == str(tiny_gpt2) and result.tuned == str(full_run.out)
    target, ref = result.perplexity
    assert (target.role, ref.role) == ("target", "reference")
    assert target.tuned_perplexity < 0.5 * target.base_perplexity  # it learned the lines
    assert ref.base_tokens == ref.tuned_tokens > 10
    (g,) = result.generations
    assert g.base != g.tuned


def test_compare_lora_run_uses_its_base_with_the_adapter_off(lora_run, tiny_gpt2,
                                                             session_lines):
    result = lmtune.compare(lora_run.out, data=session_lines, prompts=["the"], n=1,
                            max_new_tokens=4, **EXACT)
    base_alone = lmtune.evaluate_model(tiny_gpt2, session_lines, split_on="\n",
                                       block_size=64, **EXACT)
    tuned_alone = lmtune.evaluate_model(lora_run.out, session_lines, **EXACT)
    (row,) = result.perplexity
    assert row.base_loss == pytest.approx(base_alone.loss, abs=1e-6)
    assert row.tuned_loss == pytest.approx(tuned_alone.loss, abs=1e-6)
    assert row.tuned_loss < row.base_loss


def test_compare_cli_prints_both_columns(full_run, session_lines, capsys):
    code = main(["compare", str(full_run.out), "--data", str(session_lines), "--prompt", "the",
                 "-n", "1", "--max-new-tokens", "6", "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0 and "perplexity on" in out and "target" in out and "| tuned" in out


@pytest.mark.parametrize("argv, needle", [
    (["eval", "MODEL"], "eval needs data"),
    (["compare", "MODEL"], "names no base model"),
    (["diff", "MODEL"], "names no base model"),
    (["eval", "MODEL", "--data", "DATA", "--plot", "x.png"], "only for classification runs"),
])
def test_analysis_commands_refuse_bad_input_in_one_line(argv, needle, tiny_gpt2,
                                                        lines_file, capsys):
    argv = [str(tiny_gpt2) if a == "MODEL" else str(lines_file) if a == "DATA" else a
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
