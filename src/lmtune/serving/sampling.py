"""Choosing the next token for every row of a batch, each row with its own request's settings.

transformers' logits processors take one temperature and one top_p for the whole batch; a
server batches requests that ask for different ones, so the few lines they need are here,
vectorised over rows. Sampling runs on the CPU: the tokens are needed there anyway (stop
strings, streaming), and each request draws from its own seeded generator.
"""

from __future__ import annotations

import torch

# Below this temperature a row is greedy: dividing logits by a temperature near zero overflows
# float32 to inf, and softmax of inf is NaN. At 1e-4 sampling is greedy in effect anyway.
GREEDY_BELOW = 1e-4


def apply_penalties(logits: torch.Tensor, rows) -> None:
    """OpenAI's presence and frequency penalties, in place: subtract
    frequency * count + presence * (count > 0) for every token the row generated."""
    vocab = logits.shape[-1]
    for i, row in enumerate(rows):
        s = row.job.sampling
        if (s.presence_penalty or s.frequency_penalty) and row.tokens:
            counts = torch.bincount(torch.tensor(row.tokens), minlength=vocab)[:vocab].float()
            logits[i] -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).float()


def _top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p, per row."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ahead of each one
    sorted_probs[before >= top_p[:, None]] = 0.0          # the most likely token always stays
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def next_tokens(logits: torch.Tensor, rows) -> list[int]:
    """logits: (B, V) float32 on the CPU, one row per entry of `rows`."""
    apply_penalties(logits, rows)
    chosen = logits.argmax(dim=-1)                                              # (B,)
    temps = torch.tensor([r.job.sampling.temperature for r in rows])
    sampled = (temps >= GREEDY_BELOW).nonzero().flatten().tolist()
    if sampled:
        idx = torch.tensor(sampled)
        probs = torch.softmax(logits[idx] / temps[idx, None], dim=-1)           # (S, V)
        top_p = torch.tensor([rows[i].job.sampling.top_p for i in sampled])
        if (top_p < 1).any():
            probs = _top_p(probs, top_p)
        # Inverse-CDF sampling: one uniform number per row, drawn from the row's request's
        # own generator (a request's rows are contiguous and in choice order). torch.multinomial
        # took 0.8 ms per row on a 49k vocabulary, a fifth of a 16-row decoding step.
        uniforms, start = [], 0
        while start < len(sampled):
            job = rows[sampled[start]].job
            end = start
            while end < len(sampled) and rows[sampled[end]].job is job:
                end += 1
            uniforms.append(torch.rand(end - start, 1, generator=job.generator))
            start = end
        cdf = probs.cumsum(dim=-1)                                              # (S, V)
        # right=True: the first token whose cumulative mass exceeds u, so never a token that
        # top_p removed (its cumulative mass equals its predecessor's).
        draws = torch.searchsorted(cdf, torch.cat(uniforms) * cdf[:, -1:], right=True)
        chosen[idx] = draws.flatten().clamp(max=probs.shape[-1] - 1)
    return chosen.tolist()
