"""The step plan: what lmtune chooses when the user leaves sizes unset."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lmtune.config import TrainConfig
from lmtune.config.defaults import (MAX_BLOCK, MAX_TOKENS_PER_STEP, MIN_TOKENS_PER_STEP,
                                    TARGET_STEPS_PER_EPOCH)
from lmtune.tasks.plan import (fill_schedule, plan_classify, plan_preference, plan_run,
                               tokens_per_step)


def _plan(cfg=None, *, tokens: int, doc_tokens: int = 30, context: int = 2048, world: int = 1):
    """The plan for `tokens` of packed training text in documents of `doc_tokens`."""
    cfg = cfg or TrainConfig(epochs=1)
    return plan_run(cfg, n_train_tokens=tokens, n_blocks_for=lambda b: math.ceil(tokens / b),
                    context=context, n_layers=12, world=world)


def test_a_few_hundred_short_examples_get_dozens_of_steps_per_epoch():
    _, plan = _plan(tokens=600 * 30)  # 600 jokes of 30 tokens
    assert TARGET_STEPS_PER_EPOCH / 2 <= plan.steps_per_epoch <= 2 * TARGET_STEPS_PER_EPOCH
    assert plan.tokens_per_step == plan.block_size * plan.batch_size


@pytest.mark.parametrize("tokens", [10, 1000, 10**5, 10**9])
def test_tokens_per_step_stay_within_their_bounds_and_are_powers_of_two(tokens):
    n = tokens_per_step(tokens)
    assert MIN_TOKENS_PER_STEP <= n <= MAX_TOKENS_PER_STEP and n & (n - 1) == 0


def test_blocks_are_capped_by_the_longest_automatic_block_and_the_context():
    _, big = _plan(TrainConfig(batch_size=1), tokens=10**9)
    assert big.block_size == MAX_BLOCK
    _, short = _plan(TrainConfig(batch_size=1), tokens=10**9, context=256)
    assert short.block_size == 256


def test_given_sizes_are_kept_and_max_steps_overrides_epochs():
    cfg, plan = _plan(TrainConfig(block_size=100, batch_size=3, max_steps=7, epochs=50),
                      tokens=10**5)
    assert (plan.block_size, plan.batch_size, plan.total_steps) == (100, 3, 7)
    assert (cfg.block_size, cfg.batch_size) == (100, 3)  # the plan is saved in the config


def test_more_processes_split_the_chosen_batch_and_keep_the_global_step():
    _, one = _plan(tokens=10**6)
    _, two = _plan(tokens=10**6, world=2)
    assert two.batch_size * 2 == one.batch_size
    assert two.tokens_per_step == one.tokens_per_step
    assert two.steps_per_epoch == one.steps_per_epoch


def test_accumulation_makes_fewer_larger_steps():
    _, plain = _plan(tokens=10**6)
    _, accum = _plan(TrainConfig(epochs=1, grad_accum=4), tokens=10**6)
    assert accum.steps_per_epoch == math.ceil(plain.steps_per_epoch / 4)
    assert accum.tokens_per_step == 4 * plain.tokens_per_step


def test_classification_batches_hold_a_bounded_number_of_texts_cut_at_the_limit():
    cfg, plan = plan_classify(TrainConfig(), lengths=[20] * 10_000, context=2048, n_layers=12)
    assert 4 <= plan.batch_size <= 32 and plan.block_size == 512
    assert cfg.sample_every == 0  # a classifier writes no samples
    _, tiny = plan_classify(TrainConfig(), lengths=[20] * 10, context=2048, n_layers=12)
    assert tiny.batch_size == 10  # all of them: 256 tokens of text a step need 13
    _, short = plan_classify(TrainConfig(), lengths=[25] * 283, context=2048, n_layers=12)
    assert short.batch_size == 11  # not 4: a step carries 256 tokens of text, as in LM


def test_preference_batches_hold_pairs_and_fill_the_loss_settings():
    pref = TrainConfig(task="preference")
    cfg, plan = plan_preference(pref, lengths=[40] * 300, context=2048, n_layers=12)
    assert plan.batch_size == 4 and plan.block_size == 1024  # 300 pairs: 75 steps per epoch
    assert plan.tokens_per_step == 2 * 40 * 4  # both answers of each pair
    assert (cfg.loss, cfg.beta, cfg.gamma, cfg.lr) == ("dpo", 0.1, None, 1e-4)
    _, long = plan_preference(pref, lengths=[900] * 10_000, context=512, n_layers=12)
    assert long.block_size == 512 and long.batch_size == 8  # at most 8 pairs (TRL's batch)
    cfg, _ = plan_preference(dataclasses.replace(pref, loss="simpo", method="full"),
                             lengths=[40] * 10, context=2048, n_layers=12)
    assert (cfg.loss, cfg.beta, cfg.gamma, cfg.lr) == ("simpo", 0.1, 0.5, 5e-6)


def test_schedule_defaults_follow_the_run_length():
    cfg = fill_schedule(TrainConfig(method="freeze"), 500, n_layers=12)
    assert cfg.warmup_steps == 25 and cfg.eval_every == 100
    assert cfg.save_every == cfg.sample_every == cfg.eval_every and cfg.train_layers == 3
    given = fill_schedule(dataclasses.replace(TrainConfig(), warmup_steps=0, eval_every=7,
                                              save_every=3, sample_every=0, lr=0.5), 500, 12)
    assert (given.warmup_steps, given.eval_every, given.save_every, given.sample_every,
            given.lr) == (0, 7, 3, 0, 0.5)
