"""The first examples of a data file token by token, as training sees them: which tokens are
context and which count in the loss, for the web page's data preview.

A page that shows tokens must show readable text: byte-level BPE cuts an emoji or a CJK
character into tokens that are each a piece of its UTF-8 bytes, and decoding one such token
alone gives U+FFFD. Such tokens are merged into one displayed piece, so the pieces of a
valid text concatenate to the text itself. Texts are returned raw; the page escapes them.
"""

from __future__ import annotations

from lmtune.analysis.data_report import read_and_describe
from lmtune.analysis.pair_report import is_pair_file, read_and_describe_pairs
from lmtune.config.defaults import MAX_BLOCK
from lmtune.data.tokenize import TokenizedDocs, eos_token_id, start_token_id

REPLACEMENT = "\ufffd"
# A UTF-8 character is at most 4 bytes, so at most 4 byte tokens; past that a trailing U+FFFD
# is in the text itself (or the bytes are invalid), and waiting longer would only merge more.
MAX_MERGE = 4
# Pieces decoded before a piece so it keeps the spacing it has in context: a SentencePiece
# decoder strips the space before a text's first word, and so would strip it from a lone
# token. Whole pieces, never a cut one: its byte-fallback decoder turns a run of byte tokens
# into U+FFFD for every byte when the run starts mid-character.
CONTEXT = 2


def _decode(tokenizer, ids: list[int]) -> str:
    # No clean-up: it rewrites " ." and " 's" across the whole text, so pieces would no
    # longer add up to the decoded document.
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_pieces(tokenizer, ids: list[int]) -> list[tuple[int, int, str]]:
    """(first, end, text) of each displayed piece of `ids`: one token, or the few tokens
    whose bytes make one character together. Each text is what its tokens add to the text
    decoded before them, so the pieces concatenate to the decoded whole."""
    pieces: list[tuple[int, int, str]] = []
    first = 0
    for end in range(1, len(ids) + 1):
        context = pieces[-CONTEXT][0] if len(pieces) >= CONTEXT else 0
        before = _decode(tokenizer, ids[context:first])
        text = _decode(tokenizer, ids[context:end])
        # Cost: two decodes of a few tokens per token, about 20 us each in the Rust decoder.
        if text.endswith(REPLACEMENT) and end < len(ids) and end - first < MAX_MERGE:
            continue
        if not text.startswith(before):  # the context was itself cut mid-character
            before, text = "", _decode(tokenizer, ids[first:end])
        pieces.append((first, end, text[len(before):]))
        first = end
    return pieces


def _kind(i: int, token: int, in_loss: bool, *, chat: bool, start: int, end: int) -> str:
    if in_loss:
        return "end" if token == end else "target"
    if i == 0 and token == start:
        return "start"
    return "turn" if chat else "prompt"


def preview_examples(docs: TokenizedDocs, tokenizer, n: int = 5, max_tokens: int = 400,
                     chat: bool = False, pad_to: int | None = None) -> list[dict]:
    """The first `n` documents of `docs`, each as {"tokens": [{"id", "text", "kind"}],
    "n_tokens", "target_tokens", "truncated", "pad_tokens"}. A piece of several tokens (see
    `token_pieces`) is one entry with its first token's id and kind, and all its ids under
    "ids". Up to `max_tokens` tokens of a document are shown; `pad_to` adds "pad" entries up
    to that many tokens, as an unpacked batch pads its rows (display only: the pad token's
    text, or the end token's where the tokenizer has none)."""
    start, end = start_token_id(tokenizer), eos_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    pad_text = _decode(tokenizer, [pad])
    out = []
    for d in range(min(n, len(docs))):
        a, length = int(docs.starts[d]), int(docs.lengths[d])
        # A few tokens past the cut, so a character cut by it is still whole.
        shown = min(length, max_tokens + MAX_MERGE)
        ids = docs.ids[a:a + shown].tolist()
        mask = docs.loss_mask[a:a + shown].tolist()
        tokens = []
        for first, stop, text in token_pieces(tokenizer, ids):
            if first >= max_tokens:
                break
            entry = {"id": ids[first], "text": text,
                     "kind": _kind(first, ids[first], bool(mask[first]), chat=chat,
                                   start=start, end=end)}
            if stop - first > 1:
                entry["ids"] = ids[first:stop]
            tokens.append(entry)
        n_pad = max(0, pad_to - length) if pad_to else 0
        room = max(0, max_tokens - length)  # padding is shown within the same limit
        tokens += [{"id": pad, "text": pad_text, "kind": "pad"}] * min(n_pad, room)
        out.append({"tokens": tokens, "n_tokens": length,
                    "target_tokens": int(docs.loss_mask[a:a + length].sum()),
                    "truncated": length > max_tokens, "pad_tokens": n_pad})
    return out


def data_preview(opts, tokenizer, *, model: str, n: int = 5, block_size: int | None = None,
                 context: int = MAX_BLOCK, split: tuple[float, int] = (0.0, 0),
                 parameters: int | None = None, max_tokens: int = 400) -> dict:
    """What `lmtune data inspect` reports of `opts.data` (arguments as for
    data_report.build_report), with its first `n` examples token by token, from one read
    of the file. Unpacked data (`opts.pack` False) shows the padding a batch of these
    examples gets: up to the longest of them, at most a block. Preference pairs get
    pair_report.pair_preview's answer ("format": "pairs")."""
    if is_pair_file(opts):
        return pair_preview(opts, tokenizer, model=model, n=n, block_size=block_size,
                            context=context, max_tokens=max_tokens)
    report, examples, docs = read_and_describe(
        opts, tokenizer, model=model, block_size=block_size, parameters=parameters,
        context=context, split=split)
    chat = bool(examples[0].turns)
    packed = bool(getattr(opts, "pack", True))
    pad_to = None
    if not packed:
        pad_to = min(report.block_size, max(int(x) for x in docs.lengths[:max(1, n)]))
    return {"report": report.to_dict(),
            "examples": preview_examples(docs, tokenizer, n=n, max_tokens=max_tokens,
                                         chat=chat, pad_to=pad_to),
            "format": "chat" if chat else "text", "packed": packed}


def pair_preview(opts, tokenizer, *, model: str, n: int = 5, block_size: int | None = None,
                 context: int = MAX_BLOCK, max_tokens: int = 400) -> dict:
    """The pair report and the first `n` pairs token by token: each pair's prompt with its
    chosen and with its rejected answer, the answers' tokens being the ones whose
    log-probability counts ("target" and "end", as for a completion)."""
    report, chosen, rejected = read_and_describe_pairs(opts, tokenizer, model=model,
                                                       block_size=block_size, context=context)
    shown = [preview_examples(docs, tokenizer, n=n, max_tokens=max_tokens, chat=report.chat)
             for docs in (chosen, rejected)]
    return {"report": report.to_dict(), "format": "pairs", "packed": False,
            "examples": [{"chosen": c, "rejected": r} for c, r in zip(*shown)]}
