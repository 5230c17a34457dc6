"""Turn records into training examples (prompt, completion) and split off validation.

There is exactly one way to get the text of a record: a `template`, a prompt/completion
template pair, a `column`, or the default (`text`, or the only field there is).
"""

import math
import string
from dataclasses import dataclass

import numpy as np

from lmtune.data.chat import Turn, chat_turns, is_chat, sample_prompts
from lmtune.errors import UserError


@dataclass(frozen=True)
class Example:
    prompt: str  # "" for plain text; tokens of the prompt are context only (no loss)
    completion: str  # the text the model learns
    # A conversation (chat data): rendered by the model's chat template when tokenized; then
    # prompt and completion hold the other turns' and the answers' text, for statistics.
    turns: tuple[Turn, ...] = ()


# A template compiled to (literal text, field name or None) pairs, so rendering is a join
# and never runs str.format on user input.
_Parts = list[tuple[str, str | None]]


class _Missing(Exception):
    """A row lacks a value the template needs; the row is skipped and counted."""


def build_examples(records: list[dict], *, source: str, column: str | None = None,
                   template: str | None = None, prompt_template: str | None = None,
                   completion_template: str | None = None) -> list[Example]:
    examples, _ = build_examples_with_stats(
        records, source=source, column=column, template=template,
        prompt_template=prompt_template, completion_template=completion_template)
    return examples


def build_examples_with_stats(records: list[dict], *, source: str, column: str | None = None,
                              template: str | None = None, prompt_template: str | None = None,
                              completion_template: str | None = None) -> tuple[list[Example], dict]:
    """Examples plus `{"records": n, "dropped_empty": k, "dropped_missing": m}`."""
    fields = sorted({key for record in records for key in record})
    if (column, template, prompt_template, completion_template) == (None,) * 4:
        if is_chat(records):
            return _chat_examples(records, source)
        if fields == ["completion", "prompt"]:  # OpenAI's (and TRL's) prompt/completion JSONL
            prompt_template, completion_template = "{prompt}", "{completion}"
    prompt_parts, completion_parts = _choose_text(
        records, fields, source, column, template, prompt_template, completion_template)
    examples, dropped_empty, dropped_missing = [], 0, 0
    for record in records:
        try:
            prompt = _render(prompt_parts, record)
            completion = _render(completion_parts, record)
        except _Missing:
            dropped_missing += 1
            continue
        if not completion.strip():
            dropped_empty += 1
            continue
        examples.append(Example(prompt, completion))
    stats = {"records": len(records), "dropped_empty": dropped_empty, "dropped_missing": dropped_missing}
    notes = list(getattr(records, "notes", []))
    if (column, template, prompt_template) == (None, None, None) and len(fields) > 1:
        others = [f for f in fields if f != completion_parts[0][1]]
        notes.append(f"the text of each example is the field '{completion_parts[0][1]}' (the "
                     f"other fields, {', '.join(others[:5])}{', ...' if len(others) > 5 else ''}"
                     f", are not used; choose with --column or --template)")
    if notes:
        stats["notes"] = notes
    if not examples:
        raise UserError(f"no examples in {source} after templating ({len(records)} records: "
                        f"{dropped_empty} empty, {dropped_missing} missing a value)",
                        hint=f"check that --column/--template name the field that holds the text; "
                             f"fields: {', '.join(fields) or '(none)'}")
    return examples, stats


def _chat_examples(records, source: str) -> tuple[list[Example], dict]:
    conversations = chat_turns(records, source)
    examples = [Example(prompt="\n".join(t.content for t in c if t.role != "assistant"),
                        completion="\n".join(t.content for t in c if t.role == "assistant"),
                        turns=c) for c in conversations]
    stats = {"records": len(records), "dropped_empty": 0, "dropped_missing": 0,
             "chat": len(examples), "chat_prompts": sample_prompts(conversations),
             "notes": ["each record is a conversation (messages), rendered with the model's "
                       "chat template; the loss falls on the assistant's answers only"]}
    return examples, stats


def record_texts(records: list[dict], *, source: str, column: str | None = None,
                 template: str | None = None, option: str = "--column") -> list[str | None]:
    """The text of every record, in order, from `column` or `template` (exactly one); None
    where a record lacks a value. For labelled data (classification), where a record may not
    be dropped silently: the caller reports those rows. `option` names the flag in errors."""
    fields = sorted({key for record in records for key in record})
    if (column is None) == (template is None):
        raise UserError(f"choose one way to get the text: {option} or --template")
    if template is not None:
        parts = _compile(template, fields, source, "--template")
    else:
        _check_field(column, fields, source, option)
        parts = [("", column)]
    texts: list[str | None] = []
    for record in records:
        try:
            texts.append(_render(parts, record))
        except _Missing:
            texts.append(None)
    return texts


def _choose_text(records, fields, source, column, template, prompt_template, completion_template):
    """(prompt parts, completion parts) for the one text option the user picked."""
    if (prompt_template is None) != (completion_template is None):
        given = "--prompt-template" if prompt_template is not None else "--completion-template"
        raise UserError(f"{given} needs its partner: pass both --prompt-template and --completion-template",
                        hint="or use a single --template for plain text")
    chosen = [name for name, value in (("--column", column), ("--template", template),
                                       ("--prompt-template", prompt_template)) if value is not None]
    if len(chosen) > 1:
        raise UserError(f"choose one way to get the text, not {' and '.join(chosen)}",
                        hint="--column NAME, or --template '...', or --prompt-template with --completion-template")
    if template is not None:
        return [], _compile(template, fields, source, "--template")
    if prompt_template is not None:
        return (_compile(prompt_template, fields, source, "--prompt-template"),
                _compile(completion_template, fields, source, "--completion-template"))
    if column is not None:
        _check_field(column, fields, source, "--column")
        return [], [("", column)]
    return [], [("", _default_column(records, fields, source))]


def _default_column(records: list[dict], fields: list[str], source: str) -> str:
    with_text = sum("text" in record for record in records)
    if with_text == len(records):
        return "text"
    if with_text:
        raise UserError(f"{len(records) - with_text} of {len(records)} records in {source} have no 'text' field",
                        hint="pass --column text to use it and skip those records")
    if len(fields) == 1:
        return fields[0]
    if {"chosen", "rejected"} <= set(fields) or "preferred_output" in fields:
        raise UserError(f"{source} holds preference pairs (fields {', '.join(fields)}), not "
                        f"texts to continue", hint="train on them with --task preference")
    raise UserError(f"{source} has fields {', '.join(fields)}; which one holds the text?",
                    hint=f"--column NAME or --template, e.g. --template '{{{fields[0]}}}'")


def _compile(template: str, fields: list[str], source: str, option: str) -> _Parts:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UserError(f"{option} {template!r} is malformed ({e})",
                        hint="write {{ and }} for literal braces") from None
    parts = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            # Only plain names: {a.b} and {a[0]} mean attribute/index access in str.format,
            # and a format spec such as {n:.2f} would fail on values that are strings.
            # (A column literally called "a.b" is fine: _render looks names up in a dict.)
            if name not in fields and not _is_plain_name(name):
                raise UserError(f"{option} {template!r}: '{{{name}}}' is not a field name",
                                hint="use {field} with a column name; {{ and }} are literal braces")
            if spec or conversion:
                raise UserError(f"{option} {template!r}: '{{{name}...}}' has a format spec or conversion",
                                hint=f"use plain {{{name}}}")
            _check_field(name, fields, source, option)
        parts.append((literal, name))
    return parts


def _is_plain_name(name: str) -> bool:
    # Column names such as "first name" or "2nd-col" are fine; only access syntax is not.
    return bool(name) and not name.isdigit() and not any(c in name for c in ".[]!:{}")


def _check_field(name: str, fields: list[str], source: str, option: str) -> None:
    if name not in fields:
        raise UserError(f"{option} names field '{name}', which {source} does not have; "
                        f"available fields: {', '.join(fields)}",
                        hint="use one of the available field names (they are case-sensitive)")


def _render(parts: _Parts, record: dict) -> str:
    out = []
    for literal, name in parts:
        out.append(literal)
        if name is not None:
            value = record.get(name)
            if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
                raise _Missing(name)
            out.append(value if isinstance(value, str) else str(value))
    return "".join(out)


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation), each in the original order; the same seed gives the same split."""
    train_idx, val_idx = split_indices(len(examples), val_fraction, seed)
    return [examples[i] for i in train_idx], [examples[i] for i in val_idx]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices into n items, each ascending; the same seed gives the same
    split, whether the items are examples or the cached documents made from them."""
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be at least 0 and below 1, got {val_fraction!r}",
                        hint="e.g. --val-split 0.1 (10%), or 0 for no validation set")
    # With one example there is nothing to hold out without leaving nothing to train on.
    if val_fraction == 0 or n < 2:
        return np.arange(n), np.arange(0)
    n_val = min(max(1, int(n * val_fraction + 0.5)), n - 1)
    held_out = np.zeros(n, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)
