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


def test_clipping_folded_into_fused_adamw_equals_multiplying_the_gradients(monkeypatch):
    """The clip factor goes to fused AdamW's own pass (grad_scale) instead of a pass over the
    gradients of its own: the update is the multiplied one's within rounding."""
    from accelerate import Accelerator

    from lmtune.training import optim

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn(64, 32) * 3, torch.randn(32) * 3]  # norm far above 1

    def one_step(fold: bool) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = accelerator.prepare(torch.optim.AdamW(params, lr=1e-2, fused=True))
        for p, g in zip(params, grads):
            p.grad = g.clone()
        norm = optim.clip_gradients(accelerator, params, 1.0,
                                    optimizer=opt if fold else None)
        assert norm > 1.0
        opt.step()
        optim.unfold_clip(opt)
        assert not hasattr(opt.optimizer, "grad_scale")
        return [p.detach() for p in params]

    multiplied = one_step(fold=False)
    calls = []
    monkeypatch.setattr(torch, "_foreach_mul_", lambda *a: calls.append(a))
    folded = one_step(fold=True)
    assert calls == []  # no pass over the gradients of its own
    for a, b in zip(multiplied, folded):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)
    assert not torch.equal(folded[0], start[0])
