"""A request as the engine sees it, and how its results travel back to the HTTP side.

The engine runs in its own thread; each request's handler waits on an asyncio queue in the
server's event loop. The engine pushes events with `call_soon_threadsafe`, so a handler never
blocks the loop and the engine never waits for a client.

Events, in order per choice:
  ("text", index, delta)                      new text for choice `index`
  ("end", index, finish_reason, n_tokens)     choice done: "stop" or "length"
  ("error", message)                          the whole request failed
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0        # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


class Job:
    """`n` choices for each prompt, generated in the engine's batch."""

    def __init__(self, served, prompts: list[list[int]], n: int, sampling: Sampling,
                 loop: asyncio.AbstractEventLoop):
        self.served = served
        self.prompts = prompts
        self.n = n
        self.sampling = sampling
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False       # set by the handler when the client goes away
        self._loop = loop
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        # One generator per request: its samples depend on its seed only, not on which other
        # requests share the batch.
        self.generator = torch.Generator().manual_seed(seed % 2**64)

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    def emit(self, *event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is gone, nobody listens
            pass

    def cancel(self) -> None:
        self.cancelled = True
