"""What the server knows between requests: its models, its status, and how busy it is.

Admission is decided here, at once, in the event loop: a request either gets a slot (up to
`max_concurrency` generating plus `max_queue` waiting) or a 429 with Retry-After before any
work is done for it. Nothing waits in an unbounded queue.
"""

from __future__ import annotations

import threading
from typing import Callable

from lmtune.config import ServeConfig
from lmtune.models.chat import IsolatedRenderer

RETRY_AFTER_S = 1  # a 135M model answers a short request in well under a second per batch


class ApiError(Exception):
    """An error answered in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers


class ServerState:
    def __init__(self, cfg: ServeConfig, api_keys: list[str]):
        self.cfg = cfg
        self.api_keys = api_keys          # any of them is let in; each owns what it makes
        self.status = "loading"          # loading -> ready -> draining; or failed
        self.models: dict = {}           # name -> registry.Served
        self.device, self.precision = "cpu", "fp32"  # what the models were loaded for
        self.finetune = None             # finetune_service.FineTuning, when jobs are served
        self.engine = None
        self.load_error: BaseException | None = None
        self.in_flight = 0
        self.renderer = IsolatedRenderer()  # chat templates, in a child process under limits
        self._on_drained: Callable[[], None] | None = None
        self._lock = threading.Lock()

    # --- admission ---------------------------------------------------------------------------

    def check_serving(self) -> None:
        if self.status == "ready":
            return
        message = {"loading": "the server is still loading its models",
                   "draining": "the server is shutting down and takes no new requests"}.get(
            self.status, "the server is not serving")
        raise ApiError(503, message, type="server_unavailable", code=self.status,
                       headers={"Retry-After": str(RETRY_AFTER_S)})

    def admit(self) -> "Slot":
        self.check_serving()
        with self._lock:
            if self.in_flight >= self.cfg.max_concurrency + self.cfg.max_queue:
                raise ApiError(429, f"the server is at its limit of {self.cfg.max_concurrency} "
                                    f"running and {self.cfg.max_queue} waiting requests; retry "
                                    f"shortly", type="rate_limit_error",
                               code="rate_limit_exceeded",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            self.in_flight += 1
        return Slot(self)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            drained = self.status == "draining" and self.in_flight == 0
        if drained and self._on_drained:
            self._on_drained()

    # --- models ------------------------------------------------------------------------------

    def lookup(self, name: str, task: str, hidden: set[str] = frozenset()):
        """The served model `name`; `hidden`: names this client may not see (another key's
        fine-tuned models), answered as if they did not exist."""
        served = None if name in hidden else self.models.get(name)
        if served is None:
            visible = [n for n in self.models if n not in hidden]
            raise ApiError(404, f"the model {name!r} is not served here; served: "
                                f"{', '.join(visible)}", param="model",
                           code="model_not_found")
        if served.task != task:
            what = {"classify": "a text classifier (use /v1/classify)",
                    "generate": "a text generation model (use /v1/completions or "
                                "/v1/chat/completions)"}[served.task]
            raise ApiError(400, f"the model {name!r} is {what}", param="model",
                           code="wrong_task")
        return served

    # --- shutting down -----------------------------------------------------------------------

    def drain(self, on_drained: Callable[[], None]) -> None:
        """Refuse new requests; call `on_drained` once the in-flight ones have finished."""
        with self._lock:
            self._on_drained = on_drained
            if self.status in ("ready", "loading"):
                self.status = "draining"
            idle = self.in_flight == 0
        if idle:
            on_drained()


class Slot:
    """A request's place in the server; released exactly once, when its answer is sent."""

    def __init__(self, state: ServerState):
        self._state: ServerState | None = state

    def release(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            state._release()
