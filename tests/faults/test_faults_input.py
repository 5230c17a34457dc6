"""Bad input that test_cli_errors.py does not already cover: whitespace, rows all filtered,
compressed files (a zip bomb is refused unread), a 1 GB-style single line in bounded memory,
huge CSV fields, examples longer than the context, and output folders that lead elsewhere.
Each is exit code 2, one error line and a hint, and nothing written."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cli_helpers import assert_clean_error as _assert_clean_error, run_cli as _run

import lmtune
from lmtune.data.readers import read_records

pytestmark = pytest.mark.faults

SRC = str(Path(lmtune.__file__).parents[1])


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.fixture
def bad(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "spaces.txt").write_text("  \n\t\n   \r\n", encoding="utf-8")
    (d / "all-empty.csv").write_text("text,author\n,ada\n  ,bob\n", encoding="utf-8")
    (d / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    # A zip bomb in small: 50 MB of zeros in 50 KB; never expanded, whatever its name says.
    zeros = gzip.compress(b"\0" * (50 << 20), compresslevel=9)
    (d / "bomb.txt.gz").write_bytes(zeros)
    (d / "bomb.jsonl").write_bytes(zeros)
    with zipfile.ZipFile(d / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", "the cat sat\n" * 1000)
    return d


CASES = [  # (id, data file, extra argv, words the error must contain)
    ("whitespace-only", "spaces.txt", [], ["spaces.txt is empty"]),
    ("every-row-filtered", "all-empty.csv", [], ["no examples in", "2 empty"]),
    ("utf8-in-jsonl", "latin.jsonl", [], ["latin.jsonl line 2", "utf-8", "--encoding"]),
    ("gzip-by-name", "bomb.txt.gz", [], ["bomb.txt.gz is a gzip-compressed file",
                                         "hint: decompress it first"]),
    ("gzip-by-content", "bomb.jsonl", [], ["bomb.jsonl is a gzip-compressed file"]),
    ("gzip-with-format", "bomb.jsonl", ["--format", "txt"], ["gzip-compressed"]),
    ("zip", "bomb.zip", [], ["bomb.zip is a zip-compressed file"]),
]


@pytest.mark.parametrize("data, argv, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_data_is_one_clean_error_and_writes_nothing(data, argv, needles, bad, tiny_gpt2,
                                                        tmp_path, capsys):
    before = _files(tmp_path)
    code, out, err = _run(capsys, ["train", bad / data, "--model", tiny_gpt2, "--out",
                                   tmp_path / "out", *argv])
    _assert_clean_error(code, out, err, *needles)
    assert _files(tmp_path) == before


def test_a_csv_field_of_200_kb_is_read_whole(tmp_path):
    story = "the cat sat on the mat " * 9000  # 207 KB, past the csv module's 128 KiB default
    path = tmp_path / "long.csv"
    path.write_text(f'title,text\nlong,"{story}"\nshort,hi\n', encoding="utf-8")
    records = read_records(path)
    assert [len(r["text"]) for r in records] == [len(story), 2]


MEASURE = """
import resource, sys
from types import SimpleNamespace
from transformers import AutoTokenizer
from lmtune.data import cache
from lmtune.errors import UserError
tok = AutoTokenizer.from_pretrained(sys.argv[2])
opts = SimpleNamespace(format=None, column=None, template=None, prompt_template=None,
                       completion_template=None, split_on="\\\\n", encoding="utf-8")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    cache.prepare(sys.argv[1], opts, tok, root=__import__("pathlib").Path(sys.argv[3]))
    print("no error")
except UserError as e:
    print("error:", e.message)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_single_huge_line_is_refused_in_bounded_memory(tmp_path, tiny_gpt2):
    """80 MB without a newline stands for the 1 GB line: reading stops at the 16 M-character
    piece limit, so the peak memory does not grow with the line."""
    path = tmp_path / "one-line.txt"
    with open(path, "wb") as f:
        f.write(b"first line\n")
        chunk = b"the cat sat " * 87_382  # 1 MiB
        for _ in range(80):
            f.write(chunk)
    assert path.stat().st_size > 80e6
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    got = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(tiny_gpt2),
                          str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                         timeout=300)
    lines = got.stdout.strip().splitlines()
    assert got.returncode == 0 and len(lines) == 2, got.stderr[-2000:]
    assert lines[0].startswith(f"error: {path} line 2: a piece of more than 16 M characters")
    assert int(lines[1]) < 150, f"peak memory grew by {lines[1]} MB"
    assert not any((tmp_path / "cache").iterdir())  # no half-built cache entry


def test_examples_longer_than_the_context_are_split_and_counted(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "long.txt"
    long_line = "the cat sat on the mat and a dog ran in the park " * 60  # ~700 tokens
    data.write_text("short one\n" * 10 + long_line + "\n" + "short two\n" * 10,
                    encoding="utf-8")
    for pack in ("--pack", "--no-pack"):
        out = tmp_path / pack.strip("-")
        code, stdout, err = _run(capsys, ["train", data, "--model", tiny_gpt2, "--out", out,
                                          "--split-on", "\\n", pack, "--max-steps", "2",
                                          "--val-split", "0", "--block-size", "64",
                                          "--precision", "fp32", "--device", "cpu",
                                          "--sample-every", "0", "--no-report"])
        assert code == 0, err
        assert "1 of 21 training examples are longer than the 64-token block" in err
        assert (out / "final" / "adapter_model.safetensors").is_file()


@pytest.fixture
def places(tmp_path, tiny_gpt2, monkeypatch):
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    model = Path(shutil.copytree(tiny_gpt2, work / "models" / "m"))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", work / "link-out")
    os.symlink(work / "models", work / "link-in")  # stays inside: fine
    run = work / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"text": "the cat"}\n', encoding="utf-8")
    (run / "config.yaml").write_text("{}\n", encoding="utf-8")
    (run / ".lmtune-run").write_text("{}", encoding="utf-8")  # lmtune's mark: a run
    monkeypatch.chdir(work)
    return {"model": model, "run": run}


OUT_CASES = [  # (id, --out, extra argv, data, words)
    ("dotdot-outside", "../escape", [], None, ["--out ../escape leads outside the current "
                                               "folder", "absolute path"]),
    ("symlink-leaving", "link-out", [], None, ["--out link-out is a symlink to",
                                               "elsewhere, outside"]),
    ("the-model-folder", "models/m", [], None, ["is the base model's own folder"]),
    ("holds-the-model", "models", [], None, ["holds the base model's own folder"]),
    ("symlink-to-the-model", "link-in/m", [], None, ["is the base model's own folder"]),
    ("overwrites-the-data", "run", ["--overwrite"], "run/metrics.jsonl",
     ["lies where the run writes its outputs"]),
]


@pytest.mark.parametrize("out, argv, data, needles", [c[1:] for c in OUT_CASES],
                         ids=[c[0] for c in OUT_CASES])
def test_output_folders_that_lead_elsewhere_are_refused(out, argv, data, needles, places,
                                                        lines_file, tmp_path, capsys):
    before = {p: p.read_bytes() if p.is_file() else None for p in _files(tmp_path)}
    code, stdout, err = _run(capsys, ["train", data or lines_file, "--model", "models/m",
                                      "--out", out, *argv])
    _assert_clean_error(code, stdout, err, *needles)
    assert {p: p.read_bytes() if p.is_file() else None for p in _files(tmp_path)} == before


def test_an_absolute_out_and_a_symlink_inside_the_folder_are_fine(places, lines_file, tmp_path,
                                                                  fast):
    os.symlink(places["run"].parent / "real-run", places["run"].parent / "link-run")
    (places["run"].parent / "real-run").mkdir()
    for out in (tmp_path / "absolute", Path("link-run")):
        result = lmtune.train(lines_file, model="models/m", out=str(out), max_steps=1,
                              sample_every=0, report=False, **fast)
        assert result.steps == 1
    assert (places["run"].parent / "real-run" / "final").is_dir()


def test_overwrite_removes_a_symlinked_output_but_not_its_target(places, lines_file, tmp_path,
                                                                 fast):
    run = places["run"]
    keep = run / "mine"
    (keep / "step-000001").mkdir(parents=True)
    os.symlink(keep, run / "checkpoints")  # inside the run folder: allowed, and only unlinked
    lmtune.train(lines_file, model="models/m", out=str(run), overwrite=True, max_steps=1,
                 sample_every=0, report=False, **fast)
    assert (keep / "step-000001").is_dir() and not (run / "checkpoints").is_symlink()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1]  # the old run's are gone
