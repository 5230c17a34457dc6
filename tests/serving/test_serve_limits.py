"""`lmtune serve` under bad input, without a key, and above its limits, in raw HTTP: every
mistake is a 4xx in the OpenAI error shape, overload is a fast 429, a client that leaves
stops its generation, and no request body (fuzzed) produces a 500 or a hang."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import chat_model, running_server, sse_events

from lmtune.cli import main
from lmtune.serving.batch import DecodeBatch, Row

pytestmark = pytest.mark.faults

CAP, CONCURRENCY, QUEUE = 64, 2, 2
# A chat template that reaches for Python internals to run a shell command.
EVIL_TEMPLATE = ("{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}"
                 "{{ ''.__class__.__mro__[1].__subclasses__() }}")


@pytest.fixture(scope="module")
def evil_marker(tmp_path_factory):
    return tmp_path_factory.mktemp("marker") / "PWNED"


@pytest.fixture(scope="module")
def server(lora_run, tiny_llama, tmp_path_factory, evil_marker):
    from transformers import AutoTokenizer

    evil = chat_model(tiny_llama, tmp_path_factory.mktemp("models") / "evil")
    tok = AutoTokenizer.from_pretrained(evil)
    tok.chat_template = EVIL_TEMPLATE.replace("{marker}", str(evil_marker))
    tok.save_pretrained(evil)
    chat = chat_model(tiny_llama, tmp_path_factory.mktemp("models") / "chat")
    with running_server([], [f"m={lora_run.out}", f"evil={evil}", f"chat={chat}"],
                        max_tokens_cap=CAP,
                        max_concurrency=CONCURRENCY, max_queue=QUEUE,
                        max_request_bytes=20_000) as (url, state):
        yield url, state


@pytest.fixture
def slow_steps(monkeypatch):
    """Each decoding step takes at least 50 ms, so requests stay in flight long enough to
    watch them."""
    step = DecodeBatch.step

    def slow(self):
        time.sleep(0.05)
        step(self)
    monkeypatch.setattr(DecodeBatch, "step", slow)


def _post(url: str, body, path: str = "/v1/completions", **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = kw.pop("headers", {"Content-Type": "application/json"})
    return httpx.post(url + path, content=content, headers=headers, timeout=30, **kw)


def _error(r: httpx.Response) -> dict:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


BAD = [  # body, status, the param named or a piece of the message
    ({"model": "m", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "m", "prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),
    ({"model": "m", "prompt": "hi", "max_tokens": CAP + 1}, 400, "cap of 64"),
    ({"model": "m", "prompt": "the " * 250, "max_tokens": 16}, 400, "context of 256"),
    ({"model": "m", "prompt": "the " * 300}, 400, "context of 256"),
    ({"model": "m", "prompt": "hi", "temperature": -0.1}, 400, "temperature"),
    ({"model": "m", "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"model": "m", "prompt": "hi", "top_p": 1.01}, 400, "top_p"),
    ({"model": "m", "prompt": ""}, 400, "prompt must not be empty"),
    ({"model": "m", "prompt": []}, 400, "prompt must not be empty"),
    ({"model": "m", "prompt": ["ok", ""]}, 400, "prompt must not be empty"),
    ({"model": "m", "prompt": [1, 99999]}, 400, "token-id prompts"),
    ({"model": "m", "prompt": "hi", "n": 0}, 400, "n"),
    ({"model": "m", "prompt": "hi", "n": 17}, 400, "n"),
    ({"model": "m", "prompt": ["a"] * 9, "n": 2}, 400, "choices per request"),
    ({"model": "m", "prompt": "hi", "stop": ["a"] * 9}, 400, "stop"),
    ({"model": "m", "prompt": "hi", "stop": [""]}, 400, "stop"),
    ({"model": "m", "prompt": "hi", "seed": 2**70}, 400, "seed"),
    ({"model": "m", "prompt": "hi", "logprobs": 3}, 400, "logprobs"),
    ({"model": "m", "prompt": "hi", "echo": True}, 400, "echo"),
    ({"prompt": "hi"}, 400, "model"),
    ({"model": "nope", "prompt": "hi"}, 404, "model"),
    ('{"model": "m", "prompt": "hi", "temperature": NaN}', 400, "temperature"),
    ('{"model": "m", "prompt": "hi", "max_tokens": Infinity}', 400, "max_tokens"),
    ('{"model": "m", "prompt": "hi"', 400, "not valid JSON"),
    ("[" * 5000, 400, "not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, None),
    ({"model": "m", "prompt": "x" * 30_000}, 413, "limit of 20000 bytes"),
]


@pytest.mark.parametrize("body, status, expect", BAD, ids=range(len(BAD)))
def test_bad_completion_requests_get_a_clear_4xx(server, body, status, expect):
    r = _post(server[0], body)
    assert r.status_code == status, r.text
    error = _error(r)
    if expect:
        assert expect == error["param"] or expect in error["message"], error


BAD_CHAT = [
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "image_url"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": CAP + 1},
     "cap"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}],
      "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}, "tools"),
]


@pytest.mark.parametrize("body, expect", BAD_CHAT, ids=range(len(BAD_CHAT)))
def test_bad_chat_requests_get_a_clear_400(server, body, expect):
    r = _post(server[0], body, "/v1/chat/completions")
    assert r.status_code == 400, r.text
    error = _error(r)
    assert expect == error["param"] or expect in error["message"], error


def test_unknown_routes_and_methods_answer_in_the_error_shape(server):
    assert httpx.get(server[0] + "/v2/nothing").status_code == 404
    r = httpx.get(server[0] + "/v1/completions")
    assert r.status_code == 405 and _error(r)["message"] == "method not allowed"


def test_chat_without_max_tokens_is_still_bounded(server):
    r = _post(server[0], {"model": "evil", "messages": [{"role": "user", "content": "x"}]},
              "/v1/chat/completions")
    assert r.status_code == 400  # the evil template fails (see below) before any generation
    body = {"model": "m", "prompt": "the", "max_tokens": None, "temperature": 1.5}
    r = _post(server[0], body)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= CAP


def test_a_chat_template_reaching_for_python_internals_fails_cleanly(server, evil_marker):
    r = _post(server[0], {"model": "evil", "messages": [{"role": "user", "content": "hi"}]},
              "/v1/chat/completions")
    assert r.status_code == 400
    assert "SecurityError" in _error(r)["message"] and "unsafe" in _error(r)["message"]
    assert not evil_marker.exists()


# --- auth ------------------------------------------------------------------------------------

def test_api_key_is_required_everywhere_but_health(lora_run):
    with running_server([lora_run.out], api_key="s3cret-key") as (url, _):
        assert httpx.get(url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Bearer s3cret-ke"}, {"authorization": "bearer x"}):
            r = httpx.get(url + "/v1/models", headers=headers)
            assert r.status_code == 401 and _error(r)["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
            # Refused before the body is even parsed.
            assert _post(url, "{not json", headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret-key"}
        assert httpx.get(url + "/v1/models", headers=ok).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        assert good.completions.create(model="lora", prompt="the", max_tokens=2).choices


def test_listening_beyond_loopback_needs_a_key_or_insecure(tiny_gpt2, capsys, monkeypatch):
    from lmtune.config import ServeConfig
    from lmtune.serving.server import check

    monkeypatch.delenv("LMTUNE_API_KEY", raising=False)
    assert main(["serve", str(tiny_gpt2), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0 would let other machines use this server")
    assert "--api-key" in err and "Traceback" not in err
    assert check(ServeConfig(host="0.0.0.0", insecure=True)) == []
    assert check(ServeConfig(host="0.0.0.0", api_key="k")) == ["k"]
    monkeypatch.setenv("LMTUNE_API_KEY", "from-env")
    assert check(ServeConfig(host="::")) == ["from-env"]
    assert check(ServeConfig(host="::1")) == ["from-env"]


def test_cli_refuses_a_missing_model_or_bad_name_before_binding(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["serve", "--name", "no-equals-sign"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["serve", "--max-concurrency", "0"]) == 2
    assert "--max-concurrency must be at least 1" in capsys.readouterr().err


# --- load ------------------------------------------------------------------------------------

def test_beyond_concurrency_and_queue_requests_get_429_at_once(server, monkeypatch):
    url, state = server
    engine = state.engine
    take = engine._take
    gate = threading.Event()

    def held():  # the engine starts nothing until the gate opens: requests pile up
        if not gate.is_set():
            time.sleep(0.005)
            return {}
        return take()
    monkeypatch.setattr(engine, "_take", held)
    body = {"model": "m", "prompt": "the cat", "max_tokens": 4}
    with ThreadPoolExecutor(CONCURRENCY + QUEUE) as pool:
        admitted = [pool.submit(_post, url, body) for _ in range(CONCURRENCY + QUEUE)]
        while state.in_flight < CONCURRENCY + QUEUE:
            time.sleep(0.01)
        r = _post(url, body)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert _error(r)["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).completions.create(
                model="m", prompt="hi", max_tokens=2)
        gate.set()
        assert [f.result().status_code for f in admitted] == [200] * (CONCURRENCY + QUEUE)
    assert state.in_flight == 0


def test_a_load_above_the_limits_gets_only_200s_and_fast_429s(server, slow_steps):
    url, state = server

    http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16))

    def one(i):
        start = time.monotonic()
        r = http.post(url + "/v1/completions", json={
            "model": "m", "prompt": "the cat", "max_tokens": 8, "seed": i, "stream": i % 2 == 1})
        if r.status_code == 200 and i % 2:
            assert sse_events(r.text)[-1] == "[DONE]"
        return r.status_code, time.monotonic() - start

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
        warm = _rss_mb()
        for _ in range(2):  # more of the same load must not grow the server's memory
            results += list(pool.map(one, range(48)))
    http.close()
    assert _rss_mb() - warm < 40, f"memory grew from {warm} MB to {_rss_mb()} MB"
    codes = [c for c, _ in results]
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= CONCURRENCY + QUEUE
    # A 429 is answered without waiting for any generation: faster than any answer.
    assert max(t for c, t in results if c == 429) < min(t for c, t in results if c == 200)
    # Nothing is left behind: no slot, no waiting job, no row in a batch.
    assert state.in_flight == 0
    assert not any(state.engine.waiting.values())
    assert not any(b.rows for b in state.engine.batches.values())


def _rss_mb() -> int:
    """Resident memory of this process, which runs the server in a thread."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))


def _busy(state) -> bool:
    return bool(state.in_flight or any(b.rows for b in state.engine.batches.values()))


def test_a_client_that_disconnects_stops_its_generation(server, slow_steps, monkeypatch):
    url, state = server
    generated: list[int] = []
    push = Row.push

    def counting(self, token):
        generated.append(len(self.tokens) + 1)
        return push(self, token)
    monkeypatch.setattr(Row, "push", counting)
    body = {"model": "m", "prompt": "the cat", "max_tokens": CAP, "stream": True,
            "temperature": 1.0, "seed": 0}
    for streaming in (True, False):
        generated.clear()
        with pytest.raises(httpx.ReadTimeout) if not streaming else nullcontext():
            with httpx.stream("POST", url + "/v1/completions", json=dict(
                    body, stream=streaming), timeout=0.4) as r:
                if streaming:
                    next(r.iter_lines())  # the first event, then hang up
        deadline = time.monotonic() + 5
        while _busy(state) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _busy(state)  # its rows left the batch at the next step
        assert 0 < max(generated) < CAP, generated  # stopped well before max_tokens


# --- fuzz ------------------------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) |
                     st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) |
                     st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_text = st.text(min_size=1, max_size=30)
# Plausible values, so that most bodies get past validation into generation ...
_valid = {
    "model": st.sampled_from(["m", "m", "chat", "evil", "nope"]),
    "prompt": _text | st.lists(_text, min_size=1, max_size=3) |
              st.lists(st.integers(0, 399), min_size=1, max_size=6),
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": _text}),
        min_size=1, max_size=3),
    "input": _text | st.lists(_text, min_size=1, max_size=3),
    "max_tokens": st.integers(1, 8), "max_completion_tokens": st.integers(1, 8),
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "n": st.integers(1, 3),
    "seed": st.integers(0, 2**32), "stream": st.booleans(),
    "stop": st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3),
                                                       max_size=3),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}
_required = {"/v1/completions": ("model", "prompt"),
             "/v1/chat/completions": ("model", "messages"), "/v1/classify": ("model", "input")}


@st.composite
def _requests(draw):
    """(path, body): a plausible body with up to two fields replaced by any JSON and maybe
    one required field dropped; now and then a body that is not even an object."""
    path = draw(st.sampled_from(["/v1/completions"] * 3 + ["/v1/chat/completions"] * 3 +
                                ["/v1/classify"]))
    required = _required[path]
    optional = {k: v for k, v in _valid.items()
                if k not in ("model", "prompt", "messages", "input")}
    body = draw(st.fixed_dictionaries({k: _valid[k] for k in required}, optional=optional))
    body.update(draw(st.dictionaries(st.sampled_from(sorted(_valid)), _json, max_size=2)))
    for key in draw(st.sets(st.sampled_from(required), max_size=1)):
        body.pop(key, None)
    whole = draw(st.sampled_from(["body"] * 8 + ["json", "bytes"]))
    if whole == "json":
        return path, json.dumps(draw(_json))
    if whole == "bytes":
        return path, draw(st.binary(max_size=40))
    return path, json.dumps(body)  # NaN and Infinity included, as Python's json writes them


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=_requests())
def test_fuzzed_bodies_never_get_a_500_or_hang(server, request):
    path, body = request
    r = _post(server[0], body, path)  # the 30 s timeout is the hang detector
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text[:300])
    if r.status_code != 200:
        _error(r)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert sse_events(r.text)[-1] == "[DONE]"
    else:
        assert r.json()["choices"]
