"""diff: zero against itself; exactly the trained tensors change (freeze: the top block, the
final norm and the tied head); a LoRA diff equals the diff against the merged model."""

from __future__ import annotations

import json

import pytest

import lmtune
from lmtune.analysis.diff import METRICS
from lmtune.cli import main

FREEZE = dict(method="freeze", train_layers=1, max_steps=6, lr=1e-2, sample_every=0,
              report=False, split_on="\n", block_size=64, precision="fp32", device="cpu",
              seed=0)


@pytest.fixture(scope="module")
def freeze_run(tiny_gpt2, session_lines, tmp_path_factory):
    return lmtune.train(session_lines, model=str(tiny_gpt2), out=str(
        tmp_path_factory.mktemp("runs") / "freeze"), **FREEZE)


def test_a_model_against_itself_has_no_change(tiny_gpt2):
    result = lmtune.diff(tiny_gpt2, tiny_gpt2)
    assert result.changed == [] and len(result.tensors) > 10
    for row in result.tensors + result.blocks:
        assert row["mean_abs_diff"] == row["max_abs_diff"] == row["std_diff"] == 0
        assert row["relative_change"] == 0 and row["mean_euclidean"] == 0
        assert row["mean_cosine"] == pytest.approx(1.0)
    assert [b["block"] for b in result.blocks] == [0, 1]


def test_freeze_changes_only_the_top_block_final_norm_and_head(freeze_run, tiny_gpt2):
    result = lmtune.diff(freeze_run.out)  # the base comes from the run's lmtune.json
    assert result.base == str(tiny_gpt2) and result.kind == "weights"
    names = {t["name"] for t in result.tensors}
    want = {n for n in names if n.startswith("transformer.h.1.")} | {
        "transformer.ln_f.weight", "transformer.ln_f.bias",
        "transformer.wte.weight"}  # the LM head is tied to the token embeddings
    assert set(result.changed) == want
    block0, block1 = result.blocks
    assert block0["relative_change"] == 0 and block0["mean_cosine"] == pytest.approx(1.0)
    assert block1["relative_change"] > 0 and block1["mean_cosine"] < 1
    ranked = [t["relative_change"] for t in result.tensors]
    assert ranked == sorted(ranked, reverse=True)


def test_lora_diff_equals_the_diff_against_the_merged_model(lora_run, tiny_gpt2, tmp_path):
    merged = tmp_path / "merged"
    lmtune.merge(lora_run.out, merged)
    from_adapter = lmtune.diff(tiny_gpt2, lora_run.out)
    from_merged = lmtune.diff(tiny_gpt2, merged)
    assert from_adapter.kind == "lora" and from_merged.kind == "weights"
    # Exactly the adapted projections of both blocks changed; nothing else.
    assert set(from_adapter.changed) == {
        f"transformer.h.{i}.{m}.weight" for i in (0, 1)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert set(from_merged.changed) == set(from_adapter.changed)
    merged_rows = {t["name"]: t for t in from_merged.tensors}
    for row in from_adapter.tensors:
        for key in METRICS:
            assert row[key] == pytest.approx(merged_rows[row["name"]][key], rel=1e-3,
                                             abs=1e-7), (row["name"], key)
    for a, b in zip(from_adapter.blocks, from_merged.blocks):
        for key in METRICS:
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-7)


def test_diff_cli_json_keys_table_and_plot(lora_run, tmp_path, capsys):
    plot = tmp_path / "where.png"
    assert main(["diff", str(lora_run.out), "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in out["tensors"] + out["blocks"]:
        assert set(METRICS) <= set(row)
    assert out["changed_tensors"] == 8 and out["total_tensors"] == len(out["tensors"])
    assert main(["diff", str(lora_run.out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "8 of" in text and "relative" in text and "more (--top 0" in text
