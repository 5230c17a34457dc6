"""A model's tokenizer as llama.cpp reads it from a GGUF file, or a refusal naming why not.

Two kinds are written, mirroring llama.cpp's converter (convert_hf_to_gguf.py):
- byte-level BPE (tokens, token types, merges) with its pre-tokenizer named explicitly:
  GPT-2's as `gpt-2`, Llama 3's as `llama-bpe`, matched exactly against tokenizer.json, so
  llama.cpp never falls back to its default split;
- SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama, Mistral) as llama.cpp's
  `llama` tokenizer: <0xNN> pieces typed BYTE, each merged piece scored by its merge's rank
  (llama.cpp merges the best-scored pair first, as BPE applies the earliest merge).
BOS is added at the start of a prompt, as lmtune trained every example to start with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lmtune.data.tokenize import start_token_id
from lmtune.errors import UserError

GPT2_PRE = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": True}


@dataclass
class Vocab:
    model: str            # llama.cpp's tokenizer.ggml.model: "gpt2" (BPE) or "llama" (SPM)
    tokens: list[str]
    types: list[int]
    merges: list[str]     # "gpt2" only
    scores: list[float]   # "llama" only: llama.cpp's SPM merges the best-scored pair first
    pre: str              # the pre-tokenizer name llama.cpp splits text with before BPE


# Byte-level BPE pre-tokenizers llama.cpp knows, as tokenizer.json writes them, by the name
# llama.cpp gives them (llama-vocab.cpp). Llama 3's regex is copied from its tokenizer.json.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_PRE = {
    "gpt-2": GPT2_PRE,
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]},
}
UNSUPPORTED = ("GGUF export supports byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3) and "
               "SentencePiece-style BPE ones (Llama 2, TinyLlama, Mistral); this model's "
               "tokenizer is {what}, which llama.cpp would split differently")


def read_vocab(tokenizer, vocab_size: int) -> Vocab:
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(UNSUPPORTED.format(what=f"a {model.get('type')} model"),
                        hint=_CONVERT_HINT)
    if model.get("byte_fallback"):
        kind, pre = "llama", "default"
        if not _is_sentencepiece(spec):
            raise UserError(UNSUPPORTED.format(what="byte-fallback BPE with another "
                                                    "normalizer or pre-tokenizer"),
                            hint=_CONVERT_HINT)
    else:
        kind = "gpt2"
        pre = next((name for name, known in BPE_PRE.items()
                    if spec.get("pre_tokenizer") == known), None)
        # llama.cpp tokenizes Llama 3 with ignore_merges (a word in the vocabulary is one
        # token), GPT-2 without; a tokenizer.json that says otherwise would split differently.
        if pre is None or spec.get("normalizer") is not None or \
                bool(model.get("ignore_merges")) != (pre == "llama-bpe"):
            raise UserError(UNSUPPORTED.format(what="byte-level BPE with a pre-tokenizer "
                                                    "llama.cpp has no name for"),
                            hint=_CONVERT_HINT)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    rank = _merge_ranks(merges) if kind == "llama" else {}
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:  # the embedding has rows no token uses
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(_token_type(gguf, token, kind, special, added, model))
        # A merged piece scores by its merge's rank (earlier merges first, as BPE applies
        # them); single characters and bytes are never the result of a merge.
        scores.append(-float(rank.get(tokens[-1], len(merges))))
    return Vocab(kind, tokens, [int(t) for t in types], merges if kind == "gpt2" else [],
                  scores if kind == "llama" else [], pre)


_CONVERT_HINT = ("merge the run (lmtune merge) and convert it with llama.cpp's "
                 "convert_hf_to_gguf.py")


def _is_sentencepiece(spec: dict) -> bool:
    """The two ways tokenizer.json writes SentencePiece's treatment of spaces (a "▁" before
    the text and for every space, the text split nowhere else): transformers' older
    Prepend+Replace normalizer, or its newer Metaspace pre-tokenizer that does not split."""
    norm, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    old = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    if norm == old and pre is None:
        return True
    return norm is None and isinstance(pre, dict) and pre.get("type") == "Metaspace" \
        and pre.get("replacement") == "\u2581" and pre.get("split") is False \
        and pre.get("prepend_scheme") in ("first", "always")


def _merge_ranks(merges: list[str]) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for i, merge in enumerate(merges):
        ranks.setdefault(merge.replace(" ", "", 1), i)
    return ranks


def _token_type(gguf, token: str, kind: str, special: set, added: set, model: dict) -> int:
    if token in special:
        return gguf.TokenType.UNKNOWN if token == model.get("unk_token") else \
            gguf.TokenType.CONTROL
    if token in added:
        return gguf.TokenType.USER_DEFINED
    if kind == "llama" and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return gguf.TokenType.BYTE  # SentencePiece's byte fallback pieces, <0x00>..<0xFF>
    if kind == "llama" and token == model.get("unk_token"):
        return gguf.TokenType.UNKNOWN
    return gguf.TokenType.NORMAL


def write_vocab(writer, tokenizer, vocab: Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model == "gpt2":
        writer.add_token_merges(vocab.merges)
    else:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(True)  # SentencePiece's "▁" before the text
    # Every example lmtune trained on starts with this token (BOS, else EOS), so llama.cpp
    # adds it before a prompt too.
    writer.add_bos_token_id(start_token_id(tokenizer))
    writer.add_add_bos_token(True)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_add_eos_token(False)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
