"""The OpenAI fine-tuning API of `lmtune serve`, driven by the official `openai` client,
unmodified: upload a chat file, fine-tune a tiny model in a worker process, watch events and
checkpoints, chat with the result the moment the job succeeds."""

from __future__ import annotations

import json
import time

import openai
import pytest
from serve_helpers import running_server

QA = [("why did the programmer quit", "because he did not get arrays"),
      ("what is two plus four", "six"), ("where did the dog run", "in the park")]


def _chat_file(path, rows=None):
    rows = rows or [{"messages": [{"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]} for q, a in QA] * 8
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _wait(client, job_id, done=("succeeded", "failed", "cancelled"), seconds=240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in done:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {seconds} s")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_chat_file_fine_tunes_into_a_model_that_is_served_at_once(tiny_gpt2, home,
                                                                    tmp_path):
    with running_server([tiny_gpt2], workers=1) as (url, state):
        client = _client(url)
        uploaded = client.files.create(file=open(_chat_file(tmp_path / "qa.jsonl"), "rb"),
                                       purpose="fine-tune")
        assert uploaded.filename == "qa.jsonl" and uploaded.purpose == "fine-tune"
        job = client.fine_tuning.jobs.create(
            model=str(tiny_gpt2), training_file=uploaded.id, suffix="qa", seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "learning_rate_multiplier": 20}}})
        assert job.status == "validating_files" and job.seed == 3
        job = _wait(client, job.id)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model.startswith("ft:") and ":qa:" in job.fine_tuned_model
        assert job.hyperparameters.n_epochs == 2 and job.trained_tokens > 0
        assert isinstance(job.hyperparameters.batch_size, int)  # "auto", written back
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        metrics = [e for e in events if e.type == "metrics"]
        assert any("train_loss" in e.data for e in metrics)
        assert any("valid_loss" in e.data for e in metrics)
        assert events[0].message == "The job has successfully completed"
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints and checkpoints[0].step_number > 0
        results = client.files.content(job.result_files[0]).text
        assert results.startswith("step,train_loss,valid_loss")
        assert job.fine_tuned_model in [m.id for m in client.models.list()]
        answer = client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": QA[1][0]}],
            max_tokens=16, temperature=0)
        assert answer.choices[0].message.content is not None
        step = client.completions.create(model=checkpoints[0].fine_tuned_model_checkpoint,
                                         prompt="why", max_tokens=4, temperature=0)
        assert step.choices[0].text is not None  # a checkpoint is served as a model too
        assert [j.id for j in client.fine_tuning.jobs.list().data] == [job.id]


def test_a_csv_of_quotes_with_a_template_fine_tunes_with_lmtunes_own_choices(tiny_gpt2, home,
                                                                           tmp_path):
    """lmtune's options ride in extra_body: the CSV is checked and trained as `lmtune train
    quotes.csv --template ...` would read it, and the job reports what it trained with."""
    from lmtune.config import read_saved

    quotes = tmp_path / "quotes.csv"
    quotes.write_text("quote,author\n" + "".join(
        f"{q},{a}\n" for q, a in [("less is more", "browning"), ("know thyself", "socrates"),
                                  ("stay hungry", "jobs")] * 4))
    lmtune = {"template": "Quote: {quote} - {author}", "lr": 5e-3, "val_split": 0.25}
    with running_server([tiny_gpt2], workers=1) as (url, _):
        client = _client(url)
        uploaded = client.files.create(file=quotes, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id,
                                             hyperparameters={"n_epochs": 1},
                                             extra_body={"lmtune": lmtune})
        assert job.model_extra["lmtune"]["format"] == "csv"  # from the file's name
        job = _wait(client, job.id)
        assert job.status == "succeeded", job.error
        assert job.model_extra["lmtune"] == {**lmtune, "method": "lora", "format": "csv",
                                             "column": None, "prompt_template": None,
                                             "completion_template": None, "block_size": None,
                                             "split_on": None}
        assert job.method.type == "supervised" and job.trained_tokens > 0
        saved = read_saved(home / "service" / "runs" / job.id / "config.yaml")
        assert (saved.template, saved.lr, saved.val_split, saved.format) == (
            lmtune["template"], 5e-3, 0.25, "csv")


def test_bad_lmtune_options_are_a_400_that_names_the_field(tiny_gpt2, home, tmp_path):
    with running_server([tiny_gpt2]) as (url, _):  # no worker: nothing trains
        client = _client(url)
        uploaded = client.files.create(file=_chat_file(tmp_path / "qa.jsonl"),
                                       purpose="fine-tune")
        for lmtune, param, words in [
                ({"val_split": 0.7}, "lmtune.val_split", "must be a number from 0 up to"),
                ({"method": "qlora"}, "lmtune.method", "must be one of lora, full, freeze"),
                ({"lr": -1}, "lmtune.lr", "must be a number above 0"),
                ({"learning_rate": 1e-4}, "lmtune.learning_rate", "the options are: method, lr")]:
            with pytest.raises(openai.BadRequestError, match=words) as caught:
                client.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id,
                                               extra_body={"lmtune": lmtune})
            assert caught.value.param == param and param in caught.value.message
        assert client.fine_tuning.jobs.list().data == []


def test_a_bad_file_fails_the_job_with_its_line(tiny_gpt2, home, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]}] * 12
    rows[2] = {"messages": [{"role": "user", "content": "no answer"}]}
    with running_server([tiny_gpt2]) as (url, state):
        client = _client(url)
        uploaded = client.files.create(file=open(_chat_file(tmp_path / "bad.jsonl", rows),
                                                 "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id)
        job = _wait(client, job.id)
        assert job.status == "failed"
        assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
        assert "bad.jsonl line 3: the conversation has no assistant message" in job.error.message
        few = client.files.create(file=open(_chat_file(tmp_path / "few.jsonl", rows[:2]), "rb"),
                                  purpose="fine-tune")
        job = _wait(client, client.fine_tuning.jobs.create(model=str(tiny_gpt2),
                                                           training_file=few.id).id)
        assert "at least 10 are needed" in job.error.message


def test_queued_jobs_pause_resume_and_cancel_and_unknown_ids_are_404(tiny_gpt2, home,
                                                                     tmp_path):
    with running_server([tiny_gpt2]) as (url, state):  # no worker: jobs stay queued
        client = _client(url)
        uploaded = client.files.create(file=open(_chat_file(tmp_path / "qa.jsonl"), "rb"),
                                       purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id)
        assert _wait(client, job.id, done=("queued",)).status == "queued"
        assert client.fine_tuning.jobs.pause(job.id).status == "paused"
        assert client.fine_tuning.jobs.resume(job.id).status == "queued"
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError, match="cannot be resumed"):
            client.fine_tuning.jobs.resume(job.id)
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.retrieve("ftjob-nothing")
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve("file-nothing")
        with pytest.raises(openai.BadRequestError, match="no such file"):
            client.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file="file-x")
        with pytest.raises(openai.BadRequestError, match="n_epochs must be 'auto' or"):
            client.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id,
                                           hyperparameters={"n_epochs": 0})
        assert client.files.delete(uploaded.id).deleted
        assert [f.id for f in client.files.list().data] == []


def _job_opts(model, file_id, epochs=30, batch_size=2):
    return dict(model=str(model), training_file=file_id, seed=5,
                hyperparameters={"n_epochs": epochs, "batch_size": batch_size})


def test_a_running_job_pauses_at_a_checkpoint_and_resumes_from_it(tiny_gpt2, home, tmp_path):
    with running_server([tiny_gpt2], workers=1) as (url, state):
        client = _client(url)
        uploaded = client.files.create(file=open(_chat_file(tmp_path / "qa.jsonl"), "rb"),
                                       purpose="fine-tune")
        job = client.fine_tuning.jobs.create(**_job_opts(tiny_gpt2, uploaded.id))
        _wait(client, job.id, done=("running",))
        deadline = time.monotonic() + 240
        while client.fine_tuning.jobs.list_events(job.id).data[0].type != "metrics":
            assert time.monotonic() < deadline and \
                client.fine_tuning.jobs.retrieve(job.id).status == "running"
            time.sleep(0.2)
        client.fine_tuning.jobs.pause(job.id)
        assert _wait(client, job.id, done=("paused",)).status == "paused"
        assert client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert client.fine_tuning.jobs.resume(job.id).status == "queued"
        assert _wait(client, job.id).status == "succeeded"
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id,
                                                                            limit=100).data]
        assert "Fine-tuning job resumed from its last checkpoint" in messages


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model, home, port):
    import os
    import subprocess
    import sys

    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "lmtune", "serve", str(model), "--port", str(port),
         "--precision", "fp32", "--device", "cpu"], env={**os.environ, "LMTUNE_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError("the server did not start")


def test_a_server_killed_mid_job_finishes_it_after_a_restart_as_if_never_stopped(
        tiny_gpt2, home, tmp_path):
    """SIGKILL: the server gets no chance to stop its worker; the worker sees it gone,
    checkpoints and requeues the job; the next server's worker resumes it exactly."""
    from safetensors.torch import load_file

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(tiny_gpt2, home, port)
    try:
        client = _client(url)
        rows = [{"messages": [{"role": "user", "content": q},
                              {"role": "assistant", "content": a}]} for q, a in QA] * 16
        uploaded = client.files.create(file=open(_chat_file(tmp_path / "qa.jsonl", rows), "rb"),
                                       purpose="fine-tune")
        opts = _job_opts(tiny_gpt2, uploaded.id, epochs=50, batch_size=1)
        killed = client.fine_tuning.jobs.create(**opts)
        deadline = time.monotonic() + 240
        while not client.fine_tuning.jobs.checkpoints.list(killed.id).data:
            assert time.monotonic() < deadline and client.fine_tuning.jobs.retrieve(
                killed.id).status in ("validating_files", "queued", "running")
            time.sleep(0.2)
        server.kill()
        server.wait()
        from lmtune.finetune.store import Store
        store = Store()
        deadline = time.monotonic() + 60
        while store.job(killed.id)["status"] != "queued" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.job(killed.id)["status"] == "queued"  # put back by its own worker
        server = _serve(tiny_gpt2, home, port)
        whole = client.fine_tuning.jobs.create(**opts)
        assert _wait(client, killed.id).status == "succeeded"
        assert _wait(client, whole.id).status == "succeeded"
    finally:
        server.kill()
    events = [e["message"] for e in store.events(killed.id, None, 1000)]
    assert "Fine-tuning job resumed from its last checkpoint" in events  # killed mid-run
    a, b = (load_file(home / "service" / "runs" / j.id / "final" / "adapter_model.safetensors")
            for j in (killed, whole))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max(v.abs().max().item() for v in a.values()) > 0


def test_each_key_sees_only_its_own_files_jobs_and_models(tiny_gpt2, home, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nkey-a\nkey-b\n")
    with running_server([tiny_gpt2], api_keys_file=str(keys), max_queued_jobs=1) as (url, _):
        a = openai.OpenAI(base_url=url + "/v1", api_key="key-a", max_retries=0)
        b = openai.OpenAI(base_url=url + "/v1", api_key="key-b", max_retries=0)
        uploaded = a.files.create(file=open(_chat_file(tmp_path / "qa.jsonl"), "rb"),
                                  purpose="fine-tune")
        job = a.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id)
        for call in (lambda: b.files.retrieve(uploaded.id),
                     lambda: b.files.content(uploaded.id),
                     lambda: b.fine_tuning.jobs.retrieve(job.id),
                     lambda: b.fine_tuning.jobs.cancel(job.id),
                     lambda: b.fine_tuning.jobs.list_events(job.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        with pytest.raises(openai.BadRequestError, match="no such file"):
            b.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id)
        assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
        with pytest.raises(openai.RateLimitError, match="already has 1 jobs waiting"):
            a.fine_tuning.jobs.create(model=str(tiny_gpt2), training_file=uploaded.id)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="key-c",
                          max_retries=0).files.list()


def test_a_dpo_job_through_the_openai_client(tiny_gpt2, home, tmp_path):
    """OpenAI's method {"type": "dpo"} on OpenAI's preference format: the job trains
    lmtune's --task preference --loss dpo, reports its beta, and logs reward metrics."""
    from lmtune.config import read_saved

    rows = [{"input": {"messages": [{"role": "user", "content": q}]},
             "preferred_output": [{"role": "assistant", "content": a}],
             "non_preferred_output": [{"role": "assistant", "content": "I don't know."}]}
            for q, a in QA] * 4
    data = _chat_file(tmp_path / "prefs.jsonl", rows)
    with running_server([tiny_gpt2], workers=1) as (url, _):
        client = _client(url)
        uploaded = client.files.create(file=open(data, "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=str(tiny_gpt2), training_file=uploaded.id,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})
        job = _wait(client, job.id)
        assert job.status == "succeeded", job.error
        assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
        run = home / "service" / "runs" / job.id
        saved = read_saved(run / "config.yaml")
        assert (saved.task, saved.loss, saved.beta) == ("preference", "dpo", 0.2)
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("reward_accuracy" in r for r in logged)
        answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                                messages=[{"role": "user", "content": QA[0][0]}])
        assert answer.choices[0].message.content is not None


def test_a_loaded_fine_tuned_model_stays_its_keys_alone(tiny_gpt2, home, tmp_path):
    """Once key A's model is loaded into the engine it sits beside the server's own models;
    key B must still not see it, use it or download it."""
    import httpx

    keys = tmp_path / "keys.txt"
    keys.write_text("key-a\nkey-b\n")
    with running_server([tiny_gpt2], api_keys_file=str(keys), workers=1) as (url, _):
        a = openai.OpenAI(base_url=url + "/v1", api_key="key-a", max_retries=0)
        b = openai.OpenAI(base_url=url + "/v1", api_key="key-b", max_retries=0)
        uploaded = a.files.create(file=open(_chat_file(tmp_path / "qa.jsonl"), "rb"),
                                  purpose="fine-tune")
        job = _wait(a, a.fine_tuning.jobs.create(
            model=str(tiny_gpt2), training_file=uploaded.id,
            hyperparameters={"n_epochs": 1}).id)
        assert job.status == "succeeded", job.error
        tuned = job.fine_tuned_model
        assert a.completions.create(model=tuned, prompt="Hi", max_tokens=2).choices
        assert tuned in [m.id for m in a.models.list().data]
        assert tuned not in [m.id for m in b.models.list().data]
        with pytest.raises(openai.NotFoundError) as refused:
            b.completions.create(model=tuned, prompt="Hi", max_tokens=2)
        assert tuned not in str(refused.value).split("served:")[-1]
        with pytest.raises(openai.NotFoundError):
            b.models.retrieve(tuned)
        got = httpx.get(f"{url}/v1/models/{tuned}/gguf", headers={
            "Authorization": "Bearer key-b"}, timeout=60)
        assert got.status_code == 404


def test_the_jobs_commands_and_the_python_client_speak_the_same_api(tiny_gpt2, home,
                                                                     tmp_path, capsys):
    import lmtune
    from lmtune.cli.main import main

    data = _chat_file(tmp_path / "qa.jsonl")
    with running_server([tiny_gpt2], workers=1) as (url, _):
        code = main(["jobs", "create", str(data), "--model", str(tiny_gpt2), "--url", url,
                     "--epochs", "2", "--suffix", "cli", "--wait"])
        out = capsys.readouterr().out.splitlines()
        assert code == 0, out
        job_id = out[0].split()[0]
        assert job_id.startswith("ftjob-") and "validating_files" in out[0]
        assert any("The job has successfully completed" in line for line in out)
        assert out[-1].startswith(f"{job_id}  succeeded") and ":cli:" in out[-1]
        client = lmtune.jobs(url)
        assert [j["id"] for j in client.list()] == [job_id]
        assert client.show(job_id)["status"] == "succeeded"
        assert main(["jobs", "pause", job_id, "--url", url]) == 2
        assert "a succeeded job cannot be paused" in capsys.readouterr().err


@pytest.mark.faults
def test_hostile_requests_to_the_new_routes_are_4xx_never_500(tiny_gpt2, home, tmp_path):
    """Bad JSON, wrong types, unknown ids, huge bodies and fields of every kind: each a 4xx
    in OpenAI's error shape."""
    import httpx
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                          st.text(max_size=20), lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
    keys = st.sampled_from(["model", "training_file", "validation_file", "suffix", "seed",
                            "metadata", "method", "hyperparameters", "lmtune", "x"])
    with running_server([tiny_gpt2], max_request_bytes=10_000,
                        max_upload_bytes=20_000) as (url, _):
        http = httpx.Client(base_url=url, timeout=30)

        def check(response):
            assert 400 <= response.status_code < 500, response.text
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        @settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.dictionaries(keys, values, max_size=5))
        @example({"model": float("inf")})
        @example({"seed": float("nan"), "training_file": "file-x"})
        @example({"method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": float("inf"), "learning_rate_multiplier": float("nan")}}}})
        def create(body):
            # json.dumps writes NaN and Infinity as Python does; httpx's json= refuses them.
            check(http.post("/v1/fine_tuning/jobs", content=json.dumps(body),
                            headers={"content-type": "application/json"}))

        create()
        for method, path, kwargs in [
                ("POST", "/v1/fine_tuning/jobs", {"content": b"{not json"}),
                ("POST", "/v1/fine_tuning/jobs", {"json": [1, 2]}),
                ("POST", "/v1/fine_tuning/jobs", {"content": b"x" * 20_000}),
                ("GET", "/v1/fine_tuning/jobs?limit=0", {}),
                ("GET", "/v1/fine_tuning/jobs?limit=abc", {}),
                ("GET", "/v1/fine_tuning/jobs/ftjob-x/events", {}),
                ("GET", "/v1/fine_tuning/jobs/ftjob-x/checkpoints", {}),
                ("POST", "/v1/fine_tuning/jobs/ftjob-x/cancel", {}),
                ("GET", "/v1/files/file-x/content", {}),
                ("DELETE", "/v1/files/file-x", {}),
                ("POST", "/v1/files", {"data": {"purpose": "fine-tune"}}),
                ("POST", "/v1/files", {"files": {"file": ("a.jsonl", b"{}")},
                                       "data": {"purpose": "batch"}}),
                ("POST", "/v1/files", {"files": {"file": ("a.jsonl", b"x" * 30_000)},
                                       "data": {"purpose": "fine-tune"}})]:
            check(http.request(method, path, **kwargs))


def test_a_job_on_two_processes_reports_its_training_from_the_run(tiny_gpt2, home, tmp_path):
    """--job-devices 2: the job trains under torchrun (gloo on the CPU here, one process per
    GPU on a GPU machine); its metrics and checkpoints come from the run folder."""
    with running_server([tiny_gpt2], workers=1, job_devices=2) as (url, _):
        client = _client(url)
        uploaded = client.files.create(file=open(_chat_file(tmp_path / "qa.jsonl"), "rb"),
                                       purpose="fine-tune")
        job = client.fine_tuning.jobs.create(**_job_opts(tiny_gpt2, uploaded.id, epochs=2))
        job = _wait(client, job.id, seconds=400)
        assert job.status == "succeeded", job.error
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert "Training on 2 processes (torchrun)" in [e.message for e in events]
        assert any(e.type == "metrics" and "train_loss" in e.data for e in events)
        assert client.fine_tuning.jobs.checkpoints.list(job.id).data
