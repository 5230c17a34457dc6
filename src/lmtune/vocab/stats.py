"""`lmtune tokenizer stats`: what one or several tokenizers cost on a data file.

Characters per token (higher is cheaper: fewer steps per character of text, more text per
context), tokens per character, and the share of tokens that are not a whole character:
the unknown token, SentencePiece's <0xNN> byte-fallback pieces, or a byte-level BPE piece
that is part of one character's UTF-8 bytes. A tokenizer that was not made for a language
spends most of its tokens so; `lmtune tokenizer extend` teaches it the language's pieces.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np

from lmtune.data.examples import build_examples
from lmtune.data.readers import read_records
from lmtune.errors import UserError
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve
from lmtune.vocab.bpe import CHAR_TO_BYTE, has_byte_level

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class TokenizerStats:
    model: str
    vocab: int
    characters: int
    tokens: int
    chars_per_token: float
    tokens_per_char: float
    fallback_share: float   # of the tokens: unknown, byte-fallback or part of one character

    def to_dict(self) -> dict:
        return asdict(self)


def read_texts(opts) -> list[str]:
    """The texts of `opts.data` read with the data flags (a config with DataOptions fields)."""
    if not opts.data:
        raise UserError("no data file given", hint="lmtune tokenizer stats DATA --model M")
    records = read_records(opts.data, fmt=opts.format, encoding=opts.encoding,
                           split_on=opts.split_on)
    examples = build_examples(records, source=str(opts.data), column=opts.column,
                              template=opts.template, prompt_template=opts.prompt_template,
                              completion_template=opts.completion_template)
    return [e.prompt + e.completion for e in examples]


def tokenizer_stats(models: list[str], texts: list[str], trust_remote_code: bool = False
                    ) -> list[TokenizerStats]:
    return [measure(spec, load_tokenizer(resolve(spec), trust_remote_code), texts)
            for spec in models]


def measure(name: str, tokenizer, texts: list[str]) -> TokenizerStats:
    """`tokenizer` (a transformers tokenizer) on `texts`, without special tokens."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
    chars = sum(map(len, texts))
    partial = fallback_ids(tokenizer)
    share = float(np.isin(flat, partial).mean()) if flat.size else 0.0
    tokens = int(flat.size)
    return TokenizerStats(name, len(tokenizer), chars, tokens, chars / max(tokens, 1),
                          tokens / max(chars, 1), share)


def fallback_ids(tokenizer) -> np.ndarray:
    """Ids of the tokens that are not a whole character or more: unknown, <0xNN>, or (byte-
    level BPE) bytes that do not decode as UTF-8 alone."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    byte_level = has_byte_level(spec.get("pre_tokenizer"))  # pieces in GPT-2's byte table
    out = [tokenizer.unk_token_id] if tokenizer.unk_token_id is not None else []
    special = set(tokenizer.all_special_tokens)
    for token, i in tokenizer.get_vocab().items():
        if token in special:
            continue
        if _BYTE_PIECE.fullmatch(token):
            out.append(i)
        elif byte_level and all(c in CHAR_TO_BYTE for c in token):
            try:
                bytes(CHAR_TO_BYTE[c] for c in token).decode("utf-8")
            except UnicodeDecodeError:
                out.append(i)
    return np.array(out, dtype=np.int64)
