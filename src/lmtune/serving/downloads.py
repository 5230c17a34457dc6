"""A served model as a GGUF file to download: `GET /v1/models/{name}/gguf?type=q8_0`, for
llama.cpp, Ollama or LM Studio on another machine.

The file is exported on first request (deploy.gguf, the same export as `lmtune export`) into
$LMTUNE_HOME/exports/, keyed by where the weights are, what their files are (name, size and
modification time, so a retrained run is exported again) and the type; later requests get the
file at once. One export per key runs at a time; a second request for it waits for the
first. The export runs off the event loop and loads its own copy of the weights, so serving
goes on meanwhile, at the cost of that copy's memory while it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from lmtune.deploy.gguf import TYPES
from lmtune.home import lmtune_home
from lmtune.serving.state import ApiError

DEFAULT_TYPE = "q8_0"  # what people download to run: half of f16, near f16's quality


class GgufDownloads:
    def __init__(self, folder: Path | None = None, *, trust_remote_code: bool = False,
                 allow_pickle: bool = False):
        self._folder = folder
        self.options = dict(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def folder(self) -> Path:
        return self._folder or lmtune_home() / "exports"  # read when used: tests move it

    async def file(self, served, type: str) -> Path:
        if type not in TYPES:
            raise ApiError(400, f"type {type!r} is not one lmtune exports; use one of "
                                f"{', '.join(TYPES)}", param="type")
        if served.task != "generate":
            raise ApiError(400, f"{served.name} is a text classifier; a GGUF file holds a "
                                f"language model", param="model")
        key = _key(served.resolved, type)
        target = self.folder / f"{key}.gguf"
        async with self._locks.setdefault(key, asyncio.Lock()):
            if not target.is_file():
                from lmtune.deploy.gguf import export_gguf

                self.folder.mkdir(parents=True, exist_ok=True)
                # A UserError (an architecture llama.cpp cannot run) becomes a 400 answer.
                await run_in_threadpool(export_gguf, served.resolved.spec, str(target),
                                        type=type, **self.options)
        return target


def file_name(name: str, type: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + f"-{type}.gguf"


def _key(resolved, type: str) -> str:
    parts = [type, resolved.path, str(resolved.adapter)]
    for folder in (resolved.path, resolved.adapter):
        local = Path(folder) if folder else None
        if local is not None and local.is_dir():
            parts.append(str(local.resolve()))
            parts += [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                      for p in sorted(local.iterdir()) if p.is_file()]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]
