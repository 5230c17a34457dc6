"""The web page's forms: the training options with the typed config's defaults and help, a
data file shown as training will see it, a dry-run estimate, and the Ollama Modelfile of a
model to download.

The estimate is `lmtune train --dry-run --json` in a child process: it loads the model and
times real optimizer steps, which must not stall this process's event loop nor share its
threads with the requests being served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
from collections import OrderedDict
from pathlib import Path

from fastapi import Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from lmtune.config import TrainConfig
from lmtune.config.commands import InspectConfig
from lmtune.config.defaults import DATA_FORMATS, DEFAULT_LR, DEFAULT_MODEL
from lmtune.errors import UserError
from lmtune.serving.finetune_api import json_object
from lmtune.serving.state import ApiError, ServerState

# The New-job form's fields, in its order: each shown with TrainConfig's default and help.
FORM_FIELDS = ("model", "method", "epochs", "lr", "batch_size", "val_split", "beta",
               "template", "prompt_template", "completion_template", "column", "format",
               "split_on", "block_size", "seed")
DATA_FIELDS = ("format", "column", "template", "prompt_template", "completion_template",
               "split_on")
PREVIEW_EXAMPLES = 8
ESTIMATE_TIMEOUT_S = 600.0
TOKENIZERS_KEPT = 4  # loaded tokenizers kept for previews, most recently used


def form_fields() -> list[dict]:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out = []
    for name in FORM_FIELDS:
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # The page's fields are named as the flags are, without the dashes.
        text = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", " "),
                      f.metadata["help"])
        out.append({"name": name, "default": default, "help": text,
                    "choices": list(f.metadata["choices"] or ()) or None,
                    "type": getattr(f.type, "__name__", str(f.type))})
    return out


def data_format(filename: str, given: str | None) -> str:
    """An uploaded file is stored without its name, so its format comes from the name."""
    from lmtune.data.readers import resolve_format

    return resolve_format(Path(filename), given)


class Tokenizers:
    def __init__(self, trust_remote_code: bool):
        self.trust_remote_code = trust_remote_code
        self.kept: OrderedDict = OrderedDict()

    def get(self, spec: str):
        """(tokenizer, context, parameters) of a model, loaded once."""
        if spec in self.kept:
            self.kept.move_to_end(spec)
            return self.kept[spec]
        from lmtune.models.load import context_length, load_tokenizer, peek_config
        from lmtune.models.resolve import resolve

        resolved = resolve(spec)
        entry = (load_tokenizer(resolved, self.trust_remote_code),
                 context_length(peek_config(resolved, self.trust_remote_code)))
        self.kept[spec] = entry
        while len(self.kept) > TOKENIZERS_KEPT:
            self.kept.popitem(last=False)
        return entry


def add_form_routes(app, state: ServerState, owner) -> None:
    tokenizers = Tokenizers(state.cfg.trust_remote_code)

    @app.get("/lmtune/config")
    async def config():
        return {"fields": form_fields(), "default_lr": DEFAULT_LR,
                "default_model": DEFAULT_MODEL, "formats": list(DATA_FORMATS),
                "served": list(state.models)}

    @app.post("/lmtune/files/{file_id}/preview")
    async def preview(request: Request, file_id: str):
        body = await json_object(request)
        row = await _own_file(state, owner(request), file_id)
        return await run_in_threadpool(_preview, tokenizers, row,
                                       _served_model(state, body, owner(request)))

    @app.post("/lmtune/estimate")
    async def estimate(request: Request):
        body = await json_object(request)
        row = await _own_file(state, owner(request), body.get("training_file"))
        return await _estimate(row, _served_model(state, body, owner(request)))

    @app.get("/lmtune/models/{name:path}/modelfile")
    async def modelfile(request: Request, name: str, gguf: str = "model.gguf"):
        spec = await run_in_threadpool(_model_spec, state, owner(request), name)
        from lmtune.deploy.ollama import ollama_modelfile

        try:
            text, _ = await run_in_threadpool(
                ollama_modelfile, spec, Path(gguf).name or "model.gguf",
                trust_remote_code=state.cfg.trust_remote_code)
        except UserError as e:
            raise ApiError(400, e.message) from None
        return PlainTextResponse(text, headers={
            "Content-Disposition": 'attachment; filename="Modelfile"'})


async def _own_file(state: ServerState, owner: str, file_id) -> dict:
    if state.finetune is None:
        raise ApiError(404, "this server does not keep files", code="file_not_found")
    row = (await run_in_threadpool(state.finetune.store.file, file_id, owner)
           if isinstance(file_id, str) else None)
    if row is None:
        raise ApiError(404, f"no such file: {file_id}", param="file_id", code="file_not_found")
    return row


def _served_model(state: ServerState, body: dict, owner: str) -> dict:
    """A served model's name stands for its weights, as in a fine-tuning job."""
    name = body.get("model")
    hidden = state.finetune.hidden_from(owner) if state.finetune is not None else set()
    if isinstance(name, str) and name in state.models and name not in hidden:
        return {**body, "model": state.models[name].resolved.spec}
    return body


def _text_option(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "" or (name != "split_on" and not str(value).strip()):
        return None
    if not isinstance(value, str) or len(value) > 10_000:
        raise ApiError(400, f"{name} must be a string (at most 10000 characters)", param=name)
    return value


def _data_options(row: dict, body: dict) -> dict:
    options = {name: _text_option(body, name) for name in DATA_FIELDS}
    try:
        options["format"] = data_format(row["filename"], options["format"])
    except UserError as e:
        raise ApiError(400, e.message + (f" ({e.hint})" if e.hint else ""),
                       param="format") from None
    return options


def _preview(tokenizers: Tokenizers, row: dict, body: dict) -> dict:
    from lmtune.analysis.data_preview import data_preview

    model = _text_option(body, "model") or DEFAULT_MODEL
    options = _data_options(row, body)
    n = body.get("n", PREVIEW_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 50:
        raise ApiError(400, "n must be an integer from 1 to 50", param="n")
    try:
        tokenizer, context = tokenizers.get(model)
        opts = InspectConfig(data=row["path"], model=model, **options)
        result = data_preview(opts, tokenizer, model=model, n=n, context=context,
                              split=(TrainConfig.val_split, TrainConfig.seed))
    except UserError as e:
        message = e.message + (f" ({e.hint})" if e.hint else "")
        raise ApiError(400, _field_names(message.replace(row["path"], row["filename"]))) \
            from None
    result["report"]["data"] = row["filename"]  # never the server's path
    return result


def _field_names(message: str) -> str:
    """lmtune's messages name its flags (--template); the page's fields are named without
    the dashes."""
    for name in DATA_FIELDS + FORM_FIELDS:
        message = message.replace(f"--{name.replace('_', '-')} ", f"{name.replace('_', ' ')} ")
    return message


def _train_args(row: dict, body: dict) -> list[str]:
    args = [row["path"], "--dry-run", "--json"]
    options = _data_options(row, body)
    flags = {"model": _text_option(body, "model") or DEFAULT_MODEL, **options}
    for name in ("method", "epochs", "lr", "batch_size", "val_split", "block_size", "seed",
                 "beta"):
        value = body.get(name)
        if value not in (None, ""):
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ApiError(400, f"{name} must be a number or a string", param=name)
            flags[name] = value
    if body.get("kind") == "dpo":  # OpenAI's method type, as a job trains it
        flags.update(task="preference", loss="dpo")
    else:
        flags.pop("beta", None)
    for name, value in flags.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


async def _estimate(row: dict, body: dict) -> dict:
    args = _train_args(row, body)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lmtune", "train", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(child.communicate(), ESTIMATE_TIMEOUT_S)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        child.kill()
        await child.wait()
        raise ApiError(400, f"the estimate took more than {ESTIMATE_TIMEOUT_S:.0f} s") from None
    if child.returncode != 0:
        lines = [x for x in err.decode("utf-8", "replace").splitlines() if x.strip()]
        message = lines[-1] if lines else f"the dry run failed (exit {child.returncode})"
        raise ApiError(400, _field_names(message.replace(row["path"], row["filename"])))
    try:
        result = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ApiError(400, "the dry run printed no estimate") from None
    if result.get("data"):
        result["data"]["data"] = row["filename"]
    return result


def _model_spec(state: ServerState, owner: str, name: str) -> str:
    hidden = state.finetune.hidden_from(owner) if state.finetune is not None else set()
    if name in state.models and name not in hidden:
        return state.models[name].resolved.spec
    if name.startswith("run:") and state.finetune is not None:
        run = state.finetune.cli_run(name, state.cfg.runs)
        if run is not None and run.info():
            return str(run.path)
    folder = state.finetune.model_folder(name, owner) if state.finetune is not None else None
    if folder is None:
        raise ApiError(404, f"the model {name!r} is not served here", param="model",
                       code="model_not_found")
    return str(folder)
