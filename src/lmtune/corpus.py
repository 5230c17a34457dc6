"""From the data flags to tokenized training and validation documents."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from lmtune.data import (Example, PackedDataset, PaddedDataset, TokenizedDocs,
                         build_examples_with_stats, read_records, split_examples,
                         tokenize_examples)
from lmtune.errors import UserError


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    stats: dict


def read_examples(path: str, opts) -> tuple[list[Example], dict]:
    """`opts` is any config with the DataOptions fields (train, eval and data commands)."""
    if not path:
        raise UserError("no data file given", hint="lmtune train DATA (a .txt, .csv, .json, "
                                                   ".jsonl or .parquet file, or a folder)")
    records = read_records(path, fmt=opts.format, encoding=opts.encoding, split_on=opts.split_on)
    return build_examples_with_stats(
        records, source=str(path), column=opts.column, template=opts.template,
        prompt_template=opts.prompt_template, completion_template=opts.completion_template)


def load_splits(cfg) -> Splits:
    examples, stats = read_examples(cfg.data, cfg)
    if cfg.val_data:
        val, _ = read_examples(cfg.val_data, cfg)
        return Splits(examples, val, stats)
    train, val = split_examples(examples, cfg.val_split, cfg.seed)
    return Splits(train, val, stats)


def make_dataset(docs: TokenizedDocs, block_size: int, *, pack: bool, shuffle: bool, seed: int):
    cls = PackedDataset if pack else PaddedDataset
    return cls(docs, block_size, shuffle=shuffle, seed=seed)


def docs_hash(*docs: TokenizedDocs) -> str:
    """Identifies the training data by content (after tokenization), for resume checks."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.ids.tobytes())
        h.update(d.offsets.tobytes())
        h.update(d.loss_mask.tobytes())
    return h.hexdigest()[:16]


def tokenize_splits(splits: Splits, tokenizer) -> tuple[TokenizedDocs, TokenizedDocs | None]:
    train = tokenize_examples(splits.train, tokenizer)
    val = tokenize_examples(splits.val, tokenizer) if splits.val else None
    return train, val


def data_name(path: str) -> str:
    return Path(path.rstrip("/")).stem or "data"
