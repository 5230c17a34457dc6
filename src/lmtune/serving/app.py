"""The FastAPI application: auth, body limit, errors in the OpenAI shape, and the routes.

Every error a client can cause is answered as {"error": {"message", "type", "param",
"code"}} with a 4xx status (the official `openai` client raises its typed exceptions from
these); a 500 means a bug in lmtune.
"""

from __future__ import annotations

import hmac
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lmtune.errors import UserError
from lmtune.serving import routes
from lmtune.serving.finetune_api import add_finetune_routes
from lmtune.serving.finetune_service import owner_of
from lmtune.serving.downloads import DEFAULT_TYPE, GgufDownloads, file_name
from lmtune.serving.state import ApiError, ServerState
from lmtune.serving.web import SecurityHeaders, add_page, is_page_path
from lmtune.serving.web_api import add_web_routes

log = logging.getLogger("lmtune.serving")
OPEN_PATHS = ("/health",)  # answered without an API key: load balancers poll it
UPLOAD_PATH = "/v1/files"  # its bodies are data files: their own, larger limit


def _encodable(text: str | None) -> str | None:
    """A message may quote the request (a model name, a field); whatever it holds, the answer
    must encode as UTF-8, or the server fails while answering and drops the connection."""
    return None if text is None else str(text).encode("utf-8", "replace").decode("utf-8")


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": _encodable(message), "type": type, "param": _encodable(param),
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class AuthMiddleware:
    """`Authorization: Bearer KEY` on every path but /health, compared in constant time.
    Runs before the body is read, so an unauthenticated client cannot make the server parse
    anything."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.expected = [b"Bearer " + key.encode() for key in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or is_page_path(
                scope["path"]):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        # Every key compared, whichever matches: the time says nothing about which one.
        if not sum(hmac.compare_digest(given, key) for key in self.expected):
            response = error_response(401, "missing or wrong API key; send the header "
                                           "'Authorization: Bearer KEY'",
                                      type="authentication_error", code="invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, f"the request body is larger than this server's limit of "
                               f"{limit} bytes", code="request_too_large")


class BodyLimitMiddleware:
    """Bodies over the limit get 413: at once when Content-Length says so, else as soon as
    the bytes read pass it (a chunked body never gets buffered past the limit)."""

    def __init__(self, app, limit: int, upload_limit: int):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"] == UPLOAD_PATH else self.limit
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                return await _too_large(limit)(scope, receive, send)
        total = 0

        async def limited_receive():
            nonlocal total
            message = await receive()
            total += len(message.get("body", b""))
            if total > limit:  # FastAPI passes an HTTPException on to our handler
                raise HTTPException(413, detail=str(limit))
            return message
        return await self.app(scope, limited_receive, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem as 'field: what is wrong', and the field as OpenAI's `param`."""
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{param}: {msg}" if param else msg) + more, param


def create_app(state: ServerState) -> FastAPI:
    # No /docs or /openapi.json: they would be one more thing to guard and keep in step.
    app = FastAPI(title="lmtune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lmtune = state
    # Added last runs first: the key is checked before any byte of the body is read.
    app.add_middleware(BodyLimitMiddleware, limit=state.cfg.max_request_bytes,
                       upload_limit=state.cfg.max_upload_bytes)
    if state.api_keys:
        app.add_middleware(AuthMiddleware, keys=state.api_keys)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code,
                              exc.headers)

    @app.exception_handler(UserError)
    async def _user_error(request, exc: UserError):
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return error_response(400, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        # FastAPI raises a bare 400 when the body cannot be parsed at all (a RecursionError
        # on deeply nested JSON, a broken encoding).
        if exc.status_code == 413:
            return _too_large(int(exc.detail) if str(exc.detail).isdigit()
                              else state.cfg.max_request_bytes)
        message = {400: "the request body is not valid JSON (or nests too deeply)",
                   404: f"no route {request.url.path}",
                   405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")

    _add_model_routes(app, state)
    routes.add_routes(app, state)
    add_finetune_routes(app, state)
    add_web_routes(app, state)
    add_page(app)
    return app


_STARTED = int(time.time())


def _add_model_routes(app, state: ServerState) -> None:
    """/health, /v1/models (served and fine-tuned) and a model's GGUF download."""
    @app.get("/health")
    async def health():
        if state.status == "ready":
            return {"status": "ok", "models": list(state.models)}
        return JSONResponse({"status": state.status}, status_code=503)

    @app.get("/v1/models")
    async def models(request: Request):
        hidden = state.finetune.hidden_from(_owner(request))
        cards = [_model_card(s) for n, s in state.models.items() if n not in hidden]
        tuned = await run_in_threadpool(state.finetune.models, _owner(request))
        cards += [_tuned_card(n) for n in tuned if n not in state.models]
        return {"object": "list", "data": cards}

    def _owner(request: Request) -> str:
        return owner_of(state.api_keys, request.headers.get("authorization"))

    downloads = GgufDownloads(trust_remote_code=state.cfg.trust_remote_code,
                              allow_pickle=state.cfg.allow_pickle)

    @app.get("/v1/models/{name:path}/gguf")
    async def gguf(name: str, request: Request, type: str = DEFAULT_TYPE):
        if name not in state.models and f"{name}/gguf" in state.models:
            return _model_card(state.models[f"{name}/gguf"])  # a model named "x/gguf"
        if name not in state.models and state.finetune is not None:  # a fine-tuned model
            await run_in_threadpool(state.finetune.load, name, _owner(request), state)
        path = await downloads.file(_served(name, request), type)
        return FileResponse(path, media_type="application/octet-stream",
                            filename=file_name(name, type))

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        if name not in state.models and name in await run_in_threadpool(
                state.finetune.models, _owner(request)):
            return _tuned_card(name)
        return _model_card(_served(name, request))

    def _served(name: str, request: Request):
        if name not in state.models or name in state.finetune.hidden_from(_owner(request)):
            raise ApiError(404, f"the model {name!r} is not served here", param="model",
                           code="model_not_found")
        return state.models[name]


def _tuned_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": _STARTED, "owned_by": "lmtune",
            "task": "generate"}


def _model_card(served) -> dict:
    return {"id": served.name, "object": "model", "created": _STARTED, "owned_by": "lmtune",
            "task": served.task}

