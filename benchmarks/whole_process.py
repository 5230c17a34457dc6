"""Whole process against whole process: `lmtune train` with its defaults (validation split,
evaluations, samples, checkpoints, the report) against HF Trainer at its best, each timed
from start to exit, alternating, side by side in one run.

    python benchmarks/whole_process.py                  # 2 rounds
    python benchmarks/whole_process.py --rounds 3 --examples 430

The work: a random 6-layer, 384-wide GPT-2 (the default model's tokenizer), full fine-tuning
in fp32, 2 epochs over the first N jokes that pyjokes ships (en, de, it), lr 5e-4, linear
schedule; tokens per step matched (HF: 8 examples per step; lmtune: one block of 8 examples'
mean length). HF at its best: EOS appended, dynamic padding, length-grouped batches, no
evaluation and no checkpoints (train_vs_hf.py's contender b); its process also saves the model.
With --bare, a third contender: `lmtune train` with HF's settings (no validation split, no
samples, no report), which shows what lmtune's extras cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
sys.path.insert(0, str(HERE))
sys.path.insert(0, SRC)
ENV = {**os.environ, "PYTHONPATH": SRC}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--examples", type=int, default=430)
    ap.add_argument("--bare", action="store_true",
                    help="also time lmtune with HF's settings: no validation, samples, report")
    args = ap.parse_args()
    import pyjokes
    from train_vs_hf import EXAMPLES_PER_STEP, make_model

    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import Resolved
    texts = [j for lang in ("en", "de", "it")
             for j in pyjokes.get_jokes(lang, "all")][:args.examples]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = make_model("gpt2-6x384", tmp / "model")
        (tmp / "jokes.json").write_text(json.dumps(texts))
        (tmp / "jokes.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
        tok = load_tokenizer(Resolved(model, model))
        mean_len = sum(len(ids) + 1 for ids in tok(texts)["input_ids"]) / len(texts)
        block = int(EXAMPLES_PER_STEP * mean_len)
        hf = [sys.executable, str(HERE / "train_vs_hf.py"), "--child", json.dumps({
            "name": "hf", "kind": "hf", "variant": "b", "model": model,
            "train": str(tmp / "jokes.json"), "out": str(tmp / "hf"), "epochs": 2,
            "lr": 5e-4, "lora": False, "bf16": False})]
        lm = [sys.executable, "-m", "lmtune", "train", str(tmp / "jokes.jsonl"), "--model",
              model, "--method", "full", "--epochs", "2", "--lr", "5e-4", "--lr-schedule",
              "linear", "--precision", "fp32", "--block-size", str(block), "--batch-size",
              "1", "--out", str(tmp / "lm"), "--overwrite"]
        print(f"{len(texts)} examples, mean {mean_len:.1f} tokens; lmtune block {block}",
              flush=True)
        contenders = [("hf", hf), ("lmtune", lm)]
        if args.bare:
            contenders.append(("lmtune bare", lm + ["--val-split", "0", "--sample-every", "0",
                                                    "--no-report"]))
        times = {name: [] for name, _ in contenders}
        for r in range(args.rounds):
            for name, cmd in contenders:
                times[name].append(timed(cmd))
                print(f"round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
        h, m = statistics.median(times["hf"]), statistics.median(times["lmtune"])
        print(f"\nmedian whole process: HF best {h:.1f} s, lmtune {m:.1f} s: lmtune "
              f"{h / m:.2f}x as fast")
        if args.bare:
            b = statistics.median(times["lmtune bare"])
            print(f"lmtune with HF's settings {b:.1f} s: {h / b:.2f}x as fast; its validation, "
                  f"samples and report cost {m - b:.1f} s")


if __name__ == "__main__":
    main()
