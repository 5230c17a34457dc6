"""Printing for `lmtune data prepare`."""

from __future__ import annotations

import json

from lmtune.errors import UserError


def run_prepare(cfg) -> int:
    from lmtune.prepare import prepare_corpus

    if not cfg.data:
        raise UserError("no data file given", hint="lmtune data prepare DATA --model MODEL")
    got = prepare_corpus(cfg)
    s = got.stats
    record = {"cache": str(got.folder), "cached": got.cached, "documents": s["documents"],
              "tokens": s["tokens"], "bytes": s["bytes"], "seconds": s["seconds"]}
    if cfg.json:
        print(json.dumps(record))
        return 0
    mb = s["bytes"] / 1e6
    how = ("already in the cache" if got.cached else
           f"tokenized in {s['seconds']:.1f} s ({mb / max(s['seconds'], 1e-9):.2f} MB/s)")
    print(f"{cfg.data}: {s['documents']:,} documents, {s['tokens']:,} tokens from "
          f"{mb:.1f} MB, {how}")
    print(f"cache: {got.folder}")
    print("lmtune train with the same data flags and model reads these tokens directly")
    return 0
