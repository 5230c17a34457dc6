"""`lmtune serve` under a bounded loopback load: the same requests one by one, then from
16 concurrent clients, against the default model.

    python benchmarks/serve_load.py                        # 200 requests, 16 at a time
    python benchmarks/serve_load.py --requests 64 --max-tokens 16 --model runs/jokes

The server runs as its own process (`python -m lmtune serve MODEL --port 0`), so its memory
is its own; the clients are plain HTTP (httpx) in this process. Prompts are the openings of
the jokes that pyjokes ships, each request with its own seed, so both passes ask for exactly
the same samples. Prints requests/s, generated tokens/s, p50/p95 latency of each pass, and
the speedup of concurrent (dynamically batched) serving over one at a time. Any 5xx, or any
request that does not succeed, fails the run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[1] / "src"


def prompts(n: int) -> list[str]:
    import pyjokes

    jokes = pyjokes.get_jokes("en", "all")
    return [" ".join(jokes[i % len(jokes)].split()[:4]) for i in range(n)]


def start_server(model: str, concurrency: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "lmtune", "serve", model, "--port", "0",
           "--max-concurrency", str(concurrency), "--max-queue", "1024", *extra]
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        sys.stderr.write("  server: " + line)
        found = re.search(r"serving on (http://\S+)/v1", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
    raise SystemExit(f"the server did not start (exit code {proc.wait()})")


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def run_pass(url: str, model: str, texts: list[str], max_tokens: int, clients: int) -> dict:
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients))
    latencies: list[float] = []
    tokens = 0
    failures: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal tokens
        body = {"model": model, "prompt": texts[i], "max_tokens": max_tokens,
                "temperature": 0.8, "seed": i}
        t0 = time.perf_counter()
        r = http.post(url + "/v1/completions", json=body)
        elapsed = time.perf_counter() - t0
        with lock:
            if r.status_code != 200:
                failures.append(f"{r.status_code}: {r.text[:200]}")
                return
            latencies.append(elapsed)
            tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(texts))))
    wall = time.perf_counter() - start
    http.close()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    latencies.sort()
    return {"wall": wall, "tokens": tokens, "rps": len(texts) / wall, "tps": tokens / wall,
            "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra flag for lmtune serve, e.g. --server-arg=--precision=fp32")
    args = ap.parse_args()

    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    proc, url = start_server(args.model, args.concurrency, args.server_arg)
    try:
        name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        texts = prompts(args.requests)
        run_pass(url, name, texts[:2], args.max_tokens, 1)  # warm up
        one = run_pass(url, name, texts, args.max_tokens, 1)
        many = run_pass(url, name, texts, args.max_tokens, args.concurrency)
        rss, peak = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\n{args.requests} requests, max_tokens {args.max_tokens}, model {args.model}, "
          f"no errors")
    print(f"{'pass':<18}{'wall s':>8}{'req/s':>8}{'tok/s':>8}{'tokens':>8}{'p50 s':>8}"
          f"{'p95 s':>8}")
    for label, r in (("one at a time", one), (f"{args.concurrency} concurrent", many)):
        print(f"{label:<18}{r['wall']:>8.1f}{r['rps']:>8.2f}{r['tps']:>8.1f}{r['tokens']:>8}"
              f"{r['p50']:>8.2f}{r['p95']:>8.2f}")
    print(f"speedup of concurrent over one at a time: {one['wall'] / many['wall']:.2f}x "
          f"in wall time, {many['tps'] / one['tps']:.2f}x in tokens/s")
    print(f"server memory: {rss:.0f} MB resident, {peak:.0f} MB peak")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
