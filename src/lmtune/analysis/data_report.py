"""`lmtune data inspect`: what a data file becomes for a model, before any training.

Counts (examples, characters, tokens as training sees them), what the tokenizer costs
(tokens per character), the length distribution against the block size, how much compute
padding would waste compared with packing, duplicates, one rendered example with its special
tokens visible, and warnings for the mistakes that waste a run. `train --dry-run` shows the
same report for the training split.
"""

from __future__ import annotations

import dataclasses
import math
import string
from dataclasses import dataclass, field

import numpy as np

from lmtune.analysis.evaluate import run_config, with_run_data_options
from lmtune.analysis.pair_report import is_pair_file, read_and_describe_pairs
from lmtune.config import DEFAULT_MODEL, InspectConfig, TrainConfig, check_block_size, refuse
from lmtune.config.defaults import MAX_BLOCK
from lmtune.data.examples import Example, build_examples_with_stats, split_indices
from lmtune.data.readers import read_records
from lmtune.data.tokenize import SpecialTexts, TokenizedDocs, tokenize_examples
from lmtune.errors import UserError
from lmtune.models.load import context_length, load_tokenizer, parameter_count, peek_config
from lmtune.models.resolve import resolve
from lmtune.tasks.plan import auto_block_size

# Below this many training tokens per model parameter a run memorises fast (a heuristic:
# 135M parameters -> 135K tokens, a few hundred short quotes).
TOKENS_PER_PARAM_WARN = 1e-3
EMPTY_FIELD_WARN = 0.1      # share of records with an empty template field
TOKENS_PER_CHAR_WARN = 0.5  # English BPE is about 0.25; Chinese text with GPT-2's BPE about 1


@dataclass
class DataReport:
    data: str
    model: str
    records: int
    examples: int
    dropped_empty: int
    dropped_missing: int
    characters: int
    tokens: int                 # as training sees them: start token + text + end token each
    text_tokens: int            # the tokenizer's own count of the texts
    target_tokens: int          # tokens that count in the loss (completions and end tokens)
    tokens_per_character: float
    length: dict                # tokens per example: min, median, mean, p95, max
    histogram: list[dict]       # {"from", "to" (inclusive), "count"} of tokens per example
    block_size: int
    over_block_size: int        # examples longer than a block (cut across blocks)
    padding_waste: float        # share of compute lost padding every example to the longest
    packing_waste: float        # the same for packed blocks (only the last block is short)
    duplicates: int             # examples identical to an earlier one
    rendered_example: str       # the first example as the model sees it, special tokens shown
    learned_part: str | None    # its part that counts in the loss, for prompt/completion data
    parameters: int | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # choices made for the user (data/readers)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def template_fields(opts) -> list[str]:
    names = []
    for text in (opts.template, opts.prompt_template, opts.completion_template):
        if text:
            names += [name for _, name, _, _ in string.Formatter().parse(text) if name]
    if opts.column:
        names.append(opts.column)
    return list(dict.fromkeys(names))


def _empty_share(records: list[dict], name: str) -> float:
    def empty(v) -> bool:
        return v is None or (isinstance(v, float) and math.isnan(v)) or \
            (isinstance(v, str) and not v.strip())
    return sum(empty(r.get(name)) for r in records) / max(1, len(records))


def describe(examples: list[Example], docs: TokenizedDocs, tokenizer, *, data: str, model: str,
             stats: dict, block_size: int, parameters: int | None = None,
             records: list[dict] | None = None, opts=None) -> DataReport:
    lengths = np.asarray(docs.lengths)  # (n_docs,) tokens per example, start and end included
    n = len(lengths)
    characters = sum(len(ex.prompt) + len(ex.completion) for ex in examples)
    text_tokens = int(lengths.sum()) - 2 * n
    # Up to 10 bins with whole-token edges: bin i holds lengths edges[i] .. edges[i + 1] - 1.
    lo, hi = int(lengths.min()), int(lengths.max())
    edges = np.unique(np.round(np.linspace(lo, hi + 1, min(10, hi + 1 - lo) + 1)).astype(int))
    counts, _ = np.histogram(lengths, bins=edges)
    # --no-pack: one row per block_size piece of each example, all padded to the longest row.
    n_rows = int((-(-lengths // block_size)).sum())
    padding_waste = 1 - lengths.sum() / (n_rows * min(block_size, int(lengths.max())))
    n_blocks = -(-int(lengths.sum()) // block_size)
    packing_waste = 1 - lengths.sum() / (n_blocks * block_size)
    seen, duplicates = set(), 0
    for ex in examples:
        key = (ex.prompt, ex.completion)
        duplicates += key in seen
        seen.add(key)
    a, b = int(docs.starts[0]), int(docs.starts[0] + lengths[0])
    first, mask = docs.ids[a:b].tolist(), docs.loss_mask[a:b]
    report = DataReport(
        data=data, model=model, records=stats.get("records", n), examples=n,
        dropped_empty=stats.get("dropped_empty", 0),
        dropped_missing=stats.get("dropped_missing", 0), characters=characters,
        tokens=int(lengths.sum()), text_tokens=text_tokens,
        target_tokens=int(np.asarray(docs.loss_mask).sum()),
        tokens_per_character=round(text_tokens / max(1, characters), 4),
        length={"min": int(lengths.min()), "median": float(np.median(lengths)),
                "mean": round(float(lengths.mean()), 2),
                "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
        histogram=[{"from": int(a), "to": int(b) - 1, "count": int(c)}
                   for a, b, c in zip(edges[:-1], edges[1:], counts)],
        block_size=block_size, over_block_size=int((lengths > block_size).sum()),
        padding_waste=round(float(padding_waste), 4),
        packing_waste=round(float(packing_waste), 4), duplicates=duplicates,
        rendered_example=tokenizer.decode(first, skip_special_tokens=False),
        learned_part=(tokenizer.decode([t for t, m in zip(first, mask) if m],
                                       skip_special_tokens=False)
                      if examples[0].prompt else None),
        parameters=parameters, notes=list(stats.get("notes", [])))
    special = SpecialTexts(tokenizer)
    for ex in examples:
        special.add(ex.prompt, ex.completion)
    report.warnings = _warnings(report, records, opts) + ([special.warning()]
                                                          if special.examples else [])
    return report


def _warnings(r: DataReport, records: list[dict] | None, opts) -> list[str]:
    out = []
    if r.parameters and r.tokens < TOKENS_PER_PARAM_WARN * r.parameters:
        out.append(f"small dataset for the model: {r.tokens:,} tokens for "
                   f"{r.parameters / 1e6:.1f}M parameters; it can learn them by heart within a "
                   f"few epochs, so keep epochs low, prefer --method lora, and watch the "
                   f"validation loss and the copy rate")
    if r.duplicates:
        out.append(f"{r.duplicates} examples ({100 * r.duplicates / r.examples:.1f}%) are exact "
                   f"duplicates of earlier ones: they are seen several times per epoch and are "
                   f"memorised first")
    if r.over_block_size:
        out.append(f"{r.over_block_size} examples are longer than the block size "
                   f"({r.block_size} tokens, longest {r.length['max']}): they are cut across "
                   f"blocks and their later pieces lose the beginning")
    extending = getattr(opts, "extend_tokenizer", None)  # measured with the extended one
    if r.tokens_per_character > TOKENS_PER_CHAR_WARN and extending:
        out.append(f"{r.tokens_per_character:.2f} tokens per character even with "
                   f"--extend-tokenizer {extending}: add more pieces for this text")
    elif r.tokens_per_character > TOKENS_PER_CHAR_WARN:
        out.append(f"{r.tokens_per_character:.2f} tokens per character: this tokenizer was not "
                   f"made for this text (English BPE needs about 0.25), so it costs several "
                   f"times more compute and context; a model whose tokenizer knows the "
                   f"language trains faster, or teach this one its pieces as it trains: "
                   f"lmtune train DATA --extend-tokenizer 20000 (or lmtune tokenizer extend "
                   f"--corpus FILE --add 20000 --out DIR), which pays off only with long "
                   f"training: the new pieces start unlearned, and in 400 LoRA steps the "
                   f"model's own tokenizer still learned Chinese faster")
    if r.dropped_empty or r.dropped_missing:
        out.append(f"{r.dropped_empty + r.dropped_missing} of {r.records} records were skipped "
                   f"({r.dropped_empty} with an empty text, {r.dropped_missing} missing a "
                   f"field)")
    if records and opts is not None:
        for name in template_fields(opts):
            share = _empty_share(records, name)
            if share >= EMPTY_FIELD_WARN:
                out.append(f"field '{name}' is empty or missing in {100 * share:.0f}% of "
                           f"records")
    return out


def build_report(opts, tokenizer, *, model: str, block_size: int | None,
                 parameters: int | None = None, context: int = MAX_BLOCK,
                 split: tuple[float, int] = (0.0, 0)) -> DataReport:
    """Read `opts.data` with the data flags in `opts` (any config with the DataOptions
    fields) and describe it. `block_size` None: the one `train` would pick for this data,
    from the training share of a (val_split, seed) `split`."""
    report, _, _ = read_and_describe(opts, tokenizer, model=model, block_size=block_size,
                                     parameters=parameters, context=context, split=split)
    return report


def read_and_describe(opts, tokenizer, *, model: str, block_size: int | None,
                      parameters: int | None = None, context: int = MAX_BLOCK,
                      split: tuple[float, int] = (0.0, 0)
                      ) -> tuple[DataReport, list[Example], TokenizedDocs]:
    """`build_report`, also handing back the examples and documents it read, so a caller
    that shows them (analysis/data_preview.py) does not read and tokenize the file again."""
    records = read_records(opts.data, fmt=opts.format, encoding=opts.encoding,
                           split_on=opts.split_on)
    examples, stats = build_examples_with_stats(
        records, source=str(opts.data), column=opts.column, template=opts.template,
        prompt_template=opts.prompt_template, completion_template=opts.completion_template)
    docs = tokenize_examples(examples, tokenizer)
    if block_size is None:
        train_idx, _ = split_indices(len(docs), *split)
        block_size = auto_block_size(docs.subset(train_idx).n_tokens, context)
    report = describe(examples, docs, tokenizer, data=str(opts.data), model=model, stats=stats,
                      block_size=block_size, parameters=parameters, records=records, opts=opts)
    return report, examples, docs


def inspect_data(cfg: InspectConfig):
    """The report for `cfg.data`, read with the data flags (or a run's own template): a
    DataReport, or a PairReport (analysis/pair_report.py) for preference pairs."""
    if not cfg.data:
        raise UserError("no data file given", hint="lmtune data inspect DATA [--model M]")
    spec = cfg.model or DEFAULT_MODEL
    resolved = resolve(spec)
    tokenizer = load_tokenizer(resolved, cfg.trust_remote_code)
    context = context_length(peek_config(resolved, cfg.trust_remote_code))
    refuse(check_block_size(cfg.block_size, context))
    saved = run_config(spec) or TrainConfig()  # a run's own split and block, else train's
    opts = with_run_data_options(cfg, spec)
    if is_pair_file(opts):  # preference pairs get their own report
        report, _, _ = read_and_describe_pairs(
            opts, tokenizer, model=spec, block_size=cfg.block_size or saved.block_size,
            context=context, parameters=parameter_count(resolved, cfg.trust_remote_code))
        return report
    return build_report(opts, tokenizer, model=spec,
                        block_size=cfg.block_size or saved.block_size, context=context,
                        split=(saved.val_split, saved.seed),
                        parameters=parameter_count(resolved, cfg.trust_remote_code))
