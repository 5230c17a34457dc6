"""Labelled texts for --task classify, in small stages: read -> (text, label) rows -> label
set -> stratified split -> tokens -> length-grouped, dynamically padded batches. Nothing here
loads a model.

A row is `[start] + text tokens`, cut at `max_length`; rows are never packed. Decoder models
classify from the last real token, and transformers' sequence-classification heads find it as
the rightmost position whose id is not `config.pad_token_id`. That is right for left and for
right padding as long as no real token has the pad id. GPT-2 and SmolLM2 pad with their EOS
token, so texts are tokenized with `split_special_tokens=True` (a literal "<|endoftext|>" in a
text becomes ordinary pieces, never the EOS id) and no EOS is appended. The start token may be
the pad id (GPT-2's BOS is its EOS), but it is always followed by real tokens, so it is never
the rightmost one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmtune.data.readers import read_records
from lmtune.data.examples import record_texts
from lmtune.data.packing import no_targets
from lmtune.data.tokenize import start_token_id
from lmtune.errors import UserError

GROUP_BATCHES = 16  # batches per length group: longer groups pad less but shuffle less


@dataclass
class Labelled:
    texts: list[str]
    labels: list[str]  # every label as a string, so "1" in a CSV and 1 in JSON are one label
    columns: list[str]


# ---------------------------------------------------------------------------------------------
# Reading.

def label_str(value) -> str | None:
    """A label as a string; None where it is missing. Integral floats (1.0 from a parquet
    column with gaps) become "1", so they match the same label written as an integer."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    return value.strip() if isinstance(value, str) else str(value)


def _rows(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n + 1) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def is_plain_text(path: str, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt.lower().lstrip(".") == "txt"
    return Path(path).suffix.lower() in (".txt", ".text", ".md")


def read_labelled(path: str, *, text_column: str | None, template: str | None,
                  label_column: str | None, fmt: str | None = None, encoding: str = "utf-8",
                  need_labels: bool = True) -> Labelled:
    """Texts (and labels, unless `need_labels` is False, as for `predict`) of every record.
    A plain-text file (which can hold no labels) gives one text per non-empty line.

    Every row must have a non-empty text and a label: a row that lacks one is reported (with
    its number, counting records from 1), never dropped, so the counts a user checks match."""
    if not path:
        raise UserError("no data file given", hint="pass a .csv, .tsv, .json, .jsonl or "
                                                   ".parquet file with a text and a label column")
    records = read_records(path, fmt=fmt, encoding=encoding,
                           split_on="\n" if is_plain_text(path, fmt) else None)
    columns = sorted({key for record in records for key in record})
    listed = ", ".join(columns)
    if need_labels and label_column is None:
        raise UserError(f"--task classify needs --label-column: which column of {path} holds "
                        f"the label? columns: {listed}", hint="e.g. --label-column label")
    if need_labels and label_column not in columns:
        raise UserError(f"--label-column '{label_column}' is not a column of {path}; columns: "
                        f"{listed}", hint="column names are case-sensitive")
    if text_column is None and template is None:
        if "text" not in columns or label_column == "text":
            raise UserError(f"which column of {path} holds the text? columns: {listed}",
                            hint="pass --text-column NAME, or --template '...{column}...'")
        text_column = "text"
    texts = record_texts(records, source=str(path), column=text_column, template=template,
                         option="--text-column")
    empty = [i for i, t in enumerate(texts) if t is None or not t.strip()]
    if empty:
        what = f"column '{text_column}'" if template is None else "the --template"
        raise UserError(f"{len(empty)} of {len(records)} rows of {path} have an empty text "
                        f"({what}): rows {_rows(empty)}",
                        hint="remove those rows or fill in their text")
    labels: list[str] = []
    if need_labels:
        labels = [label_str(r.get(label_column)) for r in records]
        missing = [i for i, label in enumerate(labels) if label is None]
        if missing:
            raise UserError(f"{len(missing)} of {len(records)} rows of {path} have no label "
                            f"(column '{label_column}'): rows {_rows(missing)}",
                            hint="remove those rows or give them a label")
    return Labelled(texts=texts, labels=labels, columns=columns)


def label_set(labels: list[str], source: str) -> list[str]:
    """The sorted label names (numerically when every label is an integer); at least two."""
    names = sorted(set(labels))
    if all(_is_int(n) for n in names):
        names.sort(key=int)
    if len(names) < 2:
        raise UserError(f"{source} has a single label ({names[0]!r} on all {len(labels)} rows); "
                        f"a classifier needs at least two",
                        hint="check --label-column, or add examples of the other classes")
    return names


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def label_ids(labels: list[str], names: list[str], source: str) -> np.ndarray:
    """Labels -> ids in `names`; a label the classifier was not trained on is an error."""
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        rows = [i for i, label in enumerate(labels) if label not in index]
        raise UserError(f"{source} has label{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(u) for u in unknown[:5])} (rows {_rows(rows)}) that "
                        f"{'were' if len(unknown) > 1 else 'was'} not in the training data; "
                        f"the classifier knows: {', '.join(names)}",
                        hint="evaluate on data with the training labels only")
    return np.array([index[label] for label in labels], dtype=np.int64)


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, each sorted. Each class gives round(n_c * fraction)
    rows, but keeps at least one for training, so small classes still appear in both."""
    if fraction == 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n_val = min(len(rows) - 1, int(len(rows) * fraction + 0.5))
        held.append(rng.permutation(rows)[:n_val])
    val = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), val), val


# ---------------------------------------------------------------------------------------------
# Tokens.

@dataclass
class TokenizedTexts:
    ids: np.ndarray  # (n_tokens,) int64, every row concatenated
    offsets: np.ndarray  # (n + 1,) int64: row i is ids[offsets[i]:offsets[i + 1]]
    labels: np.ndarray | None  # (n,) int64 label ids; None for unlabelled texts
    truncated: int  # rows cut at max_length

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def cut(self, max_length: int, labels: np.ndarray | None = None) -> "TokenizedTexts":
        """The same texts cut at `max_length` tokens (with `labels`, if given)."""
        lengths = np.minimum(self.lengths, max_length)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Token j of row i in the cut array comes from self.offsets[i] + j.
        src = np.repeat(self.offsets[:-1] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return TokenizedTexts(ids=self.ids[src], offsets=offsets,
                              labels=self.labels if labels is None else labels,
                              truncated=int((self.lengths > max_length).sum()))


def tokenize_texts(texts: list[str], tokenizer, max_length: int | None = None,
                   labels: np.ndarray | None = None, batch_size: int = 1000) -> TokenizedTexts:
    """`[start] + tokens` per text, cut at `max_length` (None: not cut). One tokenizer call
    per `batch_size` texts."""
    start = start_token_id(tokenizer)
    rows: list[list[int]] = []
    for i in range(0, len(texts), batch_size):
        rows += tokenizer(texts[i: i + batch_size], add_special_tokens=False,
                          split_special_tokens=True, verbose=False)["input_ids"]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([1 + len(r) for r in rows], out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[offsets[i]] = start
        ids[offsets[i] + 1: offsets[i + 1]] = r
    full = TokenizedTexts(ids=ids, offsets=offsets, labels=labels, truncated=0)
    return full.cut(max_length) if max_length else full


# ---------------------------------------------------------------------------------------------
# Batches.

@dataclass
class ClassBatch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    position_ids: torch.Tensor  # (B, T) long, 0.. over the real tokens, whichever side pads
    labels: torch.Tensor | None  # (B,) long
    rows: np.ndarray  # (B,) row index of each example in its TokenizedTexts
    n_target_tokens: int  # one target per text: B (named as LM batches, for the shared loop)
    n_tokens: int  # real tokens


def pad_rows(rows: list[np.ndarray], pad_id: int, side: str = "right"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), each (B, T) for T the longest row. Position
    ids count real tokens only, so a text gets the same positions, and so the same logits,
    whichever side the padding is on."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, cols] = r
        mask[i, cols] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(positions)


def length_grouped(lengths: np.ndarray, batch_size: int, *, shuffle: bool, seed: int,
                   epoch: int) -> list[np.ndarray]:
    """The row indices of each batch of an epoch (see TextDataset): shuffled by (seed, epoch),
    sorted by length within groups of GROUP_BATCHES batches, the batches shuffled again;
    without `shuffle`, longest first."""
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    group = batch_size * GROUP_BATCHES
    batches = []
    for g in range(0, len(perm), group):
        rows = perm[g: g + group]
        rows = rows[np.argsort(-lengths[rows], kind="stable")]
        batches += [rows[i: i + batch_size] for i in range(0, len(rows), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class TextDataset:
    """Batches of whole texts, padded to the longest of each batch.

    Length grouping: each epoch the rows are shuffled (by seed and epoch), cut into groups of
    GROUP_BATCHES batches, sorted by length inside each group and batched; the batch order is
    then shuffled, so the model does not see all the short texts first. Padding to the
    longest of similar lengths wastes little. Without `shuffle` (validation, prediction) rows
    are simply sorted by length. The order depends only on (seed, epoch), so a resumed run
    skips batches without building them."""

    def __init__(self, texts: TokenizedTexts, *, pad_id: int, padding_side: str = "right",
                 shuffle: bool = True, seed: int = 0):
        self.texts, self.pad_id, self.side = texts, pad_id, padding_side
        self.shuffle, self.seed = shuffle, seed

    def num_blocks(self) -> int:
        return len(self.texts)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.texts) // batch_size)

    def _order(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        return length_grouped(self.texts.lengths, batch_size, shuffle=self.shuffle,
                              seed=self.seed, epoch=epoch)

    def batches(self, epoch: int, batch_size: int, start: int = 0, *, rank: int = 0,
                world: int = 1) -> Iterator[ClassBatch]:
        """Under `world` processes, process `rank` takes its share of each batch that one
        process with `batch_size * world` would make (as in data/packing.py)."""
        for rows in self._order(epoch, batch_size * world)[start:]:
            mine = rows[rank * batch_size:(rank + 1) * batch_size]
            yield self._batch(mine) if len(mine) else no_targets(self._batch(rows[:1]))

    def _batch(self, rows: np.ndarray) -> ClassBatch:
        t = self.texts
        ids, mask, positions = pad_rows([t.ids[t.offsets[r]: t.offsets[r + 1]] for r in rows],
                                        self.pad_id, self.side)
        labels = None if t.labels is None else torch.from_numpy(t.labels[rows])
        return ClassBatch(input_ids=ids, attention_mask=mask, position_ids=positions,
                          labels=labels, rows=rows, n_target_tokens=len(rows),
                          n_tokens=int(mask.sum()))
