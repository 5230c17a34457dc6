"""/v1/files and /v1/fine_tuning/jobs: OpenAI's fine-tuning API, answered from the store
(finetune/), so an unmodified `openai` client uploads data, starts a job, watches its
events and checkpoints, pauses, resumes or cancels it, and then chats with the result.

Each API key sees only what it created: another key's ids answer 404, as ids that do not
exist do. The store is read and written off the event loop (run_in_threadpool).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from fastapi import File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from lmtune.errors import UserError
from lmtune.finetune import objects
from lmtune.finetune.jobs import JobError, create_job, validate_job
from lmtune.finetune.store import new_id
from lmtune.serving.finetune_service import owner_of
from lmtune.serving.state import ApiError, ServerState

PURPOSES = ("fine-tune",)
MAX_LIMIT = 100
CANCELLABLE = ("validating_files", "queued", "paused")


def add_finetune_routes(app, state: ServerState) -> None:
    store = state.finetune.store

    def owner(request: Request) -> str:
        return owner_of(state.api_keys, request.headers.get("authorization"))

    _file_routes(app, store, owner)
    _job_routes(app, state, owner, state.cfg.max_queued_jobs)
    _job_detail_routes(app, store, owner)


async def _own_file(store, owner, request: Request, file_id: str) -> dict:
    row = await run_in_threadpool(store.file, file_id, owner(request))
    if row is None:
        raise ApiError(404, f"no such file: {file_id}", param="file_id", code="file_not_found")
    return row


async def _own_job(store, owner, request: Request, job_id: str) -> dict:
    row = await run_in_threadpool(store.job, job_id, owner(request))
    if row is None:
        raise ApiError(404, f"no such fine-tuning job: {job_id}", param="fine_tuning_job_id",
                       code="job_not_found")
    return row


def _file_routes(app, store, owner) -> None:
    @app.post("/v1/files")
    async def upload(request: Request, file: UploadFile = File(...),
                     purpose: str = Form(...)):
        if purpose not in PURPOSES:
            raise ApiError(400, f"purpose {purpose!r} is not one this server takes; use "
                                f"'fine-tune'", param="purpose")
        row = await run_in_threadpool(_save_upload, store, owner(request), file, purpose)
        return objects.file_object(row)

    @app.get("/v1/files")
    async def list_files(request: Request, purpose: str | None = None):
        rows = await run_in_threadpool(store.files, owner(request), purpose)
        return objects.page([objects.file_object(r) for r in rows], MAX_LIMIT, more=False)

    @app.get("/v1/files/{file_id}")
    async def get_file(request: Request, file_id: str):
        return objects.file_object(await _own_file(store, owner, request, file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(request: Request, file_id: str):
        row = await _own_file(store, owner, request, file_id)
        return FileResponse(row["path"], media_type="application/octet-stream",
                            filename=row["filename"])

    @app.delete("/v1/files/{file_id}")
    async def delete_file(request: Request, file_id: str):
        row = await _own_file(store, owner, request, file_id)
        await run_in_threadpool(store.delete_file, file_id, owner(request))
        await run_in_threadpool(_unlink, row["path"])
        return {"id": file_id, "object": "file", "deleted": True}



def _job_routes(app, state: ServerState, owner, max_waiting: int) -> None:
    store = state.finetune.store

    @app.post("/v1/fine_tuning/jobs")
    async def create(request: Request):
        body = await json_object(request)
        _check_create(body)
        hidden = state.finetune.hidden_from(owner(request))
        served = {name: s.resolved.spec for name, s in state.models.items()
                  if s.task == "generate" and name not in hidden}
        if await run_in_threadpool(store.waiting, owner(request)) >= max_waiting:
            raise ApiError(429, f"this key already has {max_waiting} jobs waiting; wait for "
                                f"one to start, or cancel one", type="rate_limit_error",
                           code="too_many_jobs")
        try:
            row = await run_in_threadpool(create_job, store, owner(request), body, served)
        except JobError as e:
            raise ApiError(400, e.error["message"], param=e.error["param"],
                           code=e.error["code"]) from None
        except UserError as e:
            raise ApiError(400, e.message) from None
        # Checking the files' contents loads the model's tokenizer: seconds, so off the
        # request; the job says validating_files until it is done.
        asyncio.get_running_loop().run_in_executor(None, validate_job, store, row)
        return objects.job_object(row)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int = 20):
        limit = _limit(limit)
        rows = await run_in_threadpool(store.jobs, owner(request), after, limit + 1)
        return objects.page([objects.job_object(r) for r in rows[:limit]], limit,
                            more=len(rows) > limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(request: Request, job_id: str):
        return objects.job_object(await _own_job(store, owner, request, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: str):
        return await _change(request, job_id, "cancel")

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause(request: Request, job_id: str):
        return await _change(request, job_id, "pause")

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume(request: Request, job_id: str):
        return await _change(request, job_id, "resume")

    async def _change(request: Request, job_id: str, what: str):
        job = await _own_job(store, owner, request, job_id)
        ok = await run_in_threadpool(_apply, store, job, what)
        if not ok:
            raise ApiError(400, f"a {job['status']} job cannot be {what}d"
                                if what != "cancel" else
                                f"a {job['status']} job cannot be cancelled",
                           param="fine_tuning_job_id", code="invalid_state")
        return objects.job_object(await _own_job(store, owner, request, job_id))



def _job_detail_routes(app, store, owner) -> None:
    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def events(request: Request, job_id: str, after: str | None = None,
                     limit: int = 20):
        await _own_job(store, owner, request, job_id)
        limit = _limit(limit)
        rows = await run_in_threadpool(store.events, job_id, after, limit + 1)
        return objects.page([objects.event_object(r) for r in rows[:limit]], limit,
                            more=len(rows) > limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(request: Request, job_id: str, after: str | None = None,
                          limit: int = 10):
        job = await _own_job(store, owner, request, job_id)
        limit = _limit(limit)
        rows = await run_in_threadpool(store.checkpoints, job_id, after, limit + 1)
        return objects.page([objects.checkpoint_object(r, job) for r in rows[:limit]], limit,
                            more=len(rows) > limit)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be from 1 to {MAX_LIMIT}, got {limit}", param="limit")
    return limit


async def json_object(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _check_create(body: dict) -> None:
    for name, kind in (("model", str), ("training_file", str), ("validation_file", str),
                       ("suffix", str), ("seed", int), ("metadata", dict),
                       ("method", dict), ("hyperparameters", dict)):
        value = body.get(name)
        if value is None and name not in ("model", "training_file"):
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ApiError(400, f"{name} must be a {kind.__name__}", param=name)
    if len(body["suffix"] if body.get("suffix") else "") > 64:
        raise ApiError(400, "suffix may be at most 64 characters", param="suffix")
    metadata = body.get("metadata") or {}
    if len(metadata) > 16 or not all(isinstance(k, str) and isinstance(v, str) and
                                     len(k) <= 64 and len(v) <= 512
                                     for k, v in metadata.items()):
        raise ApiError(400, "metadata holds at most 16 string pairs (keys up to 64 "
                            "characters, values up to 512)", param="metadata")


def _apply(store, job: dict, what: str) -> bool:
    job_id, status = job["id"], job["status"]
    if what == "cancel" and status in CANCELLABLE:
        done = store.update_job(job_id, when={"status": status}, status="cancelled",
                                finished_at=int(time.time()))
    elif what == "pause" and status == "queued":
        done = store.update_job(job_id, when={"status": status}, status="paused")
    elif what in ("cancel", "pause") and status == "running":
        done = store.update_job(job_id, when={"status": "running"}, wanted=what)
    elif what == "resume" and status == "paused":
        done = store.update_job(job_id, when={"status": "paused"}, status="queued")
    else:
        return False
    if done:
        store.add_event(job_id, {"cancel": "Cancellation requested",
                                 "pause": "Pause requested",
                                 "resume": "Job resumed; queued"}[what])
    return done


def _save_upload(store, owner: str, upload: UploadFile, purpose: str) -> dict:
    file_id = new_id("file")
    store.files_dir.mkdir(parents=True, exist_ok=True)
    path = store.files_dir / file_id
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    return store.add_file({"id": file_id, "owner": owner, "purpose": purpose,
                           "filename": (upload.filename or "upload.jsonl")[:512],
                           "bytes": path.stat().st_size, "created_at": int(time.time()),
                           "path": str(path)})


def _unlink(path: str) -> None:
    Path(path).unlink(missing_ok=True)
