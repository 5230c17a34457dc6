"""Progress of the long stages (loading a model, tokenizing, evaluating, sampling, merging,
writing), told to whoever listens, and libraries kept quiet.

Library code marks a stage with `stage(...)` and says nothing itself. The CLI listens and
draws each stage on stderr (cli/progress.py); `lmtune.train(on_event=...)` receives them as
"stage" events; a plain Python API call shows nothing. A stage reports
`{"name", "state": "start" | "advance" | "end", "done", "total", "unit", "seconds"}`.

This module imports neither torch nor transformers: it sits below everything else.
"""

from __future__ import annotations

import inspect
import time
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterable, Iterator, TypeVar

from lmtune.errors import UserError

Listener = Callable[[str, dict], None]
_listener: ContextVar[Listener | None] = ContextVar("lmtune_progress", default=None)
T = TypeVar("T")


class Stage:
    """One stage in progress: `advance(n)` as its work gets done."""

    def __init__(self, listener: Listener | None, name: str, total: int | None, unit: str):
        self.listener, self.name, self.total, self.unit = listener, name, total, unit
        self.done, self.t0 = 0, time.perf_counter()

    def _tell(self, state: str) -> None:
        if self.listener is not None:
            self.listener("stage", {"name": self.name, "state": state, "done": self.done,
                                    "total": self.total, "unit": self.unit,
                                    "seconds": time.perf_counter() - self.t0})

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._tell("advance")


@contextmanager
def stage(name: str, total: int | None = None, unit: str = "") -> Iterator[Stage]:
    """`with stage("evaluating", total=n, unit="batch") as s: ... s.advance()`. The end is
    told even when the stage fails, so a drawn bar is always closed."""
    s = Stage(_listener.get(), name, total, unit)
    s._tell("start")
    try:
        yield s
    finally:
        s._tell("end")


def iterate(items: Iterable[T], name: str, total: int | None = None,
            unit: str = "") -> Iterator[T]:
    """`items`, advancing a stage by one per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with stage(name, total, unit) as s:
        for item in items:
            yield item
            s.advance()


@contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """Stages started inside go to `listener` (None: to nobody)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def check_callback(callback, name: str = "on_event") -> None:
    """A callback must take (event, data): refuse one that cannot, before any work, rather
    than failing with a TypeError after the model has loaded."""
    if callback is None:
        return
    if not callable(callback):
        raise UserError(f"{name} must be a function, not {type(callback).__name__}",
                        hint=f"def {name}(event: str, data: dict): ...")
    try:
        inspect.signature(callback).bind("event", {})
    except TypeError:
        raise UserError(f"{name} must take two arguments, the event's name and its data",
                        hint=f"def {name}(event: str, data: dict): print(event, data)") \
            from None
    except ValueError:  # no signature to read (some builtins): trust it
        pass


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars, info logs and warnings off while a
    library call runs, and restored after it: lmtune's functions print nothing, and the CLI
    shows what it chooses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restore = _silence_hf()
        try:
            yield
        finally:
            restore()


def _silence_hf() -> Callable[[], None]:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return lambda: None
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return restore
