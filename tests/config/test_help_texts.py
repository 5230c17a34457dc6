"""A help text that describes a default lmtune chooses must say what the code chooses. Each test
runs the code that makes the choice and looks for the chosen value in the help text (the
freeze learning rate and the eval batch size had drifted from their help before)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from lmtune.analysis.evaluate import packing_for
from lmtune.config import EvalConfig, TrainConfig
from lmtune.config.defaults import default_lora_targets
from lmtune.config.train import short_float
from lmtune.tasks.plan import fill_schedule, plan_classify, plan_preference, plan_run


def _help(cls, name: str) -> str:
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata["help"]


@pytest.mark.parametrize("method", ["lora", "full", "freeze"])
def test_learning_rate_help_names_each_methods_default(method):
    lr = fill_schedule(TrainConfig(method=method), 100, n_layers=12).lr
    assert f"{short_float(lr)} for {method}" in _help(TrainConfig, "lr")


@pytest.mark.parametrize("method", ["lora", "full", "freeze"])
def test_learning_rate_help_names_each_methods_preference_default(method):
    lr = fill_schedule(TrainConfig(method=method, task="preference"), 100, n_layers=12).lr
    after = _help(TrainConfig, "lr").split("with --task preference")[1]
    assert f"{short_float(lr)} for {method}" in after


def test_preference_help_gives_each_losss_beta_simpos_gamma_and_the_cut():
    for loss in ("dpo", "orpo", "simpo"):
        cfg, plan = plan_preference(TrainConfig(task="preference", loss=loss), lengths=[10] * 9,
                                    context=100_000, n_layers=12)
        assert f"{cfg.beta:g} for {loss}" in _help(TrainConfig, "beta")
    assert f"(default {cfg.gamma:g})" in _help(TrainConfig, "gamma")
    assert (f"with --task preference, the most tokens kept of each prompt with its answer "
            f"(default: {plan.block_size}, or the model's context") in _help(TrainConfig,
                                                                            "block_size")


def test_warmup_help_gives_its_share_and_its_cap():
    share = fill_schedule(TrainConfig(), 200, 12).warmup_steps / 200
    cap = fill_schedule(TrainConfig(), 1_000_000, 12).warmup_steps
    help = _help(TrainConfig, "warmup_steps")
    assert f"{share:.0%} of the steps" in help and f"at most {cap}" in help


def test_eval_every_help_gives_the_evaluations_per_run():
    total = 1000
    per_run = total // fill_schedule(TrainConfig(), total, 12).eval_every
    assert f"about {per_run} per run" in _help(TrainConfig, "eval_every")


def test_freeze_help_gives_the_share_of_blocks_that_train():
    trained = fill_schedule(TrainConfig(method="freeze"), 100, n_layers=12).train_layers
    assert f"1/{12 // trained} of them" in _help(TrainConfig, "train_layers")


def test_block_size_help_gives_the_longest_automatic_block_and_the_classify_cut():
    cfg = TrainConfig(batch_size=1)
    _, plan = plan_run(cfg, n_train_tokens=10**9, n_blocks_for=lambda b: 10**6,
                       context=100_000, n_layers=12)
    _, cplan = plan_classify(TrainConfig(), lengths=[10] * 100, context=100_000, n_layers=12)
    help = _help(TrainConfig, "block_size")
    assert f"min({plan.block_size}, the model's context)" in help
    assert f"(default: {cplan.block_size}, or the model's context" in help


def test_lora_targets_help_lists_the_default_modules():
    help = _help(TrainConfig, "lora_targets")
    assert " ".join(default_lora_targets("gpt2")) in help
    assert " ".join(default_lora_targets("llama")) in help


def test_eval_batch_help_gives_the_tokens_per_batch_of_a_plain_model():
    config = SimpleNamespace(max_position_embeddings=100_000)
    block, batch, _ = packing_for("not-a-run", config, None, None)
    help = _help(EvalConfig, "batch_size")
    assert f"about {block * batch} tokens per batch" in help
    assert f"min({block}, the model's context)" in _help(EvalConfig, "block_size")
