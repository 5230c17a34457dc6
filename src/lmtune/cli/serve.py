"""`lmtune serve`: print what the server does; the serving itself is lmtune.serving."""

from __future__ import annotations

import sys

from lmtune.config import ServeConfig


def cmd_serve(cfg: ServeConfig) -> int:
    from lmtune.serving import serve

    def on_event(event: str, data: dict) -> None:
        if event == "loading":
            print(f"loading {', '.join(data['models'])} (GET {data['url']}/health answers 503 "
                  f"until ready)", file=sys.stderr, flush=True)
        elif event == "ready":
            for name, what in data["models"].items():
                print(f"  {name}: {what}", file=sys.stderr)
            print(f"serving on {data['url']}/v1 ({data['device']}, {data['precision']}, "
                  f"{data['weights_loaded']} set(s) of weights in memory)", file=sys.stderr)
            if data["device"] == "cpu":
                print(data["threads"], file=sys.stderr)
            if data["warning"]:
                print(data["warning"], file=sys.stderr)
            print(f"try: curl {data['url']}/v1/completions -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{next(iter(data['models']))}\", \"prompt\": \"Hello\", "
                  f"\"max_tokens\": 20}}'", file=sys.stderr)
            print(f"GGUF for llama.cpp, Ollama or LM Studio: GET {data['url']}/v1/models/NAME"
                  f"/gguf?type=q8_0 (exported on first request)", file=sys.stderr)
            print(f"fine-tuning: POST {data['url']}/v1/fine_tuning/jobs, or lmtune jobs create "
                  f"DATA --url {data['url']} ({data['workers']} worker process(es); store "
                  f"{data['store']})", file=sys.stderr, flush=True)
        elif event == "draining":
            print(f"stopping: finishing {data['in_flight']} request(s) in flight; a second "
                  f"signal stops at once", file=sys.stderr, flush=True)
        elif event == "stopped":
            print("stopped", file=sys.stderr, flush=True)

    serve(cfg, on_event=on_event)
    return 0


def cmd_worker(cfg) -> int:
    from lmtune.finetune.store import Store
    from lmtune.finetune.worker import run_worker

    store = Store(cfg.store)
    print(f"worker: taking jobs from {store.url}", file=sys.stderr, flush=True)
    return run_worker(store, name=cfg.name, once=cfg.once, parent=cfg.parent,
                      train={"device": cfg.device, "precision": cfg.precision,
                             **({"devices": cfg.devices} if cfg.devices > 1 else {})})
