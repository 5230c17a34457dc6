"""Choosing what the user left unset, from the data and the model.

The rule that matters most is tokens per optimizer step. A fixed 8 x 1024 tokens per step
would give a few hundred short jokes one optimizer step per epoch, and nothing is learned.
So the step is sized from the corpus: about `TARGET_STEPS_PER_EPOCH` steps per epoch, within
[MIN, MAX] tokens per step, and blocks no longer than the step (short blocks are also cheaper
per token: attention cost grows with the block length).
"""

from __future__ import annotations

import dataclasses
import math

from lmtune.errors import UserError

TARGET_STEPS_PER_EPOCH = 48
MIN_TOKENS_PER_STEP = 256
MAX_TOKENS_PER_STEP = 8192
MAX_BLOCK = 1024
CLASSIFY_MAX_LENGTH = 512  # texts to classify are mostly short; attention cost grows as T^2
DEFAULT_LR = {"lora": 1e-3, "full": 5e-5, "freeze": 1e-4}


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


def plan_run(cfg, *, n_train_tokens: int, n_blocks_for, context: int, n_layers: int,
             world: int = 1):
    """Fill every `None` of `cfg` that depends on the data; return (cfg, Plan).

    `n_blocks_for(block_size)` counts the training blocks (rows) at a block size. Under
    `world` processes a step reads batch_size x grad_accum x world blocks; a batch size chosen
    here is the one-process choice split over the processes, so more devices train the same
    steps faster (an explicit --batch-size is per device)."""
    cap = min(MAX_BLOCK, context)
    if cfg.block_size is not None and cfg.block_size > context:
        raise UserError(f"--block-size {cfg.block_size} is above the model's context of "
                        f"{context} tokens", hint=f"use --block-size {context} or less")
    if cfg.block_size is not None and cfg.block_size < 2:
        raise UserError("--block-size must be at least 2")
    target = tokens_per_step(n_train_tokens)
    block = cfg.block_size or min(cap, max(64, target // (cfg.batch_size or 1)))
    batch = cfg.batch_size or max(1, target // block // world)
    n_blocks = n_blocks_for(block)
    micro_per_epoch = math.ceil(n_blocks / (batch * world))
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    cfg = fill_schedule(cfg, total, n_layers, block_size=block, batch_size=batch)
    return cfg, Plan(block_size=block, batch_size=batch, steps_per_epoch=steps_per_epoch,
                     total_steps=total,
                     tokens_per_step=block * batch * cfg.grad_accum * world)


def plan_classify(cfg, *, lengths, context: int, n_layers: int, world: int = 1):
    """The same for --task classify, where a row is one text (never packed): texts are cut at
    `block_size` tokens (default: CLASSIFY_MAX_LENGTH or the model's context; the cut applies
    to predictions too, so it is not the longest training text) and a batch holds about
    n / TARGET_STEPS_PER_EPOCH texts, within [4, 32] and MAX_TOKENS_PER_STEP."""
    if cfg.block_size is not None and cfg.block_size > context:
        raise UserError(f"--block-size {cfg.block_size} is above the model's context of "
                        f"{context} tokens", hint=f"use --block-size {context} or less")
    if cfg.block_size is not None and cfg.block_size < 2:
        raise UserError("--block-size must be at least 2 (the start token and one of the text)")
    max_length = cfg.block_size or min(CLASSIFY_MAX_LENGTH, context)
    # Batches are padded to their longest text, so the data, not the cut, sizes a step.
    by_tokens = max(1, MAX_TOKENS_PER_STEP // min(max_length, int(max(lengths))))
    batch = cfg.batch_size or max(1, min(by_tokens, max(4, min(32, _pow2_floor(
        len(lengths) / TARGET_STEPS_PER_EPOCH)))) // world)
    steps_per_epoch = max(1, math.ceil(math.ceil(len(lengths) / (batch * world))
                                       / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    cfg = fill_schedule(dataclasses.replace(cfg, sample_every=0), total, n_layers,
                        block_size=max_length, batch_size=batch)
    return cfg, Plan(block_size=max_length, batch_size=batch, steps_per_epoch=steps_per_epoch,
                     total_steps=total, tokens_per_step=min(max_length, int(max(lengths)))
                     * batch * cfg.grad_accum * world)


def fill_schedule(cfg, total: int, n_layers: int, **updates):
    """The defaults every task shares once the step count is known: learning rate, warmup,
    evaluation, checkpoint and sample intervals, freeze depth."""
    if cfg.lr is None:
        updates["lr"] = DEFAULT_LR[cfg.method]
    if cfg.warmup_steps is None:
        updates["warmup_steps"] = min(100, math.ceil(0.05 * total))
    if cfg.eval_every is None:
        updates["eval_every"] = max(1, math.ceil(total / 5))
    every = updates.get("eval_every", cfg.eval_every)
    if cfg.save_every is None:
        updates["save_every"] = every
    if cfg.sample_every is None:
        updates["sample_every"] = every
    if cfg.method == "freeze" and cfg.train_layers is None:
        updates["train_layers"] = max(1, n_layers // 4)
    return dataclasses.replace(cfg, **updates)


def check_numbers(cfg) -> list[str]:
    """Every numeric problem at once, before anything loads."""
    problems = []
    positive = ["grad_accum", "lora_r", "lora_alpha", "log_every", "sample_max_new_tokens",
                "devices"]
    for name in positive + ["max_steps", "batch_size", "eval_every", "save_every", "patience",
                            "train_layers"]:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if cfg.epochs <= 0 and cfg.max_steps is None:
        problems.append(f"--epochs must be above 0 (got {cfg.epochs})")
    if not 0 <= cfg.val_split < 1:
        problems.append(f"--val-split must be in [0, 1) (got {cfg.val_split})")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"--lora-dropout must be in [0, 1) (got {cfg.lora_dropout})")
    if cfg.lr is not None and cfg.lr <= 0:
        problems.append(f"--lr must be above 0 (got {cfg.lr})")
    for name in ("weight_decay", "grad_clip", "warmup_steps", "keep", "sample_every"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            problems.append(f"--{name.replace('_', '-')} must not be negative (got {value})")
    if cfg.train_layers is not None and cfg.method != "freeze":
        problems.append("--train-layers only applies to --method freeze")
    if bool(cfg.prompt_template) != bool(cfg.completion_template):
        problems.append("--prompt-template and --completion-template go together")
    if cfg.template and cfg.prompt_template:
        problems.append("use either --template or --prompt-template/--completion-template")
    return problems
