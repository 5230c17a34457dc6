"""Checkpoints on disk: which are kept (the newest few and the best), and what a crash
mid-save leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmtune
from lmtune.run import checkpoint


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_keep_k_newest_checkpoints_plus_the_best(tiny_gpt2, lines_file, tmp_path, fast):
    # Validation on unrelated text: its loss is lowest early and then rises as the model
    # specialises, so the best checkpoint is an old one that pruning must spare.
    other = tmp_path / "other.txt"
    other.write_text("why did the programmer quit\nbecause he did not get arrays\n"
                     "quote by ada lovelace\nengines weave patterns\n", encoding="utf-8")
    result = lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                          val_data=str(other), method="full", max_steps=30, lr=3e-3,
                          eval_every=5, save_every=5, sample_every=0, keep=2, **fast)
    evals = [r for r in _records(result.out / "metrics.jsonl") if "val_loss" in r]
    best = min(evals, key=lambda r: r["val_loss"])["step"]
    assert best == result.best_step and best < 25
    assert checkpoint.complete_steps(result.out / "checkpoints") == sorted({25, 30, best})


@pytest.mark.faults
def test_prune_keeps_newest_and_best_and_clean_removes_partial(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (5, 10, 15):
        (root / checkpoint.step_name(step)).mkdir(parents=True)
        (root / checkpoint.step_name(step) / "manifest.json").write_text("{}")
    (root / ".tmp-step-000020").mkdir()
    checkpoint.prune(root, keep=1, best_step=5)
    assert checkpoint.complete_steps(root) == [5, 15]
    checkpoint.clean_partial(root)
    assert not (root / ".tmp-step-000020").exists()


def test_a_checkpoint_round_trips_optimizer_rng_and_state_and_verifies(tmp_path):
    import torch

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    rng = torch.get_rng_state()

    def save_model(folder):
        folder.mkdir()
        (folder / "weights.txt").write_text("w")

    path = checkpoint.save(tmp_path / "checkpoints", 7, save_model=save_model,
                           optimizer=optimizer, state={"step": 7, "note": "é"}, keep=2,
                           best_step=None)
    assert path.name == "step-000007" and checkpoint.latest(tmp_path / "checkpoints") == path
    checkpoint.verify(path)
    assert checkpoint.read_state(path) == {"step": 7, "note": "é"}
    assert torch.equal(checkpoint.read_rng(path)["cpu"], rng)
    restored = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-2)
    restored.load_state_dict(checkpoint.read_optimizer(path))
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(restored.state_dict()["state"][0][key],
                           optimizer.state_dict()["state"][0][key])
    (path / "model" / "weights.txt").write_text("altered")
    with pytest.raises(lmtune.UserError, match="does not match its manifest"):
        checkpoint.verify(path)
