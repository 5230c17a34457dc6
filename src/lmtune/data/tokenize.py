"""Tokenize examples into one flat array of token ids with a loss mask.

Document i is `[start] + prompt + completion + [eos]`. The start token gives the first
real token something to be predicted from (so unconditional generation can begin from
it); the EOS counts in the loss so the model learns to stop.
"""

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lmtune.data.chat_tokens import tokenize_chats
from lmtune.data.examples import Example
from lmtune.data.special_tokens import eos_token_id, start_token_id

__all__ = ["TokenizedDocs", "eos_token_id", "start_token_id", "tokenize_examples",
           "encode_batch", "SpecialTexts", "special_text_warning"]


@dataclass
class TokenizedDocs:
    """Documents as flat arrays. `ids` and `loss_mask` may be np.memmap views of the token
    cache (lmtune data prepare), so a corpus larger than memory trains without being loaded:
    packing gathers only the tokens of the batch it builds."""

    ids: np.ndarray  # (n_tokens,) uint16/uint32, all documents concatenated
    loss_mask: np.ndarray  # (n_tokens,) bool: True where the token is a target that counts in the loss
    offsets: np.ndarray  # (n_all_docs + 1,) int64: document i is ids[offsets[i]:offsets[i + 1]]
    doc_index: np.ndarray | None = None  # which documents this view holds (None: all), e.g. a split

    def __len__(self) -> int:
        return len(self.starts)

    @cached_property
    def starts(self) -> np.ndarray:  # (n_docs,) where each document of the view starts in ids
        starts = np.asarray(self.offsets[:-1], dtype=np.int64)
        return starts if self.doc_index is None else starts[self.doc_index]

    @cached_property
    def lengths(self) -> np.ndarray:  # (n_docs,)
        lengths = np.diff(np.asarray(self.offsets, dtype=np.int64))
        return lengths if self.doc_index is None else lengths[self.doc_index]

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def subset(self, index: np.ndarray) -> "TokenizedDocs":
        """A view of some documents (no token is copied)."""
        base = np.arange(len(self.offsets) - 1) if self.doc_index is None else self.doc_index
        return TokenizedDocs(self.ids, self.loss_mask, self.offsets, base[np.asarray(index)])


def tokenize_examples(examples: list[Example], tokenizer, batch_size: int = 1000) -> TokenizedDocs:
    """Tokenize in batches: one tokenizer call per `batch_size` texts, never one per example."""
    if examples and examples[0].turns:
        return _chat_docs(examples, tokenizer, batch_size)
    start, eos = start_token_id(tokenizer), eos_token_id(tokenizer)
    completions = _tokenize(tokenizer, [ex.completion for ex in examples], batch_size)
    # Plain text has no prompt; tokenize only the prompts that exist.
    with_prompt = [i for i, ex in enumerate(examples) if ex.prompt]
    prompts: list[list[int]] = [[] for _ in examples]
    for i, ids in zip(with_prompt, _tokenize(tokenizer, [examples[i].prompt for i in with_prompt], batch_size)):
        prompts[i] = ids

    n_prompt = np.fromiter((len(p) for p in prompts), dtype=np.int64, count=len(examples))
    n_completion = np.fromiter((len(c) for c in completions), dtype=np.int64, count=len(examples))
    lengths = 1 + n_prompt + n_completion + 1
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    ids = np.empty(int(offsets[-1]), dtype=np.uint32)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        a = offsets[i]
        ids[a] = start
        ids[a + 1: a + 1 + n_prompt[i]] = prompt
        ids[a + 1 + n_prompt[i]: offsets[i + 1] - 1] = completion
        ids[offsets[i + 1] - 1] = eos

    # Per document: False for the start token and the prompt, True for completion + EOS.
    runs = np.stack([1 + n_prompt, n_completion + 1], axis=1).ravel()
    loss_mask = np.repeat(np.tile([False, True], len(examples)), runs)
    return TokenizedDocs(ids=ids, loss_mask=loss_mask, offsets=offsets)


def _chat_docs(examples: list[Example], tokenizer, batch_size: int) -> TokenizedDocs:
    """Conversations (data/chat_tokens.py): each its own ids and mask, laid end to end."""
    docs = []
    for i in range(0, len(examples), batch_size):
        docs += tokenize_chats(tokenizer, [ex.turns for ex in examples[i:i + batch_size]])
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids, _ in docs], out=offsets[1:])
    return TokenizedDocs(ids=np.concatenate([ids for ids, _ in docs]).astype(np.uint32),
                         loss_mask=np.concatenate([mask for _, mask in docs]), offsets=offsets)


def _tokenize(tokenizer, texts: list[str], batch_size: int) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), batch_size):
        out += encode_batch(tokenizer, texts[i: i + batch_size])
    return out


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens, in one call that the Rust tokenizer
    spreads over the cores. `encode_batch_fast` skips the character offsets that a
    tokenizer call computes and we never use: about 1.6x faster, same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    # verbose=False: a long document is not an error here; packing cuts it into blocks.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


class SpecialTexts:
    """Counts examples whose text spells a special token ("<|endoftext|>"): the tokenizer
    reads that text as the token itself, so an end token in mid-example teaches the model to
    stop there. Worth a warning, never a silent change of the user's text."""

    def __init__(self, tokenizer):
        tokens = {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
        self._pattern = (re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len,
                                                                            reverse=True)))
                         if tokens else None)
        self.examples, self.token = 0, None

    def add(self, *texts: str) -> None:
        if self._pattern is None:
            return
        for text in texts:
            found = self._pattern.search(text)
            if found:
                self.examples += 1
                self.token = self.token or found.group(0)
                return

    def stats(self) -> dict:
        return {"special_text": self.examples, "special_token": self.token} \
            if self.examples else {}

    def warning(self) -> str | None:
        return special_text_warning(self.stats())


def special_text_warning(stats: dict) -> str | None:
    n, token = stats.get("special_text", 0), stats.get("special_token")
    if not n:
        return None
    return (f"{n} example{'s' if n > 1 else ''} contain{'' if n > 1 else 's'} the text {token!r}, "
            f"which the tokenizer reads as its special token {token}: where that is the end "
            f"token, the model learns to stop there (if it separates examples, pass "
            f"--split-on {token!r})")
