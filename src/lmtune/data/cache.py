"""Tokenize a corpus once into memory-mapped files, cached by content and tokenizer.

    <cache>/<key>/ids.bin        token ids, uint16 (vocabularies up to 65,535) or uint32
                  loss_mask.bin  one byte per token: 1 where the token counts in the loss
                  offsets.npy    int64, document i is ids[offsets[i]:offsets[i + 1]]
                  meta.json      counts and the options that made it

The key hashes the data file's bytes, the data options and the tokenizer, so a second run on
the same data costs a hash of the file and nothing else, and `lmtune train` reads the same
files. Plain-text files are streamed in blocks, so memory stays flat however large the corpus
is (other formats are parsed in memory first, then tokenized in chunks). The tokenizer is
called on lists of about two megabytes of text, which lets the Rust tokenizer spread a
call over every core.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmtune.data.examples import Example, build_examples_with_stats
from lmtune.data.readers import (check_data_path, decode_error, read_records, resolve_format,
                                 splits_lines, unescape_separator)
from lmtune.data.tokenize import (SpecialTexts, TokenizedDocs, encode_batch, eos_token_id,
                                  start_token_id, tokenize_examples)
from lmtune.atomic import is_disk_full, new_folder, remove_folder
from lmtune.errors import UserError
from lmtune.home import lmtune_home
from lmtune.progress import stage

CACHE_VERSION = 2  # 2: \r\n read as \n when --split-on splits at line ends
READ_BLOCK = 1 << 22          # bytes read from disk at a time
TEXT_CHUNK = 1 << 18          # characters per tokenizer input when one document is huge
EXAMPLES_PER_CHUNK = 20_000   # examples tokenized (and held) at a time
# A --split-on piece is tokenized whole, so it is held whole: past this many characters (16 M,
# some 4 M tokens) it is an error, so a 1 GB line costs 20 MB of memory, not gigabytes.
MAX_PIECE = 1 << 24
OPTION_FIELDS = ("format", "column", "template", "prompt_template", "completion_template",
                 "split_on", "encoding")


@dataclass
class CachedCorpus:
    """A tokenized corpus in the cache: its folder, documents (memory-mapped) and counts."""
    folder: Path
    docs: TokenizedDocs
    stats: dict
    key: str
    cached: bool  # True when the files were already there


def cache_root() -> Path:
    return lmtune_home() / "tokens"


def corpus_key(path: Path, opts, tokenizer) -> str:
    h = hashlib.sha256(f"lmtune-tokens-v{CACHE_VERSION}".encode())
    for name in OPTION_FIELDS:
        h.update(f"{name}={getattr(opts, name, None)!r};".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(READ_BLOCK), b""):
                h.update(block)
    return h.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    # A chat template decides how conversations render; plain text never reads it.
    chat = getattr(tokenizer, "chat_template", None)
    text += f"|chat={chat}" if isinstance(chat, str) else ""
    return hashlib.sha256(f"{text}|{start_token_id(tokenizer)}|{eos_token_id(tokenizer)}"
                          .encode()).hexdigest()[:16]


def prepare(path: str | Path, opts, tokenizer, *, root: Path | None = None) -> CachedCorpus:
    """The tokenized corpus of `path` (built on first use, then read from the cache)."""
    path = check_data_path(path)  # before its bytes are hashed: a pipe would block that
    root = root or cache_root()
    key = corpus_key(path, opts, tokenizer)
    folder = root / key
    if (folder / "meta.json").is_file():
        cached = _open_cached(folder, key)
        if cached is not None:
            return cached
        remove_folder(folder)  # damaged (a crash of another tool, a disk error): made again
    try:
        with stage(f"tokenizing {path.name} (once: the tokens are cached)"):
            return _build(path, opts, tokenizer, folder, key)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise UserError(f"disk full while writing the token cache in {root}: {e.strerror}",
                        hint="free disk space, or set LMTUNE_HOME to a folder on a disk with "
                             "room for the tokenized corpus") from None


def _open_cached(folder: Path, key: str) -> CachedCorpus | None:
    """A cache entry, checked for consistency; None when it is damaged."""
    try:
        meta = _read_meta(folder)
        docs = open_docs(folder)
        offsets = np.asarray(docs.offsets)
        whole = (meta.get("version") == CACHE_VERSION and offsets.ndim == 1
                 and len(offsets) >= 1 and offsets[0] == 0
                 and bool((np.diff(offsets) >= 0).all())
                 and len(docs.ids) == len(docs.loss_mask) == offsets[-1]
                 and isinstance(meta.get("stats"), dict))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return CachedCorpus(folder, docs, meta["stats"], key, True) if whole else None


def _build(path: Path, opts, tokenizer, folder: Path, key: str) -> CachedCorpus:
    # Another process may tokenize the same corpus at once: the first to finish is kept.
    with new_folder(folder, exists="keep") as tmp:
        t0 = time.perf_counter()
        dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32
        with _Writer(tmp, dtype) as writer:
            stats = _tokenize_into(writer, path, opts, tokenizer)
        stats.update(tokens=writer.n_tokens, documents=writer.n_docs,
                     bytes=_data_bytes(path), seconds=round(time.perf_counter() - t0, 3))
        meta = {"version": CACHE_VERSION, "source": str(path.resolve()), "dtype":
                np.dtype(dtype).name, "options": {n: getattr(opts, n, None) for n in
                                                   OPTION_FIELDS}, "stats": stats}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return CachedCorpus(folder, open_docs(folder), stats, key, False)


def open_docs(folder: Path) -> TokenizedDocs:
    meta = _read_meta(folder)
    ids = np.memmap(folder / "ids.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    mask = np.memmap(folder / "loss_mask.bin", dtype=np.bool_, mode="r")
    return TokenizedDocs(ids=ids, loss_mask=mask, offsets=np.load(folder / "offsets.npy"))


def _read_meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text(encoding="utf-8"))


def _data_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.txt") if p.is_file())
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------

class _Writer:
    """Appends documents to the three files; offsets are held as a compact int64 array."""

    def __init__(self, folder: Path, dtype):
        self.dtype = dtype
        self.ids = open(folder / "ids.bin", "wb")
        self.mask = open(folder / "loss_mask.bin", "wb")
        self.folder = folder
        self.offsets = array("q", [0])
        self.open_tokens = 0  # tokens written of a document not yet closed by end_doc()

    @property
    def n_tokens(self) -> int:
        return self.offsets[-1]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def add_docs(self, docs: TokenizedDocs) -> None:
        np.asarray(docs.ids).astype(self.dtype, copy=False).tofile(self.ids)
        np.asarray(docs.loss_mask, dtype=np.bool_).tofile(self.mask)
        base = self.offsets[-1]
        self.offsets.extend((np.asarray(docs.offsets[1:], dtype=np.int64) + base).tolist())

    def add_tokens(self, ids: np.ndarray, targets: bool) -> None:
        """Part of a document that spans several calls; `end_doc` closes it."""
        ids.astype(self.dtype, copy=False).tofile(self.ids)
        np.full(len(ids), targets, dtype=np.bool_).tofile(self.mask)
        self.open_tokens += len(ids)

    def end_doc(self) -> None:
        self.offsets.append(self.offsets[-1] + self.open_tokens)
        self.open_tokens = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ids.close()
        self.mask.close()
        if exc[0] is None:
            np.save(self.folder / "offsets.npy", np.frombuffer(self.offsets, dtype=np.int64))


def _tokenize_into(writer: _Writer, path: Path, opts, tokenizer) -> dict:
    fmt = resolve_format(path, getattr(opts, "format", None))
    plain = not any(getattr(opts, n, None) for n in ("template", "prompt_template",
                                                     "completion_template"))
    column = getattr(opts, "column", None)
    special = SpecialTexts(tokenizer)
    if fmt == "txt" and path.is_file() and plain and column in (None, "text"):
        return {**_stream_text_file(writer, path, opts, tokenizer, special), **special.stats()}
    records = read_records(path, fmt=fmt, encoding=opts.encoding, split_on=opts.split_on)
    examples, stats = build_examples_with_stats(
        records, source=str(path), column=column, template=opts.template,
        prompt_template=opts.prompt_template, completion_template=opts.completion_template)
    del records
    for i in range(0, len(examples), EXAMPLES_PER_CHUNK):
        _add(writer, examples[i:i + EXAMPLES_PER_CHUNK], tokenizer, special)
    return {**stats, **special.stats()}


def _add(writer: _Writer, examples: list[Example], tokenizer, special: SpecialTexts) -> None:
    for ex in examples:
        special.add(ex.prompt, ex.completion)
    writer.add_docs(tokenize_examples(examples, tokenizer))


def _stream_text_file(writer: _Writer, path: Path, opts, tokenizer,
                      special: SpecialTexts) -> dict:
    separator = unescape_separator(opts.split_on) if opts.split_on is not None else None
    if separator == "":
        raise UserError("--split-on is empty", hint='pass a separator such as "\\n\\n" or "\\n"')
    if separator is None:
        return _stream_one_document(writer, path, opts.encoding, tokenizer, special)
    n_pieces, pending, seen = 0, [], {}
    blocks = _decoded_blocks(path, opts.encoding, newlines=splits_lines(separator), seen=seen)
    for piece in _split_stream(blocks, separator, path):
        pending.append(Example("", piece))
        n_pieces += 1
        if len(pending) >= EXAMPLES_PER_CHUNK:
            _add(writer, pending, tokenizer, special)
            pending = []
    if pending:
        _add(writer, pending, tokenizer, special)
    if n_pieces == 0:
        raise UserError(f"{path} is empty", hint="point to a file that contains text")
    return {"records": n_pieces, "dropped_empty": 0, "dropped_missing": 0, **seen}


def _stream_one_document(writer: _Writer, path: Path, encoding: str, tokenizer,
                         special: SpecialTexts) -> dict:
    """The whole file is one document: [start] + text + [eos], tokenized in ~256 KB pieces cut
    after a newline (so no word is split; the only difference from tokenizing it whole is
    that a run of blank lines can be cut in two)."""
    start, eos = start_token_id(tokenizer), eos_token_id(tokenizer)
    pieces: list[str] = []
    first = True
    wrote_start = has_text = False
    for chunk in _line_aligned(_decoded_blocks(path, encoding)):
        if first:
            chunk, first = chunk.lstrip(" \r\n"), False
        has_text = has_text or not chunk.isspace()  # tabs only is still an empty file
        if not special.examples:  # one document: it either spells a special token or not
            special.add(chunk)
        pieces.append(chunk)
        if len(pieces) >= 9:  # 2 MB per call: enough to keep every core busy
            wrote_start = _flush(writer, pieces[:-1], tokenizer, start, wrote_start)
            pieces = pieces[-1:]  # keep the newest back: it may be the last (to strip)
    if pieces:
        pieces[-1] = pieces[-1].rstrip(" \r\n")
        pieces = [p for p in pieces if p]
    if pieces:
        wrote_start = _flush(writer, pieces, tokenizer, start, wrote_start)
    if not wrote_start or not has_text:
        raise UserError(f"{path} is empty", hint="point to a file that contains text")
    writer.add_tokens(np.array([eos]), True)
    writer.end_doc()
    return {"records": 1, "dropped_empty": 0, "dropped_missing": 0}


def _flush(writer, pieces, tokenizer, start, wrote_start) -> bool:
    if not pieces:
        return wrote_start
    if not wrote_start:
        writer.add_tokens(np.array([start]), False)
    for ids in encode_batch(tokenizer, pieces):
        writer.add_tokens(np.asarray(ids, dtype=np.int64), True)
    return True


def _decoded_blocks(path: Path, encoding: str, newlines: bool = False,
                    seen: dict | None = None) -> Iterator[str]:
    """The file's text, a block at a time; `newlines`: Windows line ends (CR LF, and a lone
    CR) read as LF, also where a block boundary falls between the two, and `seen["crlf"]`
    says whether there were any."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError:
        raise UserError(f"unknown encoding '{encoding}'",
                        hint="--encoding utf-8 (or latin-1, cp1252, utf-16)") from None
    if newlines:
        decoder = io.IncrementalNewlineDecoder(decoder, translate=True)
    lines_before, first, head = 0, True, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(READ_BLOCK)
            head = head or block[:4]
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                line = lines_before + block.count(b"\n", 0, max(0, e.start)) + 1
                raise decode_error(path, line, encoding, e.reason, head) from None
            lines_before += block.count(b"\n")
            if first:
                text, first = text.removeprefix("\ufeff"), False
            if text:
                yield text
            if not block:
                if newlines and seen is not None and "\r\n" in (decoder.newlines or ()):
                    seen["crlf"] = True
                return


def _line_aligned(blocks: Iterator[str]) -> Iterator[str]:
    buf = ""
    for block in blocks:
        buf += block
        while len(buf) >= TEXT_CHUNK:
            cut = buf.rfind("\n", 0, TEXT_CHUNK) + 1 or buf.find("\n", TEXT_CHUNK) + 1
            if cut == 0 or cut > 4 * TEXT_CHUNK:
                # A line of many megabytes: cut at a space rather than hold it all in memory.
                cut = buf.rfind(" ", 0, TEXT_CHUNK) + 1 or TEXT_CHUNK
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf


def _split_stream(blocks: Iterator[str], separator: str, path: Path) -> Iterator[str]:
    buf, line = "", 1
    for block in blocks:
        seen = max(0, len(buf) - len(separator) + 1)  # where a separator may start
        buf += block
        if separator in buf[seen:]:
            parts = buf.split(separator)
            buf = parts.pop()  # the last part may continue in the next block
            for p in parts:
                if p.strip():
                    yield p.strip(" \r\n")
                line += p.count("\n") + separator.count("\n")
        if len(buf) > MAX_PIECE:
            raise UserError(f"{path} line {line}: a piece of more than {MAX_PIECE >> 20} M "
                            f"characters before the next {separator!r}; --split-on pieces are "
                            f"read whole", hint="split that text further, or drop --split-on "
                                                "to read the file as one document (streamed)")
    if buf.strip():
        yield buf.strip(" \r\n")
