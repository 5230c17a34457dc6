"""The scheduler: one thread that owns the models and runs every batch.

Between two decoding steps it moves waiting requests into their model's batch (up to
`max_concurrency` requests generating at once, over all models), then steps each batch that
has rows. Requests that arrive together are prefilled together; requests that arrive while a
batch runs join it at the next step (see batch.py). The HTTP side never touches a model: it
submits a Job and reads its events.

One thread, not one per model: on a CPU, two models stepping at once would only fight over
the same cores.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import torch

from lmtune.serving.batch import DecodeBatch

log = logging.getLogger("lmtune.serving")


class Engine:
    def __init__(self, groups, max_concurrency: int):
        self.max_concurrency = max_concurrency
        self.batches = {g.key: DecodeBatch(g) for g in groups}
        self.waiting: dict[str, deque] = {g.key: deque() for g in groups}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lmtune-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def add_group(self, group) -> None:
        """A model loaded while serving (a fine-tuned model on its first request)."""
        with self._cond:
            self.batches[group.key] = DecodeBatch(group)
            self.waiting[group.key] = deque()

    def submit(self, job) -> None:
        with self._cond:
            self.waiting[job.served.group.key].append(job)
            self._cond.notify()

    def _running(self) -> int:
        return sum(len(b.jobs) for b in self.batches.values())

    def _has_work(self) -> bool:
        return any(self.waiting.values()) or any(b.rows for b in self.batches.values())

    def _take(self) -> dict[str, list]:
        """Waiting jobs that may start now, oldest first, per batch."""
        free = self.max_concurrency - self._running()
        taken: dict[str, list] = {}
        for key, queue in self.waiting.items():
            batch = self.batches[key]
            while queue and free > 0 and batch.can_take():
                job = queue.popleft()
                if job.cancelled:
                    continue
                taken.setdefault(key, []).append(job)
                free -= 1
        return taken

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._has_work():
                        self._cond.wait()
                    if self._stopping:
                        break
                    taken = self._take()
                    batches = list(self.batches.items())  # add_group may add to it meanwhile
                for key, batch in batches:
                    try:
                        if taken.get(key):
                            batch.add(taken[key])
                        if batch.rows:
                            batch.step()
                    except Exception as e:  # a bug or out of memory: fail these, keep serving
                        log.exception("generation failed")
                        for job in set(taken.get(key, [])) | batch.jobs:
                            job.emit("error", f"generation failed: {type(e).__name__}: {e}")
                        batch.reset()
        self._fail_all("the server is stopping")

    def _fail_all(self, message: str) -> None:
        with self._cond:
            for key, queue in self.waiting.items():
                while queue:
                    queue.popleft().emit("error", message)
                self.batches[key].fail(message)
