"""Corpus preparation: `lmtune data prepare` against the tokenizer's own batched __call__.

The corpus is real text that every Python install ships (the standard library's source
files), repeated to the asked size; nothing is downloaded and no text is kept in the repo.
Each contender runs in its own process so that its peak RSS is its own.

    python benchmarks/prepare_corpus.py --mb 200

Anchor (what a careful user writes today): read the lines, call the fast tokenizer on batches
of about 8 MB of lines, keep the ids as numpy arrays. lmtune: `lmtune data prepare` (a fresh
cache each run), once with the file as one document and once with one document per
paragraph (--split-on '\\n\\n').
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ANCHOR = r"""
import sys, time, numpy as np
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve
tok = load_tokenizer(resolve(sys.argv[2]))
t0 = time.perf_counter()
kept, batch, size, n = [], [], 0, 0
def flush():
    global batch, size, n
    if batch:
        for ids in tok(batch, add_special_tokens=False)["input_ids"]:
            kept.append(np.asarray(ids, dtype=np.uint16)); n += len(ids)
    batch, size = [], 0
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        batch.append(line); size += len(line)
        if size >= 8_000_000:
            flush()
flush()
print(n, time.perf_counter() - t0)
"""

LMTUNE = r"""
import sys, time
from types import SimpleNamespace
from lmtune.data.cache import prepare
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve
tok = load_tokenizer(resolve(sys.argv[2]))
opts = SimpleNamespace(format=None, column=None, template=None, prompt_template=None,
                       completion_template=None, split_on=sys.argv[4] or None, encoding="utf-8")
t0 = time.perf_counter()
got = prepare(sys.argv[1], opts, tok, root=__import__("pathlib").Path(sys.argv[3]))
print(got.stats["tokens"], time.perf_counter() - t0)
"""


def build_corpus(path: Path, megabytes: int) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = []
    for f in sorted(stdlib.glob("*.py")):
        try:
            text.append(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    block = "\n\n".join(text).encode("utf-8")
    target = megabytes * 1_000_000
    with open(path, "wb") as f:
        written = 0
        while written < target:
            piece = block[: target - written]
            f.write(piece)
            written += len(piece)


def run(code: str, *args: str) -> dict:
    """(tokens, seconds, peak RSS in MB) of `code` in a fresh process."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]
                                                                 / "src")})
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark process failed: {code[:40]!r}")
    tokens, seconds = out.split()
    return {"tokens": int(tokens), "seconds": float(seconds), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[200], help="corpus sizes in MB")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.mb:
            corpus = Path(tmp) / f"corpus-{mb}.txt"
            build_corpus(corpus, mb)
            size = corpus.stat().st_size / 1e6
            for name, code, extra in (
                    ("tokenizer __call__, 8 MB line batches", ANCHOR, []),
                    ("lmtune data prepare (one document)", LMTUNE, [f"{tmp}/c1-{mb}", ""]),
                    ("lmtune data prepare (--split-on '\\n\\n')", LMTUNE,
                     [f"{tmp}/c2-{mb}", "\\n\\n"])):
                r = run(code, str(corpus), args.model, *extra)
                r.update(name=name, mb=round(size, 1), mb_per_s=round(size / r["seconds"], 2))
                rows.append(r)
                print(json.dumps(r), flush=True)
    print(f"\n{'corpus':>8} {'contender':<42} {'MB/s':>7} {'peak RSS MB':>12} {'tokens':>12}")
    for r in rows:
        print(f"{r['mb']:>7}M {r['name']:<42} {r['mb_per_s']:>7.2f} {r['peak_rss_mb']:>12.0f} "
              f"{r['tokens']:>12,}")
    for mb in args.mb:
        anchor = next(r for r in rows if r["mb"] and r["name"].startswith("tokenizer")
                      and abs(r["mb"] - mb) < 1)
        for r in rows:
            if r is not anchor and abs(r["mb"] - mb) < 1:
                print(f"{mb} MB: {r['name']}: {r['mb_per_s'] / anchor['mb_per_s']:.2f}x the "
                      f"anchor's speed, {r['peak_rss_mb'] / anchor['peak_rss_mb']:.2f}x its "
                      f"peak RSS")


if __name__ == "__main__":
    main()
