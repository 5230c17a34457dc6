"""A BPE tokenizer extended with a corpus's new pieces, as tokenizer.json specs (no torch).

A tokenizer of the same kind is trained on the corpus (`tokenizers`' BpeTrainer: the base's
byte-level pre-tokenizer and byte alphabet, or SentencePiece's "▁" words), and its pieces the
base lacks are added in the order they were learned:
- each new piece is one new merge, appended after the base merges. BPE applies the merge of
  lowest rank first, so the appended merges act only on what the base merges leave: a text's
  base split, then the new merges on it. The pair merged is the piece's own split by the
  tokenizer built so far, so every added merge fires at least on its piece;
- only pieces holding a non-ASCII character are added (a byte >= 0x80 for byte-level BPE).
  Either part of such a merge then holds one too, so no new merge can touch ASCII text:
  English tokenizes exactly as before, id for id;
- SentencePiece-style BPE with byte fallback also gets the new characters as pieces (a
  character outside the vocabulary was its UTF-8 bytes, <0xNN> pieces): each changes only
  text holding that character.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lmtune.errors import UserError

BYTE_LEVEL, SENTENCEPIECE = "byte-level BPE", "SentencePiece-style BPE"
SPACE = "\u2581"  # SentencePiece's "▁"
_REFUSE_HINT = ("lmtune tokenizer extend supports byte-level BPE (GPT-2, SmolLM2, Llama 3) and "
                "SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama, Mistral)")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE pieces are written in."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


CHAR_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


@dataclass
class Extension:
    """The extended tokenizer.json, and what was added to it."""
    kind: str
    spec: dict
    pieces: list[str] = field(default_factory=list)        # new tokens, in id order
    ids: list[int] = field(default_factory=list)
    merges: list[tuple[str, str]] = field(default_factory=list)
    learned: int = 0            # pieces the corpus's own tokenizer learned
    already_known: int = 0      # of which the base vocabulary had
    ascii_only: int = 0         # of which hold no non-ASCII character (never added)
    unreachable: int = 0        # of which the tokenizer so far cannot build with one merge


def tokenizer_kind(spec: dict) -> str:
    """BYTE_LEVEL or SENTENCEPIECE, or a refusal naming what the tokenizer is."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"cannot extend a {model.get('type')} tokenizer", hint=_REFUSE_HINT)
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UserError("cannot extend a BPE tokenizer with subword prefixes or word suffixes",
                        hint=_REFUSE_HINT)
    if model.get("dropout"):
        raise UserError("cannot extend a BPE tokenizer with dropout", hint=_REFUSE_HINT)
    if model.get("byte_fallback"):
        if _is_sentencepiece(spec):
            return SENTENCEPIECE
        raise UserError("cannot extend a byte-fallback BPE tokenizer whose spaces are not "
                        "SentencePiece's '▁'", hint=_REFUSE_HINT)
    if has_byte_level(spec.get("pre_tokenizer")):
        return BYTE_LEVEL
    raise UserError("cannot extend a BPE tokenizer that is neither byte-level nor "
                    "SentencePiece-style (an unknown character would have no pieces)",
                    hint=_REFUSE_HINT)


def has_byte_level(pre: dict | None) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(has_byte_level(p) for p in pre.get("pretokenizers") or [])


def _is_sentencepiece(spec: dict) -> bool:
    """'▁' for spaces, the text split nowhere else: transformers' Prepend+Replace normalizer
    or its Metaspace pre-tokenizer that does not split (as deploy/gguf_vocab.py reads them)."""
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer")
    if pre is None and norm.get("type") == "Sequence":
        kinds = [n.get("type") for n in norm.get("normalizers", [])]
        return kinds == ["Prepend", "Replace"]
    return not norm and isinstance(pre, dict) and pre.get("type") == "Metaspace" \
        and pre.get("split") is False


def is_new_script(piece: str, kind: str) -> bool:
    """Whether a piece holds a non-ASCII character (byte-level: a byte >= 0x80)."""
    if kind == BYTE_LEVEL:
        return any(CHAR_TO_BYTE.get(c, 0) >= 0x80 for c in piece)
    return any(ord(c) >= 0x80 for c in piece.replace(SPACE, ""))


def learn(spec: dict, kind: str, texts, vocab_size: int) -> tuple[dict, list[tuple[str, str]]]:
    """The vocabulary and merges (in learned order) of a tokenizer of `kind` trained on
    `texts`: the base's normalizer and pre-tokenizer for byte-level BPE, SentencePiece's
    words for the other kind."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    base = Tokenizer.from_str(json.dumps(spec))
    learner = Tokenizer(models.BPE())
    if kind == BYTE_LEVEL:
        if base.normalizer is not None:
            learner.normalizer = base.normalizer
        learner.pre_tokenizer = base.pre_tokenizer
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # "▁" before every word, as the base's normalizer writes spaces
        learner.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
        alphabet = []
        # Its alphabet is every character of the corpus (thousands for Chinese), not 256 bytes.
        vocab_size += len(set().union(*map(set, texts))) + 1
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                  min_frequency=2, show_progress=False)
    learner.train_from_iterator(texts, trainer)
    learned = json.loads(learner.to_str())["model"]
    return learned["vocab"], [_pair(m) for m in learned["merges"]]


def _pair(merge) -> tuple[str, str]:
    if isinstance(merge, str):
        a, b = merge.split(" ", 1)
        return a, b
    return merge[0], merge[1]


def bpe_split(piece: str, vocab: dict, ranks: dict[tuple[str, str], int]) -> list[str] | None:
    """How BPE with `ranks` splits `piece` (one word, already pre-tokenized): the pair of
    lowest rank merged first, until none applies. None when a character is not in `vocab`."""
    symbols = list(piece)
    if any(s not in vocab for s in symbols):
        return None
    while len(symbols) > 1:
        best = min(range(len(symbols) - 1),
                   key=lambda i: ranks.get((symbols[i], symbols[i + 1]), len(ranks) + 1))
        if (symbols[best], symbols[best + 1]) not in ranks:
            break
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
    return symbols


def extend_spec(spec: dict, kind: str, learned_merges: list[tuple[str, str]], add: int,
                first_id: int) -> Extension:
    """`spec` with up to `add` new pieces from `learned_merges` (in their order), the new
    tokens numbered from `first_id`."""
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    base_merges = [_pair(m) for m in model.get("merges", [])]
    ranks = {pair: i for i, pair in enumerate(base_merges)}
    ext = Extension(kind, spec, learned=len(learned_merges))
    for a, b in learned_merges:
        if len(ext.pieces) >= add:
            break
        piece = a + b
        if piece in vocab:
            ext.already_known += 1
            continue
        if not is_new_script(piece, kind):
            ext.ascii_only += 1
            continue
        if kind == SENTENCEPIECE:  # its new characters first, each a piece of its own
            chars = [c for c in dict.fromkeys(piece) if c not in vocab]
            if any(not is_new_script(c, kind) for c in chars) \
                    or len(ext.pieces) + len(chars) + 1 > add:
                ext.unreachable += 1
                continue
            for c in chars:
                _add(ext, vocab, c, first_id)
        parts = bpe_split(piece, vocab, ranks)
        if parts is None or len(parts) != 2:
            ext.unreachable += 1
            continue
        ranks[(parts[0], parts[1])] = len(ranks)
        ext.merges.append((parts[0], parts[1]))
        _add(ext, vocab, piece, first_id)
    as_strings = bool(model.get("merges")) and isinstance(model["merges"][0], str)
    model["merges"] = list(model.get("merges", [])) + [
        f"{a} {b}" if as_strings else [a, b] for a, b in ext.merges]
    return ext


def _add(ext: Extension, vocab: dict, piece: str, first_id: int) -> None:
    new_id = first_id + len(ext.pieces)
    vocab[piece] = new_id
    ext.pieces.append(piece)
    ext.ids.append(new_id)


def first_free_id(spec: dict, rows: int) -> int:
    """The first id after every token of the tokenizer and every row of the embedding."""
    ids = list(spec["model"]["vocab"].values()) + [t["id"] for t in spec.get("added_tokens", [])]
    return max([rows - 1] + ids) + 1


def constituents(spec: dict, pieces: list[str]) -> list[list[int]]:
    """The ids the BASE tokenizer (`spec`) splits each new piece into: the tokens it replaces."""
    from tokenizers import Tokenizer

    model = Tokenizer.from_str(json.dumps(spec)).model
    return [[t.id for t in model.tokenize(p)] for p in pieces]
