"""Training end to end on the tiny models: the loss falls, the run folder holds what later
commands need, and each method trains exactly the parameters it promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmtune
from lmtune.run import checkpoint
from lmtune.run.artifact import RUN_FILE


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _logits(model, ids=(0, 5, 17, 42, 99, 7)) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


# --- the loss and the metrics ------------------------------------------------------------------

def test_validation_loss_falls_on_learnable_lines(full_run):
    evals = [r for r in _records(full_run.out / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"]
    assert full_run.val_loss == pytest.approx(evals[-1]["val_loss"], abs=1e-5)
    assert full_run.best_val_loss <= full_run.val_loss and full_run.stopped == "completed"


def test_metrics_records_are_flat_and_complete(full_run):
    records = _records(full_run.out / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    copies = [r for r in records if "copy_rate" in r]  # one per round of samples
    starts = [r for r in records if "threads" in r]  # what the process ran on
    assert len(train) + len(evals) + len(copies) + len(starts) == len(records)
    assert [(r["step"], r["device"], r["precision"], r["threads"]) for r in starts] == [
        (0, "cpu", "fp32", 1)]  # conftest sets OMP_NUM_THREADS=1, and the record says so
    assert starts[0]["threads_why"].startswith("OMP_NUM_THREADS")
    assert [r["step"] for r in copies] == [20, 40]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 35, 40]
    for r in train:
        # mfu: the CPU's matmul peak is measured, so it is known here
        assert set(r) == {"step", "epoch", "loss", "lr", "tokens", "tokens_per_s", "grad_norm",
                          "mfu"}
        assert 0 < r["mfu"] < 1
        assert r["loss"] > 0 and r["lr"] > 0 and r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    assert [r["tokens"] for r in train] == sorted(r["tokens"] for r in train)
    assert train[0]["epoch"] < train[-1]["epoch"]
    for r in evals:
        assert set(r) == {"step", "val_loss", "val_ppl", "val_bits_per_char"}
        assert r["val_ppl"] == pytest.approx(torch.tensor(r["val_loss"]).exp().item(), rel=1e-3)


def test_samples_are_written_during_training(full_run):
    samples = _records(full_run.out / "samples.jsonl")
    assert [s["step"] for s in samples] == [20, 40]
    for s in samples:
        assert set(s) == {"step", "prompt", "text", "copied_tokens", "verbatim"}
        assert s["prompt"] == ""
        assert isinstance(s["text"], str)


# --- the run folder ----------------------------------------------------------------------------

def test_run_folder_of_a_full_run(full_run, tiny_gpt2):
    from transformers import AutoModelForCausalLM

    out = full_run.out
    assert (out / "config.yaml").is_file() and full_run.final == out / "final"
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names and all(re.fullmatch(r"step-\d{6}", n) for n in names)
    for name in names:
        folder = out / "checkpoints" / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert {"state.json", "optimizer.safetensors", "rng.safetensors"} <= set(manifest)
        assert any(k.startswith("model/") for k in manifest)
        checkpoint.verify(folder)
    info = json.loads((out / "final" / RUN_FILE).read_text())
    assert info["method"] == "full"
    assert Path(info["base_model"]) == Path(tiny_gpt2).resolve()
    trained = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    assert not torch.allclose(_logits(trained), _logits(base), atol=1e-2)
    # The final model is what the last checkpoint holds.
    last = out / "checkpoints" / names[-1] / "model" / "model.safetensors"
    final = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in load_file(last).items())


def test_run_folder_of_a_lora_run(lora_run, tiny_gpt2):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = lora_run.final
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    info = json.loads((final / RUN_FILE).read_text())
    assert info["method"] == "lora"
    assert Path(info["base_model"]) == Path(tiny_gpt2).resolve()
    base = AutoModelForCausalLM.from_pretrained(info["base_model"]).eval()
    base_logits = _logits(base)
    adapted = PeftModel.from_pretrained(base, final).eval()
    assert (_logits(adapted) - base_logits).abs().max() > 1e-3  # the adapter learned something
    model, _ = lmtune.load(lora_run.out)  # lmtune's own loader gives the same model
    assert torch.allclose(_logits(model), _logits(adapted), atol=1e-5)


# --- methods -------------------------------------------------------------------------------------


def test_patience_stops_early_and_still_saves(tiny_gpt2, lines_file, tmp_path, fast):
    other = tmp_path / "other.txt"
    other.write_text("why did the programmer quit\nbecause he did not get arrays\n",
                     encoding="utf-8")
    result = lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                          val_data=str(other), method="full", max_steps=40, lr=3e-3,
                          eval_every=5, sample_every=0, patience=2, **fast)
    assert result.stopped == "patience" and result.steps < 40
    assert result.best_step == result.steps - 10
    assert checkpoint.latest(result.out / "checkpoints").name == checkpoint.step_name(
        result.steps)
    assert (result.final / "model.safetensors").is_file()


# --- small data ----------------------------------------------------------------------------------

@pytest.mark.faults
def test_dataset_smaller_than_one_batch_still_trains(tiny_gpt2, tmp_path, fast):
    data = tmp_path / "three.txt"
    data.write_text("the cat sat\nthe dog ran\nbirds sang\n", encoding="utf-8")
    result = lmtune.train(data, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                          method="full", batch_size=8, val_split=0, epochs=1, **fast)
    assert result.steps == 1 and result.train_loss is not None and result.val_loss is None
    cfg = yaml.safe_load((result.out / "config.yaml").read_text())
    assert cfg["batch_size"] == 8 and cfg["max_steps"] is None
    # The one step must move the weights (a warmup that starts at lr 0 would not).
    base = load_file(Path(tiny_gpt2) / "model.safetensors")
    final = load_file(result.final / "model.safetensors")
    assert any(not torch.equal(base[k], final[k]) for k in final)


def test_a_run_follows_the_machines_load_and_records_each_thread_change(
        tiny_gpt2, lines_file, tmp_path, fast, monkeypatch):
    from lmtune.cpu import ThreadBudget

    class Busy:  # other processes take a core after step 1, and leave after step 3
        def __init__(self, budget):
            self.calls = 0

        def threads_now(self):
            self.calls += 1
            return {1: 1, 3: 2}.get(self.calls)

        def why(self):
            return "other processes use 1.0 of the 2 CPUs"

    monkeypatch.setattr("lmtune.training.setup.set_threads",
                        lambda requested: ThreadBudget(2, "pretend", adapts=True))
    monkeypatch.setattr("lmtune.training.loop.CoreWatch", Busy)
    before = torch.get_num_threads()
    try:
        result = lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                              method="full", max_steps=4, sample_every=0, report=False, **fast)
    finally:
        torch.set_num_threads(before)
    changes = [(r["step"], r["threads"]) for r in _records(result.out / "metrics.jsonl")
               if "threads" in r]
    assert changes == [(0, 2), (1, 1), (3, 2)]
