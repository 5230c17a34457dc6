"""`lmtune serve` driven by the official `openai` client: a real server on a loopback port
serving two LoRA runs over one tiny base, the base itself, a chat model and a classifier."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from serve_helpers import chat_model, classify_data, running_server

import lmtune
from lmtune.models.generate import encode_prompt

OPTS = dict(split_on="\n", block_size=64, precision="fp32", device="cpu")
GREEDY = dict(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def lora_run_b(tiny_gpt2, session_lines, tmp_path_factory):
    """A second LoRA run over the same base, different enough to answer differently."""
    return lmtune.train(session_lines, model=str(tiny_gpt2), out=str(
        tmp_path_factory.mktemp("runs") / "lora-b"), method="lora", max_steps=2, lr=5e-2,
        log_every=1, eval_every=2, sample_every=0, seed=1, **OPTS)


@pytest.fixture(scope="module")
def classify_run(tiny_gpt2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    return lmtune.train(classify_data(folder / "labels.jsonl"), model=str(tiny_gpt2),
                        out=str(folder / "run"), task="classify", text_column="text",
                        label_column="label", max_steps=2, precision="fp32", device="cpu",
                        seed=0)


@pytest.fixture(scope="module")
def server(lora_run, lora_run_b, tiny_gpt2, tiny_llama, classify_run, tmp_path_factory):
    chat = chat_model(tiny_llama, tmp_path_factory.mktemp("models") / "chat")
    names = [f"jokes-b={lora_run_b.out}", f"base={tiny_gpt2}", f"chat={chat}",
             f"labels={classify_run.out}"]
    with running_server([lora_run.out], names) as (url, state):
        yield url, state, chat


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def _generate(model, prompt, **options):
    return lmtune.generate(model, [prompt], n=1, precision="fp32", **options)[0]


def test_models_are_listed_by_name_and_health_is_ok(server, client):
    url, state, _ = server
    assert [m.id for m in client.models.list()] == ["lora", "jokes-b", "base", "chat", "labels"]
    assert client.models.retrieve("jokes-b").id == "jokes-b"
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_lora_runs_over_one_base_share_one_copy_of_it(server, tiny_gpt2):
    from peft import PeftModel

    models = server[1].models
    group = models["lora"].group
    assert models["jokes-b"].group is group and models["base"].group is group
    assert models["chat"].group is not group
    assert isinstance(group.model, PeftModel)
    assert {models["lora"].adapter, models["jokes-b"].adapter} == set(group.model.peft_config)
    # The weights in memory are one base plus two small adapters, not two bases.
    base = lmtune.load(tiny_gpt2)[0]
    n_base = sum(p.numel() for p in base.parameters())
    n_lora = sum(p.numel() for n, p in group.model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in group.model.parameters()) == n_base + n_lora
    assert n_lora < 0.5 * n_base


def test_each_adapter_answers_as_its_own_run_even_when_batched_together(
        server, client, lora_run, lora_run_b, tiny_gpt2):
    expected = {name: _generate(path, "the cat", max_new_tokens=12, temperature=0).text
                for name, path in [("lora", lora_run.out), ("jokes-b", lora_run_b.out),
                                   ("base", tiny_gpt2)]}
    assert len(set(expected.values())) == 3  # the adapters really differ
    # Sent at once, the three requests share batches (PEFT mixed-adapter rows).
    names = list(expected) * 3
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda m: client.completions.create(
            model=m, prompt="the cat", **GREEDY), names))
    for name, answer in zip(names, answers):
        assert answer.model == name
        assert answer.choices[0].text == expected[name], name


def test_usage_counts_prompt_and_generated_tokens(server, client, lora_run):
    tokenizer = server[1].models["lora"].tokenizer
    reference = _generate(lora_run.out, "the cat", max_new_tokens=12, temperature=0)
    assert reference.finish_reason == "stop"  # the trained run ends its line with EOS
    answer = client.completions.create(model="lora", prompt="the cat", **GREEDY)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert answer.usage.prompt_tokens == len(encode_prompt(tokenizer, "the cat"))
    assert answer.usage.completion_tokens == reference.new_tokens + 1  # + the EOS token
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + \
        answer.usage.completion_tokens
    long = client.completions.create(model="base", prompt="the", max_tokens=5, temperature=0)
    if long.choices[0].finish_reason == "length":
        assert long.usage.completion_tokens == 5


def test_n_choices_for_each_prompt_in_order_and_seeds_repeat(client):
    def ask(seed):
        return client.completions.create(model="base", prompt=["the cat", "a dog"], n=3,
                                         max_tokens=6, temperature=1.0, seed=seed)
    first, again, other = ask(7), ask(7), ask(8)
    assert [c.index for c in first.choices] == list(range(6))
    texts = [c.text for c in first.choices]
    assert len(set(texts)) > 1  # the n samples of a prompt differ
    assert texts == [c.text for c in again.choices]
    assert texts != [c.text for c in other.choices]
    assert all(c.finish_reason in ("stop", "length") for c in first.choices)


def test_stop_strings_cut_the_text_in_full_and_streamed_answers(client):
    plain = client.completions.create(model="lora", prompt="the cat", **GREEDY).choices[0]
    assert " on" in plain.text, plain.text
    cut = client.completions.create(model="lora", prompt="the cat", stop=[" on", "zzz"],
                                    **GREEDY).choices[0]
    assert cut.text == plain.text.split(" on")[0] and cut.finish_reason == "stop"
    chunks = list(client.completions.create(model="lora", prompt="the cat", stop=" on",
                                            stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == cut.text  # no stop text leaked


def test_streamed_completion_equals_the_full_answer(client):
    full = client.completions.create(model="jokes-b", prompt="a dog", **GREEDY)
    stream = client.completions.create(model="jokes-b", prompt="a dog", stream=True,
                                       stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stream_ends_with_done(server):
    body = {"model": "lora", "prompt": "the cat", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server[0] + "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert text.endswith("data: [DONE]\n\n")


def test_chat_uses_the_chat_template(server, client):
    chat_folder = server[2]
    messages = [{"role": "user", "content": "the cat"}]
    answer = client.chat.completions.create(model="chat", messages=messages, max_tokens=8,
                                            temperature=0)
    reference = _generate(chat_folder, "the cat", max_new_tokens=8, temperature=0, chat=True)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == reference.text
    tokenizer = server[1].models["chat"].tokenizer
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
    assert rendered.endswith("<s>assistant:")
    assert answer.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)
                                             ["input_ids"])
    chunks = list(client.chat.completions.create(model="chat", messages=messages,
                                                 max_tokens=8, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reference.text
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason


def test_chat_with_a_model_without_template_is_a_clean_400(client):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="base", messages=[{"role": "user",
                                                                "content": "hi"}])


def test_classify_returns_the_classifiers_labels(server, classify_run):
    texts = ["the cat sat", "a dog ran in the park"]
    r = httpx.post(server[0] + "/v1/classify", json={"model": "labels", "input": texts})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    expected = lmtune.predict(classify_run.out, texts, device="cpu")
    assert [d["label"] for d in data] == [p.label for p in expected]
    for d, p in zip(data, expected):
        assert set(d["probabilities"]) == {"cat", "dog"}
        assert sum(d["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert d["probabilities"] == pytest.approx(p.probs, abs=1e-4)
    one = httpx.post(server[0] + "/v1/classify", json={"model": "labels", "input": "the cat"})
    assert len(one.json()["data"]) == 1


def test_classifier_and_generator_refuse_each_others_endpoints(server, client):
    r = httpx.post(server[0] + "/v1/classify", json={"model": "lora", "input": "hi"})
    assert r.status_code == 400 and "/v1/completions" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="classifier"):
        client.completions.create(model="labels", prompt="hi", max_tokens=2)


def test_a_request_for_many_rows_gives_the_same_greedy_text_as_alone(client):
    alone = client.completions.create(model="lora", prompt="the dog", **GREEDY).choices[0].text
    many = client.completions.create(model="lora", prompt=["the dog"] * 4 + ["the cat sat"],
                                     **GREEDY)
    assert [c.text for c in many.choices[:4]] == [alone] * 4


def test_token_id_prompts_are_taken_as_is(server, client):
    tokenizer = server[1].models["lora"].tokenizer
    ids = encode_prompt(tokenizer, "the cat")
    by_text = client.completions.create(model="lora", prompt="the cat", **GREEDY)
    by_ids = client.completions.create(model="lora", prompt=ids, **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_logits_of_a_mixed_batch_match_each_adapter_alone(server):
    """The engine's batch math, checked without HTTP: left padding, joining and mixed adapters
    give each row the logits its own model gives it alone."""
    group = server[1].models["lora"].group
    model = group.model
    ids = torch.tensor([[0, 5, 17, 42]])
    outs = {}
    with torch.no_grad():
        for name in ("lora", "jokes-b", "base"):
            outs[name] = model(input_ids=ids, adapter_names=[server[1].models[name].row_adapter]
                               ).logits[0, -1]
        mixed = model(input_ids=ids.repeat(3, 1), adapter_names=[
            server[1].models[n].row_adapter for n in ("lora", "jokes-b", "base")]).logits[:, -1]
    for i, name in enumerate(("lora", "jokes-b", "base")):
        torch.testing.assert_close(mixed[i], outs[name], atol=1e-5, rtol=0)
    assert (outs["lora"] - outs["base"]).abs().max() > 1e-3


class _Loop:
    """Stands in for the event loop: the batch's events are collected right here."""
    def call_soon_threadsafe(self, fn, *args):
        fn(*args)


@pytest.mark.parametrize("first, second", [
    (("lora", "the cat"), ("jokes-b", "a dog ran in the park while the")),
    (("jokes-b", "a dog ran in the park while the"), ("lora", "the cat"))])
def test_a_request_joining_a_running_batch_gets_the_same_logits_as_alone(
        server, first, second, monkeypatch):
    """Joining pads the narrower cache on the left (the running rows' or the new ones');
    neither request's next-token logits may change, at any step."""
    from lmtune.serving import batch as batch_mod
    from lmtune.serving.jobs import Job, Sampling

    models = server[1].models
    for name in ("lora", "jokes-b"):  # no early stop: "a" must still run when "b" joins
        monkeypatch.setattr(models[name], "eos_ids", frozenset())
    seen: dict = {}  # (request, step) -> the logits its row was sampled from
    sample = batch_mod.next_tokens

    def recording(logits, rows):
        for row, row_logits in zip(rows, logits):
            seen[(row.job.tag, len(row.tokens))] = row_logits.clone()
        return sample(logits, rows)
    monkeypatch.setattr(batch_mod, "next_tokens", recording)

    def job(tag, name, prompt):
        served = models[name]
        j = Job(served, [encode_prompt(served.tokenizer, prompt)], 1,
                Sampling(max_tokens=10, temperature=0), _Loop())
        j.tag = tag
        return j

    def run(jobs_at: dict[int, list]) -> dict:
        seen.clear()
        batch = batch_mod.DecodeBatch(models["lora"].group)
        with torch.inference_mode():
            for step in range(30):
                if step in jobs_at:
                    batch.add(jobs_at[step])
                if batch.rows:
                    batch.step()
        assert not batch.rows
        return dict(seen)

    together = run({0: [job("a", *first)], 3: [job("b", *second)]})
    alone = run({0: [job("a", *first)]}) | run({0: [job("b", *second)]})
    assert together.keys() == alone.keys()
    assert ("a", 4) in alone and ("b", 1) in alone  # "a" still ran when "b" joined
    for key in alone:
        torch.testing.assert_close(together[key], alone[key], atol=1e-5, rtol=0, msg=str(key))


def test_sampler_draws_each_token_with_its_probability_within_top_p():
    from types import SimpleNamespace

    from lmtune.serving.jobs import Sampling
    from lmtune.serving.sampling import next_tokens

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)

    def rows(**sampling):
        job = SimpleNamespace(sampling=Sampling(max_tokens=1, **sampling),
                              generator=torch.Generator().manual_seed(0))
        return [SimpleNamespace(job=job, tokens=[]) for _ in range(len(logits))]

    counts = torch.bincount(torch.tensor(next_tokens(logits.clone(), rows())), minlength=4)
    assert (counts / len(logits) - probs).abs().max() < 0.03, counts
    nucleus = torch.bincount(torch.tensor(next_tokens(logits.clone(), rows(top_p=0.8))),
                             minlength=4)
    assert nucleus[2:].sum() == 0 and (nucleus[0] / nucleus.sum() - 0.5 / 0.8).abs() < 0.03
    assert set(next_tokens(logits.clone(), rows(temperature=0))) == {0}
    # A presence penalty of 2 on the likeliest token makes it the least likely one.
    penalised = rows(temperature=0, presence_penalty=2.0)
    for r in penalised:
        r.tokens = [0]
    assert set(next_tokens(logits.clone(), penalised)) == {1}


def test_a_served_run_downloads_as_the_gguf_lmtune_export_writes(server, lora_run, tmp_path,
                                                                 monkeypatch):
    url, _, _ = server
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    got = httpx.get(url + "/v1/models/lora/gguf", params={"type": "q8_0"}, timeout=120)
    assert got.status_code == 200, got.text
    assert 'filename="lora-q8_0.gguf"' in got.headers["content-disposition"]
    want = lmtune.export(lora_run.out, tmp_path / "want.gguf", type="q8_0").out.read_bytes()
    assert got.content == want
    again = httpx.get(url + "/v1/models/lora/gguf?type=q8_0", timeout=120)
    assert again.content == want  # from the cache, exported once
    assert len(list((tmp_path / "home" / "exports").glob("*.gguf"))) == 1
    for path, status, words in [("/v1/models/labels/gguf", 400, "text classifier"),
                                ("/v1/models/nobody/gguf", 404, "not served here"),
                                ("/v1/models/lora/gguf?type=q3_k", 400, "not one lmtune")]:
        answer = httpx.get(url + path, timeout=60)
        assert answer.status_code == status and words in answer.json()["error"]["message"]
