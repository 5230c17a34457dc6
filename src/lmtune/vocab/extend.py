"""`lmtune tokenizer extend`: a model whose tokenizer also knows a corpus's language.

The tokenizer gets the corpus's new pieces (vocab/bpe.py: text outside the new language
tokenizes exactly as before); the embedding (and an untied LM head; a tied one stays tied)
grows by as many rows, each new row the mean of the base rows of the tokens its piece
replaces ("mean of constituents", as the base tokenizer splits the piece), not noise; the
output rows are then calibrated to the pieces' frequencies in the corpus (calibrate.py). The
result is an ordinary model folder, written whole or not at all (atomic.new_folder).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lmtune.atomic import disk_errors, new_folder, refuse_filled_folder
from lmtune.data.examples import build_examples
from lmtune.data.readers import check_data_path, read_records, resolve_format
from lmtune.errors import UserError
from lmtune.models.load import check_folder, load_base, load_tokenizer, peek_config
from lmtune.models.resolve import refuse_classifier, resolve
from lmtune.progress import stage
from lmtune.run.artifact import finish_artifact
from lmtune.version import __version__
from lmtune.vocab import bpe
from lmtune.vocab.calibrate import calibrate_rows, sample_rows

# The corpus's tokenizer learns this many pieces per piece asked for: many it learns the base
# already has, or are ASCII (never added); 2x left 20,000 new pieces of 40,000 on 4 MB of
# Chinese reviews for SmolLM2's tokenizer (benchmarks/RESULTS.md).
LEARN_FACTOR = 2


@dataclass
class ExtendResult:
    out: str
    base_model: str
    kind: str
    base_vocab: int
    added: int
    vocab: int
    tied_head: bool
    corpus_characters: int
    chars_per_token_before: float   # on the corpus itself
    chars_per_token_after: float
    learned: int
    already_known: int
    ascii_only: int
    unreachable: int
    calibrated: bool = False  # the new output rows, to the corpus's frequencies (calibrate.py)
    not_calibrated_why: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def corpus_texts(path: str, column: str | None = None, encoding: str = "utf-8") -> list[str]:
    # A .txt corpus is learned line by line: one long document would be one slow example.
    lines = resolve_format(check_data_path(path), None) == "txt"
    records = read_records(path, encoding=encoding, split_on="\n" if lines else None)
    texts = [e.prompt + e.completion for e in build_examples(records, source=path, column=column)]
    if not any(t.strip() for t in texts):
        raise UserError(f"corpus {path} holds no text", hint="pass a file of text in the new "
                                                             "language")
    return texts


def extend_model(model: str | None, corpus: str, add: int, out: str, *, column: str | None = None,
                 encoding: str = "utf-8", trust_remote_code: bool = False,
                 allow_pickle: bool = False, exists: str = "replace") -> ExtendResult:
    """Extend `model`'s tokenizer with up to `add` pieces learned on `corpus` and write the
    model with its grown embedding to `out` (a new or empty folder). `exists`: what to do when
    another process wrote `out` meanwhile (atomic.new_folder)."""
    if add < 1:
        raise UserError(f"--add {add}: add at least one piece", hint="e.g. --add 20000")
    if not corpus:
        raise UserError("no --corpus given", hint="lmtune tokenizer extend --model M --corpus "
                                                  "zh.txt --add 20000 --out DIR")
    if not out:
        raise UserError("no --out folder given", hint="lmtune tokenizer extend --model M "
                                                      "--corpus zh.txt --add 20000 --out DIR")
    target = Path(out)
    refuse_filled_folder(target)
    resolved = resolve(model)
    refuse_classifier(resolved)
    if resolved.adapter is not None:
        raise UserError(f"{resolved.spec} is a LoRA run; its tokenizer and weights are "
                        f"extended as one model", hint=f"merge it first: lmtune merge "
                                                       f"{resolved.spec} --out MERGED")
    # The weights are checked (pickle, manifest) before minutes of learning, not after.
    check_folder(Path(resolved.path), resolved.spec, allow_pickle)
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = bpe.tokenizer_kind(spec)
    texts = corpus_texts(corpus, column, encoding)
    rows = peek_config(resolved, trust_remote_code).vocab_size
    with stage(f"learning {add:,} pieces of {corpus}"):
        _, merges = bpe.learn(spec, kind, texts, 256 + LEARN_FACTOR * add)
        ext = bpe.extend_spec(spec, kind, merges, add, bpe.first_free_id(spec, rows))
    if not ext.pieces:
        raise UserError(f"{corpus} taught no piece that {resolved.spec}'s tokenizer lacks",
                        hint="pass a larger corpus in a language the tokenizer splits into "
                             "bytes")
    net = load_base(resolved, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    tied = grow_embedding(net, ext.ids, bpe.constituents(spec, ext.pieces))
    before, after, encoded = _chars_per_token(spec, ext.spec, texts)
    with stage("calibrating the new pieces' output rows on the corpus"):
        calibration = calibrate_corpus(net, encoded, ext.ids, tokenizer)
    info = {"lmtune_version": __version__, "task": "generate", "base_model": resolved.spec,
            "tokenizer_extension": {"corpus": str(corpus), "kind": kind,
                                    "added": len(ext.pieces), "first_id": ext.ids[0],
                                    "base_model": resolved.spec, "base_vocab": len(tokenizer),
                                    "chars_per_token_before": round(before, 4),
                                    "chars_per_token_after": round(after, 4),
                                    "calibrated": calibration.done,
                                    "calibration": calibration.why or
                                    f"mean shift {calibration.mean_abs_shift:.2f} nats"}}
    with disk_errors(target), new_folder(target, exists=exists) as tmp, \
            stage(f"saving {target}"):
        net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_tokenizer(tmp, ext, trust_remote_code)
        finish_artifact(tmp, info)
    return ExtendResult(str(target), resolved.spec, kind, len(tokenizer), len(ext.pieces),
                        len(tokenizer) + len(ext.pieces), tied, sum(map(len, texts)), before,
                        after, ext.learned, ext.already_known, ext.ascii_only, ext.unreachable,
                        calibration.done, calibration.why)


def grow_embedding(model, ids: list[int], parts: list[list[int]]) -> bool:
    """Rows for the new token `ids`, each the mean of the rows of its `parts` (base ids), in
    the input embedding and an untied output head. True when the head is tied."""
    import torch

    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.weight.data_ptr()
    if emb.weight.shape[0] > ids[0]:
        raise UserError(f"the embedding has {emb.weight.shape[0]} rows but the tokenizer's "
                        f"ids end at {ids[0] - 1}", hint="the model folder is inconsistent")
    model.resize_token_embeddings(ids[-1] + 1, mean_resizing=False)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    index = torch.tensor(ids)
    with torch.no_grad():
        for layer in [emb] + ([] if tied or head is None else [head]):
            w = layer.weight  # (vocab, hidden)
            w[index] = torch.stack([w[p].mean(0) for p in parts]).to(w.dtype)
            bias = getattr(layer, "bias", None)
            if bias is not None:
                bias[index] = torch.stack([bias[p].mean() for p in parts]).to(bias.dtype)
    if tied and head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
        raise UserError("resizing untied the model's output head from its embedding",
                        hint="report this with the model's name")
    return tied


def write_tokenizer(folder: Path, ext: bpe.Extension, trust_remote_code: bool) -> None:
    """The extended tokenizer.json in place of the base one, then read back as transformers
    will: a tokenizer class that builds itself from other files is refused, not shipped
    without its new pieces."""
    from transformers import AutoTokenizer

    (folder / "tokenizer.json").write_text(json.dumps(ext.spec, ensure_ascii=False),
                                           encoding="utf-8")
    for name in ("vocab.json", "merges.txt", "tokenizer.model"):  # the base's, now stale
        (folder / name).unlink(missing_ok=True)
    back = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    last, piece_id = ext.pieces[-1], ext.ids[-1]
    if back.convert_tokens_to_ids(last) != piece_id:
        raise UserError("the extended tokenizer does not load back with its new pieces",
                        hint="this tokenizer class rebuilds itself from files other than "
                             "tokenizer.json; convert the model to a fast tokenizer first")


def calibrate_corpus(net, encoded: list[list[int]], ids: list[int], tokenizer):
    """calibrate.calibrate_rows with the new pieces' counts over the corpus `encoded` (by
    the extended tokenizer) and a sample of it, after the model's start token."""
    import torch

    first = ids[0]
    flat = torch.tensor([i for e in encoded for i in e if i >= first], dtype=torch.long)
    counts = torch.bincount(flat - first, minlength=len(ids)).double()
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id
    n_params = sum(p.numel() for p in net.parameters())
    total = sum(map(len, encoded))
    return calibrate_rows(net, sample_rows(encoded, n_params), counts, total, first, start)


def _chars_per_token(base: dict, extended: dict, texts: list[str], limit: int = 2_000_000
                     ) -> tuple[float, float, list[list[int]]]:
    """Characters per token before and after on up to `limit` characters of the corpus, and
    those texts' ids by the extended tokenizer."""
    from tokenizers import Tokenizer

    sample, n = [], 0
    for t in texts:
        sample.append(t)
        n += len(t)
        if n >= limit:
            break
    out, encoded = [], []
    for spec in (base, extended):
        tok = Tokenizer.from_str(json.dumps(spec))
        encoded = [e.ids for e in tok.encode_batch(sample, add_special_tokens=False)]
        out.append(n / max(sum(map(len, encoded)), 1))
    return out[0], out[1], encoded
