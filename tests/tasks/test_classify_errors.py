"""Bad input for classification through the CLI: exit code 2, one `error:` line (plus an
optional `hint:`), no traceback, and for train nothing written (--out is not even created)."""

from __future__ import annotations

import json

import pytest
from test_classify import write_labelled
from cli_helpers import assert_clean_error as _assert_clean_error, run_cli as _run

import lmtune


@pytest.fixture
def files(tmp_path):
    def csv(name: str, text: str):
        (tmp_path / name).write_text(text, encoding="utf-8")

    csv("ok.csv", "text,label\ncat dog,animal\ntwo plus,math\n")
    csv("one_class.csv", "text,label\ncat dog,animal\nbird mat,animal\n")
    csv("empty_text.csv", "text,label\ncat dog,animal\n,math\n  ,math\nbird,animal\n")
    csv("no_label.csv", "text,label\ncat dog,animal\ntwo plus,\nbird,animal\n")
    csv("no_text_column.csv", "body,label\ncat dog,animal\ntwo plus,math\n")
    return tmp_path


# (id, argv after `train DATA`, data file, words the message must contain)
TRAIN_CASES = [
    ("no-label-flag", [], "ok.csv", ["needs --label-column", "columns: label, text"]),
    ("label-column-missing", ["--label-column", "sentiment"], "ok.csv",
     ["'sentiment' is not a column", "columns: label, text"]),
    ("text-column-missing", ["--label-column", "label", "--text-column", "body"], "ok.csv",
     ["'body'", "available fields: label, text"]),
    ("no-default-text-column", ["--label-column", "label"], "no_text_column.csv",
     ["which column", "holds the text", "columns: body, label"]),
    ("single-class", ["--label-column", "label"], "one_class.csv",
     ["single label", "'animal'", "at least two"]),
    ("empty-text", ["--label-column", "label"], "empty_text.csv",
     ["2 of 4 rows", "empty text", "rows 2, 3"]),
    ("missing-label", ["--label-column", "label"], "no_label.csv", ["have no label", "rows 2"]),
    ("column-flag", ["--label-column", "label", "--column", "text"], "ok.csv",
     ["--text-column", "not --column"]),
    ("same-columns", ["--label-column", "label", "--text-column", "label"], "ok.csv",
     ["both 'label'"]),
    ("samples", ["--label-column", "label", "--sample-prompt", "hi"], "ok.csv",
     ["generates no samples"]),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_classify_bad_input(case, files, tiny_gpt2, capsys):
    _, argv, data, needles = case
    out = files / "run"
    code, stdout, err = _run(capsys, ["train", files / data, "--task", "classify", "--model",
                                      tiny_gpt2, "--out", out, *argv])
    _assert_clean_error(code, stdout, err, *needles)
    assert not out.exists()


def test_classify_flags_need_the_classify_task(files, tiny_gpt2, capsys):
    code, out, err = _run(capsys, ["train", files / "ok.csv", "--model", tiny_gpt2,
                                   "--label-column", "label", "--class-weights", "auto",
                                   "--out", files / "run"])
    _assert_clean_error(code, out, err, "--label-column, --class-weights only apply to --task "
                                        "classify")


def test_eval_data_with_a_label_unseen_in_training(cls_run, tmp_path):
    data = tmp_path / "eval.json"
    data.write_text(json.dumps([{"text": "cat", "label": "animal"},
                                {"text": "two", "label": "sport"},
                                {"text": "four", "label": "sport"}]))
    with pytest.raises(lmtune.UserError, match=r"label 'sport' \(rows 2, 3\) that was not in "
                                               r"the training data; the classifier knows: "
                                               r"animal, code, math"):
        lmtune.evaluate_classifier(cls_run.out, data)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("cls") / "labelled.json")


@pytest.fixture(scope="module")
def cls_run(tiny_gpt2, labelled, tmp_path_factory):
    # Untrained beyond one step: these tests need a classification run folder, not a good one.
    return lmtune.train(labelled, model=str(tiny_gpt2), out=str(
        tmp_path_factory.mktemp("runs") / "cls"), task="classify", label_column="label",
        method="full", max_steps=1, precision="fp32", device="cpu")


def test_predict_bad_input(cls_run, full_run, files, capsys):
    run = str(cls_run.out)
    cases = [
        (["predict", run], ["nothing to classify", "--text"]),
        (["predict", run, "--text", "cat", "--data", files / "ok.csv"], ["not both"]),
        (["predict", run, "--text", "  "], ["the text is empty"]),
        (["predict", run, "--data", files / "empty_text.csv"], ["empty text", "rows 2, 3"]),
        (["predict", full_run.out, "--text", "cat"], ["is not a classification run"]),
        (["predict", run, "--text", "cat", "--out", files], ["is a folder"]),
        (["generate", run, "--prompt", "cat"], ["is a text classifier", "lmtune predict"]),
        (["merge", run, "--out", files / "merged"], ["is a text classifier"]),
    ]
    for argv, needles in cases:
        code, out, err = _run(capsys, argv)
        _assert_clean_error(code, out, err, *needles)
    assert not (files / "merged").exists()
