"""Preference tuning (--task preference) on the tiny models: each loss equals its closed form
computed here from the model's own logits, one sequence at a time; only answer tokens count;
the three data formats read to the same pairs; DPO's cached reference is computed once, read
on resume and recomputed for other data or another model; and a short run learns a toy
preference."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_clean_error, run_cli
from safetensors.torch import load_file
from tiny_models import save_folder

import lmtune
from lmtune.analysis.learned import did_it_learn
from lmtune.config import TrainConfig
from lmtune.data.examples import split_indices
from lmtune.models import forward
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve
from lmtune.tasks.preference import reference
from lmtune.tasks.preference.data import read_pairs, tokenize_pairs
from lmtune.tasks.preference.evaluate import held_out_pairs
from lmtune.tasks.preference.task import Preference
from lmtune.training.methods import METHODS

QUESTIONS = ["two plus four", "why did the programmer quit", "quote by ada", "the cat sat"]
CHOSEN = ["the cat sat on the mat", "a dog ran in the park", "birds sang in the park"]
REJECTED = ["he did not get arrays", "engines weave patterns", "because he did quit"]
RUN = dict(task="preference", precision="fp32", device="cpu", seed=0)


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs whose chosen answers talk of animals and whose rejected ones of programming."""
    rng = random.Random(seed)
    return [{"prompt": f"question {rng.choice(QUESTIONS)} answer",
             "chosen": " " + rng.choice(CHOSEN), "rejected": " " + rng.choice(REJECTED)}
            for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(autouse=True)
def reference_cache(tmp_path, monkeypatch) -> Path:
    """Reference log-probabilities go to this test's folder, not the user's cache."""
    folder = tmp_path / "reference-cache"
    monkeypatch.setattr(reference, "reference_root", lambda: folder)
    return folder


@pytest.fixture
def prefs(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prefs.jsonl", toy_rows(24))


# --- the losses against their closed forms ---------------------------------------------------

def prepared(folder: Path, data: Path, **options):
    """A Preference task that has read `data` (no validation split) for the model `folder`."""
    cfg = TrainConfig(data=str(data), model=str(folder), val_split=0.0, **RUN, **options)
    task, tokenizer = Preference(), load_tokenizer(resolve(str(folder)))
    prepared_cfg = task.prepare(cfg, tokenizer, context=256, n_layers=2).cfg
    return task, tokenizer, prepared_cfg


def closed_logp(model, tokenizer, prompt: str, answer: str) -> tuple[torch.Tensor, int]:
    """The answer's summed log-probability after the prompt, from the logits of this one
    sequence alone: `[start] + prompt + answer + [end]`, the answer and end token counted."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id
    p = [start] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([p + a])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return logp[len(p) - 1:-1].gather(1, ids[0, len(p):, None]).sum(), len(a)


def logsigmoid(z):
    return -torch.nn.functional.softplus(-z)


def closed_loss(loss: str, beta: float, gamma, policy, ref=None) -> torch.Tensor:
    """The pair's loss as the papers (and TRL) write it, in float64."""
    (sc, nc), (sr, nr) = policy
    if loss == "dpo":
        return -logsigmoid(beta * ((sc - ref[0]) - (sr - ref[1])))
    ac, ar = sc / nc, sr / nr
    if loss == "simpo":
        return -logsigmoid(beta * (ac - ar) - gamma)
    log_odds = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
    return -ac - beta * logsigmoid(log_odds)


def _check_against_closed_form(task, model, ref_model, tokenizer, pairs, rows):
    batch = task.sets["train"].batch(np.asarray(rows))
    model.zero_grad(set_to_none=True)
    got, stats = task.loss_and_stats(model, batch, "cpu")  # grad on: the training path
    got.backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    want, rewards_c = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for i in rows:
        pair = pairs[i]
        policy = [closed_logp(model, tokenizer, pair.prompt, a) for a in (pair.chosen,
                                                                         pair.rejected)]
        ref = None
        if task.loss == "dpo":
            with torch.no_grad():
                ref = [closed_logp(ref_model, tokenizer, pair.prompt, a)[0]
                       for a in (pair.chosen, pair.rejected)]
        want = want + closed_loss(task.loss, task.beta, task.gamma, policy, ref)
        sc, nc = policy[0]
        rewards_c = rewards_c + task.beta * ((sc - ref[0]) if ref else sc / nc)
    want.backward()
    assert abs(got.item() - want.item()) < 1e-5, (got.item(), want.item())
    assert abs(stats["rewards_chosen"].item() - rewards_c.item()) < 1e-5
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad.float(), atol=1e-5,
                                   rtol=1e-4, msg=name)
    assert got_grads


@pytest.mark.parametrize("path", ["chunked head", "whole model"])
def test_dpo_with_the_adapter_off_as_reference_is_its_closed_form(path, tiny_gpt2, prefs,
                                                                 monkeypatch):
    if path == "whole model":  # the path of heads with a bias, and of DDP/FSDP
        monkeypatch.setattr(forward, "_chunked_ok", lambda model: False)
    task, tokenizer, cfg = prepared(tiny_gpt2, prefs, loss="dpo", method="lora")
    model = METHODS["lora"].apply(task.load_model(resolve(str(tiny_gpt2)), cfg, tokenizer),
                                  cfg)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # an adapter that has trained: the policy is not the base
            p.data.normal_(0, 0.3)
    base = lmtune_base(tiny_gpt2)
    pairs = read_pairs(str(prefs))
    _check_against_closed_form(task, model, base, tokenizer, pairs, [0, 3, 5, 9])


def lmtune_base(folder: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_dpo_with_the_cached_reference_is_its_closed_form(fixture, prefs, request):
    folder = request.getfixturevalue(fixture)
    task, tokenizer, cfg = prepared(folder, prefs, loss="dpo", method="full")
    model = task.load_model(resolve(str(folder)), cfg, tokenizer)  # computes the reference
    assert task.sets["train"].reference.shape == (24, 2)
    torch.manual_seed(1)
    with torch.no_grad():  # as if trained: the policy moves away from the reference
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pairs = read_pairs(str(prefs))
    _check_against_closed_form(task, model, lmtune_base(folder), tokenizer, pairs, [1, 2, 7])


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_losses_are_their_closed_forms(loss, tiny_llama, prefs):
    task, tokenizer, cfg = prepared(tiny_llama, prefs, loss=loss, method="full", beta=0.5)
    model = task.load_model(resolve(str(tiny_llama)), cfg, tokenizer)
    assert task.sets["train"].reference is None  # nothing computed for them
    assert (task.beta, task.gamma) == (0.5, 0.5 if loss == "simpo" else None)
    _check_against_closed_form(task, model, None, tokenizer, read_pairs(str(prefs)), [0, 4, 11])


def test_only_answer_tokens_count_whatever_the_padding(tiny_gpt2, prefs):
    task, tokenizer, cfg = prepared(tiny_gpt2, prefs, loss="simpo", method="full")
    model = task.load_model(resolve(str(tiny_gpt2)), cfg, tokenizer).eval()
    dataset, pairs = task.sets["train"], read_pairs(str(prefs))
    batch = dataset.batch(np.array([0, 1]))
    for row, (pair, answer) in enumerate([(pairs[0], "chosen"), (pairs[1], "chosen"),
                                          (pairs[0], "rejected"), (pairs[1], "rejected")]):
        text = getattr(pair, answer)
        n_answer = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + end
        labels, ids = batch.labels[row], batch.input_ids[row]
        counted = (labels != -100).nonzero().squeeze(1)
        # the answer and its end token, last among the real tokens; never prompt or padding
        assert len(counted) == n_answer
        last = int(batch.attention_mask[row].sum()) - 1
        assert counted.tolist() == list(range(last - n_answer + 1, last + 1))
        assert (labels[counted] == ids[counted]).all() and ids[last] == tokenizer.eos_token_id
    with torch.no_grad():
        alone, _ = forward.sequence_logps(model, dataset.batch(np.array([0])), "cpu")
        # the same pair beside the longest one, padded with another token id
        longest = int(np.argmax(dataset.lengths()))
        dataset.pad_id = 7
        padded, _ = forward.sequence_logps(model, dataset.batch(np.array([0, longest])), "cpu")
    torch.testing.assert_close(padded[[0, 2]], alone, atol=1e-5, rtol=0)


# --- data ------------------------------------------------------------------------------------

def test_three_formats_read_to_the_same_pairs(tmp_path, tiny_gpt2):
    rows = toy_rows(6)
    strings = read_pairs(str(write_jsonl(tmp_path / "trl.jsonl", rows)))
    with open(tmp_path / "table.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "good", "bad"])
        writer.writerows([[r["prompt"].removeprefix("question ").removesuffix(" answer"),
                           r["chosen"], r["rejected"]] for r in rows])
    table = read_pairs(str(tmp_path / "table.csv"), prompt_template="question {question} answer",
                       chosen_column="good", rejected_column="bad")
    assert table == strings and strings[0].prompt == rows[0]["prompt"] and not strings[0].turns

    def user(text):
        return [{"role": "system", "content": "be kind"}, {"role": "user", "content": text}]

    def said(text):
        return [{"role": "assistant", "content": text}]

    trl = [{"prompt": user(r["prompt"]), "chosen": said(r["chosen"]),
            "rejected": said(r["rejected"])} for r in rows]
    implicit = [{"chosen": user(r["prompt"]) + said(r["chosen"]),
                 "rejected": user(r["prompt"]) + said(r["rejected"])} for r in rows]
    openai = [{"input": {"messages": user(r["prompt"])}, "preferred_output": said(r["chosen"]),
               "non_preferred_output": said(r["rejected"])} for r in rows]
    read = [read_pairs(str(write_jsonl(tmp_path / f"{name}.jsonl", data)))
            for name, data in (("trl", trl), ("implicit", implicit), ("openai", openai))]
    assert read[0] == read[1] == read[2]
    assert [(p.chosen, p.rejected) for p in read[0]] == [(p.chosen, p.rejected) for p in strings]
    assert [t.role for t in read[0][0].turns] == ["system", "user"]
    # As chat, the answer is the assistant turn: rendered by the chat template, counted with
    # its end-of-turn, and only it.
    tokenizer = load_tokenizer(resolve(str(tiny_gpt2)))
    chosen, _ = tokenize_pairs(read[2][:1], tokenizer)
    ids, mask = chosen.ids[:chosen.offsets[1]], chosen.loss_mask[:chosen.offsets[1]]
    assert tokenizer.decode(ids[mask]).strip() == rows[0]["chosen"].strip() + \
        tokenizer.eos_token


def test_parquet_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = toy_rows(4)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    assert read_pairs(str(tmp_path / "prefs.parquet")) == read_pairs(
        str(write_jsonl(tmp_path / "prefs.jsonl", rows)))


def _bad(rows, line, **replace):
    rows = [dict(r) for r in rows]
    rows[line - 1] = replace
    return rows


BAD_FILES = [
    ("no-rejected", lambda r: _bad(r, 3, prompt="q", chosen="a"),
     ["bad.jsonl line 3", "the rejected answer is empty"]),
    ("empty-chosen", lambda r: _bad(r, 2, prompt="q", chosen=" ", rejected="b"),
     ["bad.jsonl line 2", "the chosen answer is empty"]),
    ("mixed", lambda r: _bad(r, 4, prompt=[{"role": "user", "content": "q"}],
                             chosen=[{"role": "assistant", "content": "a"}],
                             rejected=[{"role": "assistant", "content": "b"}]),
     ["bad.jsonl line 4", "a pair of messages", "line 1 is a pair of strings"]),
    ("types", lambda r: _bad(r, 2, prompt="q", chosen="a", rejected=[]),
     ["bad.jsonl line 2", "both be strings or both be lists of messages"]),
    ("two-messages", lambda r: [{"input": {"messages": [{"role": "user", "content": "q"}]},
                                 "preferred_output": [{"role": "assistant", "content": "a"}] * 2,
                                 "non_preferred_output": [{"role": "assistant", "content": "b"}]}],
     ["bad.jsonl line 1", "one non-empty assistant message (got 2"]),
    ("no-answers", lambda r: [{"prompt": "q", "answer": "a"}],
     ["no field 'chosen' or 'rejected'", "fields: answer, prompt"]),
]


@pytest.mark.parametrize("make, needles", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_a_bad_row_is_one_error_naming_its_line(make, needles, tiny_gpt2, tmp_path, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", make(toy_rows(6)))
    code, out, err = run_cli(capsys, ["train", data, "--task", "preference", "--model",
                                      tiny_gpt2, "--out", tmp_path / "run"])
    assert_clean_error(code, out, err, *needles)
    assert not (tmp_path / "run").exists()


def test_pairs_without_the_preference_task_say_which_task(prefs, tiny_gpt2, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["train", prefs, "--model", tiny_gpt2, "--out",
                                      tmp_path / "run"])
    assert_clean_error(code, out, err, "holds preference pairs", "hint: train on them with "
                                                                 "--task preference")


@pytest.mark.parametrize("argv, needle", [
    (["--task", "preference", "--loss", "dpo", "--gamma", "1"], "--gamma only applies to "
                                                                "--loss simpo"),
    (["--loss", "orpo", "--beta", "0.2"], "--loss, --beta only apply to --task preference"),
    (["--task", "preference", "--beta", "0"], "--beta must be above 0"),
    (["--task", "preference", "--completion-template", "{chosen}"], "--completion-template does "
                                                                    "not apply"),
])
def test_flags_are_checked_before_anything_loads(argv, needle, prefs, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["train", prefs, "--model", tmp_path / "nowhere", *argv])
    assert_clean_error(code, out, err, needle)


# --- the cached reference --------------------------------------------------------------------

def test_cached_reference_is_computed_once_reused_and_renewed(tiny_gpt2, prefs, tmp_path,
                                                             monkeypatch, reference_cache):
    computed = []
    original = reference.compute
    monkeypatch.setattr(reference, "compute",
                        lambda *a, **k: computed.append(len(a[1])) or original(*a, **k))
    opts = dict(method="full", lr=1e-3, log_every=1, eval_every=2, sample_every=0,
                report=False, **RUN)
    lmtune.train(prefs, model=str(tiny_gpt2), out=str(tmp_path / "a"), max_steps=2, **opts)
    assert computed == [22, 2]  # the training pairs and the held-out ones, once
    assert len(list(reference_cache.glob("*.npz"))) == 1
    resumed = lmtune.train(prefs, model=str(tiny_gpt2), out=str(tmp_path / "a"), max_steps=4,
                           resume=True, **opts)
    assert computed == [22, 2] and resumed.steps == 4  # read back, not computed
    records = [r for r in _records(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"rewards_chosen", "rewards_rejected", "reward_margin",
                "reward_accuracy"} <= set(r) for r in records)
    # Other data: one more pair.
    more = write_jsonl(tmp_path / "more.jsonl", toy_rows(25))
    lmtune.train(more, model=str(tiny_gpt2), out=str(tmp_path / "b"), max_steps=1, **opts)
    assert len(computed) == 4 and len(list(reference_cache.glob("*.npz"))) == 2
    # Another model: the same one with one weight changed.
    model = lmtune_base(tiny_gpt2)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 0.5
    changed = save_folder(model, load_tokenizer(resolve(str(tiny_gpt2))), tmp_path / "changed")
    lmtune.train(prefs, model=str(changed), out=str(tmp_path / "c"), max_steps=1, **opts)
    assert len(computed) == 6 and len(list(reference_cache.glob("*.npz"))) == 3


# --- learning --------------------------------------------------------------------------------

def test_a_short_dpo_run_learns_the_preferred_style(tiny_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(80, seed=0))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", toy_rows(20, seed=1))
    run = lmtune.train(train, val_data=str(held_out), model=str(tiny_gpt2), method="lora",
                       lr=1e-2, max_steps=30, log_every=5, eval_every=10, sample_every=30,
                       sample_max_new_tokens=8, out=str(tmp_path / "run"), **RUN)
    records = _records(run.out / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    # With LoRA the policy starts as its reference: every margin 0, the loss ln 2, and no
    # held-out pair counted as preferred.
    assert evals[-1]["val_loss"] < math.log(2) - 0.2
    assert evals[-1]["reward_accuracy"] >= 0.9 and evals[-1]["reward_margin"] > 0
    assert run.best_metric == "val_loss" and run.best_step == min(
        evals, key=lambda r: r["val_loss"])["step"]
    logs = [r for r in records if "loss" in r]
    assert logs[-1]["reward_accuracy"] >= 0.9
    info = json.loads((run.final / "lmtune.json").read_text())
    assert (info["task"], info["loss"], info["beta"]) == ("preference", "dpo", 0.1)
    samples = _records(run.out / "samples.jsonl")
    assert {s["prompt"] for s in samples} <= {r["prompt"] for r in toy_rows(20, seed=1)}
    # `lmtune eval` measures the run as its training did, and the base beside it.
    tuned = lmtune.evaluate_model(str(run.out), str(held_out), device="cpu")
    assert tuned["reward_accuracy"] == evals[-1]["reward_accuracy"]
    assert abs(tuned["loss"] - evals[-1]["val_loss"]) < 1e-4
    assert tuned["reference"] == str(tiny_gpt2) and tuned["pairs"] == 20
    base = lmtune.evaluate_model(str(tiny_gpt2), str(held_out), device="cpu")
    assert "reward_accuracy" not in base and base["pairs"] == 20
    assert tuned["preference_accuracy"] > base["preference_accuracy"]
    assert tuned["logp_chosen"] - tuned["logp_rejected"] > base["logp_chosen"] - base[
        "logp_rejected"]
    # The web page's "did it learn" asks the same of the same held-out pairs.
    got = did_it_learn(run.out, device="cpu")
    pref = got["preference"]
    assert got["learning"] is None and got["note"] is None and got["forgetting"] is not None
    assert (pref["split"], pref["pairs"]) == ("validation file", 20)
    assert pref["tuned_accuracy"] == tuned["preference_accuracy"]
    assert pref["base_accuracy"] == base["preference_accuracy"]
    assert pref["tuned_margin"] > pref["base_margin"]


def test_held_out_pairs_are_the_split_training_made(prefs):
    cfg = TrainConfig(data=str(prefs), task="preference", val_split=0.25, seed=3)
    pairs, split = held_out_pairs(cfg)
    everything = read_pairs(str(prefs))
    _, val_idx = split_indices(len(everything), 0.25, 3)
    assert split == "validation split" and pairs == [everything[i] for i in val_idx]
    pairs, split = held_out_pairs(dataclasses.replace(cfg, val_split=0.0))
    assert split == "training data" and pairs == everything


def test_the_command_line_and_the_report_show_the_rewards(tiny_gpt2, prefs, tmp_path, capsys):
    code, out, err = run_cli(capsys, [
        "train", prefs, "--task", "preference", "--loss", "orpo", "--model", tiny_gpt2,
        "--out", tmp_path / "run", "--max-steps", "4", "--eval-every", "2", "--lr", "1e-2",
        "--precision", "fp32", "--device", "cpu", "--sample-max-new-tokens", "4"])
    assert code == 0, err
    assert "pairs per batch (cut at 256 tokens)" in err
    assert "preference loss: orpo (beta 0.1; no reference)" in err
    assert "step 4: validation loss" in err and "reward accuracy" in err
    assert "validation at step 4: reward accuracy" in out
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "Preferences on the held-out pairs" in html and "perplexity" not in html
    # before and after on the held-out prompts that the samples answered
    asked = {s["prompt"] for s in _records(tmp_path / "run" / "samples.jsonl")}
    assert "fine-tuned" in html and all(p in html for p in asked)


def test_eval_reports_the_preference_accuracy_of_any_model(tiny_gpt2, prefs, capsys):
    code, out, err = run_cli(capsys, ["eval", tiny_gpt2, "--data", prefs, "--device", "cpu"])
    assert code == 0, err
    assert f"data:  {prefs} (24 pairs)" in out and "preference accuracy " in out
    code, out, err = run_cli(capsys, ["eval", tiny_gpt2, "--data", prefs, "--column", "x"])
    assert_clean_error(code, out, err, "--column: not for preference pairs")


def test_dry_run_plans_pairs_and_writes_nothing(tiny_gpt2, prefs, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["train", prefs, "--task", "preference", "--model",
                                      tiny_gpt2, "--out", tmp_path / "run", "--dry-run",
                                      "--precision", "fp32", "--device", "cpu"])
    assert code == 0, err
    assert "pairs per batch (cut at 256 tokens)" in out and "dry run: nothing" in out
    assert not (tmp_path / "run").exists()
    # The pairs are reported as data inspect reports them, cut where the plan cuts them.
    assert "24 preference pairs" in out and "cut at 256 tokens: 0" in out
    assert "chosen answer tokens:" in out


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_mid_epoch_equals_an_uninterrupted_dpo_run(method, tiny_gpt2, prefs, tmp_path):
    """Stopped after 3 of 6 steps (mid-epoch of shuffled pairs) and resumed: the same losses,
    rewards and final weights as a run never stopped; with full the reference is read back."""
    opts = dict(model=str(tiny_gpt2), method=method, lr=1e-2 if method == "lora" else 1e-3,
                lr_schedule="constant", batch_size=4, log_every=1, eval_every=3,
                sample_every=0, report=False, **RUN)
    straight = lmtune.train(prefs, out=str(tmp_path / "straight"), max_steps=6, **opts)
    lmtune.train(prefs, out=str(tmp_path / "resumed"), max_steps=3, **opts)
    resumed = lmtune.train(out=str(tmp_path / "resumed"), resume=True, max_steps=6)
    logged = [[(r["step"], r["loss"], r["reward_margin"]) for r in _records(out / "metrics.jsonl")
               if "loss" in r] for out in (straight.out, resumed.out)]
    assert [s for s, *_ in logged[1]] == list(range(1, 7)) and logged[0] == logged[1]
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = (load_file(out / "final" / name) for out in (straight.out, resumed.out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
