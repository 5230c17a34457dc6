"""Validation loss with the same document-isolated packing as training."""

from __future__ import annotations

import math

import torch

from lmtune import distributed
from lmtune.loss import loss_sum


@torch.no_grad()
def mean_loss(model, dataset, batch_size: int, device, autocast=None) -> tuple[float, int]:
    """(mean token loss, target tokens) over every block of `dataset`, in order. Under several
    processes `dataset` is this rank's share (distributed.World.shard) and the result is
    the whole set's."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    # Under several processes every rank runs every forward, even of a batch with nothing to
    # count: FSDP gathers each block's weights in a collective.
    every = distributed.active()
    for batch in dataset.batches(0, batch_size):
        if batch.n_target_tokens == 0 and not every:
            continue
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            total += loss_sum(model, batch, device).double()
        count += batch.n_target_tokens
    model.train(was_training)
    if every:
        sums = distributed.all_sum(torch.stack([total, torch.tensor(float(count), dtype=torch
                                                                   .float64, device=device)]))
        total, count = sums[0], int(sums[1].item())
    return (total.item() / count if count else float("nan")), count


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")
