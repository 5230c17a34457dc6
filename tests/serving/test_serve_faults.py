"""The server under the red team's cases: valid JSON that is no text (a lone UTF-16
surrogate), chat templates that never end or grow without bound, a SIGTERM while one renders,
and clients that send half a header and wait. Each is a 4xx or a closed connection, never a
500, a hang or a server that cannot stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import chat_model, classify_data, running_server

import lmtune
from lmtune.cli import main

pytestmark = pytest.mark.faults

SRC = Path(__file__).resolve().parents[2] / "src"
LOOPS = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
         "{{ messages[0]['content'] }}")
HUGE = "{{ 'a' * 300000000 }}"


def _with_template(tiny_llama: Path, folder: Path, template: str) -> Path:
    from transformers import AutoTokenizer

    chat_model(tiny_llama, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = template
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory, lora_run):
    models = tmp_path_factory.mktemp("models")
    data = classify_data(models / "labels.jsonl")
    clf = lmtune.train(data, model=str(tiny_llama), task="classify", label_column="label",
                       out=str(models / "clf"), max_steps=1, precision="fp32", device="cpu",
                       report=False)
    names = [f"m={lora_run.out}", f"clf={clf.out}",
             f"chat={chat_model(tiny_llama, models / 'chat')}",
             f"loops={_with_template(tiny_llama, models / 'loops', LOOPS)}",
             f"huge={_with_template(tiny_llama, models / 'huge', HUGE)}"]
    with running_server([], names) as (url, state):
        state.renderer.seconds = 1.0  # the tests need not wait the default time
        yield url, state


SURROGATE = "a\ud800b"
BODIES = [("/v1/completions", {"model": "m", "prompt": SURROGATE, "max_tokens": 2}, "prompt"),
          ("/v1/completions", {"model": "m", "prompt": ["ok", SURROGATE], "max_tokens": 2},
           "prompt"),
          ("/v1/chat/completions", {"model": "chat", "max_tokens": 2, "messages": [
              {"role": "user", "content": SURROGATE}]}, "messages"),
          ("/v1/classify", {"model": "clf", "input": [SURROGATE]}, "input")]


@pytest.mark.parametrize("path, body, param", BODIES)
def test_a_lone_surrogate_is_a_400_and_the_connection_stays_usable(path, body, param, server):
    import json

    url, _ = server
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as the escape \ud800
    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"].startswith(param) and "surrogate" in error["message"]
        again = client.post("/v1/completions", json={"model": "m", "prompt": "the",
                                                     "max_tokens": 2})
        assert again.status_code == 200  # the same keep-alive connection


@pytest.mark.parametrize("model", ["loops", "huge"])
def test_a_template_past_its_limits_is_a_400_and_the_server_serves_on(model, server):
    url, _ = server
    body = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    message = r.json()["error"]["message"]
    # A huge output is refused by its size or its time, whichever it reaches first.
    assert r.status_code == 400 and ("longer than 1 s" in message or "more than" in message)
    assert time.monotonic() - t0 < 60
    ok = httpx.post(url + "/v1/chat/completions", timeout=60, json=dict(body, model="chat"))
    assert ok.status_code == 200


def test_half_sent_headers_are_cut_off(server, monkeypatch):
    url, _ = server
    monkeypatch.setattr("lmtune.serving.server.HEADER_SECONDS", 1.0)  # 10 s as served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
        t0 = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, not left open
        assert time.monotonic() - t0 < 5
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # a slow but whole
        sock.sendall(b"GET /health HTTP/1.1\r\n")                        # request is fine
        time.sleep(0.5)
        sock.sendall(b"Host: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")


def test_generate_chat_with_a_hostile_template_is_one_error_line(tiny_llama, tmp_path,
                                                                 capsys):
    evil = _with_template(tiny_llama, tmp_path / "evil",
                          "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    code = main(["generate", str(evil), "--chat", "--prompt", "hi", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "chat template" in err and "SecurityError" in err


def test_sigterm_stops_the_server_while_a_template_render_is_stuck(tiny_llama, tmp_path):
    model = _with_template(tiny_llama, tmp_path / "loops", LOOPS)
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", str(model), "--port",
                             "0", "--precision", "fp32", "--device", "cpu",
                             "--drain-timeout", "2"], stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            assert line, "the server did not start"
            if "serving on " in line:
                url = line.split("serving on ")[1].split("/v1")[0]
        body = {"model": "loops", "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=120) as client:
            import threading
            stuck = threading.Thread(target=lambda: client.post(
                url + "/v1/chat/completions", json=body), daemon=True)
            stuck.start()
            time.sleep(3)  # the renderer has started and is inside the loops
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            assert code == 0, proc.stderr.read()[-3000:]  # what the server said on its way out
            assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
