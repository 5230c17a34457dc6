"""Text classification on the tiny models: a separable task is learned, the last real token is
pooled whichever side pads, metrics agree with scikit-learn, a LoRA classifier survives saving,
eval and predict agree with training, and resuming is invisible."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmtune
from lmtune.cli import main
from lmtune.config import TrainConfig
from lmtune.run.artifact import RUN_FILE
from lmtune.tasks.classify.data import (
    ClassBatch,
    TextDataset,
    TokenizedTexts,
    pad_rows,
    stratified_split,
    tokenize_texts,
)
from lmtune.tasks.classify.metrics import classification_metrics
from lmtune.tasks.classify.predict import load_classifier
from lmtune.tasks.classify.task import Classification, forward_logits

# Three classes with disjoint words: separable from any one word of a text.
WORDS = {"animal": "cat dog bird mat park sat".split(),
         "code": "programmer arrays quit engines weave patterns".split(),
         "math": "two plus four question answer".split()}
FAST = dict(task="classify", label_column="label", precision="fp32", device="cpu", seed=0)


def write_labelled(path: Path, n: int = 120, seed: int = 0, names=tuple(WORDS)) -> Path:
    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.choice(WORDS[names[i % len(names)]])
                              for _ in range(rng.randint(2, 9))), "label": names[i % len(names)]}
            for i in range(n)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return write_labelled(tmp_path_factory.mktemp("cls") / "labelled.json")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    return write_labelled(tmp_path_factory.mktemp("cls") / "held_out.json", n=30, seed=1)


@pytest.fixture(scope="module")
def cls_run(tiny_gpt2, labelled, tmp_path_factory):
    return lmtune.train(labelled, model=str(tiny_gpt2), out=str(
        tmp_path_factory.mktemp("runs") / "cls"), method="full", lr=3e-3, max_steps=40,
        eval_every=10, **FAST)


@pytest.fixture(scope="module")
def lora_cls_run(tiny_llama, labelled, held_out, tmp_path_factory):
    return lmtune.train(labelled, model=str(tiny_llama), val_data=str(held_out), out=str(
        tmp_path_factory.mktemp("runs") / "cls-lora"), method="lora", lr=1e-2, max_steps=30,
        eval_every=10, **FAST)


# --- training --------------------------------------------------------------------------------

def test_tiny_model_learns_a_separable_task(cls_run):
    evals = [r for r in _records(cls_run.out / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    for r in evals:
        assert set(r) - {"only_label"} == {"step", "val_loss", "accuracy", "macro_precision",
                                           "macro_recall", "macro_f1", "baseline_accuracy"}
        assert 0.3 <= r["baseline_accuracy"] <= 0.5  # three balanced classes
    assert evals[-1]["accuracy"] >= 0.95 and evals[-1]["macro_f1"] >= 0.95
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert cls_run.task == "classify" and cls_run.metrics == evals[-1]
    # The best checkpoint: highest macro F1, ties going to the lower validation loss; kept.
    best = min(evals, key=lambda r: (-r["macro_f1"], r["val_loss"]))
    assert (cls_run.best_step, cls_run.best_score) == (best["step"], best["macro_f1"])
    assert (cls_run.out / "checkpoints" / f"step-{best['step']:06d}").is_dir()


def test_run_folder_records_the_labels_and_the_pad_token(cls_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = cls_run.final
    config = json.loads((final / "config.json").read_text())
    assert config["id2label"] == {"0": "animal", "1": "code", "2": "math"}
    assert config["label2id"] == {"animal": 0, "code": 1, "math": 2}
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert config["pad_token_id"] == tokenizer.pad_token_id is not None
    info = json.loads((final / RUN_FILE).read_text())
    assert info["task"] == "classify" and info["labels"] == ["animal", "code", "math"]
    assert sum(info["label_counts"]) == 108 and info["label_column"] == "label"
    assert info["text_column"] == "text"
    # Plain transformers loads the same classifier.
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    clf = load_classifier(str(cls_run.out))
    batch = _batch(clf.tokenizer, ["cat dog park", "two plus four"], "right")
    torch.testing.assert_close(forward_logits(model, batch, "cpu"),
                               forward_logits(clf.model, batch, "cpu"))


def _batch(tokenizer, texts, side) -> ClassBatch:
    tok = tokenize_texts(texts, tokenizer)
    rows = [tok.ids[tok.offsets[i]: tok.offsets[i + 1]] for i in range(len(texts))]
    ids, mask, positions = pad_rows(rows, tokenizer.pad_token_id, side)
    return ClassBatch(ids, mask, positions, None, np.arange(len(texts)), len(texts), 0)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_left_and_right_padding_give_the_same_logits(fixture, request):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmtune.tasks.classify.task import head_config

    folder = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # GPT-2 has none
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, **head_config(["a", "b"], tokenizer.pad_token_id)).eval()
    # Lengths differ a lot, and one text ends in the literal text of the pad (EOS) token,
    # which must stay ordinary text, or the head would pool before it.
    texts = ["cat", "the programmer did not get arrays because engines weave patterns",
             "two plus four<|endoftext|>", "a dog ran in the park"]
    left, right = _batch(tokenizer, texts, "left"), _batch(tokenizer, texts, "right")
    for row, mask in zip(right.input_ids, right.attention_mask):
        # Only a text's start token may have the pad id (GPT-2's start token is its EOS).
        assert (row[mask.bool()][1:] != tokenizer.pad_token_id).all()
    with torch.no_grad():
        got_left = forward_logits(model, left, "cpu")
        got_right = forward_logits(model, right, "cpu")
        alone = torch.cat([forward_logits(model, _batch(tokenizer, [t], "right"), "cpu")
                           for t in texts])
    torch.testing.assert_close(got_left, got_right, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_left, alone, atol=1e-5, rtol=0)


# --- metrics -----------------------------------------------------------------------------------

def test_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d", "e"]
    # "d" is predicted but never true; "e" is neither: sklearn's macro average (labels=None)
    # counts "d" (with recall 0) and leaves "e" out.
    y_true = rng.choice(3, size=200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.choice(4, size=200))
    got = classification_metrics(y_true, y_pred, names)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                 zero_division=0)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert (got["macro_precision"], got["macro_recall"], got["macro_f1"]) == pytest.approx((p, r, f))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    for i, name in enumerate(names):
        c = got["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
            (p[i], r[i], f[i], s[i]))
    assert got["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(5)).tolist()


def test_class_weights_auto_balance_the_classes(tiny_gpt2, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    path = tmp_path / "skewed.json"
    rows = [{"text": "cat dog", "label": "animal"}] * 30 + [{"text": "two plus", "label": "math"}] * 10
    path.write_text(json.dumps(rows))
    cfg = TrainConfig(data=str(path), val_split=0.0, class_weights="auto", **{
        k: v for k, v in FAST.items() if k not in ("precision", "device")})
    task = Classification()
    task.prepare(cfg, AutoTokenizer.from_pretrained(tiny_gpt2), context=256, n_layers=2)
    # n / (k * n_c): each class's weights add up to the same total, n / k.
    assert task.weights.tolist() == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])
    # The loss is the weighted sum over the batch (the loop divides by the text count).
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 0, 1])
    monkeypatch.setattr("lmtune.tasks.classify.task.forward_logits",
                        lambda model, batch, device: logits)
    batch = ClassBatch(None, None, None, labels, None, 4, 0)
    per_text = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_text * torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0])).sum()
    assert task.loss_sum(None, batch, "cpu").item() == pytest.approx(expected.item())


# --- data --------------------------------------------------------------------------------------

def test_length_grouped_batches_cover_every_text_once_and_pad_little():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 60, size=203)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = TokenizedTexts(ids=np.ones(offsets[-1], dtype=np.int64), offsets=offsets,
                          labels=np.zeros(203, dtype=np.int64), truncated=0)
    ds = TextDataset(data, pad_id=0, shuffle=True, seed=3)
    for epoch in (0, 1):
        batches = list(ds.batches(epoch, 8))
        rows = np.concatenate([b.rows for b in batches])
        assert sorted(rows.tolist()) == list(range(203)) and len(batches) == ds.num_batches(8)
        padded = sum(b.input_ids.numel() for b in batches)
        assert padded < 1.15 * lengths.sum()  # random batches of 8 pad about 1.6x here
        # Resuming mid-epoch skips to exactly the same batches.
        later = list(ds.batches(epoch, 8, start=5))
        assert all(np.array_equal(a.rows, b.rows) for a, b in zip(later, batches[5:]))
    assert not np.array_equal(list(ds.batches(0, 8))[0].rows, list(ds.batches(1, 8))[0].rows)


def test_validation_split_is_stratified_and_seeded():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 2)
    train, val = stratified_split(labels, 0.2, seed=1)
    # round(n_c * 0.2) per class: 10 and 2; the class of 2 keeps both for training.
    assert np.bincount(labels[val], minlength=3).tolist() == [10, 2, 0]
    assert len(set(train) | set(val)) == 62 and not set(train) & set(val)
    again = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(again[1], val)


# --- LoRA, eval and predict ---------------------------------------------------------------------

def test_lora_classifier_saved_and_loaded_gives_identical_probabilities(tiny_llama, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import resolve
    from lmtune.run.artifact import save_artifact
    from lmtune.tasks.classify.predict import Classifier
    from lmtune.tasks.classify.task import head_config
    from lmtune.training.methods import apply_lora

    resolved = resolve(str(tiny_llama))
    tokenizer = load_tokenizer(resolved)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, **head_config(["x", "y", "z"], tokenizer.pad_token_id))
    model = apply_lora(base, r=4, alpha=8, dropout=0.0, targets=None, classify=True)
    with torch.no_grad():  # move the adapter and the head away from their initial values
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    info = {"task": "classify", "base_model": str(Path(tiny_llama).resolve()),
            "labels": ["x", "y", "z"], "max_length": 64, "method": "lora"}
    texts = ["cat dog park", "the programmer quit", "two plus four question answer", "mat"]
    before = Classifier(model, tokenizer, info, torch.device("cpu")).probabilities(texts)
    save_artifact(tmp_path / "final", model, tokenizer, info)
    saved = load_file(tmp_path / "final" / "adapter_model.safetensors")
    assert any("score" in k for k in saved)  # the head is saved with the adapter
    after = load_classifier(str(tmp_path / "final")).probabilities(texts)
    np.testing.assert_array_equal(before, after)
    assert before.std(axis=0).max() > 1e-3  # not a constant answer


def test_eval_of_a_lora_run_matches_its_last_validation(lora_cls_run, held_out, tmp_path):
    final = lora_cls_run.final
    assert (final / "adapter_config.json").is_file() and not (final / "config.json").exists()
    result = lmtune.evaluate_classifier(lora_cls_run.out, held_out)
    last = lora_cls_run.metrics
    assert result["examples"] == 30 and result["labels"] == ["animal", "code", "math"]
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert result[key] == pytest.approx(last[key], abs=1e-4)
    assert np.array(result["confusion_matrix"]).sum() == 30
    assert set(result["per_class"]) == {"animal", "code", "math"}
    # Training labels are balanced 36/36/36 after the split: the first sorted label wins.
    assert result["majority_baseline"] == {"label": "animal", "accuracy": pytest.approx(1 / 3),
                                           "macro_f1": pytest.approx(1 / 6)}
    from lmtune.tasks.classify.evaluate import plot_confusion
    png = plot_confusion(result, tmp_path / "confusion.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_cli_and_api_agree(cls_run, tmp_path, capsys, monkeypatch):
    texts = ["cat dog bird", "programmer arrays", "two plus four"]
    argv = ["predict", str(cls_run.out), "--json"] + [x for t in texts for x in ("--text", t)]
    assert main(argv) == 0
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [p["label"] for p in printed] == ["animal", "code", "math"]
    api = lmtune.predict(cls_run.out, texts)
    assert [p.to_dict() for p in api] == printed
    assert all(sum(p["probs"].values()) == pytest.approx(1, abs=1e-4) for p in printed)

    data = tmp_path / "to_label.csv"
    data.write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(cls_run.out), "--data", str(data), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert list(rows[0]) == ["text", "label", "prob_animal", "prob_code", "prob_math"]
    assert [r["label"] for r in rows] == ["animal", "code", "math"]
    assert float(rows[0]["prob_animal"]) == pytest.approx(api[0].probs["animal"], abs=1e-6)
    capsys.readouterr()
    # --data -: one text per line from stdin, each answered as it comes (blank lines skipped).
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts[:2]) + "\n\n"))
    assert main(["predict", str(cls_run.out), "--data", "-", "--json"]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == printed[:2]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_equals_a_straight_run(method, tiny_gpt2, labelled, tmp_path):
    opts = dict(FAST, model=str(tiny_gpt2), method=method, lr=3e-3, lr_schedule="constant",
                warmup_steps=2, eval_every=3, log_every=1)
    straight = lmtune.train(labelled, out=str(tmp_path / "a"), max_steps=9, **opts)
    lmtune.train(labelled, out=str(tmp_path / "b"), max_steps=6, **opts)
    resumed = lmtune.train(labelled, out=str(tmp_path / "b"), max_steps=9, resume=True, **opts)
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(straight.final / name), load_file(resumed.final / name)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    def losses(out):
        return [(r["step"], r.get("loss"), r.get("macro_f1"), r.get("val_loss"))
                for r in _records(out / "metrics.jsonl")
                if "threads" not in r]  # each process's start record: a resume adds one
    assert len(losses(straight.out)) == 12 and losses(straight.out) == losses(resumed.out)
    assert resumed.best_step == straight.best_step and resumed.metrics == straight.metrics


def test_template_and_integer_labels_carry_over_to_eval_and_predict(tiny_gpt2, tmp_path):
    # Integer labels in JSONL, sorted as numbers (10 after 2); the same labels as strings in a
    # CSV evaluation file are the same labels; the run's template builds the texts of both.
    rows = [{"title": t, "body": b, "stars": s} for s, t, b in
            [(1, "cat", "dog mat"), (2, "two", "plus four"), (10, "arrays", "quit")] * 8]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    run = lmtune.train(train, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                       template="{title}: {body}", max_steps=2, method="full", val_split=0,
                       **dict(FAST, label_column="stars"))
    info = json.loads((run.final / RUN_FILE).read_text())
    assert info["labels"] == ["1", "2", "10"] and info["template"] == "{title}: {body}"
    assert info["text_column"] is None
    evaluation = tmp_path / "eval.csv"
    evaluation.write_text("title,body,stars\ncat,dog,1\ntwo,four,2\narrays,quit,10\n")
    result = lmtune.evaluate_classifier(run.out, evaluation)
    assert result["examples"] == 3 and result["labels"] == ["1", "2", "10"]
    clf = lmtune.load_classifier(run.out)
    by_template = lmtune.predict(clf, data=evaluation)
    assert [p.text for p in by_template] == ["cat: dog", "two: four", "arrays: quit"]
    assert [p.probs for p in by_template] == [p.probs for p in clf.predict(
        ["cat: dog", "two: four", "arrays: quit"])]
    lines = tmp_path / "texts.txt"
    lines.write_text("cat: dog\n\ntwo: four\n", encoding="utf-8")
    assert [p.text for p in lmtune.predict(clf, data=lines)] == ["cat: dog", "two: four"]


def test_texts_are_cut_at_max_length_from_the_end(tiny_gpt2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    texts = ["cat", "the programmer did not get arrays because engines weave patterns", "dog ran"]
    full, cut = tokenize_texts(texts, tokenizer), tokenize_texts(texts, tokenizer, 4)
    assert cut.truncated == sum(n > 4 for n in full.lengths) >= 1
    for i in range(3):
        row = full.ids[full.offsets[i]: full.offsets[i + 1]]
        assert row[0] == tokenizer.eos_token_id  # GPT-2's start token
        assert cut.ids[cut.offsets[i]: cut.offsets[i + 1]].tolist() == row[:4].tolist()
