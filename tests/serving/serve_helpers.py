"""Shared by the serve tests: a real lmtune server (uvicorn on a free loopback port) in a
background thread, and the tiny models it serves."""

from __future__ import annotations

import json
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# A minimal ChatML-style template, as instruct models ship.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@contextmanager
def running_server(models: list[str] = (), names: list[str] = (), **options):
    """Yields (base_url, state) of a server running in this process, on 127.0.0.1:<free>."""
    from lmtune import config as config_mod
    from lmtune.config import ServeConfig
    from lmtune.serving.server import build_server, prepare

    # No worker processes unless a test asks: most serve tests train nothing. A store of
    # the test's own, never the user's $LMTUNE_HOME/service (and its fine-tuned models).
    import os
    import tempfile

    store = Path(os.environ.get("LMTUNE_HOME") or tempfile.mkdtemp()) / "service" / "lmtune.db"
    options = dict(dict(port=0, precision="fp32", device="cpu", workers=0,
                        store=f"sqlite:///{store}"), **options)
    cfg = config_mod.build(ServeConfig, dict(options, models=[str(m) for m in models],
                                             names=list(names)))
    prepared = prepare(cfg)
    server = build_server(prepared)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [prepared.sock]},
                              daemon=True)
    thread.start()
    state = prepared.state
    deadline = time.monotonic() + 60
    while state.status == "loading" and time.monotonic() < deadline:
        time.sleep(0.02)
    if state.status != "ready":
        raise RuntimeError(f"server did not start: {state.status} {state.load_error!r}")
    try:
        yield prepared.url, state
    finally:
        server.should_exit = True
        thread.join(30)
        state.finetune.stop()
        if state.engine is not None:
            state.engine.stop()
        state.renderer.close()
        prepared.sock.close()


def chat_model(tiny_llama: Path, folder: Path) -> Path:
    """The tiny Llama with a chat template in its tokenizer."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_llama, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def classify_data(path: Path) -> Path:
    rows = [{"text": t, "label": lab} for t, lab in [
        ("the cat sat on the mat", "cat"), ("a dog ran in the park", "dog"),
        ("the cat sat", "cat"), ("the dog ran", "dog")] * 10]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
