"""Training throughput, memory and quality: lmtune against Hugging Face Trainer, side by side.

    python benchmarks/train_vs_hf.py                      # both models, short and long data
    python benchmarks/train_vs_hf.py --models gpt2-6x384 --data short

Contenders, each in its own process (so its peak RSS is its own), on the same examples with
the same epochs, examples per step, learning rate, schedule, optimizer (AdamW; HF's default
fused implementation, as lmtune's) and precision:
  (a) HF Trainer as the seed tutorials use it: padding='max_length' (128), truncation,
      DataCollatorForLanguageModeling(mlm=False), pad = EOS;
  (b) HF Trainer at its best: EOS appended, dynamic padding, length-grouped batches, a pad
      token distinct from EOS;
  (c) lmtune train: packed documents, one block of about 8 examples' tokens per step.
Every final model is then scored by one evaluator: mean token loss of each held-out example
alone, its EOS included. Data: the jokes that pyjokes ships in four languages (short) and the
docstrings of the Python standard library, split at blank lines (long); nothing downloaded.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)
EXAMPLES_PER_STEP = 8
MAX_LENGTH = 128


# --------------------------------------------------------------------------- data and models

def short_texts() -> list[str]:
    import pyjokes
    return [j for lang in ("en", "de", "it", "pl") for j in pyjokes.get_jokes(lang, "all")]


def long_texts(limit_chars: int = 400_000) -> list[str]:
    out, total = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                for para in (doc or "").split("\n\n"):
                    para = para.strip()
                    if len(para) > 200:
                        out.append(para)
                        total += len(para)
        if total > limit_chars:
            break
    return out


def split(texts: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    n_val = max(1, len(texts) // 10)
    return texts[n_val:], texts[:n_val]


def make_model(kind: str, folder: Path) -> str:
    """A model folder for `kind`: the default model, or a random 6-layer 384-wide GPT-2 with
    the default model's tokenizer (no GPT-2 tokenizer can be downloaded here)."""
    from lmtune.models.resolve import default_model_dir
    if kind == "smollm2-lora":
        return str(default_model_dir())
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    tok = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=6, n_embd=384, n_head=6, n_positions=1024, vocab_size=len(tok),
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


# --------------------------------------------------------------------------- contenders

def run_hf(args: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args["model"])
    texts = json.loads(Path(args["train"]).read_text())
    if args["variant"] == "a":
        tok.pad_token = tok.eos_token
        enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH)
        real = sum(min(len(ids), MAX_LENGTH) for ids in tok(texts)["input_ids"])
    else:
        tok.pad_token = tok.convert_ids_to_tokens(0) if tok.eos_token_id != 0 else tok.unk_token
        enc = tok([t + tok.eos_token for t in texts], truncation=True, max_length=1024)
        real = sum(len(ids) for ids in enc["input_ids"])
    data = Dataset.from_dict({"input_ids": enc["input_ids"]})
    model = AutoModelForCausalLM.from_pretrained(args["model"])
    if args["lora"]:
        from peft import LoraConfig, get_peft_model

        from lmtune.config.defaults import default_lora_targets
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=default_lora_targets(
                                                     model.config.model_type),
                                                 task_type="CAUSAL_LM"))
    extra = {"train_sampling_strategy": "group_by_length"} if args["variant"] == "b" else {}
    targs = TrainingArguments(
        output_dir=args["out"], per_device_train_batch_size=EXAMPLES_PER_STEP,
        num_train_epochs=args["epochs"], learning_rate=args["lr"], lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, bf16=args["bf16"],  # optim: HF's default, fused AdamW
        use_cpu=True, save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50,
        seed=0, disable_tqdm=True, max_steps=args.get("max_steps", -1), **extra)
    trainer = Trainer(model=model, args=targs, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model.save_pretrained(args["out"] + "/final")
    tok.save_pretrained(args["out"] + "/final")
    steps = trainer.state.global_step  # real tokens scale with the steps taken (max_steps)
    full = math.ceil(len(texts) / EXAMPLES_PER_STEP) * args["epochs"]
    return {"seconds": seconds, "real_tokens": real * args["epochs"] * min(1, steps / full),
            "final": args["out"] + "/final"}


def run_lmtune(args: dict) -> dict:
    import lmtune
    texts = json.loads(Path(args["train"]).read_text())
    data = Path(args["out"]).with_suffix(".jsonl")
    data.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import Resolved
    tok = load_tokenizer(Resolved(args["model"], args["model"]))
    mean_len = sum(len(ids) + 2 for ids in tok(texts)["input_ids"]) / len(texts)
    block = min(1024, int(EXAMPLES_PER_STEP * mean_len))
    result = lmtune.train(str(data), model=args["model"], method="lora" if args["lora"] else
                          "full", epochs=args["epochs"], batch_size=1, block_size=block,
                          lr=args["lr"], lr_schedule="linear", warmup_steps=0, val_split=0,
                          sample_every=0, eval_every=10**9, save_every=10**9, log_every=5,
                          precision="bf16" if args["bf16"] else "fp32", out=args["out"],
                          lora_dropout=0.05)
    records = [json.loads(x) for x in (result.out / "metrics.jsonl").open() if '"loss"' in x]
    # Training time only: each record covers the tokens since the previous one at its speed.
    seconds = sum((r["tokens"] - p) / r["tokens_per_s"] for r, p in
                  zip(records, [0] + [r["tokens"] for r in records[:-1]]))
    return {"seconds": seconds, "real_tokens": records[-1]["tokens"], "final": str(result.out),
            "block_size": block}


def evaluate(final: str, val_file: str) -> float:
    import torch

    from lmtune.data import Example, tokenize_examples
    from lmtune.data.corpus import make_dataset
    from lmtune.models.load import load
    from lmtune.tasks.generate import mean_loss
    model, tok, _ = load(final, dtype=torch.float32)
    docs = tokenize_examples([Example("", t) for t in json.loads(Path(val_file).read_text())],
                             tok)
    loss, _ = mean_loss(model, make_dataset(docs, 1024, pack=True, shuffle=False, seed=0), 8,
                        torch.device("cpu"))
    return loss


def child(spec: dict) -> dict:
    """Run one contender in a fresh process; return its result and peak RSS."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC})
    out = proc.stdout.read().decode().strip().splitlines()
    if proc.wait() != 0:
        raise SystemExit(f"{spec['name']} failed")
    return json.loads(out[-1])


def own_peak_gb() -> float:
    """This process's peak RSS (VmHWM), measured by the child itself: a parent's wait4
    ru_maxrss includes the parent's own RSS at the fork (Linux carries it across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def matmul_peak(dtype_name: str) -> float:
    import torch
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    return n * 2 * 2048**3 / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gpt2-6x384", "smollm2-lora"])
    ap.add_argument("--data", nargs="+", default=["short", "long"])
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--long-chars", type=int, default=400_000,
                    help="characters of docstrings for the long-text data")
    ap.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec["kind"] == "eval":
            print(json.dumps({"val_loss": evaluate(spec["final"], spec["val"])}))
        else:
            print(json.dumps({**(run_hf if spec["kind"] == "hf" else run_lmtune)(spec),
                              "peak_rss_gb": own_peak_gb()}))
        return
    import torch

    from lmtune.device import cpu_has_bf16
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    # A CPU without native bf16 emulates it: 2048^3 bf16 matmuls take minutes there and
    # measure nothing a run would use, so that peak (and its MFU column) is left out.
    dtypes = ("bfloat16", "float32") if cpu_has_bf16() else ("float32",)
    peaks = {d: matmul_peak(d) for d in dtypes}
    print("matmul peak (2048^3): bf16 "
          + (f"{peaks['bfloat16'] / 1e12:.2f} TFLOP/s" if "bfloat16" in peaks
             else "not measured (no native bf16 on this CPU)")
          + f", fp32 {peaks['float32'] / 1e12:.2f} TFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_kind in args.models:
            model = make_model(model_kind, Path(tmp) / model_kind)
            lora = model_kind.endswith("lora")
            n_params = _count_params(model)
            lr = 1e-3 if lora else 5e-4
            for data_kind in args.data:
                train, val = split(short_texts() if data_kind == "short"
                                   else long_texts(args.long_chars))
                files = {}
                for name, texts in (("train", train), ("val", val)):
                    files[name] = f"{tmp}/{model_kind}-{data_kind}-{name}.json"
                    Path(files[name]).write_text(json.dumps(texts))
                for label, kind, variant in (("(a) HF seed", "hf", "a"),
                                             ("(b) HF best", "hf", "b"),
                                             ("(c) lmtune", "lmtune", None)):
                    out = f"{tmp}/{model_kind}-{data_kind}-{kind}{variant or ''}"
                    r = child({"name": label, "kind": kind, "variant": variant, "model": model,
                               "train": files["train"], "out": out, "epochs": args.epochs,
                               "lr": lr, "lora": lora, "bf16": not args.fp32})
                    r["val_loss"] = child({"name": "eval", "kind": "eval", "final": r["final"],
                                           "val": files["val"]})["val_loss"]
                    tps = r["real_tokens"] / r["seconds"]
                    flops = tps * (4 if lora else 6) * n_params
                    row = {"model": model_kind, "data": data_kind, "contender": label,
                           "examples": len(train), "real_tok_s": round(tps, 1),
                           "s_per_epoch": round(r["seconds"] / args.epochs, 1),
                           "peak_rss_gb": round(r["peak_rss_gb"], 2),
                           "val_loss": round(r["val_loss"], 4),
                           "mfu_bf16": round(flops / peaks["bfloat16"], 3)
                           if "bfloat16" in peaks else float("nan"),
                           "mfu_fp32": round(flops / peaks["float32"], 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    _table(rows)


def _count_params(folder: str) -> int:
    from safetensors import safe_open
    n = 0
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(f, "pt") as sf:
            for k in sf.keys():
                n += math.prod(sf.get_slice(k).get_shape())
    return n


def _table(rows: list[dict]) -> None:
    print(f"\n{'model':<13} {'data':<6} {'contender':<12} {'real tok/s':>10} {'s/epoch':>8} "
          f"{'peak GB':>8} {'val loss':>9} {'MFU bf16':>9} {'MFU fp32':>9}")
    for r in rows:
        print(f"{r['model']:<13} {r['data']:<6} {r['contender']:<12} {r['real_tok_s']:>10.1f} "
              f"{r['s_per_epoch']:>8.1f} {r['peak_rss_gb']:>8.2f} {r['val_loss']:>9.4f} "
              f"{r['mfu_bf16']:>9.3f} {r['mfu_fp32']:>9.3f}")
    print("\nratios of (c) lmtune:")
    for key in sorted({(r["model"], r["data"]) for r in rows}):
        group = {r["contender"][:3]: r for r in rows if (r["model"], r["data"]) == key}
        c, a, b = group["(c)"], group["(a)"], group["(b)"]
        print(f"{key[0]} {key[1]}: throughput {c['real_tok_s'] / a['real_tok_s']:.2f}x (a), "
              f"{c['real_tok_s'] / b['real_tok_s']:.2f}x (b); peak memory "
              f"{c['peak_rss_gb'] / a['peak_rss_gb']:.2f}x (a); val loss vs (b) "
              f"{100 * (c['val_loss'] / b['val_loss'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
