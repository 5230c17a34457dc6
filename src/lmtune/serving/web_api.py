"""What the web page needs beyond OpenAI's API, under /lmtune/: runs and jobs as one list,
a run's whole record and its live stream (server-sent events), the training form's fields
from the typed config, a data file as training will see it, a dry-run estimate, did-it-learn,
and an Ollama Modelfile. The command line and the Python API reach the same functions
(run.listing, analysis.data_preview, analysis.learned, `lmtune train --dry-run`).

A job is its key's alone: another key's job answers 404, as in the fine-tuning API. Runs
trained from the command line into the server's runs folder belong to whoever runs the
server, and are listed to every key it accepts (as the models it serves are).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from lmtune.errors import UserError
from lmtune.finetune import objects
from lmtune.run.folder import RunFolder
from lmtune.run.listing import (JsonlTail, last_losses, list_runs, merge_losses,
                                summarize)
from lmtune.serving.finetune_service import owner_of
from lmtune.serving.state import ApiError, ServerState
from lmtune.serving.web_forms import add_form_routes

POLL_S = 0.5             # how often a stream looks for new records: the chart's latency
KEEPALIVE_S = 15.0       # a comment line this often keeps proxies from closing an idle stream
STREAM_MAX_S = 3600.0    # a stream ends after this; the page reconnects (and gets it all again)
MAX_EVENTS = 1000        # a job's newest events sent to the page
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Target:
    """A job (with its run folder) or a run from the command line."""
    id: str
    run: RunFolder
    job: dict | None = None


def add_web_routes(app, state: ServerState) -> None:
    def owner(request: Request) -> str:
        return owner_of(state.api_keys, request.headers.get("authorization"))

    def runs_folder() -> Path:
        return Path(state.cfg.runs).expanduser()

    def target(request: Request, run_id: str) -> Target:
        if run_id.startswith("run:"):
            run = state.finetune.cli_run(run_id, state.cfg.runs)
            if run is not None:
                return Target(run_id, run)
        elif state.finetune is not None:
            job = state.finetune.store.job(run_id, owner(request))
            if job is not None:
                return Target(run_id, RunFolder(job["run_dir"]), job)
        raise ApiError(404, f"no such run or job: {run_id}", param="run_id",
                       code="run_not_found")

    @app.get("/lmtune/runs")
    async def runs(request: Request):
        return {"object": "list",
                "data": await run_in_threadpool(_all_runs, state, owner(request), runs_folder())}

    @app.get("/lmtune/runs/{run_id}")
    async def run(request: Request, run_id: str):
        found = await run_in_threadpool(target, request, run_id)
        return await run_in_threadpool(_snapshot, state, found, None)

    @app.get("/lmtune/runs/{run_id}/stream")
    async def stream(request: Request, run_id: str):
        found = await run_in_threadpool(target, request, run_id)
        return StreamingResponse(_follow(state, request, found), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    @app.post("/lmtune/runs/{run_id}/learned")
    async def learned(request: Request, run_id: str):
        found = await run_in_threadpool(target, request, run_id)
        return await run_in_threadpool(_learned, state, found)

    add_form_routes(app, state, owner)


def _all_runs(state: ServerState, owner: str, folder: Path) -> list[dict]:
    rows = []
    if state.finetune is not None:
        store = state.finetune.store
        for job in store.jobs(owner, None, 100):
            run = RunFolder(job["run_dir"])
            rows.append(_job_row(job, store, last_losses(run.records(run.metrics_file))))
        exclude = store.runs_dir
    else:
        exclude = None
    rows += list_runs(folder, exclude=exclude)
    return sorted(rows, key=lambda r: r["created_at"], reverse=True)


def _job_row(job: dict, store, losses: dict) -> dict:
    request = json.loads(job["request"])
    file = store.file(request["training_file"], job["owner"])
    options = json.loads(job["settings"]).get("lmtune") or {}
    return {"id": job["id"], "kind": "job", "name": job["fine_tuned_model"] or job["id"],
            "status": job["status"], "model": request["model"],
            "method": options.get("method", "lora"), "task": "generate",
            "data": file["filename"] if file else request["training_file"],
            "created_at": job["created_at"], "fine_tuned_model": job["fine_tuned_model"],
            **losses}


def _snapshot(state: ServerState, found: Target, tails: dict | None) -> dict:
    """Everything the page shows of a run; `tails` (when following) start after it."""
    run = found.run
    tails = tails if tails is not None else _tails(run)
    metrics, _ = tails["metrics"].read()
    samples, _ = tails["samples"].read()
    out = {"id": found.id, "metrics": metrics, "samples": samples, "events": [],
           "job": None}
    if found.job is not None:
        job = state.finetune.store.job(found.id)
        out["job"] = objects.job_object(job)
        out["events"] = _events(state, found.id, after_seq=-1)
        out["checkpoints"] = _checkpoints(state, job)
        out["run"] = _job_row(job, state.finetune.store, last_losses(metrics))
    else:
        out["run"] = summarize(run, losses=last_losses(metrics))
        out["checkpoints"] = [{"step": s, "model": None} for s in out["run"]["checkpoints"]]
    return out


def _tails(run: RunFolder) -> dict:
    return {"metrics": JsonlTail(run.metrics_file), "samples": JsonlTail(run.samples_file)}


def _events(state: ServerState, job_id: str, after_seq: int) -> list[dict]:
    rows = state.finetune.store.events_since(job_id, after_seq, MAX_EVENTS)
    return [{**objects.event_object(r), "seq": r["seq"]} for r in rows]


def _checkpoints(state: ServerState, job: dict) -> list[dict]:
    rows = state.finetune.store.checkpoints(job["id"], None, 1000)
    return [{"step": r["step"], "model": objects.checkpoint_model(job, r["step"]),
             "metrics": json.loads(r["metrics"])} for r in reversed(rows)]


def _sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _follow(state: ServerState, request: Request, found: Target):
    """The run's whole record, then what is new every POLL_S, until the client goes, the
    server stops, or STREAM_MAX_S passes."""
    tails = _tails(found.run)
    snapshot = await run_in_threadpool(_snapshot, state, found, tails)
    yield _sse("snapshot", snapshot)
    seen = {"seq": max([e["seq"] for e in snapshot["events"]], default=-1),
            "job": snapshot["job"], "run": snapshot["run"],
            "checkpoints": snapshot["checkpoints"],
            "losses": last_losses(snapshot["metrics"])}
    started = last_sent = time.monotonic()
    while time.monotonic() - started < STREAM_MAX_S and state.status == "ready":
        await asyncio.sleep(POLL_S)
        if await request.is_disconnected():
            return
        changes = await run_in_threadpool(_changes, state, found, tails, seen)
        for event, data in changes:
            yield _sse(event, data)
        if changes:
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()


def _changes(state: ServerState, found: Target, tails: dict, seen: dict) -> list:
    out = []
    for name in ("metrics", "samples"):
        records, reset = tails[name].read()
        if records or reset:
            out.append((name, {"records": records, "reset": reset}))
        if name == "metrics" and (records or reset):
            seen["losses"] = (last_losses(records) if reset else
                              merge_losses(seen["losses"], records))
    if found.job is not None:
        events = _events(state, found.id, seen["seq"])
        if events:
            seen["seq"] = events[-1]["seq"]
            out.append(("events", events))
        job = state.finetune.store.job(found.id)
        current = {"job": objects.job_object(job),
                   "run": _job_row(job, state.finetune.store, seen["losses"]),
                   "checkpoints": _checkpoints(state, job)}
    else:
        run = summarize(found.run, losses=seen["losses"])
        current = {"job": None, "run": run,
                   "checkpoints": [{"step": s, "model": None} for s in run["checkpoints"]]}
    for key in ("job", "run", "checkpoints"):
        if current[key] != seen[key]:
            seen[key] = current[key]
            out.append((key, current[key]))
    return out


def _learned(state: ServerState, found: Target) -> dict:
    from lmtune.analysis.learned import did_it_learn

    if found.job is not None and found.job["status"] != "succeeded":
        raise ApiError(400, f"the job is {found.job['status']}; did-it-learn needs its final "
                            f"model", param="run_id", code="invalid_state")
    try:
        return did_it_learn(found.run.path, device=state.device,
                            trust_remote_code=state.cfg.trust_remote_code,
                            allow_pickle=state.cfg.allow_pickle)
    except UserError as e:
        raise ApiError(400, e.message + (f" ({e.hint})" if e.hint else "")) from None

