"""Every bad input through the CLI: exit code 2, one `error:` line on stderr (plus an optional
`hint:` line), no traceback, and nothing written: the --out folder is not even created."""

from __future__ import annotations

import json

import pytest

import lmtune
from cli_helpers import assert_clean_error as _assert_clean_error, run_cli as _run

from lmtune.cli import main

pytestmark = pytest.mark.faults


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def files(tmp_path, quotes_file, lines_file):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "blank.json").write_text(json.dumps([{"text": ""}, {"text": "  "}]))
    (tmp_path / "quotes.csv").write_text("author,quote\nada,engines weave\n", encoding="utf-8")
    (tmp_path / "latin.txt").write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "bad.yaml").write_text("lr: 0.001\nlearning_rate: 0.1\n", encoding="utf-8")
    (tmp_path / "typed.yaml").write_text("lr: fast\n", encoding="utf-8")
    (tmp_path / "a_file").write_text("not a model", encoding="utf-8")
    return {"dir": tmp_path, "quotes": quotes_file, "lines": lines_file}


# (id, argv after `train DATA`, data file key or name, words the message must contain)
CASES = [
    ("missing-file", [], "missing.txt", ["data file not found", "missing.txt"]),
    ("empty-file", [], "empty.txt", ["empty.txt is empty"]),
    ("no-examples", [], "blank.json", ["no examples in", "2 empty", "fields: text"]),
    ("csv-column", ["--column", "text"], "quotes.csv",
     ["'text'", "available fields: author, quote"]),
    ("json-template-field", ["--template", "{author}: {quote}"], "quotes",
     ["'quote'", "available fields: author, text"]),
    ("undecodable", [], "latin.txt", ["latin.txt line 2", "utf-8", "--encoding"]),
    ("missing-model-path", ["--model", "{dir}/no-such-model"], "lines",
     ["no such folder", "no-such-model"]),
    ("model-is-a-file", ["--model", "{dir}/a_file"], "lines", ["is a file"]),
    ("block-size", ["--split-on", "\\n", "--block-size", "512"], "lines",
     ["--block-size 512", "context of 256"]),
    ("train-layers", ["--split-on", "\\n", "--method", "freeze", "--train-layers", "5"],
     "lines", ["--train-layers 5", "1..2", "2 blocks"]),
    ("train-layers-not-freeze", ["--train-layers", "1"], "lines", ["only applies to"]),
    ("numbers-all-at-once", ["--lr", "-1", "--max-steps", "0", "--val-split", "1.5"], "lines",
     ["--lr must be above 0", "--max-steps must be at least 1", "--val-split"]),
    ("yaml-unknown-key", ["--config", "{dir}/bad.yaml"], "lines",
     ["bad.yaml: unknown option 'learning_rate'", "valid options:", "lr,"]),
    ("yaml-bad-type", ["--config", "{dir}/typed.yaml"], "lines", ["'lr' must be float"]),
    ("yaml-missing", ["--config", "{dir}/nope.yaml"], "lines", ["config file not found"]),
    ("half-a-template-pair", ["--prompt-template", "{author}"], "quotes",
     ["--prompt-template and --completion-template go together"]),
]


@pytest.mark.parametrize("argv, data, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_error_and_writes_nothing(argv, data, needles, files, tiny_gpt2,
                                                         tmp_path, capsys):
    data_path = files[data] if data in files else files["dir"] / data
    out = tmp_path / "out"
    argv = [a.replace("{dir}", str(files["dir"])) for a in argv]
    if "--model" not in argv:
        argv += ["--model", tiny_gpt2]
    before = sorted(tmp_path.rglob("*"))
    code, stdout, err = _run(capsys, ["train", data_path, "--out", out, *argv])
    _assert_clean_error(code, stdout, err, *needles)
    assert not out.exists()
    assert sorted(tmp_path.rglob("*")) == before


def test_hub_id_that_is_not_cached_fails_fast_offline(lines_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _run(capsys, ["train", lines_file, "--model", "nobody/no-such-model",
                                   "--out", tmp_path / "out"])
    _assert_clean_error(code, out, err, "'nobody/no-such-model'", "not in the local Hugging Face "
                        "cache", "hub cannot be reached", "hint: pass a local model folder",
                        "smollm2-135m")
    assert not (tmp_path / "out").exists()


def test_no_data_given(tmp_path, tiny_gpt2, capsys):
    code, out, err = _run(capsys, ["train", "--model", tiny_gpt2, "--out", tmp_path / "out"])
    _assert_clean_error(code, out, err, "no data file given")


@pytest.mark.parametrize("flag, value", [("--method", "sgd"), ("--precision", "fp8"),
                                         ("--lr-schedule", "step"), ("--device", "tpu")])
def test_unknown_choice_is_refused_by_the_parser(flag, value, lines_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(lines_file), flag, value, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and value in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def finished_run(tiny_gpt2, lines_file, tmp_path, fast):
    return lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "run"),
                        method="full", max_steps=2, lr=1e-3, sample_every=0, **fast).out


def test_out_folder_with_another_run_is_refused(finished_run, lines_file, tiny_gpt2, capsys):
    before = _snapshot(finished_run)
    code, out, err = _run(capsys, ["train", lines_file, "--model", tiny_gpt2, "--out",
                                   finished_run, "--split-on", "\\n"])
    _assert_clean_error(code, out, err, "already holds a run", "--resume", "--overwrite")
    assert _snapshot(finished_run) == before


def test_out_folder_that_is_not_a_run_and_not_empty_is_refused(lines_file, tiny_gpt2, tmp_path,
                                                              capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, out, err = _run(capsys, ["train", lines_file, "--model", tiny_gpt2, "--out",
                                   tmp_path / "mine", "--overwrite"])
    _assert_clean_error(code, out, err, "not empty and holds no run")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_resume_with_a_changed_setting_names_it(finished_run, capsys):
    before = _snapshot(finished_run)
    code, out, err = _run(capsys, ["train", "--resume", "--out", finished_run, "--lr", "0.01",
                                   "--max-steps", "4"])
    _assert_clean_error(code, out, err, "--lr changed from 0.001 to 0.01", "drop --lr")
    assert _snapshot(finished_run) == before


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    code, out, err = _run(capsys, ["train", "--resume", "--out", tmp_path / "nothing"])
    _assert_clean_error(code, out, err, "holds no run to resume")
    assert not (tmp_path / "nothing").exists()


def test_overwrite_replaces_a_run(finished_run, lines_file, tiny_gpt2, capsys):
    code, out, err = _run(capsys, ["train", lines_file, "--model", tiny_gpt2, "--out",
                                   finished_run, "--overwrite", "--split-on", "\\n",
                                   "--max-steps", "3", "--method", "full", "--precision",
                                   "fp32", "--block-size", "64", "--sample-every", "0"])
    assert code == 0, err
    assert "final model:" in out and "Traceback" not in err
    steps = [r["step"] for r in map(json.loads, (finished_run / "metrics.jsonl").read_text()
                                     .splitlines()) if "loss" in r]
    assert steps == [3]  # the old run's records are gone


def test_overwrite_clears_only_what_a_run_writes(tmp_path):
    from lmtune.run.folder import RunFolder

    for name in ("config.yaml", "metrics.jsonl", "loss.png", "report.html", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "checkpoints" / "step-000001").mkdir(parents=True)
    RunFolder(tmp_path).clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("argv", [["train", "LINES", "--threads", "0"],
                                  ["generate", "MODEL", "--threads", "-2"]])
def test_a_thread_count_below_one_is_one_clean_error_before_any_model_loads(
        argv, lines_file, tiny_gpt2, tmp_path, capsys):
    argv = [{"LINES": lines_file, "MODEL": tiny_gpt2}.get(a, a) for a in argv]
    code, out, err = _run(capsys, [*argv, "--out" if argv[0] == "train" else "--seed",
                                   tmp_path / "run" if argv[0] == "train" else 0])
    _assert_clean_error(code, out, err, "--threads must be at least 1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, usage, needle", [
    (["train", "d.csv", "--colunm", "text"], "usage: lmtune train",
     "--colunm (did you mean --column?)"),
    (["train", "d.csv", "--colum", "text"], "usage: lmtune train",
     "--colum (did you mean --column?)"),
    (["train", "d.csv", "--max-step", "3"], "usage: lmtune train", "(did you mean --max-steps?)"),
    (["data", "inspect", "d.csv", "--colunm", "x"], "usage: lmtune data inspect",
     "(did you mean --column?)"),
    (["generate", "--promt", "hi"], "usage: lmtune generate", "(did you mean --prompt?)"),
])
def test_a_mistyped_flag_is_refused_with_the_nearest_one(argv, usage, needle, capsys):
    """Abbreviations are off: `--colum` and `--max-step` used to pass silently as --column and
    --max-steps, and `--colunm` got the top-level usage and no suggestion."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and needle in err and "Traceback" not in err


def test_a_mistyped_run_folder_is_named_with_the_nearest_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs" / "proverbs-lora").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, ["generate", "runs/proverbs-lroa", "--prompt", "x"])
    _assert_clean_error(code, out, err, "no such folder: runs/proverbs-lroa",
                        "did you mean runs/proverbs-lora?")
    assert "Hugging Face" not in err and "--model" not in err
