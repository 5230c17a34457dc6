"""Batched generation: n samples as one left-padded batch against n sequential calls.

    python benchmarks/generate_batch.py --n 8 --max-new-tokens 128

Both sides use lmtune.generate on the same model and prompt (bf16 autocast where the CPU
has it, as `lmtune generate` does); tokens/s counts the tokens actually generated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompt", default="The history of the printing press")
    args = ap.parse_args()

    import torch

    from lmtune.api import load
    from lmtune.device import pick_precision, set_threads, torch_dtype
    from lmtune.models.generate import generate

    set_threads()
    model, tok = load(args.model, precision="fp32")
    precision = pick_precision("auto", "cpu")
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=0.8, top_k=50, top_p=0.95)

    def timed(fn):
        with torch.autocast("cpu", dtype=torch_dtype(precision), enabled=precision != "fp32"):
            fn()  # warm-up
            t0 = time.perf_counter()
            samples = fn()
            return time.perf_counter() - t0, sum(s.new_tokens for s in samples)

    seq_s, seq_tokens = timed(lambda: [s for i in range(args.n) for s in generate(
        model, tok, [args.prompt], n=1, seed=i, **opts)])
    bat_s, bat_tokens = timed(lambda: generate(model, tok, [args.prompt], n=args.n, seed=0,
                                               **opts))
    print(f"model {args.model}, {args.n} samples of up to {args.max_new_tokens} new tokens, "
          f"precision {precision}")
    print(f"{'contender':<26} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    print(f"{'sequential (n calls)':<26} {seq_s:>8.2f} {seq_tokens:>7} {seq_tokens / seq_s:>9.1f}")
    print(f"{'batched (one call)':<26} {bat_s:>8.2f} {bat_tokens:>7} {bat_tokens / bat_s:>9.1f}")
    print(f"batched / sequential tokens/s: {(bat_tokens / bat_s) / (seq_tokens / seq_s):.2f}x")


if __name__ == "__main__":
    main()
