"""SIGTERM at every stage of a command ends it within seconds, with nothing half-written.

Each case runs the real CLI in a child process with one stage's function wrapped: the wrapper
prints a marker when the stage begins (and, where the stage can be cut short, waits inside it
so the signal lands there), the test sends SIGTERM on the marker and times the exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmtune
from lmtune.atomic import TMP_PREFIX
from lmtune.run import checkpoint
from lmtune.run.artifact import verify_artifact

WRAPPER = r"""
import sys, time
from pathlib import Path
import importlib
stage, target, wait, argv = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
module_name, _, attr = target.partition(":")
owner = importlib.import_module(module_name)
if "." in attr:
    cls_name, attr = attr.split(".")
    owner = getattr(owner, cls_name)
real = getattr(owner, attr)

def wrapped(*args, **kwargs):
    if stage != "final save" or Path(args[0]).name == "final":
        print("\nSTAGE " + stage, file=sys.stderr, flush=True)  # after a progress bar's \r
        if wait:
            time.sleep(60)
    return real(*args, **kwargs)

setattr(owner, attr, wrapped)
from lmtune.cli import main
sys.exit(main(argv))
"""

# stage, function wrapped, wait inside it, expected exit codes
STAGES = [
    ("tokenizing", "lmtune.data.tokenize:encode_batch", True, {143}),
    ("data preparation", "lmtune.tasks.generate:make_dataset", True, {143}),
    ("peak measurement", "lmtune.training.loop:peak_flops", True, {143}),
    ("evaluation", "lmtune.tasks.generate:LanguageModeling.evaluate", True, {130}),
    ("sampling", "lmtune.training.loop:generate", True, {130}),
    ("final save", "lmtune.training.loop:save_artifact", True, {130}),
    ("report", "lmtune.training.loop:report_at_end", True, {143}),
]


def _run_until_stage(cmd_args: list[str], stage: str, target: str, wait: bool, home: Path):
    env = dict(os.environ, PYTHONPATH=str(Path(lmtune.__file__).parents[1]),
               LMTUNE_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, stage, target, "1" if wait else "0",
                             *cmd_args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("STAGE "):  # tqdm's \r-separated bars share no line with it
                break
        assert proc.poll() is None, "".join(lines)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    return proc.returncode, took, "".join(lines) + rest


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(f"{TMP_PREFIX}*")]


@pytest.mark.parametrize("stage,target,wait,codes", STAGES, ids=[s[0] for s in STAGES])
def test_sigterm_during_a_training_stage_ends_within_seconds_leaving_nothing_partial(
        stage, target, wait, codes, tiny_gpt2, lines_file, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(lines_file), "--model", str(tiny_gpt2), "--out", str(out),
            "--split-on", "\\n", "--method", "full", "--max-steps", "4", "--eval-every", "2",
            "--sample-every", "2", "--block-size", "64", "--precision", "fp32", "--device",
            "cpu", "--threads", "1"]
    code, took, err = _run_until_stage(args, stage, target, wait, tmp_path / "home")
    assert took < 10, f"{stage}: {took:.1f} s after SIGTERM\n{err}"
    assert code in codes, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGTERM" in errors[0], err
    assert _leftovers(tmp_path) == []
    if code == 130:  # stopped inside training: a complete checkpoint to resume from
        checkpoint.verify(checkpoint.latest(out / "checkpoints"))
        assert "hint: " in err and "--resume" in err
    assert (out / "final").is_dir() == (stage == "report")
    if stage == "report":
        verify_artifact(out / "final")
        assert not (out / "report.html").exists()


def test_sigterm_while_converting_the_default_model_leaves_no_partial_model(tmp_path):
    """The first use converts the packaged GGUF (tens of seconds): a stop there leaves the
    cache as it was, so the next command converts again from the start."""
    home = tmp_path / "home"
    code, took, err = _run_until_stage(
        ["generate", "--prompt", "Hi", "--max-new-tokens", "1"], "conversion",
        "lmtune.models.resolve:_gguf_path", False, home)
    assert took < 10, f"{took:.1f} s after SIGTERM\n{err}"
    assert code == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM")
    models = home / "models"
    assert not models.exists() or [p.name for p in models.iterdir()] == []
