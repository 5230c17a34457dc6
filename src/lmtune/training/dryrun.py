"""`lmtune train --dry-run`: the data report, the plan, and the time an epoch will take here.

`train()` calls `dry_run` once everything is set up exactly as for training (model, method,
precision, optimizer, batches, speed-ups) and before the run folder exists; a few real
optimizer steps (`train_step`, the loop's own) are timed and nothing is written.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from itertools import islice

import torch

from lmtune.analysis.data_report import DataReport, build_report
from lmtune.analysis.pair_report import PairReport, read_and_describe_pairs
from lmtune.progress import iterate
from lmtune.training import step as step_module
from lmtune.training.methods import count_parameters

BURST_STEPS = 8        # timed steps, after one untimed warm-up step (allocations, kernels)
MIN_STEPS = 3          # at least these, for a median and a spread worth the name
BURST_SECONDS = 60.0   # past MIN_STEPS, stop timing once the timed steps took this long
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of forward + backward


@dataclass
class DryRunResult:
    data: DataReport | PairReport | None  # pairs for --task preference; None for classify
    plan: dict
    device: str
    precision: str
    measured_steps: int
    seconds_per_step: float
    seconds_per_step_range: tuple[float, float]  # the fastest and slowest timed step
    seconds_per_epoch: float
    seconds_training: float     # all steps of the run
    seconds_evaluating: float   # all validation passes, estimated from the step time

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(setup, steps: int = BURST_STEPS, budget: float = BURST_SECONDS) -> list[float]:
    """Seconds of each timed optimizer step: `train_step`, the loop's own, on the run's own
    batches (wrapping into the next epoch on a tiny dataset). At least MIN_STEPS are timed
    (one step alone said nothing of the spread: three dry runs minutes apart on a busy
    machine estimated 14 and 19 minutes), then up to `steps` within `budget` seconds."""
    plan, grad_accum = setup.plan, setup.cfg.grad_accum
    device = setup.accelerator.device
    setup.model.train()
    epoch, batches = 0, setup.data.train_set.batches(0, plan.batch_size)
    times: list[float] = []
    progress = iterate(range(steps + 1), "timing training steps", steps + 1, "step")
    for i in progress:
        micro = list(islice(batches, grad_accum))
        if len(micro) < grad_accum:
            epoch += 1
            batches = setup.data.train_set.batches(epoch, plan.batch_size)
            micro += list(islice(batches, grad_accum - len(micro)))
        _sync(device)
        t0 = time.perf_counter()
        step_module.train_step(setup, micro)  # looked up here, as the loop does
        _sync(device)
        if i:  # the first step pays for allocations and kernel selection
            times.append(time.perf_counter() - t0)
            if len(times) >= min(steps, MIN_STEPS) and sum(times) > budget:
                progress.close()
                break
    return times


def dry_run(setup) -> DryRunResult:
    """Called by train() once everything is set up as for training, inside the same
    speed-ups; the model is trained a few steps in memory and thrown away. The data report
    covers language-model data (--task generate) and preference pairs (the pair report)."""
    cfg, plan, val_set = setup.cfg, setup.plan, setup.data.val_set
    _, total = count_parameters(setup.unwrapped)  # the model's own, as data inspect counts
    report = None
    if setup.task.name == "generate":
        report = build_report(cfg, setup.tokenizer, model=cfg.model,
                              block_size=plan.block_size, parameters=total)
    elif setup.task.name == "preference":
        report, _, _ = read_and_describe_pairs(cfg, setup.tokenizer, model=cfg.model,
                                               block_size=plan.block_size,
                                               context=plan.block_size, parameters=total)
    times = time_steps(setup)
    per_step = statistics.median(times)
    val_docs = getattr(val_set, "docs", None)
    n_evals = math.ceil(plan.total_steps / cfg.eval_every) if val_set is not None else 0
    val_steps = val_docs.n_tokens / plan.tokens_per_step if val_docs is not None else 0
    return DryRunResult(
        data=report, plan={**dataclasses.asdict(plan), "task": cfg.task, "lr": cfg.lr,
                           "method": cfg.method,
                           "grad_accum": cfg.grad_accum, "epochs": cfg.epochs,
                           "eval_every": cfg.eval_every},
        device=str(setup.accelerator.device), precision=setup.precision,
        measured_steps=len(times), seconds_per_step=per_step,
        seconds_per_step_range=(min(times), max(times)),
        seconds_per_epoch=per_step * plan.steps_per_epoch,
        seconds_training=per_step * plan.total_steps,
        seconds_evaluating=n_evals * val_steps * per_step * FORWARD_SHARE)
