"""Running the server: check, bind, load in the background, serve, drain on SIGTERM.

Order matters for a user who made a mistake: every name and path is checked and the port is
bound before any weights load, so a typo or a busy port fails in a second with exit code 2.
The weights then load while /health answers 503 ("loading").

SIGTERM (or Ctrl-C): /health turns 503, new requests get 503, requests in flight (streams
included) run to their end, then the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmtune import config as config_mod
from lmtune.config import ServeConfig
from lmtune.errors import UserError
from lmtune.finetune.store import Store
from lmtune.serving.finetune_service import FineTuning
from lmtune.serving.state import ServerState

log = logging.getLogger("lmtune.serving")
API_KEY_ENV = "LMTUNE_API_KEY"
HEADER_SECONDS = 10.0      # for a request's headers to arrive whole
KEEP_ALIVE_SECONDS = 5     # an idle keep-alive connection is closed after this


def _emit_nothing(event: str, data: dict) -> None:
    pass


def check(cfg: ServeConfig) -> str | None:
    """Every problem with the options, before anything loads. Returns the API key to use."""
    problems = [f"--{name.replace('_', '-')} must be at least 1, got {value}"
                for name, value in (("max_tokens_cap", cfg.max_tokens_cap),
                                    ("max_concurrency", cfg.max_concurrency),
                                    ("max_request_bytes", cfg.max_request_bytes))
                if value < 1]
    if cfg.max_queue < 0:
        problems.append(f"--max-queue must be at least 0, got {cfg.max_queue}")
    if cfg.drain_timeout < 0:
        problems.append(f"--drain-timeout must be at least 0, got {cfg.drain_timeout}")
    if not 0 <= cfg.port <= 65535:
        problems.append(f"--port must be in 0..65535, got {cfg.port}")
    if problems:
        raise UserError("; ".join(problems))
    key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    keys = ([key] if key else []) + _keys_file(cfg.api_keys_file)
    if not _is_loopback(cfg.host) and not keys and not cfg.insecure:
        raise UserError(f"--host {cfg.host} would let other machines use this server without "
                        f"an API key", hint=f"pass --api-key KEY (or set {API_KEY_ENV}), or "
                                            f"--insecure if the network is yours alone")
    return keys


def _keys_file(path: str | None) -> list[str]:
    """One key per line; blank lines and # comments skipped."""
    if not path:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--api-keys-file {path}: {getattr(e, 'strerror', None) or e}",
                        hint="one API key per line") from None
    keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not keys:
        raise UserError(f"--api-keys-file {path} holds no key", hint="one API key per line")
    return keys


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}",
                        hint="pick another --port, or stop what is using this one")
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Startup:
    """What `prepare` made ready, before any weights load."""
    state: ServerState
    planned: dict
    sock: socket.socket
    url: str
    device: str
    precision: str
    threads: object          # cpu.ThreadBudget
    warning: str | None      # an explicit bf16 on a CPU that emulates it


def prepare(cfg: ServeConfig) -> Startup:
    """Check options and paths and bind the port; loads no weights."""
    from lmtune.device import pick_device, pick_precision, precision_warning, set_threads
    from lmtune.serving import registry

    keys = check(cfg)
    threads = set_threads(cfg.threads)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    planned = registry.plan(cfg.models, cfg.names)
    state = ServerState(cfg, keys)
    # Jobs train on the device the server runs on; "auto" precision, as `lmtune train`.
    state.finetune = FineTuning(Store(cfg.store), cfg.workers, cfg.device, cfg.precision,
                                cfg.job_devices)
    sock = _bind(cfg.host, cfg.port)
    return Startup(state, planned, sock, url_of(sock), device, precision,
                   threads, precision_warning(precision, device))


def load_models(prepared: Startup, on_event: Callable[[str, dict], None]) -> None:
    """Load every model, then start the engine and turn the server ready. Runs in a thread
    while the server already answers /health with 503."""
    from lmtune.device import torch_dtype
    from lmtune.serving import registry
    from lmtune.serving.engine import Engine

    state, cfg = prepared.state, prepared.state.cfg
    device, precision = prepared.device, prepared.precision
    try:
        models = registry.load(prepared.planned, device=device, dtype=torch_dtype(precision),
                               trust_remote_code=cfg.trust_remote_code,
                               allow_pickle=cfg.allow_pickle)
        groups = {id(s.group): s.group for s in models.values() if s.group is not None}
        engine = Engine(list(groups.values()), cfg.max_concurrency)
        engine.start()
    except BaseException as e:  # reported by serve() once the server has stopped
        state.load_error = e
        state.status = "failed"
        on_event("failed", {"error": str(e)})
        return
    state.models, state.engine = models, engine
    state.device, state.precision = device, precision
    if state.status == "loading":  # a SIGTERM during loading wins
        state.status = "ready"
        state.finetune.start()
    on_event("ready", {"url": prepared.url, "device": device, "precision": precision,
                       "models": {n: _describe(s) for n, s in models.items()},
                       "weights_loaded": len(groups), "threads": prepared.threads.line(),
                       "warning": prepared.warning, "workers": state.finetune.n_workers,
                       "store": state.finetune.store.url})


def _describe(served) -> str:
    if served.task == "classify":
        return "classifier"
    if served.adapter:
        return f"LoRA adapter over {served.resolved.path}"
    return f"model {served.resolved.path}"


def build_server(prepared: Startup, on_event: Callable[[str, dict], None] = _emit_nothing):
    import uvicorn

    from lmtune.serving.app import create_app

    state, cfg = prepared.state, prepared.state.cfg

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # The first signal drains; a second one (or one while draining) stops now.
            if state.status in ("ready", "loading") and not self.should_exit:
                on_event("draining", {"in_flight": state.in_flight})
                state.drain(self._drained)
                timer = threading.Timer(cfg.drain_timeout, self._drained)
                timer.daemon = True
                timer.start()
                return
            super().handle_exit(sig, frame)

        def _drained(self):
            self.should_exit = True

        async def startup(self, sockets=None):
            await super().startup(sockets)
            threading.Thread(target=self._load, name="lmtune-load", daemon=True).start()

        def _load(self):
            load_models(prepared, on_event)
            if state.status == "failed":
                self.should_exit = True

    config = uvicorn.Config(create_app(state), log_config=None, log_level="warning",
                            access_log=False, lifespan="off", http=_header_timeout_protocol(),
                            timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            timeout_graceful_shutdown=max(1, int(cfg.drain_timeout)))
    return Server(config)


def _header_timeout_protocol():
    """uvicorn's h11 protocol, with a limit on how long a request's headers may take: uvicorn
    times only idle keep-alive connections, so clients that send half a header and wait (a
    slowloris) would each hold a connection for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are in
                self._disarm()
            elif waiting and self._header_timer is None:  # the next request has begun
                self._arm()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(HEADER_SECONDS, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if (self.cycle is None or self.cycle.response_complete) \
                    and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def serve(config: ServeConfig | None = None, *,
          on_event: Callable[[str, dict], None] | None = None, **options) -> None:
    """Serve until SIGTERM/Ctrl-C (or `should_exit`); options are the `lmtune serve` flags."""
    emit = on_event or _emit_nothing
    cfg = config or config_mod.build(ServeConfig, options)
    prepared = prepare(cfg)
    emit("loading", {"url": prepared.url, "models": list(prepared.planned)})
    server = build_server(prepared, emit)
    try:
        server.run(sockets=[prepared.sock])
    finally:
        prepared.state.finetune.stop()  # a job in training checkpoints and queues again
        if prepared.state.engine is not None:
            prepared.state.engine.stop()
        prepared.state.renderer.close()
        prepared.sock.close()
    if prepared.state.load_error is not None:
        raise prepared.state.load_error
    emit("stopped", {})
