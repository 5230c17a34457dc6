"""Preference tuning: lmtune's DPO against TRL's DPOTrainer, side by side (issue 20).

    python benchmarks/dpo_vs_trl.py                    # 16 steps of 4 pairs each, fp32
    python benchmarks/dpo_vs_trl.py --steps 40 --batch 8 --order lmtune,trl

Pairs: the English jokes that pyjokes ships, each the chosen answer to "Tell me a joke about
programming." and, rejected, the same joke cut off after about half its words (so the pair
shares a prefix and what is learnable is finishing the joke rather than stopping mid-way);
20% of the pairs are held out. Nothing is downloaded.

Contenders, each in its own process (so its peak RSS is its own), on the same pairs and the
default model (SmolLM2-135M) with the same LoRA (lmtune's defaults: r 8, alpha 16, dropout 0,
the Llama-like q/k/v/o/gate/up/down projections), DPO with the sigmoid loss and beta 0.1, the
reference being the model with its adapter switched off, the same learning rate (lmtune's
preference default for LoRA, 5e-4), linear schedule without warmup, AdamW, gradient clipping
at 1.0, no weight decay, fp32, seed 0, the same pairs per step, steps and maximum length:
  TRL     trl.DPOTrainer with a peft LoraConfig, otherwise DPOConfig's defaults (so
          gradient checkpointing on, as TRL 1.x ships it; precompute_ref_log_probs off);
  lmtune  lmtune.train(task="preference", loss="dpo", method="lora"), with
          --gradient-checkpointing as TRL has it (--lmtune-checkpointing off: without).
Measured for each: training time (from the first step to the last, excluding loading,
tokenizing and saving), tokens/s = the pairs' prompt+answer tokens of both answers (one
shared tokenization, so the count is the same for both) / that time, and peak RSS. Then one
shared evaluator (its own process per adapter) scores both adapters on the held-out pairs:
reward accuracy is the share of pairs with (logp_chosen - ref_chosen) > (logp_rejected -
ref_rejected), log-probabilities summed over the answer tokens and EOS, the reference being
the adapter switched off; "logp accuracy" is the share with logp_chosen > logp_rejected, for
the base too (whose reward accuracy is 0 by construction: both rewards are 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)
PROMPT = "Tell me a joke about programming.\n"
LR = 5e-4  # lmtune's PREFERENCE_LR["lora"]
BETA = 0.1
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}  # lmtune's TrainConfig defaults
SEED = 0


# --------------------------------------------------------------------------- data

def make_pairs(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, held out) pairs in TRL's format: chosen a whole joke, rejected it cut short."""
    import pyjokes
    pairs = []
    for joke in pyjokes.get_jokes("en", "all"):
        words = joke.split()
        if len(words) < 6:
            continue
        cut = " ".join(words[:len(words) // 2])
        pairs.append({"prompt": PROMPT, "chosen": joke, "rejected": cut})
    random.Random(seed).shuffle(pairs)
    n_val = len(pairs) // 5
    return pairs[n_val:], pairs[:n_val]


def encode(tok, pair: dict) -> list[tuple[list[int], int]]:
    """[(ids, n_prompt)] of prompt+chosen and prompt+rejected: the prompt's tokens, then the
    answer's and EOS (TRL's layout; lmtune also starts each sequence with a start token)."""
    prompt = tok(pair["prompt"], add_special_tokens=False)["input_ids"]
    return [(prompt + tok(pair[k], add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
             len(prompt)) for k in ("chosen", "rejected")]


def pair_tokens(model: str, pairs: list[dict], max_length: int) -> float:
    """Mean prompt+answer tokens of a pair, both answers, as cut at max_length."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    return sum(min(len(ids), max_length) for p in pairs for ids, _ in encode(tok, p)) / len(pairs)


# --------------------------------------------------------------------------- contenders

def targets() -> list[str]:
    from lmtune.config.defaults import LLAMA_LIKE
    return list(LLAMA_LIKE)


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    data = Dataset.from_list([json.loads(x) for x in open(spec["train"])])
    args = DPOConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch"],
                     max_steps=spec["steps"], learning_rate=LR, lr_scheduler_type="linear",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=BETA,
                     loss_type=["sigmoid"], max_length=spec["max_length"], bf16=False,
                     use_cpu=True, save_strategy="no", eval_strategy="no", report_to=[],
                     logging_steps=5, seed=SEED, disable_tqdm=True)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=targets(), task_type="CAUSAL_LM")

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if not times:
                times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times[1:] = [time.perf_counter()]

    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    trainer.model.save_pretrained(spec["out"] + "/final")
    return {"seconds": times[1] - times[0], "steps": trainer.state.global_step,
            "final": spec["out"] + "/final", "threads": torch.get_num_threads()}


def run_lmtune(spec: dict) -> dict:
    import lmtune
    marks: dict[str, float] = {}
    threads: list[int] = []

    def on_event(event: str, data: dict) -> None:
        if event == "progress" and data.get("step") == 0:
            marks["first"] = time.perf_counter()
        elif event == "log":
            marks["last"], marks["step"] = time.perf_counter(), data["step"]

    result = lmtune.train(spec["train"], model=spec["model"], task="preference", loss="dpo",
                          beta=BETA, method="lora", lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                          lora_dropout=LORA["dropout"], lora_targets=targets(), lr=LR,
                          lr_schedule="linear", warmup_steps=0, weight_decay=0.0, grad_clip=1.0,
                          batch_size=spec["batch"], max_steps=spec["steps"],
                          block_size=spec["max_length"], val_split=0, precision="fp32",
                          sample_every=0, eval_every=10**9, save_every=10**9, log_every=1,
                          seed=SEED, out=spec["out"], on_event=on_event,
                          gradient_checkpointing=spec.get("checkpointing", True))
    for line in (result.out / "metrics.jsonl").open():
        rec = json.loads(line)
        if "threads" in rec:
            threads.append(rec["threads"])
    return {"seconds": marks["last"] - marks["first"], "steps": marks["step"],
            "final": str(result.out / "final"), "threads": threads}


# --------------------------------------------------------------------------- one evaluator

def evaluate(spec: dict) -> dict:
    """Both answers' summed log-probabilities (answer tokens and EOS) of every held-out pair,
    with the adapter on (the tuned policy) and off (the reference, the base)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    base = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, spec["adapter"]).eval()
    pairs = [json.loads(x) for x in open(spec["val"])]
    seqs = [s for p in pairs for s in encode(tok, p)]  # chosen, rejected, chosen, ...

    @torch.no_grad()
    def logps() -> list[float]:
        out = []
        for i in range(0, len(seqs), 16):
            chunk = [(ids[:spec["max_length"]], n) for ids, n in seqs[i:i + 16]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            attn = torch.zeros_like(ids)
            mask = torch.zeros(len(chunk), width, dtype=torch.bool)
            for row, (s, n) in enumerate(chunk):
                ids[row, :len(s)], attn[row, :len(s)], mask[row, n:len(s)] = (
                    torch.tensor(s), 1, True)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
            out += (lp * mask[:, 1:]).sum(-1).tolist()
        return out

    policy = logps()
    with model.disable_adapter():
        ref = logps()
    n = len(pairs)
    pc, pr, rc, rr = policy[0::2], policy[1::2], ref[0::2], ref[1::2]
    margins = [(pc[i] - rc[i]) - (pr[i] - rr[i]) for i in range(n)]
    return {"reward_accuracy": sum(m > 0 for m in margins) / n,
            "reward_margin": BETA * sum(margins) / n,
            "logp_accuracy": sum(pc[i] > pr[i] for i in range(n)) / n,
            "base_logp_accuracy": sum(rc[i] > rr[i] for i in range(n)) / n}


def own_peak_gb() -> float:
    """This process's peak RSS (VmHWM). Not the parent's wait4 ru_maxrss: Linux carries the
    high-water mark across exec, so a child forked from this benchmark (torch, transformers
    and TRL imported, 1.56 GB) reported at least that whatever it used itself."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(spec: dict) -> dict:
    """Run one contender (or one evaluation) in a fresh process; its result and peak RSS."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC})
    out = proc.stdout.read().decode().strip().splitlines()
    if proc.wait() != 0:
        raise SystemExit(f"{spec['kind']} failed")
    return json.loads(out[-1])


# --------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=128,
                    help="most tokens of a prompt with its answer")
    ap.add_argument("--order", default="trl,lmtune", help="which contender runs first")
    ap.add_argument("--lmtune-checkpointing", choices=("on", "off"), default="on",
                    help="lmtune's --gradient-checkpointing (on: as TRL's DPOConfig default)")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        run = {"trl": run_trl, "lmtune": run_lmtune, "eval": evaluate}[spec["kind"]]
        print(json.dumps({**run(spec), "peak_rss_gb": own_peak_gb()}))
        return
    import peft
    import torch
    import transformers
    import trl

    from lmtune.models.resolve import resolve
    model = str(resolve("smollm2-135m").path)
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags")
                    for f in line.split(":")[1].split()
                    if f in ("avx2", "avx512f", "avx512_bf16") or f.startswith("amx")})
    print(f"cpus {len(os.sched_getaffinity(0))}, flags {' '.join(flags)}; torch {torch.__version__}"
          f", transformers {transformers.__version__}, trl {trl.__version__}, peft "
          f"{peft.__version__}; load average {os.getloadavg()[0]:.2f}", flush=True)
    train, val = make_pairs()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, pairs in (("train", train), ("val", val)):
            files[name] = f"{tmp}/{name}.jsonl"
            Path(files[name]).write_text("".join(json.dumps(p) + "\n" for p in pairs))
        per_pair = pair_tokens(model, train, args.max_length)
        print(f"{len(train)} training pairs, {len(val)} held out, {per_pair:.1f} tokens a pair "
              f"(prompt+answer, both answers); {args.steps} steps of {args.batch} pairs, "
              f"max length {args.max_length}, fp32", flush=True)
        for kind in args.order.split(","):
            spec = {"kind": kind, "model": model, "train": files["train"], "out": f"{tmp}/{kind}",
                    "steps": args.steps, "batch": args.batch, "max_length": args.max_length,
                    "checkpointing": args.lmtune_checkpointing == "on"}
            r = child(spec)
            r["tokens_per_s"] = per_pair * args.batch * r["steps"] / r["seconds"]
            scores = child({"kind": "eval", "model": model, "adapter": r["final"],
                            "val": files["val"], "max_length": args.max_length})
            scores.pop("peak_rss_gb")  # the evaluator's, not the contender's
            r.update(scores)
            rows[kind] = r
            print(json.dumps({kind: r}), flush=True)
    _table(rows)


def _table(rows: dict) -> None:
    print(f"\n{'contender':<9} {'steps':>5} {'train s':>8} {'tok/s':>7} {'peak GB':>8} "
          f"{'reward acc':>10} {'margin':>7} {'logp acc':>8}")
    for kind, r in rows.items():
        print(f"{kind:<9} {r['steps']:>5} {r['seconds']:>8.1f} {r['tokens_per_s']:>7.1f} "
              f"{r['peak_rss_gb']:>8.2f} {r['reward_accuracy']:>10.3f} "
              f"{r['reward_margin']:>7.3f} {r['logp_accuracy']:>8.3f}")
    base = next(iter(rows.values()))["base_logp_accuracy"]
    print(f"{'base':<9} {'':>5} {'':>8} {'':>7} {'':>8} {0.0:>10.3f} {0.0:>7.3f} {base:>8.3f}")
    if {"trl", "lmtune"} <= rows.keys():
        a, b = rows["lmtune"], rows["trl"]
        print(f"\nlmtune / TRL: tokens/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}x "
              f"(target >= 1.5x), peak memory {a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x "
              f"(target <= 0.7x), held-out reward accuracy {a['reward_accuracy']:.3f} vs "
              f"{b['reward_accuracy']:.3f} (target: no worse)")


if __name__ == "__main__":
    main()
