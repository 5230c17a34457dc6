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
from lmtune import checkpoint
from lmtune.config import TrainConfig
from lmtune.methods import apply_freeze, apply_lora
from lmtune.models import RUN_FILE, load_base, resolve


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
    assert len(train) + len(evals) + len(copies) == len(records)
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
        assert set(r) == {"step", "val_loss", "val_ppl"}
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


# --- methods -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture, top, head_and_norm", [
    ("tiny_gpt2", "transformer.h.1.", ("transformer.ln_f.", "transformer.wte.")),
    ("tiny_llama", "model.layers.1.", ("model.norm.", "lm_head.")),
])
def test_freeze_trains_only_top_blocks_norm_and_head(request, fixture, top, head_and_norm):
    model = load_base(resolve(str(request.getfixturevalue(fixture))))
    apply_freeze(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.startswith((top,) + head_and_norm)}
    assert trainable == expected
    assert model.get_output_embeddings().weight.requires_grad
    with pytest.raises(lmtune.UserError, match="outside 1..2"):
        apply_freeze(model, 3)


@pytest.mark.parametrize("fixture, trained", [
    ("tiny_gpt2", ("transformer.h.1.", "transformer.ln_f.", "transformer.wte.")),  # tied head
    ("tiny_llama", ("model.layers.1.", "model.norm.", "lm_head.")),
])
def test_freeze_training_leaves_lower_blocks_unchanged(request, fixture, trained, lines_file,
                                                       tmp_path, fast):
    from transformers import AutoModelForCausalLM

    base_dir = Path(request.getfixturevalue(fixture))
    result = lmtune.train(lines_file, model=str(base_dir), out=str(tmp_path / "run"),
                          method="freeze", train_layers=1, max_steps=6, lr=1e-2, eval_every=6,
                          sample_every=0, **fast)
    assert json.loads((result.final / RUN_FILE).read_text())["method"] == "freeze"
    AutoModelForCausalLM.from_pretrained(result.final)  # a standalone model
    base = load_file(base_dir / "model.safetensors")
    final = load_file(result.final / "model.safetensors")
    assert base.keys() == final.keys()
    for name, before in base.items():
        assert torch.equal(before, final[name]) != name.startswith(trained), name


def test_lora_on_gpt2_targets_conv1d_projections(tiny_gpt2):
    from peft.tuners.lora import LoraLayer

    model = apply_lora(load_base(resolve(str(tiny_gpt2))), r=4, alpha=8, dropout=0.0,
                       targets=None)
    assert model.peft_config["default"].fan_in_fan_out is True
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
               if isinstance(m, LoraLayer)}
    assert adapted == {"c_attn", "c_proj", "c_fc"}
    n_layers = sum(isinstance(m, LoraLayer) for m in model.modules())
    assert n_layers == 2 * 4  # per block: c_attn, attn.c_proj, c_fc, mlp.c_proj
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # The adapter starts as a no-op: B is zero.
    base = load_base(resolve(str(tiny_gpt2))).eval()
    assert torch.allclose(_logits(model.eval()), _logits(base), atol=1e-6)


def test_lora_on_llama_targets_every_projection(tiny_llama):
    from peft.tuners.lora import LoraLayer

    model = apply_lora(load_base(resolve(str(tiny_llama))), r=4, alpha=8, dropout=0.0,
                       targets=None)
    assert model.peft_config["default"].fan_in_fan_out is False
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
               if isinstance(m, LoraLayer)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"}


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


def test_unknown_lora_target_lists_the_real_modules(tiny_gpt2):
    with pytest.raises(lmtune.UserError) as e:
        apply_lora(load_base(resolve(str(tiny_gpt2))), r=4, alpha=8, dropout=0.0,
                   targets=["q_proj"])
    assert "c_attn" in e.value.hint


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


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_from_above_zero(schedule):
    from lmtune.optim import lr_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cfg = TrainConfig(lr=1.0, warmup_steps=3, lr_schedule=schedule)
    scheduler = lr_schedule(optimizer, cfg, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(r > 0 for r in rates) and max(rates) == pytest.approx(1.0)
    if schedule == "constant":
        assert rates[3:] == pytest.approx([1.0] * 7)
    else:
        assert rates[3:] == sorted(rates[3:], reverse=True) and rates[-1] < 0.5
