"""Preference pairs for --task preference, in small stages: read -> pairs (prompt, chosen,
rejected) -> tokens -> batches of whole pairs. Nothing here loads a model.

Three ways to write a pair, one per line or row:
  TRL's     {"prompt": ..., "chosen": ..., "rejected": ...}: strings, or lists of messages
            (the prompt's messages; each answer one assistant message). Without "prompt",
            message lists share every message but the last, which is the answer.
  OpenAI's  {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant",
            "content": ...}], "non_preferred_output": [...]}
  columns   CSV, TSV, Parquet or JSON fields: --chosen-column and --rejected-column (default
            chosen, rejected) and the prompt from --prompt-template '...{field}...' (default:
            a prompt field, else none).
Strings are tokenized as prompt/completion pairs are for --task generate: `[start] + prompt +
answer + [end]`, and messages are rendered by the model's chat template as chat data is
(data/chat_tokens.py). Either way the answer's tokens and its end token are the ones whose
log-probability counts, never the prompt or padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lmtune.data.chat import Turn, message_turns
from lmtune.data.examples import Example, record_texts
from lmtune.data.packing import no_targets
from lmtune.data.readers import check_data_path, read_records, resolve_format
from lmtune.data.tokenize import TokenizedDocs, tokenize_examples
from lmtune.errors import UserError
from lmtune.tasks.classify.data import length_grouped, pad_rows

OPENAI_FIELDS = ("input", "preferred_output", "non_preferred_output")


@dataclass(frozen=True)
class Pair:
    prompt: str    # the prompt's text ("" for none); of a chat prompt, its messages joined
    chosen: str    # the preferred answer
    rejected: str  # the other one
    turns: tuple[Turn, ...] = ()  # a chat prompt's messages: then both answers are chat turns


# ---------------------------------------------------------------------------------------------
# Reading.

def read_pairs(path: str, *, fmt: str | None = None, encoding: str = "utf-8",
               prompt_template: str | None = None, chosen_column: str | None = None,
               rejected_column: str | None = None) -> list[Pair]:
    """Every record of `path` as a pair; a record that is not one is an error naming its line
    (or row), and nothing is trained on a file that has one."""
    records = read_records(path, fmt=fmt, encoding=encoding)
    place = getattr(records, "place", lambda i: f"record {i + 1}")
    fields = sorted({key for record in records for key in record})
    if chosen_column is None and rejected_column is None and "preferred_output" in fields:
        pairs = [_openai_pair(r, f"{path} {place(i)}") for i, r in enumerate(records)]
    else:
        pairs = _column_pairs(records, path, place, fields, prompt_template,
                              chosen_column or "chosen", rejected_column or "rejected")
    chat = [bool(p.turns) for p in pairs]
    if any(chat) and not all(chat):
        i = chat.index(not chat[0])
        raise UserError(f"{path} {place(i)}: a pair of {'messages' if chat[i] else 'strings'} "
                        f"in a file whose {place(0)} is a pair of "
                        f"{'messages' if chat[0] else 'strings'}",
                        hint="write every pair the same way: strings, or lists of messages")
    return pairs


def holds_pairs(path: str, fmt: str | None = None, encoding: str = "utf-8") -> bool:
    """Whether a data file is written as preference pairs (TRL's or OpenAI's field names)."""
    p = check_data_path(path)
    if p.is_dir() or resolve_format(p, fmt) == "txt":
        return False
    fields = {key for record in read_records(p, fmt=fmt, encoding=encoding) for key in record}
    return {"chosen", "rejected"} <= fields or "preferred_output" in fields


def _column_pairs(records, path, place, fields, prompt_template, chosen, rejected
                  ) -> list[Pair]:
    absent = [f"'{name}'" for name in (chosen, rejected) if name not in fields]
    if absent:
        raise UserError(f"{path} has no field {' or '.join(absent)} for the two answers; "
                        f"fields: {', '.join(fields)}",
                        hint="name them with --chosen-column and --rejected-column, or write "
                             "TRL's {\"prompt\", \"chosen\", \"rejected\"} or OpenAI's "
                             "preference format")
    if prompt_template is not None:
        prompts = record_texts(records, source=str(path), template=prompt_template,
                               option="--prompt-template")
        missing = [i for i, p in enumerate(prompts) if p is None]
        if missing:
            raise UserError(f"{path} {place(missing[0])}: a field of --prompt-template is "
                            f"missing ({len(missing)} records lack one)",
                            hint="fill in the field, or remove the record")
    else:
        prompts = [r.get("prompt") for r in records]
    return [_pair(prompt, r.get(chosen), r.get(rejected), f"{path} {place(i)}")
            for i, (r, prompt) in enumerate(zip(records, prompts))]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pair(prompt, chosen, rejected, where: str) -> Pair:
    for value, name in ((chosen, "the chosen answer"), (rejected, "the rejected answer")):
        if _missing(value) or (isinstance(value, str) and not value.strip()):
            raise UserError(f"{where}: {name} is empty", hint="every pair needs two answers")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if _missing(prompt):
            prompt = ""
        if not isinstance(prompt, str):
            raise UserError(f"{where}: the answers are strings but the prompt is a "
                            f"{type(prompt).__name__}",
                            hint="write the prompt as a string too, or every part as messages")
        return Pair(prompt, chosen, rejected)
    if isinstance(chosen, list) and isinstance(rejected, list):
        if _missing(prompt):  # TRL's implicit prompt: the messages both answers share
            if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
                raise UserError(f"{where}: without a prompt, chosen and rejected must be the "
                                f"same conversation up to their last message",
                                hint='or give the prompt: {"prompt": [...], "chosen": '
                                     '[{"role": "assistant", ...}], "rejected": [...]}')
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        return _chat_pair(prompt, chosen, rejected, where)
    raise UserError(f"{where}: chosen and rejected must both be strings or both be lists of "
                    f"messages (got {type(chosen).__name__} and {type(rejected).__name__})")


def _chat_pair(prompt, chosen: list, rejected: list, where: str) -> Pair:
    if not isinstance(prompt, list):
        raise UserError(f"{where}: the answers are messages but the prompt is a "
                        f"{type(prompt).__name__}",
                        hint='write the prompt as messages: [{"role": "user", "content": ...}]')
    turns = tuple(Turn(t.role, t.content, False) for t in
                  message_turns(prompt, f"{where} (prompt)", need_answer=False))
    return Pair("\n".join(t.content for t in turns), _answer(chosen, where, "chosen"),
                _answer(rejected, where, "rejected"), turns)


def _answer(messages, where: str, name: str) -> str:
    """The text of an answer written as one assistant message."""
    turns = message_turns(messages, f"{where} ({name})")
    if len(turns) != 1 or not turns[0].content.strip():
        raise UserError(f"{where}: the {name} answer must be one non-empty assistant message "
                        f"(got {len(turns)} messages)",
                        hint='e.g. [{"role": "assistant", "content": "..."}]')
    return turns[0].content


def _openai_pair(record: dict, where: str) -> Pair:
    """OpenAI's preference fine-tuning format (method type "dpo")."""
    absent = [k for k in OPENAI_FIELDS if k not in record]
    inputs = record.get("input")
    if absent or not isinstance(inputs, dict) or "messages" not in inputs:
        raise UserError(f"{where}: not a preference record: expected {', '.join(OPENAI_FIELDS)}"
                        f"{' (missing ' + ', '.join(absent) + ')' if absent else ''}",
                        hint='write {"input": {"messages": [...]}, "preferred_output": [...], '
                             '"non_preferred_output": [...]}')
    return _chat_pair(inputs["messages"], record["preferred_output"],
                      record["non_preferred_output"], where)


# ---------------------------------------------------------------------------------------------
# Tokens.

def tokenize_pairs(pairs: list[Pair], tokenizer) -> tuple[TokenizedDocs, TokenizedDocs]:
    """(chosen, rejected): sequence i of each is pair i's prompt with that answer, its loss
    mask True on the answer's tokens and end token."""
    def examples(answer_of) -> list[Example]:
        return [Example(p.prompt, answer_of(p), turns=p.turns + (Turn("assistant", answer_of(p),
                                                                       True),) if p.turns else ())
                for p in pairs]

    return (tokenize_examples(examples(lambda p: p.chosen), tokenizer),
            tokenize_examples(examples(lambda p: p.rejected), tokenizer))


def answer_tokens(docs: TokenizedDocs, max_length: int) -> np.ndarray:
    """(n,) answer tokens of each sequence that are left when it is cut at `max_length`."""
    counted = np.zeros(len(docs.loss_mask) + 1, dtype=np.int64)
    np.cumsum(docs.loss_mask, out=counted[1:])
    ends = docs.starts + np.minimum(docs.lengths, max_length)
    return counted[ends] - counted[docs.starts]


# ---------------------------------------------------------------------------------------------
# Batches.

@dataclass
class PairBatch:
    """B pairs as 2B rows, the chosen answers first: rows i and B + i are pair i."""
    input_ids: torch.Tensor       # (2B, T) long, padded on the right
    attention_mask: torch.Tensor  # (2B, T) long, 1 = real token
    position_ids: torch.Tensor    # (2B, T) long
    labels: torch.Tensor          # (2B, T) long: the token on answer tokens, else -100
    rows: np.ndarray              # (B,) pair index of each pair in its dataset
    reference: torch.Tensor | None  # (2B,) the reference model's summed log-probabilities
    n_target_tokens: int          # pairs: what the loss is a sum over (named as LM batches')
    n_tokens: int                 # real tokens


class PairDataset:
    """Batches of whole pairs, each sequence cut at `max_length` and padded to the longest of
    its batch; the order groups pairs of like length (classify/data.py's length_grouped).
    `reference` holds the reference model's summed log-probabilities, (n, 2) for (chosen,
    rejected), once computed (reference.py); LoRA runs switch the adapter off instead."""

    def __init__(self, chosen: TokenizedDocs, rejected: TokenizedDocs, *, max_length: int,
                 pad_id: int, shuffle: bool = True, seed: int = 0):
        self.chosen, self.rejected, self.max_length = chosen, rejected, max_length
        self.pad_id, self.shuffle, self.seed = pad_id, shuffle, seed
        self.reference: np.ndarray | None = None

    @property
    def docs(self) -> TokenizedDocs:
        """The chosen sequences: what samples are checked against for copying."""
        return self.chosen

    def __len__(self) -> int:
        return len(self.chosen)

    def num_blocks(self) -> int:
        return len(self.chosen)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.chosen) // batch_size)

    def lengths(self) -> np.ndarray:
        return np.minimum(np.maximum(self.chosen.lengths, self.rejected.lengths),
                          self.max_length)

    def batches(self, epoch: int, batch_size: int, start: int = 0, *, rank: int = 0,
                world: int = 1) -> Iterator[PairBatch]:
        """Under `world` processes, process `rank` takes its share of each batch that one
        process with `batch_size * world` would make (as in data/packing.py)."""
        order = length_grouped(self.lengths(), batch_size * world, shuffle=self.shuffle,
                               seed=self.seed, epoch=epoch)
        for rows in order[start:]:
            mine = rows[rank * batch_size:(rank + 1) * batch_size]
            yield self.batch(mine) if len(mine) else no_targets(self.batch(rows[:1]))

    def _sequence(self, docs: TokenizedDocs, i: int) -> tuple[np.ndarray, np.ndarray]:
        a = int(docs.starts[i])
        b = a + min(int(docs.lengths[i]), self.max_length)
        return np.asarray(docs.ids[a:b], dtype=np.int64), np.asarray(docs.loss_mask[a:b])

    def batch(self, rows: np.ndarray) -> PairBatch:
        seqs = ([self._sequence(self.chosen, int(i)) for i in rows]
                + [self._sequence(self.rejected, int(i)) for i in rows])
        ids, mask, positions = pad_rows([s for s, _ in seqs], self.pad_id, "right")
        counted = torch.zeros(ids.shape, dtype=torch.bool)
        for j, (_, m) in enumerate(seqs):
            counted[j, :len(m)] = torch.from_numpy(m)
        reference = None
        if self.reference is not None:  # (2B,): the chosen of each pair, then the rejected
            reference = torch.from_numpy(np.concatenate([self.reference[rows, 0],
                                                         self.reference[rows, 1]]))
        return PairBatch(input_ids=ids, attention_mask=mask, position_ids=positions,
                         labels=torch.where(counted, ids, -100), rows=np.asarray(rows),
                         reference=reference, n_target_tokens=len(rows),
                         n_tokens=int(mask.sum()))
