"""The three preference losses, on each pair's summed answer log-probabilities, as TRL computes
them (huggingface/trl, read at commit f2cd577):

  dpo    -logsigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))
         DPOTrainer, loss_type="sigmoid"; rewards beta * (logp - ref)
  orpo   -avg_c - beta * logsigmoid(log_odds),
         log_odds = (avg_c - avg_r) - (log(1 - exp(avg_c)) - log(1 - exp(avg_r)))
         ORPOTrainer's odds_ratio_loss, beta being the paper's lambda; rewards beta * avg
  simpo  -logsigmoid(beta * (avg_c - avg_r) - gamma)
         CPOTrainer, loss_type="simpo" with cpo_alpha=0; rewards beta * avg

`logp` sums an answer's token log-probabilities (its end token included), `avg` is that sum
over the answer's token count. One difference from TRL, on purpose: ORPO's NLL term here is
each chosen answer's mean token loss, and the loss a sum over pairs that the loop divides by
the step's pairs. TRL averages over every token of the batch, prompts included, so its value
depends on how pairs are batched and accumulated; this one does not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

STATS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy")
LN2 = math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation on either side of -ln 2 (TRL's)."""
    return torch.where(x < -LN2, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def pair_losses(loss: str, beta: float, gamma: float | None, sums: torch.Tensor,
                counts: torch.Tensor, reference: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen reward, rejected reward), each (B,), from the (2B,) summed
    log-probabilities and answer token counts of a batch (chosen rows first) and, for dpo,
    the reference model's (2B,) sums."""
    sums = sums.float()
    if loss == "dpo":
        chosen, rejected = (sums - reference.to(sums)).chunk(2)
        rewards_c, rewards_r = beta * chosen, beta * rejected
        return -F.logsigmoid(rewards_c - rewards_r), rewards_c, rewards_r
    avg_c, avg_r = (sums / counts.clamp_min(1)).chunk(2)
    rewards_c, rewards_r = beta * avg_c, beta * avg_r
    if loss == "simpo":
        return -F.logsigmoid(rewards_c - rewards_r - gamma), rewards_c, rewards_r
    if loss == "orpo":
        # An average log-probability of exactly 0 (probability 1) has infinite odds; the
        # clamp keeps the term finite, at a value no fp32 sum of real log-probabilities has.
        avg_c_, avg_r_ = avg_c.clamp_max(-1e-6), avg_r.clamp_max(-1e-6)
        log_odds = (avg_c_ - avg_r_) - (log1mexp(avg_c_) - log1mexp(avg_r_))
        return -avg_c - beta * F.logsigmoid(log_odds), rewards_c, rewards_r
    raise ValueError(f"unknown preference loss {loss!r}")


def batch_stats(rewards_c: torch.Tensor, rewards_r: torch.Tensor, valid: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """Sums over the batch's real pairs of what metrics.jsonl reports as means per pair."""
    margin = rewards_c - rewards_r
    values = (rewards_c, rewards_r, margin, (margin > 0).float())
    return {name: (v.detach() * valid).sum() for name, v in zip(STATS, values)}
