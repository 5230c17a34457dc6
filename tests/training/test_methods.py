"""Full, freeze and LoRA: which weights train, and that only those change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmtune
from lmtune.models.load import load_base
from lmtune.models.resolve import resolve
from lmtune.run.artifact import RUN_FILE
from lmtune.training.methods import apply_freeze, apply_lora


def _logits(model, ids=(0, 5, 17, 42, 99, 7)) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


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


def test_unknown_lora_target_lists_the_real_modules(tiny_gpt2):
    with pytest.raises(lmtune.UserError) as e:
        apply_lora(load_base(resolve(str(tiny_gpt2))), r=4, alpha=8, dropout=0.0,
                   targets=["q_proj"])
    assert "c_attn" in e.value.hint


def test_each_method_restores_its_own_checkpoint_weights(full_run, lora_run, tiny_gpt2):
    from lmtune.run import checkpoint
    from lmtune.training.methods import METHODS

    cfg = lmtune.config.TrainConfig(method="lora", lora_r=8, lora_alpha=16)
    for run, name in ((full_run, "full"), (lora_run, "lora")):
        base = load_base(resolve(str(tiny_gpt2)))
        model = METHODS[name].apply(base, cfg)
        before = _logits(model)
        METHODS[name].restore(model, checkpoint.latest(run.out / "checkpoints") / "model")
        assert not torch.allclose(_logits(model), before)


def test_freeze_on_a_model_of_unknown_depth_is_refused_before_anything_loads():
    from lmtune.config import TrainConfig, check_against_model

    problems = check_against_model(TrainConfig(method="freeze"), context=256, n_layers=None)
    assert problems and "cannot tell how many blocks" in problems[0]
    assert check_against_model(TrainConfig(method="freeze", train_layers=9), context=256,
                               n_layers=4)[0].startswith("--train-layers 9 is outside 1..4")
    assert check_against_model(TrainConfig(block_size=512), context=256,
                               n_layers=4)[0].startswith("--block-size 512 is above")
