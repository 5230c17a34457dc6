"""did_it_learn: on a run that learned repeated lines the tuned model beats the base on its
validation split, the weight change lists the layers, memorisation comes from the logs, and
the answer is kept in the run folder until final/ changes."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

import lmtune
from lmtune.analysis import learned
from lmtune.analysis.compare import ModelPair
from lmtune.analysis.learned import CACHE_FILE, did_it_learn
from lmtune.errors import UserError
from lmtune.run.folder import RunFolder


# tests/conftest.py's FAST options; not imported from it: under pytest, "conftest" is
# whichever conftest.py was loaded last (tests/web/ has one too).
FAST = dict(split_on="\n", block_size=64, precision="fp32", device="cpu", seed=0)


@pytest.fixture(scope="module")
def run(tiny_gpt2, session_lines, tmp_path_factory):
    data = session_lines
    return lmtune.train(data, model=str(tiny_gpt2), out=str(
        tmp_path_factory.mktemp("runs") / "learned"), method="full", max_steps=30, lr=3e-3,
        log_every=10, eval_every=30, sample_every=15, sample_max_new_tokens=12, **FAST).out


@pytest.fixture
def loads(monkeypatch):
    """How often the models are loaded."""
    calls = []
    original = ModelPair.load.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args)
        return original(cls, *args, **kwargs)
    monkeypatch.setattr(ModelPair, "load", classmethod(counting))
    return calls


def test_it_learned_and_the_answer_is_kept(run, loads, monkeypatch):
    (run / CACHE_FILE).unlink(missing_ok=True)
    got = did_it_learn(run, device="cpu")
    assert len(loads) == 1 and got["cached"] is False and got["note"] is None
    learning, forgetting = got["learning"], got["forgetting"]
    assert learning["split"] == "validation split" and learning["examples"] == 12  # 10% of 120
    assert learning["tuned_perplexity"] < learning["base_perplexity"] / 4
    assert forgetting["data"] == learned.DEFAULT_REFERENCE and forgetting["examples"] > 50
    for row in (learning, forgetting):
        for name in ("base_perplexity", "tuned_perplexity", "base_loss", "tuned_loss"):
            assert math.isfinite(row[name]), (row["role"], name)
    weights = got["weights"]
    assert weights["kind"] == "weights" and weights["changed_tensors"] > 0
    in_blocks = [t for t in weights["tensors"] if t["block"] is not None]
    assert {t["block"] for t in in_blocks} == {0, 1} and [b["block"] for b in
                                                          weights["blocks"]] == [0, 1]
    assert {"attn.c_attn.weight", "mlp.c_fc.weight"} <= {t["module"] for t in in_blocks}
    # GPT-2's zero-initialised biases have an undefined relative change: None, never inf.
    json.dumps(got, allow_nan=False)
    memo = got["memorization"]
    assert memo["step"] == 30 and memo["samples"] > 0 and 0 <= memo["copy_rate"] <= 1
    assert memo["max_copied_tokens"] >= memo["mean_copied_tokens"] >= 0

    # The second call reads learned.json and loads no model.
    assert json.loads((run / CACHE_FILE).read_text())["result"]["learning"] == learning
    with monkeypatch.context() as patch:
        patch.setattr(learned, "diff", lambda *a, **k: pytest.fail("diff ran again"))
        again = did_it_learn(str(run / "final"), device="cpu")
    assert again["cached"] is True and len(loads) == 1
    assert again["learning"] == learning and again["weights"] == weights

    # Another reference text, or a new final model, is measured again.
    loads.clear()
    shorter = dict(device="cpu", max_reference_chars=2_000)  # a shorter text, a quicker test
    assert did_it_learn(run, **shorter)["cached"] is False and len(loads) == 1
    assert did_it_learn(run, **shorter)["cached"] is True and len(loads) == 1
    weights_file = next((run / "final").glob("*.safetensors"))
    stat = weights_file.stat()
    os.utime(weights_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert did_it_learn(run, **shorter)["cached"] is False and len(loads) == 2


def test_a_reference_file_and_a_run_without_validation_data(run, tmp_path):
    reference = tmp_path / "ref.txt"
    reference.write_text("birds sang in the park\n\nengines weave patterns\n", encoding="utf-8")
    # The same run, as if it had trained with --val-split 0.
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns(CACHE_FILE))
    config = (bare / "config.yaml").read_text(encoding="utf-8")
    (bare / "config.yaml").write_text(config.replace("val_split: 0.1", "val_split: 0.0"),
                                      encoding="utf-8")
    got = did_it_learn(bare, reference=reference, device="cpu")
    assert got["forgetting"]["data"] == str(reference) and got["forgetting"]["examples"] == 1
    assert got["learning"]["split"] == "training data" and got["learning"]["examples"] == 120
    assert "no validation data" in got["note"]


def test_refusals(run, tiny_gpt2, tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        did_it_learn(tiny_gpt2)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("final", CACHE_FILE))
    with pytest.raises(UserError, match="the run has no final model yet"):
        did_it_learn(unfinished)
    with pytest.raises(UserError, match="not a file"):
        did_it_learn(run, reference=tmp_path / "missing.txt")
    classify = tmp_path / "classify"
    shutil.copytree(run, classify, ignore=shutil.ignore_patterns(CACHE_FILE))
    config = (classify / "config.yaml").read_text(encoding="utf-8")
    (classify / "config.yaml").write_text(config.replace("task: generate", "task: classify"),
                                          encoding="utf-8")
    with pytest.raises(UserError, match="classification run"):
        did_it_learn(classify)


def test_overwrite_removes_the_answer(tmp_path):
    (tmp_path / CACHE_FILE).write_text("{}", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    RunFolder(tmp_path).clear()
    assert not (tmp_path / CACHE_FILE).exists() and (tmp_path / "notes.txt").exists()


def test_a_lora_run(lora_run):
    got = did_it_learn(lora_run.out, device="cpu", max_reference_chars=2_000)
    try:
        assert got["method"] == "lora" and got["weights"]["kind"] == "lora"
        assert got["weights"]["changed_tensors"] > 0
        assert got["learning"]["tuned_perplexity"] < got["learning"]["base_perplexity"]
    finally:
        (lora_run.out / CACHE_FILE).unlink()  # the run is shared with other test files
