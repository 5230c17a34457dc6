"""The new output rows of an extended model, calibrated to how often their pieces occur.

An averaged row (extend.py: the mean of the rows a piece replaces) is a good input, but as an
output row it scores the piece like its parts: "。。。" and "。。" get exactly the row of "。",
so a model that expects a full stop spends three times its probability on full stops, and
rare pieces score like their common parts. On SmolLM2 + 20,000 pieces of Chinese reviews the
samples filled with punctuation runs (benchmarks/RESULTS.md).

The fix needs a per-piece bias, which a bias-free head lacks; but the final hidden states
of the models we train share one dominant direction d (SmolLM2 on Chinese text: mean norm
56, of which 52 along d, varying by 14% over positions), so moving a row by b/mu along d
(mu the mean of h . d) adds close to b to that piece's logit everywhere. The bias is
b = log(frequency of the piece in the corpus) - log(the model's mean predicted probability
of it on a sample of the corpus), clipped, in ROUNDS passes: after it, each new piece's
average predicted probability on the corpus is its frequency there. On that model it took
held-out bits per character before any training from 7.16 to 6.55. In a tied model the
input rows move too, by at most TIED_MOVE of their norm (SmolLM2: MAX_SHIFT / mu, under 0.1
of it). A model whose hidden states have no such direction (their spread along it over RATIO
of its mean) keeps the averaged rows, and the extension says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ROUNDS = 2             # the second pass corrects what the first shift changed in the others
# Positions the mean predicted probabilities are taken over, at most: 8,192 took 262 s of one
# busy core for SmolLM2 (two passes), and gave the same held-out gain (6.55 bits per
# character) as a first try over about 4,800.
SAMPLE_TOKENS = 4096
FLOP_BUDGET = 2.5e12   # ~30 s of a quiet 2-core CPU: a larger model gets fewer positions
MAX_SHIFT = 10.0       # nats: the largest logit change, either way
TIED_MOVE = 0.25       # a tied row (also the piece's input) moves by at most this of its norm
RATIO = 0.5            # the spread of h . d over its mean beyond which d is no bias
BATCH, WIDTH = 8, 128  # rows and tokens of a pass: 8 x 128 x 69k logits are 280 MB


@dataclass
class Calibration:
    done: bool
    why: str                  # when not done
    mean_abs_shift: float = 0.0  # nats, over the new pieces
    spread: float = 0.0          # std / mean of h . d over the sample's positions


def calibrate_rows(model, sample: list[list[int]], counts: torch.Tensor, total: int,
                   first: int, start: int | None) -> Calibration:
    """Shift rows first.. of the output head (the embedding when tied) of `model` so each new
    piece's mean predicted probability over `sample` (token id lists of corpus texts, each
    read after `start`) is its frequency in the corpus: `counts` (one entry per new piece)
    over `total`, the corpus's tokens."""
    head = model.get_output_embeddings()
    if head is None:
        return Calibration(False, "the model has no output head to calibrate")
    if not sample:
        return Calibration(False, "the corpus holds no text to calibrate on")
    rows = head.weight
    if total <= 0 or counts.sum() <= 0:
        return Calibration(False, "the corpus holds none of the new pieces")
    freq = (counts.double() / total).clamp_min(0.5 / total)  # half a count for the unseen
    tied = rows is model.get_input_embeddings().weight
    was_training = model.training
    model.eval()
    try:
        mean_p, direction, mu, spread = _mean_probabilities(model, sample, first, start)
        if not mu > 0 or spread > RATIO:
            return Calibration(False, f"the model's final hidden states share no dominant "
                                      f"direction (spread {spread:.2f})", spread=spread)
        # How far each row moves along the direction, in row units: MAX_SHIFT nats at most,
        # and a tied row (the piece's input too) at most TIED_MOVE of its own norm.
        limit = torch.full((len(counts),), MAX_SHIFT / mu, dtype=torch.float64)
        if tied:
            norms = rows.detach()[first:].double().norm(dim=1).cpu()
            limit = torch.minimum(limit, TIED_MOVE * norms)
        moved = torch.zeros_like(limit)
        for k in range(ROUNDS):  # the direction and mu of the first pass throughout
            if k:
                mean_p = _mean_probabilities(model, sample, first, start)[0]
            want = moved + (freq.log() - mean_p.clamp_min(1e-12).log()) / mu
            want = torch.maximum(torch.minimum(want, limit), -limit)
            rows.data[first:] += ((want - moved)[:, None] * direction[None, :]).to(rows)
            moved = want
    finally:
        model.train(was_training)
    return Calibration(True, "", float(moved.abs().mean() * mu), spread)


@torch.no_grad()
def _mean_probabilities(model, sample: list[list[int]], first: int, start: int | None):
    """(mean predicted probability of each new piece over the sample's positions, the unit
    mean of the final hidden states, the mean of h . d, its spread over its mean)."""
    device = next(model.parameters()).device
    prob_sum, h_sum, n = None, None, 0
    hidden_rows = []
    for i in range(0, len(sample), BATCH):
        ids, mask = _batch(sample[i:i + BATCH], start, device)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        keep = _predicting(mask)
        h = out.hidden_states[-1][keep].double()
        p = out.logits[keep].float().softmax(-1)[:, first:].double()
        prob_sum = p.sum(0) if prob_sum is None else prob_sum + p.sum(0)
        h_sum = h.sum(0) if h_sum is None else h_sum + h.sum(0)
        hidden_rows.append(h)
        n += h.shape[0]
    mean_h = h_sum / n
    direction = mean_h / mean_h.norm()
    proj = torch.cat(hidden_rows) @ direction
    mu = float(proj.mean())
    spread = float(proj.std() / mu) if mu > 0 else math.inf
    return (prob_sum / n).cpu(), direction.cpu(), mu, spread


def _predicting(mask: torch.Tensor) -> torch.Tensor:
    """The positions whose next token is in the text: every real one but each row's last."""
    keep = mask.bool().clone()
    keep[torch.arange(len(mask), device=mask.device), mask.sum(1) - 1] = False
    return keep


def _batch(rows: list[list[int]], start: int | None, device):
    rows = [([start] if start is not None else []) + r for r in rows]
    rows = [r[:WIDTH] for r in rows if r]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = torch.tensor(r)
        mask[j, :len(r)] = 1
    return ids.to(device), mask.to(device)


def sample_rows(encoded: list[list[int]], n_params: int) -> list[list[int]]:
    """Evenly spaced corpus texts (token ids), about SAMPLE_TOKENS tokens or what
    FLOP_BUDGET allows a model of `n_params` over ROUNDS passes: the whole corpus's mix, not
    its first lines."""
    tokens = int(min(SAMPLE_TOKENS, max(1024, FLOP_BUDGET / (2 * n_params * ROUNDS))))
    nonempty = [e for e in encoded if e]
    if not nonempty:
        return []
    mean_len = sum(min(len(e), WIDTH) for e in nonempty) / len(nonempty)
    want = max(1, min(len(nonempty), int(tokens / max(mean_len, 1))))
    step = len(nonempty) / want
    return [nonempty[int(k * step)] for k in range(want)]
