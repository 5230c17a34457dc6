"""The fine-tuning service inside `lmtune serve`: the store, the worker processes that train
jobs (never this process: it stays free to answer), and the fine-tuned models, served the
moment their job succeeds without a restart.

Workers are `lmtune worker` processes started here and stopped with SIGTERM when the server
stops: a job they were training writes a checkpoint and goes back to the queue, so it
continues on the next start. A fine-tuned model loads on its first request (a LoRA adapter
with its own copy of the base, as a group of its own in the engine), under a lock so that two
first requests load it once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from lmtune.finetune.jobs import validate_job
from lmtune.finetune.objects import checkpoint_model
from lmtune.finetune.store import Store

log = logging.getLogger("lmtune.serving")
WORKER_STOP_S = 60.0  # a worker finishes its step and writes a checkpoint within this


def owner_of(api_keys: list[str], header: str | None) -> str:
    """Who a request acts for: each API key owns the files, jobs and models it created (the
    key itself is not stored, only a hash of it)."""
    if not api_keys:
        return "local"
    token = (header or "").removeprefix("Bearer ")
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class FineTuning:
    def __init__(self, store: Store, workers: int, device: str = "auto",
                 precision: str = "auto", devices: int = 1):
        self.store = store
        self.n_workers = workers
        self.train = ["--device", device, "--precision", precision, "--devices", str(devices)]
        self.workers: list[subprocess.Popen] = []
        self._loading: dict[str, threading.Lock] = {}
        # Who owns each fine-tuned model loaded into the engine: it is served beside the
        # server's own models, but to its key alone.
        self.owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Validate what a stopped server left unvalidated, then start the workers."""
        for job in self.store.jobs_with_status("validating_files"):
            threading.Thread(target=validate_job, args=(self.store, job), daemon=True).start()
        logs = self.store.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(self.n_workers):
            out = open(logs / f"worker-{i}.log", "ab")  # noqa: SIM115 (the child holds it)
            env = {**os.environ, "LMTUNE_HOME": str(self.store.home.parent)}
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "lmtune", "worker", "--store", self.store.url,
                 "--name", f"serve-{os.getpid()}-{i}", "--parent", str(os.getpid()),
                 *self.train],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
            out.close()

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.workers = []

    # --- fine-tuned models ------------------------------------------------------------------

    def model_folder(self, name: str, owner: str) -> Path | None:
        """Where the weights of a fine-tuned model (or one of its checkpoints) are."""
        base, _, step = name.partition(":ckpt-step-")
        job = self.store.model_job(base)
        if job is None or job["owner"] != owner:
            return None
        if not step:
            return Path(job["run_dir"])
        for row in self.store.checkpoints(job["id"], None, 10_000):
            if str(row["step"]) == step and Path(row["path"]).is_dir():
                return Path(row["path"])
        return None

    def models(self, owner: str) -> list[str]:
        names = []
        for job in self.store.succeeded(owner):
            names.append(job["fine_tuned_model"])
            names += [checkpoint_model(job, row["step"])
                      for row in self.store.checkpoints(job["id"], None, 10_000)
                      if Path(row["path"]).is_dir()]
        return names

    def cli_run(self, name: str, runs: str):
        """The command-line run "run:NAME" in the server's runs folder (never a job's run
        folder, should the two folders meet)."""
        from lmtune.run.listing import find_run

        return find_run(Path(runs).expanduser(), name.removeprefix("run:"),
                        exclude=self.store.runs_dir)

    def hidden_from(self, owner: str) -> set[str]:
        """Loaded fine-tuned models that another key owns: to `owner` they do not exist."""
        return {name for name, who in self.owners.items() if who != owner}

    def load(self, name: str, owner: str, state) -> object | None:
        """The Served model `name`, loaded into the engine on first use; None if unknown.
        A command-line run in the server's runs folder is named "run:NAME"."""
        if name.startswith("run:"):
            run = self.cli_run(name, state.cfg.runs)
            folder = run.path if run is not None and run.info() else None
        else:
            folder = self.model_folder(name, owner)
        if folder is None:
            return None
        with self._lock:
            lock = self._loading.setdefault(name, threading.Lock())
        with lock:
            if name in state.models:
                return state.models[name]
            from lmtune.device import torch_dtype
            from lmtune.models.resolve import resolve
            from lmtune.serving import registry

            cfg = state.cfg
            served = registry.load({name: resolve(str(folder))}, device=state.device,
                                   dtype=torch_dtype(state.precision),
                                   trust_remote_code=cfg.trust_remote_code,
                                   allow_pickle=cfg.allow_pickle)[name]
            served.group.key = f"fine-tuned:{name}"  # its own batch, beside its base's
            state.engine.add_group(served.group)
            if not name.startswith("run:"):
                self.owners[name] = owner
            state.models = {**state.models, name: served}  # swapped whole: readers never lock
            log.info("loaded fine-tuned model %s from %s", name, folder)
            return served
