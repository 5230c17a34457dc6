"""A fine-tuning job from its create request to the options `lmtune train` runs it with.

create_job checks the request itself (a 400 for the client); validate_job checks the files'
contents as OpenAI's data checker does (status validating_files -> queued, or failed with
error.code, the line and param "training_file"); nothing is trained on a bad file.
"auto" hyperparameters follow OpenAI's documented heuristic for epochs (the cookbook's "Data
preparation and analysis for chat model fine-tuning"), lmtune's plan for the batch and its
default learning rate for the method (LoRA) for the multiplier 1.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from lmtune.config import DEFAULT_LR
from lmtune.errors import UserError
from lmtune.finetune.store import Store, new_id

MIN_EXAMPLES = 10
METHOD = "lora"  # what a job trains: small adapters, served side by side over one base
# OpenAI's epoch heuristic: about 3 passes, more for small files, fewer for large ones.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_EPOCHS, MAX_EPOCHS = 1, 25


class JobError(Exception):
    """What fails a job, in OpenAI's error shape."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


def hyperparameters(request: dict) -> dict:
    method = request.get("method") or {}
    if method and method.get("type", "supervised") != "supervised":
        raise UserError(f"method.type {method.get('type')!r} is not supported here yet",
                        hint="use method.type 'supervised'")
    given = ((method.get("supervised") or {}).get("hyperparameters")
             or request.get("hyperparameters") or {})
    checks = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256),
              "learning_rate_multiplier": ((int, float), 1e-3, 100.0)}
    out = {}
    for name, (kind, lo, hi) in checks.items():
        value = given.get(name, "auto")
        if value is None:
            value = "auto"
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, kind)
                                or not lo <= value <= hi):
            raise UserError(f"hyperparameters.{name} must be 'auto' or a number from {lo} "
                            f"to {hi}, got {value!r}")
        out[name] = value
    return out


def auto_epochs(n_examples: int) -> int:
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, max(MIN_EPOCHS, MIN_TARGET_EXAMPLES // max(1, n_examples)))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def create_job(store: Store, owner: str, request: dict) -> dict:
    hyper = hyperparameters(request)
    for param in ("training_file", "validation_file"):
        file_id = request.get(param)
        if param == "training_file" or file_id:
            if not isinstance(file_id, str) or store.file(file_id, owner) is None:
                raise JobError("invalid_request_error", f"{param} {file_id!r}: no such file",
                               param)
    seed = request.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"seed must be an integer, got {seed!r}")
    job_id = new_id("ftjob")
    settings = {**hyper, "seed": seed if seed is not None else secrets.randbelow(2**31)}
    return store.add_job({
        "id": job_id, "owner": owner, "status": "validating_files",
        "request": json.dumps(request), "settings": json.dumps(settings),
        "created_at": int(time.time()), "result_files": "[]",
        "run_dir": str(store.runs_dir / job_id)})


def validate_job(store: Store, job: dict) -> bool:
    """validating_files -> queued (True) or failed (False)."""
    request, settings = json.loads(job["request"]), json.loads(job["settings"])
    try:
        n_examples, tokens = _check_files(store, job, request)
    except Exception as e:  # a bug too must fail the job, not leave it validating for ever
        error = e.error if isinstance(e, JobError) else JobError(
            "internal_error", f"checking the files failed: {type(e).__name__}: {e}").error
        store.update_job(job["id"], status="failed", error=json.dumps(error),
                         finished_at=int(time.time()))
        store.add_event(job["id"], f"Validation failed: {error['message']}", level="error")
        return False
    if settings["n_epochs"] == "auto":
        settings["n_epochs"] = auto_epochs(n_examples)
    if settings["learning_rate_multiplier"] == "auto":
        settings["learning_rate_multiplier"] = 1.0
    store.update_job(job["id"], when={"status": "validating_files"}, status="queued",
                     settings=json.dumps(settings))
    store.add_event(job["id"], f"Files validated: {n_examples} training examples, {tokens} "
                               f"tokens; the job is queued")
    return True


def _check_files(store: Store, job: dict, request: dict) -> tuple[int, int]:
    from lmtune.models.load import context_length, load_tokenizer, peek_config
    from lmtune.models.resolve import resolve

    try:
        resolved = resolve(request["model"])
        tokenizer = load_tokenizer(resolved)
        context = context_length(peek_config(resolved, False))
    except UserError as e:
        raise JobError("invalid_model", f"model {request['model']!r}: {e.message}",
                       "model") from None
    n, tokens = _check_file(store, job, request["training_file"], "training_file", tokenizer,
                            context)
    if request.get("validation_file"):
        _check_file(store, job, request["validation_file"], "validation_file", tokenizer,
                    context, minimum=1)
    return n, tokens


def _check_file(store, job, file_id: str, param: str, tokenizer, context: int,
                minimum: int = MIN_EXAMPLES) -> tuple[int, int]:
    from lmtune.data.examples import build_examples_with_stats
    from lmtune.data.readers import read_records
    from lmtune.data.tokenize import tokenize_examples

    row = store.file(file_id, job["owner"])
    if row is None:
        raise JobError("invalid_file", f"{param} {file_id} was deleted", param)
    try:
        records = read_records(row["path"], fmt="jsonl")
        examples, _ = build_examples_with_stats(records, source=row["filename"])
        docs = tokenize_examples(examples, tokenizer)
    except UserError as e:
        message = e.message.replace(str(row["path"]), row["filename"])
        raise JobError(f"invalid_{param}", message, param) from None
    if len(examples) < minimum:
        raise JobError(f"invalid_{param}", f"{row['filename']} has {len(examples)} examples; "
                                           f"at least {minimum} are needed", param)
    lengths = docs.lengths
    if int(lengths.max()) > context:
        first = int((lengths > context).argmax())
        where = records.place(first) if hasattr(records, "place") else f"record {first + 1}"
        raise JobError(f"invalid_{param}", f"{row['filename']} {where} has {int(lengths[first])} "
                                           f"tokens, more than the model's context of "
                                           f"{context}", param)
    return len(examples), int(lengths.sum())


def train_options(store: Store, job: dict) -> dict:
    """The `lmtune train` options a queued job runs with (resuming where it has a
    checkpoint: after a pause, a crash or a restart)."""
    request, settings = json.loads(job["request"]), json.loads(job["settings"])
    opts = {"data": store.file(request["training_file"], job["owner"])["path"],
            "format": "jsonl", "model": request["model"], "method": METHOD,
            "out": job["run_dir"], "epochs": float(settings["n_epochs"]),
            "seed": settings["seed"],
            "lr": DEFAULT_LR[METHOD] * float(settings["learning_rate_multiplier"]),
            # A checkpoint at every evaluation, however close: a job's checkpoints are listed
            # and served as models, and a pause or a crash resumes from the newest.
            "save_minutes": 0.0}
    if settings["batch_size"] != "auto":
        opts["batch_size"] = int(settings["batch_size"])
    if request.get("validation_file"):
        opts["val_data"] = store.file(request["validation_file"], job["owner"])["path"]
    checkpoints = Path(job["run_dir"]) / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        opts["resume"] = True
    elif Path(job["run_dir"]).exists():
        opts["overwrite"] = True  # a start that never reached its first checkpoint
    return opts
