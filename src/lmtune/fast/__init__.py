"""Exact-equivalent speed-ups for training: each piece computes what the plain model computes,
with less time or memory. `speedups(model, ...)` (speedups.py) is the one place that decides
which pieces a run gets; nothing else in lmtune switches them on. The chunked LM-head loss
(chunked_ce.py) is called by models/forward.py, which every loss goes through."""

from lmtune.fast.speedups import speedups

__all__ = ["speedups"]
