"""`lmtune jobs ...`: the fine-tuning API of a running `lmtune serve`, from the terminal."""

from __future__ import annotations

import json
import time

from lmtune.errors import UserError


def _client(cfg):
    from lmtune.finetune.client import JobsClient

    return JobsClient(cfg.url, cfg.api_key)


def _line(job: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created_at"]))
    model = job["fine_tuned_model"] or job["model"]
    error = f"  {job['error']['message']}" if job.get("error") else ""
    return f"{job['id']}  {job['status']:<16} {when}  {model}{error}"


def _event(event: dict) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(event["created_at"]))
    return f"{when}  {event['message']}"


def _print(cfg, obj: dict, text: str) -> None:
    print(json.dumps(obj, ensure_ascii=False) if cfg.json else text)


def cmd_create(cfg) -> int:
    if not cfg.data:
        raise UserError("jobs create needs a data file",
                        hint="lmtune jobs create chats.jsonl --model smollm2-135m")
    hyper = {k: v for k, v in (("n_epochs", cfg.epochs), ("batch_size", cfg.batch_size),
                               ("learning_rate_multiplier", cfg.lr_multiplier))
             if v is not None}
    client = _client(cfg)
    job = client.create(cfg.data, cfg.model, validation=cfg.validation, suffix=cfg.suffix,
                        seed=cfg.seed, hyperparameters=hyper or None)
    _print(cfg, job, _line(job))
    return _follow(cfg, client, job["id"]) if cfg.wait else 0


def _follow(cfg, client, job_id: str) -> int:
    for event in client.follow(job_id):
        _print(cfg, event, _event(event))
    job = client.show(job_id)
    _print(cfg, job, _line(job))
    return 0 if job["status"] == "succeeded" else 1


def cmd_list(cfg) -> int:
    for job in _client(cfg).list():
        _print(cfg, job, _line(job))
    return 0


def _need_id(cfg) -> str:
    if not cfg.job:
        raise UserError("which job?", hint="pass its id: lmtune jobs show ftjob-...")
    return cfg.job


def cmd_show(cfg) -> int:
    job = _client(cfg).show(_need_id(cfg))
    _print(cfg, job, json.dumps(job, indent=2, ensure_ascii=False))
    return 0


def cmd_events(cfg) -> int:
    client, job_id = _client(cfg), _need_id(cfg)
    if cfg.follow:
        return _follow(cfg, client, job_id)
    for event in client.events(job_id):
        _print(cfg, event, _event(event))
    return 0


def _act(cfg, what: str) -> int:
    job = _client(cfg).action(_need_id(cfg), what)
    _print(cfg, job, _line(job))
    return 0


def cmd_cancel(cfg) -> int:
    return _act(cfg, "cancel")


def cmd_pause(cfg) -> int:
    return _act(cfg, "pause")


def cmd_resume(cfg) -> int:
    return _act(cfg, "resume")
