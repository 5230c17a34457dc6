"""/v1/completions, /v1/chat/completions and /v1/classify.

Each generation request goes: 503 if not serving -> 404 unknown model -> 400 for options past
a limit -> 429 if full (before the prompt is even tokenized) -> 400 for a bad prompt or one
that does not fit the context -> a Job for the engine -> one JSON answer, or server-sent events
that always end with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from lmtune.models.generate import encode_prompt
from lmtune.serving import classify as serve_classify
from lmtune.serving.chat import encode_chat
from lmtune.serving.jobs import Job, Sampling
from lmtune.serving.schemas import (MAX_CHOICES, ChatRequest, ClassifyRequest,
                                    CompletionRequest)
from lmtune.serving.state import ApiError, ServerState

MAX_CLASSIFY_INPUTS = 256


def sse(data) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def find_model(state: ServerState, request: Request, name: str, task: str):
    """A served model, or a fine-tuned one loaded now, on its first request; another key's
    fine-tuned model is not found."""
    if state.finetune is None:
        return state.lookup(name, task)
    from lmtune.serving.finetune_service import owner_of

    owner = owner_of(state.api_keys, request.headers.get("authorization"))
    if name not in state.models:
        await run_in_threadpool(state.finetune.load, name, owner, state)
    return state.lookup(name, task, state.finetune.hidden_from(owner))


def add_routes(app, state: ServerState) -> None:

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        state.check_serving()
        served = await find_model(state, request, body.model, "generate")
        _check_options(state, body, body.max_tokens)
        slot = state.admit()
        try:
            prompts = await run_in_threadpool(_encode_prompts, served, body)
            sampling = _sampling(state, served, body, prompts, body.max_tokens, "prompt")
            job = Job(served, prompts, body.n, sampling, asyncio.get_running_loop())
        except BaseException:
            slot.release()
            raise
        return await _answer(request, state, slot, job, body, "text")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        state.check_serving()
        served = await find_model(state, request, body.model, "generate")
        max_tokens = body.max_completion_tokens or body.max_tokens
        _check_options(state, body, max_tokens)
        slot = state.admit()
        try:
            prompt = await run_in_threadpool(encode_chat, served, body.messages,
                                             state.renderer)
            sampling = _sampling(state, served, body, [prompt], max_tokens, "messages")
            job = Job(served, [prompt], body.n, sampling, asyncio.get_running_loop())
        except BaseException:
            slot.release()
            raise
        return await _answer(request, state, slot, job, body, "chat")

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        state.check_serving()
        served = state.lookup(body.model, "classify")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or any(not t for t in texts):
            raise ApiError(400, "input must be a non-empty string or list of them",
                           param="input")
        if len(texts) > MAX_CLASSIFY_INPUTS:
            raise ApiError(400, f"at most {MAX_CLASSIFY_INPUTS} inputs per request",
                           param="input")
        slot = state.admit()
        try:
            data, n_tokens = await run_in_threadpool(serve_classify.predict, served, texts)
        finally:
            slot.release()
        return {"object": "list", "model": served.name, "data": data,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


# --- checking a request ------------------------------------------------------------------------

def _encode_prompts(served, body: CompletionRequest) -> list[list[int]]:
    items = body.prompt_list()
    if not items:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    if len(items) * body.n > MAX_CHOICES:
        raise ApiError(400, f"prompts x n is {len(items) * body.n}; at most {MAX_CHOICES} "
                            f"choices per request", param="n")
    vocab = served.vocab
    prompts = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise ApiError(400, "prompt must not be empty", param="prompt")
            # The start token training put before every example comes first, as in generate.
            prompts.append(encode_prompt(served.tokenizer, item))
        else:
            if not item or any(not 0 <= t < vocab for t in item):
                raise ApiError(400, f"token-id prompts must be non-empty lists of ids in "
                                    f"[0, {vocab})", param="prompt")
            prompts.append(list(item))
    return prompts


def _check_options(state: ServerState, body, max_tokens: int | None) -> None:
    """What can be checked before the prompt is read."""
    name = body.unsupported()
    if name:
        raise ApiError(400, f"{name} is not supported by lmtune serve", param=name)
    cap = state.cfg.max_tokens_cap
    if max_tokens is not None and max_tokens > cap:
        raise ApiError(400, f"max_tokens {max_tokens} is above this server's cap of {cap}",
                       param="max_tokens")


def _sampling(state: ServerState, served, body, prompts: list[list[int]],
              max_tokens: int | None, prompt_param: str) -> Sampling:
    cap = state.cfg.max_tokens_cap
    longest = max(len(p) for p in prompts)
    room = served.context - longest
    if room < 1:
        raise ApiError(400, f"the prompt has {longest} tokens, which fills the model's context "
                            f"of {served.context}", param=prompt_param,
                       code="context_length_exceeded")
    if max_tokens is None:  # chat without a limit: as much as fits, never unbounded
        max_tokens = min(cap, room)
    if longest + max_tokens > served.context:
        raise ApiError(400, f"the prompt ({longest} tokens) plus max_tokens ({max_tokens}) is "
                            f"more than the model's context of {served.context} tokens",
                       param="max_tokens", code="context_length_exceeded")
    return Sampling(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                    stop=tuple(body.stop or ()), presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty, seed=body.seed)


# --- answering -----------------------------------------------------------------------------------

async def _answer(request: Request, state: ServerState, slot, job: Job, body, kind: str):
    try:
        state.engine.submit(job)
    except BaseException:
        slot.release()
        raise
    meta = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()), "model": job.served.name}
    prompt_tokens = sum(len(p) for p in job.prompts)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _JobStream(_stream(job, slot, kind, meta, prompt_tokens, include_usage), job,
                          slot, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache"})
    try:
        result = await _collect(job, request)
    finally:
        job.cancel()
        slot.release()
    if result is None:  # the client went away; nobody reads this
        return Response(status_code=499)
    texts, ends = result
    usage = _usage(prompt_tokens, ends)
    if kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "finish_reason": ends[i][0], "logprobs": None} for i in range(job.choices)]
        return dict(meta, object="chat.completion", choices=choices, usage=usage)
    choices = [{"index": i, "text": texts[i], "finish_reason": ends[i][0], "logprobs": None}
               for i in range(job.choices)]
    return dict(meta, object="text_completion", choices=choices, usage=usage)


class _JobStream(StreamingResponse):
    """Releases the request's slot however the response ends. A generator's own `finally`
    is not enough: one that never started (the client left before the first byte) never runs
    it, and its slot would be taken forever."""

    def __init__(self, content, job: Job, slot, **kwargs):
        super().__init__(content, **kwargs)
        self._job, self._slot = job, slot

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()
            self._slot.release()


def _usage(prompt_tokens: int, ends: dict) -> dict:
    # completion_tokens counts every token generated, the end-of-text token included.
    completion = sum(n for _, n in ends.values())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


async def _watch_disconnect(request: Request, job: Job) -> None:
    """The body is read, so the next ASGI message is the client going away (if it does)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            job.queue.put_nowait(("gone",))
            return


async def _collect(job: Job, request: Request):
    texts = [[] for _ in range(job.choices)]
    ends: dict[int, tuple[str, int]] = {}
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    try:
        while len(ends) < job.choices:
            event = await job.queue.get()
            if event[0] == "text":
                texts[event[1]].append(event[2])
            elif event[0] == "end":
                ends[event[1]] = (event[2], event[3])
            elif event[0] == "error":
                raise ApiError(500, event[1], type="server_error")
            elif event[0] == "gone":
                return None
    finally:
        watcher.cancel()
    return ["".join(t) for t in texts], ends


async def _stream(job: Job, slot, kind: str, meta: dict, prompt_tokens: int,
                  include_usage: bool):
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(index: int, text: str | None = None, finish: str | None = None,
              role: bool = False) -> str:
        if kind == "chat":
            delta = ({"role": "assistant", "content": ""} if role
                     else {} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish,
                      "logprobs": None}
        return sse(dict(meta, object=obj, choices=[choice]))

    # A client that disconnects cancels this generator at its `await`: `finally` then stops
    # the job's rows at the engine's next step.
    try:
        if kind == "chat":
            for i in range(job.choices):
                yield chunk(i, role=True)
        ends: dict[int, tuple[str, int]] = {}
        failed = False
        while len(ends) < job.choices:
            event = await job.queue.get()
            if event[0] == "text":
                yield chunk(event[1], event[2])
            elif event[0] == "end":
                ends[event[1]] = (event[2], event[3])
                yield chunk(event[1], finish=event[2])
            elif event[0] == "error":
                yield sse({"error": {"message": event[1], "type": "server_error",
                                     "param": None, "code": None}})
                failed = True
                break
        if include_usage and not failed:
            yield sse(dict(meta, object=obj, choices=[], usage=_usage(prompt_tokens, ends)))
        yield sse("[DONE]")
    finally:
        job.cancel()
        slot.release()
