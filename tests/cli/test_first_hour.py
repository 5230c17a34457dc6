"""A newcomer's first hour (issue 16): the README's Python API example runs and prints only
what it prints itself, callbacks are checked before any work, every long stage is drawn by
the CLI, and the data readers say what they chose."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmtune
from cli_helpers import run_cli
from lmtune.cli import progress as cli_progress
from lmtune.errors import UserError

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_example_runs_and_prints_only_its_own_lines(tiny_gpt2, tmp_path):
    """As written, except for the model (the tiny one) and the length (two steps): stderr
    stays empty, so no loading bars, no 'Writing model shards', no FutureWarning."""
    code = readme_api_example()
    call = 'method="lora", epochs=1,'
    assert call in code, "the README's train call changed: update this test"
    code = code.replace(call, f'method="lora", max_steps=2, model={str(tiny_gpt2)!r}, '
                              f'eval_every=1, block_size=64, precision="fp32",')
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("step 1: validation loss ")
    assert sum(line.endswith((" stop", " length")) for line in lines) == 4
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_a_one_argument_callback_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError) as e:
        lmtune.train(str(tmp_path / "not-read-yet.txt"), on_event=lambda event: None)
    assert "on_event must take two arguments" in e.value.message
    assert "def on_event(event: str, data: dict)" in e.value.hint
    with pytest.raises(UserError, match="must be a function"):
        lmtune.train("x.txt", on_event="print")


def test_training_tells_its_stages_to_on_event(tiny_gpt2, lines_file, tmp_path, fast):
    events = []
    lmtune.train(lines_file, model=str(tiny_gpt2), out=str(tmp_path / "run"), method="full",
                 max_steps=2, eval_every=2, sample_every=2, sample_max_new_tokens=4,
                 on_event=lambda e, d: events.append((e, d)), **fast)
    stages = [d for e, d in events if e == "stage"]
    names = {d["name"] for d in stages}
    assert f"loading {tiny_gpt2}" in names and "evaluating" in names
    assert any(n.startswith("generating") for n in names)
    assert any(n.startswith("writing the report") for n in names)
    for name in names:  # every stage that starts ends, after advancing to its total
        mine = [d for d in stages if d["name"] == name]
        assert mine[0]["state"] == "start" and mine[-1]["state"] == "end"
    ev = [d for d in stages if d["name"] == "evaluating" and d["state"] == "end"]
    assert ev[0]["done"] == ev[0]["total"] >= 1


def test_the_cli_draws_evaluation_and_loading(full_run, lines_file, capsys, monkeypatch):
    monkeypatch.setattr(cli_progress, "DELAY", 0)  # draw at once: the tiny model is fast
    code, out, err = run_cli(capsys, ["eval", full_run.out, "--data", lines_file])
    assert code == 0 and "perplexity" in out
    assert f"loading {full_run.out} ..." in err
    assert "evaluating:" in err and "batch" in err


def test_the_cli_is_quiet_for_a_stage_shorter_than_its_delay():
    stream = io.StringIO()
    bars = cli_progress.StageBars(stream)
    bars("stage", {"name": "loading m", "state": "start", "done": 0, "total": None,
                   "unit": "", "seconds": 0.0})
    bars("stage", {"name": "loading m", "state": "end", "done": 0, "total": None,
                   "unit": "", "seconds": 0.01})
    assert stream.getvalue() == ""


def test_the_progress_bar_shows_a_validation_loss_at_once():
    from lmtune.cli.console import TrainConsole

    console = TrainConsole(io.StringIO())
    console.on_progress({"step": 5, "total": 10})
    console.on_eval({"step": 5, "val_loss": 1.2345, "val_ppl": 3.44})
    assert "val_loss=1.2345" in str(console.bar)  # not one log later


def test_a_json_object_says_which_list_it_read(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "jokes.json"
    data.write_text(json.dumps({"version": 2, "jokes": [{"text": "a joke"},
                                                        {"text": "another joke"}]}))
    code, out, err = run_cli(capsys, ["data", "inspect", data, "--model", tiny_gpt2])
    assert code == 0, err
    assert "note: jokes.json is a JSON object: its records are the list under the key 'jokes'" \
        in out


def test_a_csv_without_column_says_which_field_is_the_text(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "quotes.csv"
    data.write_text("author,text\nada,engines weave\nalan,machines think\n")
    code, out, err = run_cli(capsys, ["data", "inspect", data, "--model", tiny_gpt2])
    assert code == 0, err
    assert "note: the text of each example is the field 'text' (the other fields, author, " \
           "are not used; choose with --column or --template)" in out


def test_data_inspect_and_train_name_the_same_block_and_model_size(tiny_gpt2, lines_file):
    """`data inspect` said block 1024 and 135M parameters where train then planned block 256
    and printed 137.0M (its count included the LoRA adapter)."""
    report = lmtune.inspect_data(lines_file, model=str(tiny_gpt2), split_on="\n")
    events = []
    dry = lmtune.train(lines_file, model=str(tiny_gpt2), method="lora", split_on="\n",
                       precision="fp32", device="cpu", dry_run=True,
                       on_event=lambda e, d: events.append((e, d)))
    start = next(d for e, d in events if e == "start")
    assert report.block_size == dry.plan["block_size"]
    assert report.parameters == start["total"] == dry.data.parameters
    assert start["trainable"] < start["total"]


def test_the_dry_run_times_several_steps_and_gives_their_spread(tiny_gpt2, lines_file, capsys):
    code, out, err = run_cli(capsys, ["train", lines_file, "--model", tiny_gpt2, "--split-on",
                                      "\\n", "--precision", "fp32", "--dry-run"])
    assert code == 0, err
    m = re.search(r"median of (\d+) steps; fastest ([\d.]+)s, slowest ([\d.]+)s", out)
    assert m and int(m.group(1)) >= 3 and float(m.group(2)) <= float(m.group(3))


def test_a_classifier_that_predicts_one_label_says_so(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "labels.jsonl"
    # One text for every row: whatever the weights, every prediction is the same label.
    rows = [{"text": "the cat sat on the mat", "label": "a" if i % 4 else "b"}
            for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    code, out, err = run_cli(capsys, ["train", data, "--task", "classify", "--label-column",
                                      "label", "--model", tiny_gpt2,
                                      "--max-steps", "1", "--lr", "1e-6", "--precision",
                                      "fp32", "--out", tmp_path / "run"])
    assert code == 0, err
    assert "the most common label alone: 0.7" in out or "the most common label alone: 0.8" \
        in out
    assert "note: the model predicts '" in out + err and "--class-weights auto" in out + err


def test_generate_chat_puts_the_answer_on_its_own_line(tiny_gpt2, tmp_path, capsys):
    import shutil

    model = tmp_path / "chat-model"
    shutil.copytree(tiny_gpt2, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                               "{% endfor %}assistant:")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    code, out, err = run_cli(capsys, ["generate", model, "--chat", "--prompt", "the cat",
                                      "--max-new-tokens", "4", "--seed", "0"])
    assert code == 0, err
    assert out.startswith("> the cat\n")


def test_the_demo_states_its_plan_and_time_and_has_a_quick_variant(tiny_gpt2, tmp_path, capsys,
                                                                   monkeypatch):
    from lmtune.cli.train import demo_plan
    from lmtune.config import DemoConfig
    from lmtune.config.defaults import DEMO_MINUTES

    text = demo_plan(DemoConfig(), 3.0, "Joke:")
    assert f"{DEMO_MINUTES['full']} minutes on a quiet 2-core CPU" in text
    assert "lmtune demo --quick" in text
    assert f"{DEMO_MINUTES['quick']} minutes" in demo_plan(DemoConfig(quick=True), 1.0, "Joke:")
    assert f"about {DEMO_MINUTES['full'].split()[-1]} minutes" in README.read_text()
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    code, out, err = run_cli(capsys, ["demo", "--quick", "--model", tiny_gpt2, "--out",
                                      tmp_path / "demo"])
    assert code == 0, err
    assert "plan: 4 samples before, 1 pass of training" in out
    assert "=== AFTER fine-tuning" in out
    assert (tmp_path / "demo" / "final").is_dir()
