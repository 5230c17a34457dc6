"""The step plan: what the user left unset, chosen from the data and the model.

The rule that matters most is tokens per optimizer step. A fixed 8 x 1024 tokens per step
would give a few hundred short jokes one optimizer step per epoch, and nothing is learned.
So the step is sized from the corpus: about TARGET_STEPS_PER_EPOCH steps per epoch, within
[MIN, MAX] tokens per step, and blocks no longer than the step (short blocks are also cheaper
per token: attention cost grows with the block length). The constants, and why they are what
they are, live in config/defaults.py with every other default.
"""

from __future__ import annotations

import dataclasses
import math

from lmtune.config.defaults import (CLASSIFY_BATCH, CLASSIFY_MAX_LENGTH, DEFAULT_LR,
                                    EVALS_PER_RUN, FREEZE_SHARE, MAX_BLOCK, MAX_TOKENS_PER_STEP,
                                    MAX_WARMUP, MIN_AUTO_BLOCK, SAVE_MINUTES, MIN_TOKENS_PER_STEP,
                                    PREFERENCE_BATCH, PREFERENCE_BETA, PREFERENCE_LR,
                                    PREFERENCE_MAX_LENGTH, SIMPO_GAMMA, TARGET_STEPS_PER_EPOCH,
                                    WARMUP_SHARE)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def tokens_per_step(n_tokens: int) -> int:
    want = _pow2_floor(n_tokens / TARGET_STEPS_PER_EPOCH)
    return min(MAX_TOKENS_PER_STEP, max(MIN_TOKENS_PER_STEP, want))


@dataclasses.dataclass
class Plan:
    block_size: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    tokens_per_step: int


def auto_block_size(n_train_tokens: int, context: int, batch_size: int | None = None) -> int:
    """The block size `train` picks when --block-size is not given (`data inspect` shows the
    same): a step's tokens in one block per batch row, within [MIN_AUTO_BLOCK, the context]."""
    cap = min(MAX_BLOCK, context)  # --block-size itself was checked against the context
    target = tokens_per_step(n_train_tokens)
    return min(cap, max(MIN_AUTO_BLOCK, target // (batch_size or 1)))


def plan_run(cfg, *, n_train_tokens: int, n_blocks_for, context: int, n_layers: int | None,
             world: int = 1):
    """Fill every `None` of `cfg` that depends on the data; return (cfg, Plan).

    `n_blocks_for(block_size)` counts the training blocks (rows) at a block size. Under
    `world` processes a step reads batch_size x grad_accum x world blocks; a batch size chosen
    here is the one-process choice split over the processes, so more devices train the same
    steps faster (an explicit --batch-size is per device)."""
    target = tokens_per_step(n_train_tokens)
    block = cfg.block_size or auto_block_size(n_train_tokens, context, cfg.batch_size)
    batch = cfg.batch_size or max(1, target // block // world)
    n_blocks = n_blocks_for(block)
    micro_per_epoch = math.ceil(n_blocks / (batch * world))
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    cfg = fill_schedule(cfg, total, n_layers, block_size=block, batch_size=batch)
    return cfg, Plan(block_size=block, batch_size=batch, steps_per_epoch=steps_per_epoch,
                     total_steps=total,
                     tokens_per_step=block * batch * cfg.grad_accum * world)


def plan_classify(cfg, *, lengths, context: int, n_layers: int | None, world: int = 1):
    """The same for --task classify, where a row is one text (never packed): texts are cut at
    `block_size` tokens (default: CLASSIFY_MAX_LENGTH or the model's context; the cut applies
    to predictions too, so it is not the longest training text) and a batch holds about
    n / TARGET_STEPS_PER_EPOCH texts, within CLASSIFY_BATCH and MAX_TOKENS_PER_STEP, and at
    least MIN_TOKENS_PER_STEP tokens of text, as a language-model step has: with four short
    texts a step (80 tokens) the step's fixed costs made a SmolLM2 LoRA run train 69 tokens/s
    against 92 for language modelling on the same CPU; with twelve, 104."""
    max_length = cfg.block_size or min(CLASSIFY_MAX_LENGTH, context)
    # Batches are padded to their longest text, so the data, not the cut, sizes a step.
    by_tokens = max(1, MAX_TOKENS_PER_STEP // min(max_length, int(max(lengths))))
    least, most = CLASSIFY_BATCH
    mean = sum(min(n, max_length) for n in lengths) / max(1, len(lengths))
    least = min(most, max(least, math.ceil(MIN_TOKENS_PER_STEP / max(1.0, mean))))
    batch = cfg.batch_size or max(1, min(len(lengths), by_tokens, max(least, min(
        most, _pow2_floor(len(lengths) / TARGET_STEPS_PER_EPOCH)))) // world)
    steps_per_epoch = max(1, math.ceil(math.ceil(len(lengths) / (batch * world))
                                       / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    cfg = fill_schedule(dataclasses.replace(cfg, sample_every=0), total, n_layers,
                        block_size=max_length, batch_size=batch)
    return cfg, Plan(block_size=max_length, batch_size=batch, steps_per_epoch=steps_per_epoch,
                     total_steps=total, tokens_per_step=min(max_length, int(max(lengths)))
                     * batch * cfg.grad_accum * world)


def plan_preference(cfg, *, lengths, context: int, n_layers: int | None, world: int = 1):
    """The same for --task preference, where a row is a pair: its prompt with the chosen and
    with the rejected answer, both in the same forward pass. Each is cut at `block_size`
    tokens (default: PREFERENCE_MAX_LENGTH or the model's context); a batch holds about
    n / TARGET_STEPS_PER_EPOCH pairs within PREFERENCE_BATCH and MAX_TOKENS_PER_STEP, and at
    least MIN_TOKENS_PER_STEP tokens, as for classification. `lengths` is each pair's longer
    sequence. Fills the loss (dpo), its beta and SimPO's gamma too."""
    max_length = cfg.block_size or min(PREFERENCE_MAX_LENGTH, context)
    longest = min(max_length, int(max(lengths)))
    by_tokens = max(1, MAX_TOKENS_PER_STEP // (2 * longest))
    least, most = PREFERENCE_BATCH
    mean = sum(min(n, max_length) for n in lengths) / max(1, len(lengths))
    least = min(most, max(least, math.ceil(MIN_TOKENS_PER_STEP / max(1.0, 2 * mean))))
    batch = cfg.batch_size or max(1, min(len(lengths), by_tokens, max(least, min(
        most, _pow2_floor(len(lengths) / TARGET_STEPS_PER_EPOCH)))) // world)
    steps_per_epoch = max(1, math.ceil(math.ceil(len(lengths) / (batch * world))
                                       / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    loss = cfg.loss or "dpo"
    cfg = fill_schedule(dataclasses.replace(
        cfg, loss=loss, beta=PREFERENCE_BETA[loss] if cfg.beta is None else cfg.beta,
        gamma=(SIMPO_GAMMA if cfg.gamma is None else cfg.gamma) if loss == "simpo" else None),
        total, n_layers, block_size=max_length, batch_size=batch)
    return cfg, Plan(block_size=max_length, batch_size=batch, steps_per_epoch=steps_per_epoch,
                     total_steps=total, tokens_per_step=2 * longest * batch * cfg.grad_accum
                     * world)


def fill_schedule(cfg, total: int, n_layers: int | None, **updates):
    """The defaults every task shares once the step count is known: learning rate, warmup,
    evaluation, checkpoint and sample intervals, freeze depth."""
    if cfg.lr is None:
        updates["lr"] = (PREFERENCE_LR if cfg.task == "preference" else DEFAULT_LR)[cfg.method]
    if cfg.warmup_steps is None:
        updates["warmup_steps"] = min(MAX_WARMUP, math.ceil(WARMUP_SHARE * total))
    if cfg.eval_every is None:
        updates["eval_every"] = max(1, math.ceil(total / EVALS_PER_RUN))
    every = updates.get("eval_every", cfg.eval_every)
    if cfg.save_minutes is None:
        updates["save_minutes"] = SAVE_MINUTES if cfg.save_every is None else 0.0
    if cfg.save_every is None:
        updates["save_every"] = every
    if cfg.sample_every is None:
        updates["sample_every"] = every
    if cfg.method == "freeze" and cfg.train_layers is None:
        # check_against_model refused freeze for a model whose block count is unknown
        updates["train_layers"] = max(1, n_layers // FREEZE_SHARE)
    return dataclasses.replace(cfg, **updates)
