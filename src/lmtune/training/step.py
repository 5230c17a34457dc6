"""One optimizer step: the forward and backward passes of its micro-batches, clipping, the
finiteness check and the update. The loop (loop.py) and the dry run (dryrun.py) both call
`train_step`, so a dry run times exactly what training runs: the same autocast, the same
loss, the same clipping and optimizer.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from lmtune.training import optim


@dataclass
class StepResult:
    loss: torch.Tensor  # this rank's summed token loss, 0-dim on the device: no host sync
    n_targets: int      # tokens the loss counts, over all ranks
    n_tokens: int       # real (non-padding) tokens, over all ranks
    grad_norm: float    # before clipping; the step's one host sync
    skipped: bool       # the gradient was not finite, so the weights were not updated
    # The task's statistics (tasks/base.py, loss_and_stats), summed over this rank's targets:
    # 0-dim tensors on the device, like the loss
    stats: dict = field(default_factory=dict)


def loss_and_stats(task, model, batch, device) -> tuple[torch.Tensor, dict]:
    """The batch's summed loss, and the sums of the statistics the task reports in training
    log records (none for a task without `loss_and_stats`)."""
    if hasattr(task, "loss_and_stats"):
        return task.loss_and_stats(model, batch, device)
    return task.loss_sum(model, batch, device), {}


def train_step(setup, micro: list, step: int | None = None) -> StepResult:
    """`setup` is a training.setup.Setup; `micro` the step's micro-batches on this rank;
    `step` the steps done before this one (None in the dry run: a step past any warmup)."""
    model, accelerator, world = setup.model, setup.accelerator, setup.world
    device = accelerator.device
    n_targets, n_tokens = world.step_counts(micro)  # over all ranks
    n_targets = max(1, n_targets)
    # DDP and FSDP average the ranks' gradients, so each rank divides by its share of the
    # step's target tokens: the update is the sum over all of them / n_targets.
    share = n_targets / world.size
    step_loss = torch.zeros((), device=device)
    step_stats: dict = {}
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        with nullcontext() if last else world.no_sync(model, accelerator):
            # The loss runs under autocast too: accelerate covers only the model's forward,
            # and the chunked LM head (fast/chunked_ce.py) runs outside it, where fp32
            # matmuls made a small-model step 1.4x slower.
            with accelerator.autocast():
                loss, stats = loss_and_stats(setup.task, model, batch, device)
                loss = loss / share
            accelerator.backward(loss)
        step_loss += loss.detach()
        for name, value in stats.items():
            step_stats[name] = step_stats.get(name, 0) + value.detach()
    setup.warmup.hold(step)  # --warmup-embeddings: only the embedding updates at first
    setup.unread.drop(micro)  # new vocabulary rows the step did not read keep their start
    # One host sync per step: a non-finite gradient must skip the update, never reach the
    # weights (and so never a checkpoint).
    grad_norm = optim.clip_gradients(accelerator, setup.params,
                                     setup.cfg.grad_clip or float("inf"), sharded=world.fsdp,
                                     optimizer=setup.optimizer)
    skipped = not math.isfinite(grad_norm)
    if not skipped:
        setup.optimizer.step()
    optim.unfold_clip(setup.optimizer)
    setup.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=step_loss * share, n_targets=n_targets, n_tokens=n_tokens,
                      grad_norm=grad_norm, skipped=skipped, stats=step_stats)
