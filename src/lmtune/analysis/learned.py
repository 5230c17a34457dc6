"""Did it learn, did it forget, did it memorise: one answer per finished run, for the web page.

  learning     perplexity of the base and the tuned model on the run's validation data (its
               validation file, else the validation split of its training data, made as
               training made it), packed as training packed it; for a preference run instead
               how often each prefers the chosen answer of the held-out pairs ("preference")
  forgetting   the same on general text: by default English prose that ships with Python
               itself (pydoc_data, the text of `help()`), so it is there offline on every
               machine; `reference` names a file instead
  weights      how far each tensor and block moved (diff.py), for a heat map
  memorisation the copy figures training logged for its samples (metrics.jsonl, samples.jsonl)

Loading two models and running them over two data sets takes a while on a real model, and
the answer only changes when the model does, so it is kept in the run folder (learned.json)
with what it was computed from: final/'s files (names, sizes, mtimes), the data files and the
reference text. A run that trains again (--resume, --overwrite) writes a new final/, and
--overwrite removes the file (run/folder.py lists it among the run's own files). The
memorisation part is read fresh each time: it is two small log files.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import re
import threading
from contextlib import nullcontext
from pathlib import Path

from lmtune.analysis.compare import ModelPair, PerplexityRow
from lmtune.analysis.diff import block_of, diff
from lmtune.analysis.evaluate import loss_on_docs, packing_for
from lmtune.atomic import write_json
from lmtune.config import DataOptions, TrainConfig
from lmtune.config.defaults import PREFERENCE_MAX_LENGTH
from lmtune.data.corpus import read_examples, token_splits
from lmtune.data.examples import Example
from lmtune.data.tokenize import tokenize_examples
from lmtune.errors import UserError
from lmtune.models.load import context_length
from lmtune.run.folder import RunFolder
from lmtune.tasks.preference.evaluate import held_out_pairs, preference_scores

CACHE_FILE = "learned.json"  # also in run/folder.py's OWN_FILES, so --overwrite removes it
CACHE_VERSION = 2            # bump when the measured figures change meaning (2: preference)
REFERENCE_CHARS = 40_000     # about 10K tokens: seconds on a small model, stable to ~1%
DEFAULT_REFERENCE = "Python's own documentation (pydoc_data.topics)"
# One measurement at a time in a process: two page requests at once would otherwise hold four
# models in memory (and the second would only measure the same thing again).
_measuring = threading.Lock()


# ---------------------------------------------------------------------------------------------
# The general text.

def _default_reference_text(max_chars: int) -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics.values())[:max_chars]


def _reference_key(reference: str | Path | None, max_chars: int) -> dict:
    """What the forgetting figure depends on, cheap to compute on every call: the default
    text's hash (it changes with the Python version), or the file's size and mtime."""
    if reference is None:
        text = _default_reference_text(max_chars)
        return {"default": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    return {"file": str(Path(reference).resolve()), "stat": _stat(Path(reference))}


def _reference_examples(reference: str | Path | None, max_chars: int) -> list[Example]:
    """The reference as documents: the default text cut at blank lines (its paragraphs), a
    file read as data with no template, as `lmtune compare --reference` reads it."""
    if reference is None:
        pieces = re.split(r"\n\s*\n", _default_reference_text(max_chars))
        return [Example("", p.strip()) for p in pieces if p.strip()]
    examples, _ = read_examples(str(reference), DataOptions(data=str(reference)))
    return examples


# ---------------------------------------------------------------------------------------------
# The cache.

def _stat(path: Path) -> list | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return [s.st_size, s.st_mtime_ns]


def _cache_key(run: RunFolder, cfg: TrainConfig, reference: dict) -> dict:
    final = sorted([p.relative_to(run.final).as_posix(), *_stat(p)]
                   for p in run.final.rglob("*") if p.is_file())
    data = [[str(p), _stat(Path(p))] for p in (cfg.data, cfg.val_data) if p]
    return {"version": CACHE_VERSION, "final": final, "data": data, "reference": reference}


def _cached(run: RunFolder, key: dict) -> dict | None:
    try:
        saved = json.loads((run.path / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or torn: computed again
        return None
    # Through JSON, so tuples and lists compare alike.
    if not isinstance(saved, dict) or saved.get("key") != json.loads(json.dumps(key)):
        return None
    return saved.get("result")


def _store(run: RunFolder, key: dict, result: dict) -> None:
    try:
        write_json(run.path / CACHE_FILE, {"key": key, "result": result})
    except OSError:  # a run folder we may read but not write (a read-only mount) is no error
        pass


def _finite(value):
    """The result with inf and NaN as None: browsers' JSON.parse refuses them. A relative
    change is inf where the base tensor is all zeros (GPT-2's biases before training)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# The measures.

def _perplexity_row(pair: ModelPair, packing: tuple[int, int, bool], docs_for, *, data: str,
                    role: str) -> dict | None:
    """Both models on the documents `docs_for(tokenizer)` gives (each model reads the data
    with its own tokenizer), packed as the run packed; None when no token counts."""
    block, batch, pack = packing
    losses = {}
    for which in ("base", "tuned"):
        with pair.use(which) as (model, tokenizer):
            docs = docs_for(tokenizer)
            # nullcontext: pair.use() has entered the autocast already.
            losses[which] = loss_on_docs(model, docs, block, batch, pair.device, nullcontext,
                                         pack)
    if not losses["base"][1] or not losses["tuned"][1]:
        return None
    row = PerplexityRow(data=data, role=role, base_loss=losses["base"][0],
                        tuned_loss=losses["tuned"][0], base_tokens=losses["base"][1],
                        tuned_tokens=losses["tuned"][1])
    return dict(row.to_dict(), examples=len(docs),
                ratio=row.tuned_perplexity / row.base_perplexity)


def _learning(pair: ModelPair, packing: tuple[int, int, bool],
              cfg: TrainConfig) -> tuple[dict | None, str | None]:
    """(the row on the run's validation data, a note when it is not that)."""
    held_out = []

    def docs_for(tokenizer):
        # token_splits is the split training made: same cache, same (val_split, seed).
        splits = token_splits(cfg, tokenizer)
        held_out.append(splits.val is not None)
        return splits.val if splits.val is not None else splits.train

    try:
        row = _perplexity_row(pair, packing, docs_for, data=str(cfg.val_data or cfg.data),
                              role="target")
    except UserError as e:  # the data moved or went: the other answers still stand
        return None, (f"the run's data could not be read again ({e.message}), so learning is "
                      f"not measured")
    if row is None:
        return None, "no token of the run's data counts in the loss, so learning is not measured"
    if held_out[-1]:
        row["split"] = "validation file" if cfg.val_data else "validation split"
        return row, None
    row["split"] = "training data"
    return row, ("the run had no validation data, so learning is measured on the training data "
                 "it learned from: a lower perplexity there can be memorisation, not learning")


def _preference(pair: ModelPair, cfg: TrainConfig) -> tuple[dict | None, str | None]:
    """A preference run's learning: base and tuned on its held-out pairs (tasks/preference/
    evaluate.py), each reading them with its own tokenizer, cut where training cut them, in
    fp32 (pair_logps without an autocast turns off the one pair.use() entered); and a note
    when the pairs could not be read again."""
    try:
        pairs, split = held_out_pairs(cfg)
    except UserError as e:  # the data moved or went: the other answers still stand
        return None, (f"the run's pairs could not be read again ({e.message}), so learning is "
                      f"not measured")
    row = {"data": str(cfg.val_data or cfg.data), "split": split}
    for which in ("base", "tuned"):
        with pair.use(which) as (model, tokenizer):
            context = context_length(model.config)
            got = preference_scores(model, tokenizer, pairs, device=pair.device,
                                    max_length=cfg.block_size or min(PREFERENCE_MAX_LENGTH,
                                                                     context))
        row.update({"pairs": got["pairs"], f"{which}_accuracy": got["accuracy"],
                    f"{which}_margin": got["margin"]})
    return row, None


def _weights(base: str, run: RunFolder, trust_remote_code: bool, allow_pickle: bool) -> dict:
    """diff.py's figures, each tensor also with its block's module name for the heat map
    (block x module -> relative change); tensors outside blocks have block None."""
    result = diff(base, str(run.path), trust_remote_code=trust_remote_code,
                  allow_pickle=allow_pickle).to_dict()
    for t in result["tensors"]:
        t["module"] = block_of(t["name"])[1] if t["block"] is not None else None
    return result


def memorization_summary(run: RunFolder) -> dict:
    """The last copy figures training logged, and counts over every sample it wrote."""
    last = next((r for r in reversed(run.records(run.metrics_file)) if "copy_rate" in r), {})
    samples = run.records(run.samples_file)
    return {"step": last.get("step"), "copy_rate": last.get("copy_rate"),
            "max_copied_tokens": last.get("max_copied_tokens"),
            "mean_copied_tokens": last.get("mean_copied_tokens"),
            "samples": len(samples),
            "verbatim_samples": sum(bool(s.get("verbatim")) for s in samples),
            "copying_samples": sum((s.get("copied_tokens") or 0) > 0 for s in samples)}


# ---------------------------------------------------------------------------------------------
# The question.

def _finished_run(run) -> tuple[RunFolder, TrainConfig, str]:
    folder = run if isinstance(run, RunFolder) else RunFolder.containing(run)
    if folder is None or not folder.holds_run():
        raise UserError(f"{run} is not a run folder of lmtune",
                        hint="pass the --out folder of `lmtune train`")
    cfg, info = folder.config(), folder.info()
    if cfg.task == "classify" or info.get("task") == "classify":
        raise UserError(f"{folder.path} is a classification run; perplexity and forgetting "
                        f"are questions for a language model",
                        hint=f"measure it with: lmtune eval {folder.path} --data FILE")
    if not info:
        raise UserError(f"the run has no final model yet ({folder.final} is missing)",
                        hint="wait for training to finish, or continue it with "
                             f"lmtune train --resume --out {folder.path}")
    base = info.get("base_model")
    if not base:
        raise UserError(f"{folder.final} names no base model, so there is nothing to compare "
                        f"with", hint=f"compare it by name: lmtune compare BASE {folder.path}")
    return folder, cfg, base


def did_it_learn(run, *, reference: str | Path | None = None, device: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False,
                 max_reference_chars: int = REFERENCE_CHARS) -> dict:
    """The run `run` (its folder, its final/, or a RunFolder) against its base model:
    {"run", "base_model", "method", "learning", "forgetting", "weights", "memorization",
    "note", "cached"}. Computed once per final model and reference (cached in the run
    folder as learned.json); `cached` says whether this call loaded no model."""
    folder, cfg, base = _finished_run(run)
    if reference is not None and not Path(reference).is_file():
        raise UserError(f"reference text {reference} is not a file",
                        hint="pass a text or data file, or no reference for Python's own "
                             "documentation")
    key = _cache_key(folder, cfg, _reference_key(reference, max_reference_chars))
    result = _cached(folder, key)
    cached = result is not None
    if result is None:
        with _measuring:
            result = _cached(folder, key)  # another request may have just measured it
            cached = result is not None
            if result is None:
                result = _measure(folder, cfg, base, reference, device=device,
                                  trust_remote_code=trust_remote_code,
                                  allow_pickle=allow_pickle,
                                  max_reference_chars=max_reference_chars)
                _store(folder, key, result)
    # "run" is where it is now: a copied run folder keeps its cache (copies keep mtimes).
    return dict(result, run=str(folder.path), memorization=memorization_summary(folder),
                cached=cached)


def _measure(run: RunFolder, cfg: TrainConfig, base: str, reference, *, device: str,
             trust_remote_code: bool, allow_pickle: bool, max_reference_chars: int) -> dict:
    examples = _reference_examples(reference, max_reference_chars)  # a bad file fails first
    spec = str(run.path)
    # The run's own precision, so the figures repeat the validation loss training logged.
    pair = ModelPair.load(base, spec, device, cfg.precision, trust_remote_code, allow_pickle)
    # Both models share the architecture, so one block size serves both. (Each reading of
    # config.yaml costs about 0.2 s.)
    packing = packing_for(spec, pair.models["tuned"][0].config, None, None)
    preference = None
    if cfg.task == "preference":  # its data is pairs: learning is preferring the chosen answer
        (preference, note), learning = _preference(pair, cfg), None
    else:
        learning, note = _learning(pair, packing, cfg)
    forgetting = _perplexity_row(pair, packing, lambda tok: tokenize_examples(examples, tok),
                                 data=str(reference) if reference else DEFAULT_REFERENCE,
                                 role="reference")
    # diff.py loads the weights its own way (a LoRA run unmerged, layer by layer); freeing
    # the pair first keeps memory at two models, for the cost of loading them again once.
    del pair
    gc.collect()
    return _finite({"run": spec, "base_model": base, "method": cfg.method,
                    "learning": learning, "preference": preference, "forgetting": forgetting,
                    "weights": _weights(base, run, trust_remote_code, allow_pickle),
                    "note": note})
