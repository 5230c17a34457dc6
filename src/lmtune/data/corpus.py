"""From the data flags to examples, to tokenized training and validation documents, to the
datasets training and evaluation batch from: the stages of this package put together."""

from __future__ import annotations

from dataclasses import dataclass

from lmtune.data.examples import Example, build_examples_with_stats, split_indices
from lmtune.data.packing import PackedDataset, PaddedDataset
from lmtune.data.readers import read_records
from lmtune.data.tokenize import TokenizedDocs
from lmtune.errors import UserError


def read_examples(path: str, opts) -> tuple[list[Example], dict]:
    """`opts` is any config with the DataOptions fields (train, eval and data commands)."""
    if not path:
        raise UserError("no data file given", hint="lmtune train DATA (a .txt, .csv, .json, "
                                                   ".jsonl or .parquet file, or a folder)")
    records = read_records(path, fmt=opts.format, encoding=opts.encoding, split_on=opts.split_on)
    return build_examples_with_stats(
        records, source=str(path), column=opts.column, template=opts.template,
        prompt_template=opts.prompt_template, completion_template=opts.completion_template)


@dataclass
class TokenSplits:
    train: TokenizedDocs
    val: TokenizedDocs | None
    stats: dict
    key: str  # identifies data content, data options, tokenizer and split: for resume checks


def token_splits(cfg, tokenizer) -> TokenSplits:
    """Training and validation documents from the token cache (`lmtune data prepare`): the
    corpus is tokenized once, and the split selects documents by index (the same split that
    `split_examples` makes of the examples), so no token is copied."""
    from lmtune.data.cache import prepare

    if not cfg.data:
        raise UserError("no data file given", hint="lmtune train DATA (a .txt, .csv, .json, "
                                                   ".jsonl or .parquet file, or a folder)")
    corpus = prepare(cfg.data, cfg, tokenizer)
    if cfg.val_data:
        val = prepare(cfg.val_data, cfg, tokenizer)
        return TokenSplits(corpus.docs, val.docs, corpus.stats, f"{corpus.key}+{val.key}")
    train_idx, val_idx = split_indices(len(corpus.docs), cfg.val_split, cfg.seed)
    return TokenSplits(corpus.docs.subset(train_idx),
                       corpus.docs.subset(val_idx) if len(val_idx) else None, corpus.stats,
                       f"{corpus.key}/{cfg.val_split}/{cfg.seed}")


def make_dataset(docs: TokenizedDocs, block_size: int, *, pack: bool, shuffle: bool, seed: int):
    cls = PackedDataset if pack else PaddedDataset
    return cls(docs, block_size, shuffle=shuffle, seed=seed)
