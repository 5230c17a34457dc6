"""A job's "lmtune" options on the store, without a server: checked when the job is created,
resolved with `lmtune train`'s own defaults, used by the file check, and handed to `lmtune
train` under its option names."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from lmtune.config import DEFAULT_LR, TrainConfig, build
from lmtune.finetune.jobs import JobError, create_job, train_options, validate_job
from lmtune.finetune.store import Store, new_id

QUOTES = [("stay hungry stay foolish", "jobs"), ("less is more", "browning"),
          ("know thyself", "socrates")] * 4


def _upload(store: Store, filename: str, text: str) -> str:
    """A file as the API stores an upload: under its id, its name kept beside it."""
    file_id = new_id("file")
    store.files_dir.mkdir(parents=True, exist_ok=True)
    path = store.files_dir / file_id
    path.write_text(text)
    store.add_file({"id": file_id, "owner": "local", "purpose": "fine-tune",
                    "filename": filename, "bytes": path.stat().st_size,
                    "created_at": int(time.time()), "path": str(path)})
    return file_id


def _quotes_csv(store: Store, filename: str = "quotes.csv") -> str:
    return _upload(store, filename, "quote,author\n" + "".join(f"{q},{a}\n" for q, a in QUOTES))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def _queued(store: Store, request: dict) -> dict:
    job = create_job(store, "local", request)
    assert validate_job(store, job), store.job(job["id"])["error"]
    return store.job(job["id"])


def test_train_options_carry_the_lmtune_choices_under_train_s_names(store, tiny_gpt2):
    job = _queued(store, {"model": str(tiny_gpt2), "training_file": _quotes_csv(store),
                          "lmtune": {"method": "full", "lr": 3e-4, "val_split": 0.25,
                                     "template": "Quote: {quote} - {author}",
                                     "block_size": 32}})
    opts = train_options(store, job)
    assert {k: opts[k] for k in ("method", "lr", "template", "val_split", "block_size",
                                 "format")} == {
        "method": "full", "lr": 3e-4, "template": "Quote: {quote} - {author}",
        "val_split": 0.25, "block_size": 32, "format": "csv"}  # the format: from the name
    assert "column" not in opts and "prompt_template" not in opts  # left to TrainConfig
    build(TrainConfig, opts)  # every name is one `lmtune train` takes, of its type


def test_without_lmtune_a_job_trains_as_lmtune_train_would_by_default(store, tiny_gpt2):
    qa = "\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(12))
    job = _queued(store, {"model": str(tiny_gpt2), "training_file": _upload(store, "qa", qa),
                          "hyperparameters": {"learning_rate_multiplier": 2}})
    opts = train_options(store, job)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert opts["method"] == defaults["method"]
    assert opts["lr"] == pytest.approx(DEFAULT_LR[defaults["method"]] * 2)
    assert opts["val_split"] == defaults["val_split"]
    assert opts["format"] == "jsonl"  # a name without a suffix: OpenAI's format


def test_a_given_lr_overrides_the_multiplier_and_is_reported_as_one(store, tiny_gpt2):
    job = _queued(store, {"model": str(tiny_gpt2), "training_file": _quotes_csv(store),
                          "lmtune": {"lr": 5e-3, "column": "quote"}})
    from lmtune.finetune.objects import job_object

    shown = job_object(job)
    assert shown["lmtune"]["lr"] == 5e-3 and shown["lmtune"]["method"] == "lora"
    assert shown["hyperparameters"]["learning_rate_multiplier"] == pytest.approx(
        5e-3 / DEFAULT_LR["lora"])
    assert shown["method"]["type"] == "supervised"


@pytest.mark.parametrize("lmtune, param, words", [
    ({"val_split": 0.5}, "lmtune.val_split", "from 0 up to (not including) 0.5"),
    ({"val_split": "0.1"}, "lmtune.val_split", "must be a number"),
    ({"lr": 0}, "lmtune.lr", "above 0"),
    ({"lr": float("inf")}, "lmtune.lr", "above 0"),
    ({"method": "qlora"}, "lmtune.method", "one of lora, full, freeze"),
    ({"format": "xlsx"}, "lmtune.format", "one of txt, csv"),
    ({"block_size": 1}, "lmtune.block_size", "at least 2"),
    ({"block_size": True}, "lmtune.block_size", "an integer"),
    ({"template": ""}, "lmtune.template", "non-empty string"),
    ({"epochs": 3}, "lmtune.epochs", "the options are: method, lr, template"),
    ({"prompt_template": "{quote}"}, "lmtune.prompt_template", "go together"),
    ({"column": "quote", "template": "{quote}"}, "lmtune.template", "one way"),
    ([1], "lmtune", "must be an object"),
])
def test_bad_lmtune_options_are_refused_naming_the_field(store, lmtune, param, words):
    with pytest.raises(JobError) as caught:
        create_job(store, "local", {"model": "m", "training_file": _quotes_csv(store),
                                    "lmtune": lmtune})
    assert caught.value.error["param"] == param
    assert caught.value.error["message"].startswith(param + " ")
    assert words in caught.value.error["message"]


def test_files_whose_names_say_different_formats_need_lmtune_format(store):
    request = {"model": "m", "training_file": _quotes_csv(store),
               "validation_file": _upload(store, "v.jsonl", '{"text": "x"}\n')}
    with pytest.raises(JobError, match="training_file csv, validation_file jsonl"):
        create_job(store, "local", request)
    job = create_job(store, "local", {**request, "lmtune": {"format": "csv"}})
    assert job["status"] == "validating_files"


def test_the_file_check_reads_the_file_as_training_will(store, tiny_gpt2):
    job = create_job(store, "local", {"model": str(tiny_gpt2),
                                      "training_file": _quotes_csv(store),
                                      "lmtune": {"template": "{quote} by {speaker}"}})
    assert not validate_job(store, job)
    error = store.job(job["id"])["error"]
    assert '"invalid_training_file"' in error
    assert "lmtune.template names field 'speaker', which quotes.csv does not have" in error
    job = create_job(store, "local", {"model": str(tiny_gpt2),
                                      "training_file": _quotes_csv(store),
                                      "lmtune": {"column": "quote", "block_size": 10**6}})
    assert not validate_job(store, job)
    assert "lmtune.block_size 1000000 is above the model's context" in store.job(
        job["id"])["error"]


def test_a_text_file_is_cut_into_examples_where_split_on_says(store, tiny_gpt2):
    """A .txt upload is one example unless split_on cuts it (a blank line is all
    whitespace, so split_on is the one text option not stripped)."""
    text = "\n\n".join(f"piece {i}: the cat sat" for i in range(12))
    request = {"model": str(tiny_gpt2), "training_file": _upload(store, "notes.txt", text)}
    whole = create_job(store, "local", request)
    assert not validate_job(store, whole)
    assert "at least 10 are needed" in json.loads(store.job(whole["id"])["error"])["message"]
    job = _queued(store, {**request, "lmtune": {"split_on": "\\n\\n"}})
    opts = train_options(store, job)
    assert (opts["format"], opts["split_on"]) == ("txt", "\\n\\n")
    build(TrainConfig, opts)


def _dpo_pairs(store: Store) -> str:
    """OpenAI's preference format: each prompt with a preferred and a non-preferred answer."""
    rows = [{"input": {"messages": [{"role": "user", "content": f"Say yes to {i}"}]},
             "preferred_output": [{"role": "assistant", "content": "Yes, gladly."}],
             "non_preferred_output": [{"role": "assistant", "content": "No."}]}
            for i in range(12)]
    return _upload(store, "prefs.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")


def test_a_dpo_job_trains_preference_pairs_with_its_beta(store, tiny_gpt2):
    from lmtune.config.defaults import PREFERENCE_LR
    from lmtune.finetune.objects import job_object

    job = _queued(store, {"model": str(tiny_gpt2), "training_file": _dpo_pairs(store),
                          "method": {"type": "dpo", "dpo": {"hyperparameters": {
                              "beta": 0.25, "learning_rate_multiplier": 2}}}})
    opts = train_options(store, job)
    assert (opts["task"], opts["loss"], opts["beta"]) == ("preference", "dpo", 0.25)
    assert opts["lr"] == pytest.approx(2 * PREFERENCE_LR["lora"])
    cfg = build(TrainConfig, opts)
    assert (cfg.task, cfg.loss, cfg.beta) == ("preference", "dpo", 0.25)
    method = job_object(job)["method"]
    assert method["type"] == "dpo" and method["dpo"]["hyperparameters"]["beta"] == 0.25


@pytest.mark.parametrize("method, words", [
    ({"type": "reinforcement"}, "method.type 'reinforcement'"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}, "hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, "hyperparameters.beta")])
def test_bad_methods_are_refused(store, method, words):
    from lmtune.errors import UserError

    with pytest.raises(UserError, match=words):
        create_job(store, "local", {"model": "m", "training_file": _dpo_pairs(store),
                                    "method": method})


def test_a_dpo_job_on_a_file_of_texts_fails_naming_the_line(store, tiny_gpt2):
    job = create_job(store, "local", {"model": str(tiny_gpt2),
                                      "training_file": _quotes_csv(store),
                                      "method": {"type": "dpo"}})
    assert not validate_job(store, job)
    error = json.loads(store.job(job["id"])["error"])
    assert error["code"] == "invalid_training_file" and "quotes.csv" in error["message"]
