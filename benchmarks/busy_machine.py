"""Training on a busy machine: several `lmtune train` runs at once, HF Trainer beside itself,
and training beside `lmtune serve`, each against the same work alone, side by side in one run.

    python benchmarks/busy_machine.py                       # all four scenarios
    python benchmarks/busy_machine.py --scenarios 2 4 --steps 24
    python benchmarks/busy_machine.py --env OMP_WAIT_POLICY=PASSIVE  # compare a mechanism

Every training run is the same: a random 6-layer, 384-wide GPT-2 with the default model's
tokenizer, full fine-tuning in fp32 on the jokes that pyjokes ships, one 256-token block per
step, no validation, samples, report or intermediate checkpoints. Its speed is the median
tokens/s of its metrics.jsonl records after the first (which holds the warm-up); the start-up
(imports, loading) is the same with or without company and is left out.

Scenarios:
  2, 4   that many `lmtune train` runs started together; each run's speed against alone
         (targets: at least 0.40x with two, 0.18x with four; 0.5x and 0.25x is a fair share)
  hf2    two HF Trainer runs (best recipe: dynamic padding, length-grouped) at once, against
         one alone: what the same load does to the usual tool
  serve  `lmtune serve` answering a steady stream of short completions while one
         `lmtune train` runs: training speed against alone, p50 latency against an idle
         server (target: both within 2.5x)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BASE_ENV = dict(os.environ)  # what every child starts from (and --env adds to)
HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
sys.path.insert(0, str(HERE))
sys.path.insert(0, SRC)


def make_inputs(tmp: Path) -> tuple[str, Path, Path]:
    from train_vs_hf import make_model, short_texts
    texts = short_texts()
    data = tmp / "jokes.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    (tmp / "jokes.json").write_text(json.dumps(texts))
    return make_model("gpt2-6x384", tmp / "model"), data, tmp / "jokes.json"


def _env(extra: dict) -> dict:
    return {**BASE_ENV, "PYTHONPATH": SRC, **extra}


def start_train(model: str, data: Path, out: Path, steps: int, extra_env: dict,
                extra_args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmtune", "train", str(data), "--model", model,
           "--method", "full", "--precision", "fp32", "--block-size", "256",
           "--batch-size", "1", "--max-steps", str(steps), "--lr", "5e-4", "--val-split", "0",
           "--sample-every", "0", "--no-report", "--save-every", str(10**6), "--log-every",
           "2", "--out", str(out), "--overwrite", *extra_args]
    return subprocess.Popen(cmd, env=_env(extra_env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def train_speed(out: Path) -> float:
    records = [json.loads(x) for x in (out / "metrics.jsonl").open() if '"tokens_per_s"' in x]
    if len(records) < 2:
        raise SystemExit(f"{out}: too few metrics records to measure")
    return statistics.median(r["tokens_per_s"] for r in records[1:])


def threads_line(proc: subprocess.Popen) -> str:
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        raise SystemExit(f"a training run failed:\n{err[-2000:]}")
    return next((ln for ln in err.splitlines() if ln.startswith("threads:")), "")


def together(n: int, model: str, data: Path, tmp: Path, steps: int, env: dict,
             args: list[str]) -> list[float]:
    outs = [tmp / f"run{n}-{i}" for i in range(n)]
    procs = [start_train(model, data, o, steps, env, args) for o in outs]
    lines = [threads_line(p) for p in procs]
    changes = [[r["threads"] for r in map(json.loads, (o / "metrics.jsonl").open())
                if "threads" in r] for o in outs]
    print(f"  {n} at once: {lines[0]}; threads over each run: {changes}", flush=True)
    return [train_speed(o) for o in outs]


def hf_speed(model: str, texts: Path, tmp: Path, n: int, steps: int, env: dict) -> list[float]:
    """HF Trainer's tokens/s, n runs at once: real tokens over the train() time."""
    specs = [{"name": f"hf{i}", "kind": "hf", "variant": "b", "model": model,
              "train": str(texts), "out": str(tmp / f"hf{n}-{i}"), "epochs": 1, "lr": 5e-4,
              "lora": False, "bf16": False, "max_steps": steps} for i in range(n)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "train_vs_hf.py"), "--child",
                               json.dumps(s)], env=_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for s in specs]
    results = []
    for p in procs:
        out = p.stdout.read().strip().splitlines()
        if p.wait() != 0:
            raise SystemExit("an HF run failed")
        r = json.loads(out[-1])
        results.append(r["real_tokens"] / r["seconds"])
    return results


# --------------------------------------------------------------------------- serving

def start_server(model: str, env: dict) -> tuple[subprocess.Popen, str]:
    import re
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", model, "--port", "0"],
                            env=_env(env), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"serving on (http://\S+)/v1", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
    raise SystemExit(f"the server did not start (exit code {proc.wait()})")


def latencies(url: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """A steady stream: one short completion after another, with a pause between."""
    out, t_end = [], time.perf_counter() + seconds
    with httpx.Client(timeout=120) as client:
        name = client.get(f"{url}/v1/models").json()["data"][0]["id"]
        i = 0
        while time.perf_counter() < t_end and not (stop and stop.is_set()):
            t0 = time.perf_counter()
            r = client.post(f"{url}/v1/completions", json={
                "model": name, "prompt": "Why do programmers", "max_tokens": 8,
                "temperature": 0.7, "seed": i})
            r.raise_for_status()
            out.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.5)
    return out


def beside_serving(model: str, data: Path, tmp: Path, steps: int, env: dict,
                   args: list[str], alone: float) -> dict:
    server, url = start_server(model, env)
    try:
        latencies(url, 5)  # warm-up
        idle = statistics.median(latencies(url, 20))
        proc = start_train(model, data, tmp / "beside", steps, env, args)
        done = threading.Event()
        threading.Thread(target=lambda: (proc.wait(), done.set()), daemon=True).start()
        time.sleep(15)  # past the trainer's start-up, into its steps
        busy = latencies(url, 10**6, stop=done)
        threads_line(proc)
        speed = train_speed(tmp / "beside")
    finally:
        server.terminate()
        server.wait()
    return {"train_ratio": speed / alone, "p50_idle_s": idle,
            "p50_busy_s": statistics.median(busy), "latency_ratio":
            statistics.median(busy) / idle, "requests_during_training": len(busy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="*", default=["2", "4", "hf2", "serve"])
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for every process")
    ap.add_argument("--train-args", nargs="*", default=[], help="extra `lmtune train` flags")
    args = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model, data, texts = make_inputs(tmp)
        alone = together(1, model, data, tmp, args.steps, env, args.train_args)[0]
        print(f"lmtune alone: {alone:.0f} tok/s", flush=True)
        for s in args.scenarios:
            if s.isdigit():
                speeds = together(int(s), model, data, tmp, args.steps, env, args.train_args)
                print(f"lmtune, {s} at once: " + ", ".join(f"{v:.0f}" for v in speeds)
                      + " tok/s; against alone " + ", ".join(f"{v / alone:.2f}x"
                                                             for v in speeds), flush=True)
            elif s == "hf2":
                one = hf_speed(model, texts, tmp, 1, args.steps, env)[0]
                two = hf_speed(model, texts, tmp, 2, args.steps, env)
                print(f"HF best alone: {one:.0f} tok/s; 2 at once: " + ", ".join(
                    f"{v:.0f} ({v / one:.2f}x)" for v in two), flush=True)
            elif s == "serve":
                r = beside_serving(model, data, tmp, args.steps * 3, env, args.train_args,
                                   alone)
                print(f"training beside serving: {r['train_ratio']:.2f}x of alone; serving "
                      f"p50 {r['p50_busy_s']:.3f} s against {r['p50_idle_s']:.3f} s idle "
                      f"({r['latency_ratio']:.2f}x, {r['requests_during_training']} "
                      f"requests)", flush=True)


if __name__ == "__main__":
    main()
