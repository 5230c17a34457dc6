"""A fine-tuning job from its create request to the options `lmtune train` runs it with.

create_job checks the request itself (a 400 for the client); validate_job checks the files'
contents as OpenAI's data checker does (status validating_files -> queued, or failed with
error.code, the line and param "training_file"); nothing is trained on a bad file.
"auto" hyperparameters follow OpenAI's documented heuristic for epochs (the cookbook's "Data
preparation and analysis for chat model fine-tuning"), lmtune's plan for the batch and its
default learning rate for the method for the multiplier 1.

lmtune's own choices ride in an optional `"lmtune": {...}` object, which openai-python sends
with `extra_body` and OpenAI's request shape leaves room for: the method, an absolute learning
rate, how a file's records become text, the validation share, the block size and the data
format. They are `lmtune train`'s options with `lmtune train`'s defaults (TrainConfig,
DEFAULT_LR), checked when the job is created, and the file check reads the files with them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from lmtune.config import DEFAULT_LR, TrainConfig, check_block_size, field_types, flag
from lmtune.config.defaults import PREFERENCE_LR
from lmtune.data.readers import resolve_format
from lmtune.errors import UserError
from lmtune.finetune.store import Store, new_id

MIN_EXAMPLES = 10
# The TrainConfig fields a request's "lmtune" object may set. The others are the service's:
# model, epochs, batch size and seed come from OpenAI's fields, device and precision from the
# worker, the run folder from the job.
LMTUNE_FIELDS = ("method", "lr", "template", "prompt_template", "completion_template", "column",
                 "val_split", "block_size", "format", "split_on")
TEXT_FIELDS = ("column", "template", "prompt_template", "completion_template")
# A job learns from its file: holding out half of it or more leaves less to learn from than to
# judge by (a separate validation_file is the way to judge on more).
MAX_VAL_SPLIT = 0.5
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# OpenAI's epoch heuristic: about 3 passes, more for small files, fewer for large ones.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_EPOCHS, MAX_EPOCHS = 1, 25


class JobError(Exception):
    """What fails a job, in OpenAI's error shape."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


# OpenAI's methods: supervised (learn the texts) and dpo (prefer one answer over another,
# lmtune's --task preference --loss dpo); each with its own hyperparameters.
METHOD_TYPES = ("supervised", "dpo")
MAX_BETA = 2.0  # OpenAI's range for dpo's beta: above 0, at most 2


def method_type(request: dict) -> str:
    method = request.get("method") or {}
    kind = method.get("type", "supervised") if method else "supervised"
    if kind not in METHOD_TYPES:
        raise UserError(f"method.type {kind!r} is not one this server trains",
                        hint=f"use one of: {', '.join(METHOD_TYPES)}")
    return kind


def hyperparameters(request: dict) -> dict:
    kind = method_type(request)
    method = request.get("method") or {}
    given = ((method.get(kind) or {}).get("hyperparameters")
             or request.get("hyperparameters") or {})
    checks = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256),
              "learning_rate_multiplier": ((int, float), 1e-3, 100.0)}
    if kind == "dpo":
        checks["beta"] = ((int, float), 1e-6, MAX_BETA)
    out = {}
    for name, (kind_of, lo, hi) in checks.items():
        value = given.get(name, "auto")
        if value is None:
            value = "auto"
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, kind_of)
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


def create_job(store: Store, owner: str, request: dict,
               served: dict[str, str] | None = None) -> dict:
    """`served`: the server's model names and where their weights are, so a job may name
    the model as the server serves it ("tiny" for --name tiny=PATH)."""
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
    settings = {**hyper, "seed": seed if seed is not None else secrets.randbelow(2**31),
                "lmtune": lmtune_options(store, owner, request),
                "method_type": method_type(request)}
    if served and request["model"] in served:
        settings["model_path"] = served[request["model"]]
    return store.add_job({
        "id": job_id, "owner": owner, "status": "validating_files",
        "request": json.dumps(request), "settings": json.dumps(settings),
        "created_at": int(time.time()), "result_files": "[]",
        "run_dir": str(store.runs_dir / job_id)})


def lmtune_options(store: Store, owner: str, request: dict) -> dict:
    """The request's "lmtune" object, checked, over TrainConfig's defaults. The format, when
    not given, is the one the files' names say."""
    given = request.get("lmtune")
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise _refused("", f"must be an object of lmtune's training options "
                           f"({', '.join(LMTUNE_FIELDS)}), got a {type(given).__name__}")
    unknown = [key for key in given if key not in LMTUNE_FIELDS]
    if unknown:
        raise _refused(unknown[0], f"is not an option a job takes; the options are: "
                                   f"{', '.join(LMTUNE_FIELDS)}")
    options = _defaults()
    options.update({name: _checked(name, value) for name, value in given.items()
                    if value is not None})
    if (options["prompt_template"] is None) != (options["completion_template"] is None):
        raise _refused("prompt_template", "and lmtune.completion_template go together")
    chosen = [name for name in ("column", "template", "prompt_template") if options[name]]
    if len(chosen) > 1:  # one way to get a record's text, as `lmtune train` takes it
        raise _refused(chosen[1], f"cannot go with lmtune.{chosen[0]}: choose one way to get "
                                  f"a record's text")
    if options["format"] is None:
        options["format"] = _format_of_names(store, owner, request)
    return options


def _defaults() -> dict:
    return {name: _TRAIN_FIELDS[name].default for name in LMTUNE_FIELDS}


def _refused(name: str, problem: str) -> JobError:
    param = f"lmtune.{name}" if name else "lmtune"
    return JobError("invalid_lmtune_option", f"{param} {problem}", param)


def _checked(name: str, value):
    """One option of the "lmtune" object: of TrainConfig's type, one of its choices, and in
    the range a job allows."""
    kind, choices = field_types(TrainConfig)[name], _TRAIN_FIELDS[name].metadata["choices"]
    if kind is float:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
        wanted = "a number"
    elif kind is int:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif name == "split_on":  # a separator may be all whitespace: "\n\n" between pieces
        ok, wanted = isinstance(value, str) and bool(value), "a non-empty string"
    else:
        ok, wanted = isinstance(value, str) and bool(value.strip()), "a non-empty string"
    if choices:
        ok, wanted = ok and value in choices, f"one of {', '.join(choices)}"
    elif name == "lr":
        ok, wanted = ok and value > 0, "a number above 0 (the peak learning rate, e.g. 1e-4)"
    elif name == "val_split":
        ok = ok and 0 <= value < MAX_VAL_SPLIT
        wanted = f"a number from 0 up to (not including) {MAX_VAL_SPLIT}"
    elif name == "block_size":
        ok, wanted = ok and not check_block_size(value), "an integer of at least 2"
    if not ok:
        raise _refused(name, f"must be {wanted}, got {value!r:.80}")
    return float(value) if kind is float else value


def _format_of_names(store: Store, owner: str, request: dict) -> str:
    """The format the files' names say, as `lmtune train` tells a file's by its extension;
    JSONL, OpenAI's format, when a name says none. One format reads both files."""
    formats = {}
    for param in ("training_file", "validation_file"):
        if request.get(param):
            row = store.file(request[param], owner)
            # Uploads are stored under their ids: the stored path with the name's suffix does
            # not exist, so the suffix alone decides.
            try:
                formats[param] = resolve_format(
                    Path(row["path"] + Path(row["filename"]).suffix), None)
            except UserError:
                formats[param] = "jsonl"
    if len(set(formats.values())) > 1:
        raise _refused("format", f"is not given, and the files' names say different formats "
                                 f"(training_file {formats['training_file']}, validation_file "
                                 f"{formats['validation_file']}); give it, or upload both in "
                                 f"one format")
    return formats["training_file"]


def job_options(settings: dict) -> dict:
    """A job's resolved lmtune options. A job created before jobs carried them trains as it
    did then: LoRA on JSONL, with TrainConfig's defaults for the rest."""
    return settings.get("lmtune") or {**_defaults(), "format": "jsonl"}


def learning_rate(settings: dict) -> float:
    """lmtune.lr when the request gave one, else the method's default x the multiplier
    (preference tuning has lower defaults of its own)."""
    options = job_options(settings)
    defaults = PREFERENCE_LR if settings.get("method_type") == "dpo" else DEFAULT_LR
    return options["lr"] or (defaults[options["method"]]
                             * float(settings["learning_rate_multiplier"]))


def validate_job(store: Store, job: dict) -> bool:
    """validating_files -> queued (True) or failed (False)."""
    request, settings = json.loads(job["request"]), json.loads(job["settings"])
    options = job_options(settings)
    try:
        n_examples, tokens = _check_files(store, job, request, options)
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
        # Beside lmtune.lr, the multiplier reports that rate against the method's default.
        settings["learning_rate_multiplier"] = (options["lr"] / DEFAULT_LR[options["method"]]
                                                if options["lr"] else 1.0)
    settings["lmtune"] = {**options, "lr": learning_rate(settings)}
    store.update_job(job["id"], when={"status": "validating_files"}, status="queued",
                     settings=json.dumps(settings))
    store.add_event(job["id"], f"Files validated: {n_examples} training examples, {tokens} "
                               f"tokens; the job is queued")
    return True


def _check_files(store: Store, job: dict, request: dict, options: dict) -> tuple[int, int]:
    from lmtune.models.load import context_length, load_tokenizer, peek_config
    from lmtune.models.resolve import resolve

    try:
        resolved = resolve(model_spec(job))
        tokenizer = load_tokenizer(resolved)
        context = context_length(peek_config(resolved, False))
    except UserError as e:
        raise JobError("invalid_model", f"model {request['model']!r}: {e.message}",
                       "model") from None
    problems = check_block_size(options["block_size"], context)
    if problems:
        raise JobError("invalid_lmtune_option", _named(problems[0]), "lmtune.block_size")
    if json.loads(job["settings"]).get("method_type") == "dpo":
        def check(file_id, param, minimum=MIN_EXAMPLES):
            return _check_pairs(store, job, file_id, param, tokenizer, options, minimum)
    else:
        def check(file_id, param, minimum=MIN_EXAMPLES):
            return _check_file(store, job, file_id, param, tokenizer, context, options,
                               minimum)
    n, tokens = check(request["training_file"], "training_file")
    if request.get("validation_file"):
        check(request["validation_file"], "validation_file", minimum=1)
    return n, tokens


def _stored(store: Store, job: dict, file_id: str, param: str) -> dict:
    row = store.file(file_id, job["owner"])
    if row is None:
        raise JobError("invalid_file", f"{param} {file_id} was deleted", param)
    return row


@contextmanager
def _file_problem(row: dict, param: str):
    """lmtune's reading errors as the job's: the upload's name, not where it is stored, and
    the "lmtune" fields, not the command-line flags."""
    try:
        yield
    except UserError as e:
        message = _named(e.message.replace(str(row["path"]), row["filename"]))
        raise JobError(f"invalid_{param}", message, param) from None


def _check_file(store, job, file_id: str, param: str, tokenizer, context: int, options: dict,
                minimum: int = MIN_EXAMPLES) -> tuple[int, int]:
    """The file read as `lmtune train` will read it: the job's format and text options."""
    from lmtune.data.examples import build_examples_with_stats
    from lmtune.data.readers import read_records
    from lmtune.data.tokenize import tokenize_examples

    row = _stored(store, job, file_id, param)
    with _file_problem(row, param):
        records = read_records(row["path"], fmt=options["format"],
                               split_on=options["split_on"])
        examples, _ = build_examples_with_stats(records, source=row["filename"],
                                                **{n: options[n] for n in TEXT_FIELDS})
        docs = tokenize_examples(examples, tokenizer)
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


def _check_pairs(store, job, file_id: str, param: str, tokenizer, options: dict,
                 minimum: int = MIN_EXAMPLES) -> tuple[int, int]:
    """A dpo job's file read as `lmtune train --task preference` will read it: OpenAI's
    preference format ({"input", "preferred_output", "non_preferred_output"}) or TRL's."""
    from lmtune.tasks.preference.data import read_pairs, tokenize_pairs

    row = _stored(store, job, file_id, param)
    with _file_problem(row, param):
        pairs = read_pairs(row["path"], fmt=options["format"],
                           prompt_template=options["prompt_template"])
        chosen, rejected = tokenize_pairs(pairs, tokenizer)
    if len(pairs) < minimum:
        raise JobError(f"invalid_{param}", f"{row['filename']} has {len(pairs)} preference "
                                           f"pairs; at least {minimum} are needed", param)
    return len(pairs), int(chosen.lengths.sum() + rejected.lengths.sum())


def _named(message: str) -> str:
    """lmtune's messages name its command-line flags; a job's name its "lmtune" fields."""
    for name in LMTUNE_FIELDS:
        message = message.replace(flag(name), f"lmtune.{name}")
    return message


def model_spec(job: dict) -> str:
    """What the job trains: the weights of the served model it named, else the name itself
    (a Hugging Face id, a folder, lmtune's default)."""
    settings = json.loads(job["settings"])
    return settings.get("model_path") or json.loads(job["request"])["model"]


def train_options(store: Store, job: dict) -> dict:
    """The `lmtune train` options a queued job runs with (resuming where it has a
    checkpoint: after a pause, a crash or a restart)."""
    request, settings = json.loads(job["request"]), json.loads(job["settings"])
    chosen = {name: value for name, value in job_options(settings).items() if value is not None}
    opts = {**chosen, "data": store.file(request["training_file"], job["owner"])["path"],
            "model": model_spec(job), "out": job["run_dir"],
            "epochs": float(settings["n_epochs"]), "seed": settings["seed"],
            "lr": learning_rate(settings),
            # A checkpoint at every evaluation, however close: a job's checkpoints are listed
            # and served as models, and a pause or a crash resumes from the newest.
            "save_minutes": 0.0}
    if settings["batch_size"] != "auto":
        opts["batch_size"] = int(settings["batch_size"])
    if settings.get("method_type") == "dpo":
        opts.update(task="preference", loss="dpo")
        if settings.get("beta", "auto") != "auto":
            opts["beta"] = float(settings["beta"])
    if request.get("validation_file"):
        opts["val_data"] = store.file(request["validation_file"], job["owner"])["path"]
    checkpoints = Path(job["run_dir"]) / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        opts["resume"] = True
    elif Path(job["run_dir"]).exists():
        opts["overwrite"] = True  # a start that never reached its first checkpoint
    return opts
