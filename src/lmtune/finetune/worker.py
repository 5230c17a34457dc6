"""`lmtune worker`: a process that takes queued jobs, first come first served, and trains
each with `lmtune train` in this process, one at a time.

A thread beats a heartbeat into the job while it runs and watches for a client's cancel or
pause; either sends this process SIGTERM, which training answers as it answers a user's: it
finishes the step, writes a checkpoint and stops. Then the job is cancelled (its files kept)
or paused (resume continues from that checkpoint). A SIGTERM from outside (the server
stopping) puts the job back in the queue, to continue from its checkpoint on the next start.
A worker that dies stops beating; the next worker to look requeues the job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from lmtune.errors import Stopped, UserError, stop_on_signals
from lmtune.finetune.jobs import train_options
from lmtune.finetune.objects import model_name
from lmtune.finetune.store import Store, new_id

log = logging.getLogger("lmtune.finetune")
HEARTBEAT_S = 2.0
ORPHAN_CHECK_S = 0.25  # getppid() is a system call: looked at often, so a kill is seen at once
ABANDONED_S = 30.0   # a running job whose worker has not beaten for this long is requeued
POLL_S = 1.0


def run_worker(store: Store, *, name: str | None = None, once: bool = False,
               parent: int | None = None, train: dict | None = None) -> int:
    """Train queued jobs until SIGTERM (or, with `once`, until the queue is empty; with
    `parent`, until that process ends). `train`: options every job trains with."""
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    stop_on_signals()
    try:
        while not _orphaned(parent):
            store.requeue_abandoned(ABANDONED_S)
            job = store.claim(name)
            if job is None:
                if once:
                    return 0
                time.sleep(POLL_S)
                continue
            if not run_job(store, job, name, parent, train or {}):
                return 0  # stopped from outside: the job is queued again
    except (Stopped, KeyboardInterrupt):
        pass
    return 0


def _orphaned(parent: int | None) -> bool:
    """The server that started this worker is gone (killed, even by SIGKILL): this process
    was handed to another parent."""
    return parent is not None and os.getppid() != parent


def run_job(store: Store, job: dict, worker: str, parent: int | None = None,
            train_with: dict | None = None) -> bool:
    """Train one claimed job to its end; False when this worker was told to stop."""
    from lmtune.training.result import Interrupted
    from lmtune.training.train import train

    job_id = job["id"]
    if _trained(job):  # stopped after its final save (in the report, say): nothing to redo
        _succeed(store, job, Path(job["run_dir"]))
        return True
    options = train_options(store, job)
    store.add_event(job_id, "Fine-tuning job resumed from its last checkpoint"
                    if options.get("resume") else "Fine-tuning job started",
                    data={"worker": worker})
    train_with = train_with or {}
    events = JobEvents(store, job)
    # On several processes the training runs under torchrun, whose events stay there: the
    # job's events are then read from the run folder as rank 0 writes it.
    tail = RunTail(events, Path(job["run_dir"])) if train_with.get("devices", 1) > 1 else None
    if tail:
        store.add_event(job_id, f"Training on {train_with['devices']} processes (torchrun)")
    watch = _Watch(store, job_id, worker, parent, tail)
    try:
        with watch:
            result = train(**options, **train_with,
                           on_event=None if tail else events)
    except (Interrupted, Stopped, KeyboardInterrupt):
        return _interrupted(store, job_id, watch.wanted)
    except UserError as e:
        _fail(store, job_id, "training_failed", e.message)
        return True
    except Exception as e:  # a bug: the job fails with its name, the worker goes on
        log.exception("job %s failed", job_id)
        _fail(store, job_id, "internal_error", f"{type(e).__name__}: {e}")
        return True
    if tail:
        tail.poll()  # what rank 0 wrote after the last look
    _succeed(store, job, result.out)
    return True


def _trained(job: dict) -> bool:
    """The job's run wrote final/ after its newest checkpoint: training ended."""
    from lmtune.run.resume import final_is_current

    run = Path(job["run_dir"])
    checkpoints = sorted((run / "checkpoints").glob("*"), key=lambda p: p.stat().st_mtime_ns)
    return (run / "final").is_dir() and bool(checkpoints) and \
        final_is_current(run, checkpoints[-1])


def _interrupted(store: Store, job_id: str, wanted: str | None) -> bool:
    status = {"cancel": "cancelled", "pause": "paused"}.get(wanted, "queued")
    store.update_job(job_id, status=status, wanted=None, worker=None,
                     finished_at=int(time.time()) if status == "cancelled" else None)
    store.add_event(job_id, {"cancelled": "Job cancelled; its files are kept",
                             "paused": "Job paused at a checkpoint; resume continues from it",
                             "queued": "The worker stopped; the job is queued again and "
                                       "continues from its last checkpoint"}[status])
    return wanted is not None


def _fail(store: Store, job_id: str, code: str, message: str) -> None:
    store.update_job(job_id, status="failed", worker=None, finished_at=int(time.time()),
                     error=json.dumps({"code": code, "message": message, "param": None}))
    store.add_event(job_id, f"Job failed: {message}", level="error")


def _succeed(store: Store, job: dict, run: Path) -> None:
    name = model_name(job)
    results = _results_file(store, job, run / "metrics.jsonl")
    store.update_job(job["id"], status="succeeded", worker=None, finished_at=int(time.time()),
                     fine_tuned_model=name, result_files=json.dumps([results]),
                     estimated_finish=None)
    store.add_event(job["id"], f"New fine-tuned model created: {name}")
    store.add_event(job["id"], "The job has successfully completed")


def _results_file(store: Store, job: dict, metrics) -> str:
    """The step metrics as a CSV file of purpose fine-tune-results (OpenAI's result file)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", "train_loss", "valid_loss", "learning_rate", "tokens_per_s"])
    valid = {}
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    for r in rows:
        if "val_loss" in r:
            valid[r["step"]] = r["val_loss"]
    for r in rows:
        if "loss" in r:
            writer.writerow([r["step"], r["loss"], valid.get(r["step"], ""), r.get("lr", ""),
                             r.get("tokens_per_s", "")])
    file_id = new_id("file")
    path = store.files_dir / file_id
    store.files_dir.mkdir(parents=True, exist_ok=True)
    data = out.getvalue().encode()
    path.write_bytes(data)
    store.add_file({"id": file_id, "owner": job["owner"], "purpose": "fine-tune-results",
                    "filename": "step_metrics.csv", "bytes": len(data),
                    "created_at": int(time.time()), "path": str(path)})
    return file_id


class _Watch:
    """The heartbeat, and the client's wish to cancel or pause turned into SIGTERM."""

    def __init__(self, store: Store, job_id: str, worker: str, parent: int | None,
                 tail: "RunTail | None" = None):
        self.store, self.job_id, self.worker, self.parent = store, job_id, worker, parent
        self.tail = tail
        self.wanted: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lmtune-watch")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join(10)

    def _run(self) -> None:
        beat = 0.0
        while not self._done.wait(ORPHAN_CHECK_S):
            if _orphaned(self.parent):  # as if the server had sent SIGTERM before dying
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if self.tail is not None:
                try:
                    self.tail.poll()
                except Exception:  # a record half written, a busy database: next time
                    log.warning("reading the run's records failed", exc_info=True)
            if time.monotonic() - beat < HEARTBEAT_S:
                continue
            beat = time.monotonic()
            try:
                self.store.update_job(self.job_id, heartbeat=time.time())
                wanted = self.store.job(self.job_id)["wanted"]
            except Exception:  # a busy database: beat again next time
                log.warning("heartbeat failed", exc_info=True)
                continue
            if wanted and self.wanted is None:
                self.wanted = wanted
                os.kill(os.getpid(), signal.SIGTERM)


class JobEvents:
    """Training's events as the job's events (OpenAI's shape: messages and metrics), its
    checkpoints, trained tokens and estimated finish."""

    def __init__(self, store: Store, job: dict):
        self.store, self.job = store, job
        self.total, self.train_loss, self.valid_loss = None, None, None
        self.started = time.monotonic()
        self.start_step = 0

    def __call__(self, event: str, data: dict) -> None:
        job_id, add = self.job["id"], self.store.add_event
        if event == "start":
            self.total, self.start_step = data["total_steps"], data["start_step"]
            settings = json.loads(self.job["settings"])
            if settings["batch_size"] == "auto":  # written back, as OpenAI does
                settings["batch_size"] = data["global_batch"]
                self.store.update_job(job_id, settings=json.dumps(settings))
            add(job_id, f"Training {data['total_steps']} steps of {data['global_batch']} "
                        f"blocks of {data['block_size']} tokens ({data['method']} on "
                        f"{data['device']})")
        elif event == "log":
            self._log(data)
        elif event == "eval" and "val_loss" in data:
            self.valid_loss = data["val_loss"]
            add(job_id, f"Step {data['step']}/{self.total}: validation loss="
                        f"{data['val_loss']:.4f}", type="metrics",
                data={"step": data["step"], "valid_loss": data["val_loss"],
                      "total_steps": self.total})
        elif event == "checkpoint":
            self.store.add_checkpoint(job_id, data["step"], {
                "train_loss": self.train_loss, "valid_loss": self.valid_loss}, data["path"])
        elif event == "sample":
            add(job_id, f"Sample at step {data['step']}: {data['prompt']!r} -> "
                        f"{data['text']!r}")
        elif event == "message":
            add(job_id, data["text"])

    def _log(self, data: dict) -> None:
        self.train_loss = data["loss"]
        step = data["step"]
        if self.total is None and data.get("epoch"):  # no "start" event: from the epochs
            epochs = json.loads(self.job["settings"])["n_epochs"]
            self.total = round(step / data["epoch"] * float(epochs))
        done = max(1, step - self.start_step)
        left = (time.monotonic() - self.started) / done * max(0, (self.total or step) - step)
        self.store.update_job(self.job["id"], trained_tokens=data.get("tokens"),
                              estimated_finish=int(time.time() + left))
        self.store.add_event(self.job["id"], f"Step {step}/{self.total}: training loss="
                                             f"{data['loss']:.4f}", type="metrics",
                             data={"step": step, "train_loss": data["loss"],
                                   "total_steps": self.total,
                                   "learning_rate": data.get("lr")})


class RunTail:
    """A job's events from its run folder: new metrics.jsonl records (training and validation
    loss) and new complete checkpoints, fed to JobEvents as training's own events would be."""

    def __init__(self, events: JobEvents, run: Path):
        self.events, self.run = events, run
        self.offset = 0
        self.checkpoints: set[str] = set()

    def poll(self) -> None:
        metrics = self.run / "metrics.jsonl"
        if metrics.is_file():
            with open(metrics, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            whole = data[:data.rfind(b"\n") + 1]  # a line still being written waits
            self.offset += len(whole)
            for line in whole.decode("utf-8", "replace").splitlines():
                record = json.loads(line) if line.strip() else {}
                if "loss" in record:
                    self.events("log", record)
                elif "val_loss" in record:
                    self.events("eval", record)
        for folder in sorted((self.run / "checkpoints").glob("step-*")):
            if folder.name not in self.checkpoints and (folder / "manifest.json").is_file():
                self.checkpoints.add(folder.name)
                self.events("checkpoint", {"step": int(folder.name.split("-")[1]),
                                           "path": str(folder)})
