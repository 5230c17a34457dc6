"""The learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from lmtune.config import TrainConfig


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_from_above_zero(schedule):
    from lmtune.training.optim import lr_schedule

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
