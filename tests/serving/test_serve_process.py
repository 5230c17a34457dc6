"""`lmtune serve` as a process: SIGTERM while a stream runs turns /health to 503, refuses new
requests, lets the stream finish with [DONE], and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.faults

SRC = Path(__file__).resolve().parents[2] / "src"


def _long_model(tiny_llama: Path, folder: Path) -> Path:
    """The tiny Llama with a 2048-token context and greedy answers that never end: the logit
    of its end token is 0 while the largest of the other 400 is above 0."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_llama)
    config.max_position_embeddings = 2048
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[config.eos_token_id] = 0
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    return folder


def _start(model: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", str(model), "--port", "0",
                             "--precision", "fp32", "--device", "cpu",
                             "--max-tokens-cap", "1500"],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+)/v1", line)
        if found:
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def test_sigterm_while_streaming_finishes_the_stream_and_exits_0(tiny_llama, tmp_path):
    model = _long_model(tiny_llama, tmp_path / "long")
    proc, url = _start(model)
    try:
        body = {"model": "long", "prompt": "the cat", "max_tokens": 800, "temperature": 0,
                "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            events = [next(line for line in lines if line.startswith("data: "))]
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while httpx.get(url + "/health").status_code == 200:
                assert time.monotonic() < deadline, "/health never turned 503"
                time.sleep(0.02)
            assert httpx.get(url + "/health").json() == {"status": "draining"}
            refused = httpx.post(url + "/v1/completions", json=dict(body, stream=False))
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "server_unavailable"
            events += [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert '"finish_reason": "length"' in events[-2]  # all 800 tokens were generated
        assert len(events) > 100  # the stream went on well after the signal
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "stopping: finishing 1 request(s) in flight" in err and "stopped" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
