"""`lmtune tokenizer stats` and `lmtune tokenizer extend`."""

from __future__ import annotations

import json

from lmtune.cli.output import print_json
from lmtune.config import DEFAULT_MODEL, TokenizerExtendConfig, TokenizerStatsConfig


def cmd_stats(cfg: TokenizerStatsConfig) -> int:
    from lmtune.vocab.stats import read_texts, tokenizer_stats

    rows = tokenizer_stats(cfg.models or [DEFAULT_MODEL], read_texts(cfg), cfg.trust_remote_code)
    if cfg.json:
        for r in rows:
            print(json.dumps(r.to_dict()))
        return 0
    first = rows[0]
    print(f"{cfg.data}: {first.characters:,} characters")
    width = max([len("tokenizer")] + [len(r.model) for r in rows])
    print(f"{'tokenizer':<{width}}  {'vocab':>7}  {'tokens':>10}  {'chars/token':>11}  "
          f"{'tokens/char':>11}  {'byte-fallback':>13}")
    for r in rows:
        print(f"{r.model:<{width}}  {r.vocab:>7,}  {r.tokens:>10,}  {r.chars_per_token:>11.3f}  "
              f"{r.tokens_per_char:>11.3f}  {100 * r.fallback_share:>12.1f}%")
    if any(r.fallback_share > 0.2 for r in rows):
        print("hint: a tokenizer that spends many tokens on pieces of characters was not made "
              "for this text; lmtune tokenizer extend --model M --corpus FILE --add 20000 "
              "--out DIR teaches it the language's pieces")
    return 0


def cmd_extend(cfg: TokenizerExtendConfig) -> int:
    from lmtune.vocab.extend import extend_model

    r = extend_model(cfg.model, cfg.corpus, cfg.add, cfg.out, column=cfg.column,
                     encoding=cfg.encoding, trust_remote_code=cfg.trust_remote_code,
                     allow_pickle=cfg.allow_pickle)
    if cfg.json:
        print_json(r.to_dict())
        return 0
    print(f"{r.base_model}: {r.kind}, {r.base_vocab:,} tokens; added {r.added:,} pieces of "
          f"{r.learned:,} learned on the corpus ({r.already_known:,} already known, "
          f"{r.ascii_only:,} ASCII-only, {r.unreachable:,} not one merge away)")
    gain = r.chars_per_token_after / max(r.chars_per_token_before, 1e-9)
    print(f"on the corpus: {r.chars_per_token_before:.2f} -> {r.chars_per_token_after:.2f} "
          f"characters per token ({gain:.2f}x)")
    head = "tied to the embedding" if r.tied_head else "grown with it"
    print(f"embedding grown to {r.vocab:,} rows, each new one the mean of the rows it "
          f"replaces; output head {head}")
    print("new output rows calibrated to the pieces' frequencies in the corpus" if r.calibrated
          else f"new output rows left as averages: {r.not_calibrated_why}")
    print(f"model: {r.out}")
    print(f"next: lmtune train DATA --model {r.out}")
    return 0
