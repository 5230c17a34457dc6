"""`lmtune data prepare` and `lmtune data inspect`."""

from __future__ import annotations

import json
import textwrap

from lmtune.cli.output import short_count, print_json as _print_json
from lmtune.config import InspectConfig, PrepareConfig
from lmtune.errors import UserError


def cmd_prepare(cfg: PrepareConfig) -> int:
    from lmtune.tasks.generate import prepare_corpus

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


def cmd_inspect(cfg: InspectConfig) -> int:
    from lmtune.analysis.data_report import inspect_data

    report = inspect_data(cfg)
    if cfg.json:
        _print_json(report.to_dict())
    else:
        print_data_report(report)
    return 0


def print_pair_report(r) -> None:
    print(f"data: {r.data}: {r.pairs:,} preference pairs"
          f"{' of chat messages' if r.chat else ''}")
    size = f" ({short_count(r.parameters)} parameters)" if r.parameters else ""
    print(f"tokens as a step sees them: {r.tokens:,} (tokenizer of {r.model}{size}; each "
          f"sequence cut at {r.max_length})")
    for name, n in (("prompt", r.prompt_tokens), ("chosen answer", r.chosen_tokens),
                    ("rejected answer", r.rejected_tokens)):
        print(f"{name + ' tokens:':<24} min {n['min']}, median {n['median']:g}, mean "
              f"{n['mean']:g}, 95th percentile {n['p95']:g}, max {n['max']}")
    print(f"the chosen answer is the longer in {100 * r.chosen_longer:.0f}% of pairs; the two "
          f"answers share {100 * r.shared_prefix:.0f}% of the shorter's start on average")
    print(f"cut at {r.max_length} tokens: {r.over_max_length}; no answer left: "
          f"{r.no_answer_left}; both answers the same: {r.identical}; exact duplicates: "
          f"{r.duplicates}")
    print("first pair as the model sees it:")
    for part in ("prompt", "chosen", "rejected"):
        print(f"  {part}:")
        print(textwrap.indent(r.rendered_pair[part] or "(none)", "    "))
    if r.warnings:
        print("warnings:")
        for w in r.warnings:
            print(textwrap.fill(w, 100, initial_indent="  - ", subsequent_indent="    "))


def print_data_report(r) -> None:
    if getattr(r, "kind", None) == "pairs":
        print_pair_report(r)
        return
    print(f"data: {r.data}: {r.examples:,} examples from {r.records:,} records")
    print(f"characters {r.characters:,}   tokens {r.tokens:,} as trained (each example gets a "
          f"start and an end token; {r.target_tokens:,} count in the loss)")
    size = f" ({short_count(r.parameters)} parameters)" if r.parameters else ""
    print(f"tokenizer of {r.model}{size}: {r.tokens_per_character:.3f} tokens per character")
    n = r.length
    print(f"tokens per example: min {n['min']}, median {n['median']:g}, mean {n['mean']:g}, "
          f"95th percentile {n['p95']:g}, max {n['max']}")
    top = max(h["count"] for h in r.histogram) or 1
    for h in r.histogram:
        bar = "#" * max(1 if h["count"] else 0, round(30 * h["count"] / top))
        span = f"{h['from']}" if h["from"] == h["to"] else f"{h['from']}-{h['to']}"
        print(f"  {span:>11} {bar} {h['count']}")
    print(f"block size {r.block_size}: {r.over_block_size} examples are longer")
    print(f"padding every example to the longest would waste {100 * r.padding_waste:.1f}% of "
          f"the compute; packing wastes {100 * r.packing_waste:.1f}%")
    print(f"exact duplicates: {r.duplicates}")
    print("first example as the model sees it:")
    print(textwrap.indent(r.rendered_example, "  "))
    if r.learned_part is not None:
        print("  of which the model learns (the rest is prompt):")
        print(textwrap.indent(r.learned_part, "    "))
    for note in r.notes:
        print(f"note: {note}")
    if r.warnings:
        print("warnings:")
        for w in r.warnings:
            print(textwrap.fill(w, 100, initial_indent="  - ", subsequent_indent="    "))
