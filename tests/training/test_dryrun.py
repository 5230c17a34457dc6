"""`--dry-run` times the very step that training runs: the same function, under the same
autocast (before the layout change, the dry run called the loss outside autocast and timed
an fp32 step while reporting bf16)."""

from __future__ import annotations

import torch

import lmtune
from lmtune.tasks.generate import LanguageModeling
from lmtune.training import step as step_module


def _spy(monkeypatch) -> dict:
    """Every call of the one train_step, and the autocast each loss ran under."""
    seen = {"steps": 0, "autocast": set()}
    real_step, real_loss = step_module.train_step, LanguageModeling.loss_sum

    def train_step(setup, micro, step=None):
        seen["steps"] += 1
        return real_step(setup, micro, step)

    def loss_sum(self, model, batch, device):
        on = torch.is_autocast_enabled("cpu")
        seen["autocast"].add(torch.get_autocast_dtype("cpu") if on else None)
        return real_loss(self, model, batch, device)

    monkeypatch.setattr(step_module, "train_step", train_step)
    monkeypatch.setattr(LanguageModeling, "loss_sum", loss_sum)
    # The MFU peak is measured with bf16 matmuls, which CPUs without native bf16 emulate
    # for minutes; it is not what this test is about.
    monkeypatch.setattr("lmtune.training.loop.peak_flops", lambda *a: None)
    return seen


def test_dry_run_and_training_run_the_same_step_under_the_same_autocast(
        tiny_gpt2, lines_file, tmp_path, monkeypatch):
    opts = dict(model=str(tiny_gpt2), split_on="\n", block_size=64, device="cpu", seed=0,
                precision="bf16", method="lora", sample_every=0, report=False)
    dry = _spy(monkeypatch)
    result = lmtune.train(lines_file, dry_run=True, **opts)
    assert dry["steps"] == result.measured_steps + 1  # one untimed warm-up step
    assert dry["autocast"] == {torch.bfloat16} and result.precision == "bf16"
    assert not (tmp_path / "run").exists()

    monkeypatch.undo()
    trained = _spy(monkeypatch)
    lmtune.train(lines_file, out=str(tmp_path / "run"), max_steps=2, **opts)
    assert trained["steps"] == 2 and trained["autocast"] == dry["autocast"]
