"""The Python API: the same functions the CLI calls, returning values and printing nothing."""

from __future__ import annotations

from typing import Callable

from lmtune import config as config_mod
from lmtune.config import GenerateConfig
from lmtune.generate import Sample, generate as _generate
from lmtune.merge import MergeResult, merge as _merge
from lmtune.train import TrainResult, train as _train


def train(data: str | None = None, *, config_file: str | None = None,
          on_event: Callable[[str, dict], None] | None = None, **options) -> TrainResult:
    """Fine-tune; `options` are the `lmtune train` flags with underscores (see TrainConfig)."""
    if data is not None:
        options["data"] = str(data)
    return _train(config_file=config_file, on_event=on_event, **options)


def load(model: str | None = None, *, device: str = "auto", precision: str = "fp32",
         trust_remote_code: bool = False, allow_pickle: bool = False):
    """(model, tokenizer) for a run folder, checkpoint, model folder, hub id or the default."""
    from lmtune.models import load as _load
    from lmtune.runtime import pick_device, pick_precision, torch_dtype

    dev = pick_device(device)
    dtype = torch_dtype(pick_precision(precision, dev))
    m, tok, _ = _load(None if model is None else str(model), dtype=dtype,
                      trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return m.to(dev), tok


def generate(model=None, prompts: list[str] | str | None = None, **options) -> list[Sample]:
    """Samples from `model` (a path/name, or a `(model, tokenizer)` pair from `load`)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(model, tuple):
        m, tok = model
        spec = None
    else:
        spec = None if model is None else str(model)
        m = tok = None
    opts = dict(options, prompts=list(prompts or []))
    if spec:
        opts["model"] = spec
    cfg = config_mod.build(GenerateConfig, opts)
    if m is None:
        m, tok = load(cfg.model, device=cfg.device, precision="fp32",
                      trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    return run_generate(cfg, m, tok)


def run_generate(cfg: GenerateConfig, model, tokenizer) -> list[Sample]:
    import torch
    from lmtune.runtime import pick_precision, torch_dtype

    device = next(model.parameters()).device
    precision = pick_precision(cfg.precision, device.type)
    use_amp = precision != "fp32"
    with torch.autocast(device.type, dtype=torch_dtype(precision), enabled=use_amp):
        return _generate(model, tokenizer, cfg.prompts, n=cfg.n,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                         top_k=cfg.top_k, top_p=cfg.top_p,
                         repetition_penalty=cfg.repetition_penalty, seed=cfg.seed,
                         stop=cfg.stop, chat=cfg.chat)


def load_classifier(run: str, *, device: str = "auto", trust_remote_code: bool = False,
                    allow_pickle: bool = False):
    """A classification run, loaded once: `clf.predict(["text", ...])` -> Predictions."""
    from lmtune.classify import load_classifier as _load_classifier
    return _load_classifier(str(run), device=device, trust_remote_code=trust_remote_code,
                            allow_pickle=allow_pickle)


def predict(run, texts: list[str] | str | None = None, *, data: str | None = None,
            **options) -> list:
    """Label texts (or every text of the file `data`) with a classification run or a
    classifier from `load_classifier`: a list of Prediction(text, label, probs).
    `options`: text_column, template, format, encoding, batch_size, device,
    trust_remote_code, allow_pickle."""
    from lmtune.classify import predict as _predict
    return _predict(run, texts, data=None if data is None else str(data), **options)


def evaluate_classifier(run: str, data: str, **options) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, the confusion matrix and the
    majority baseline of a classification run on labelled data (see classify_eval.py)."""
    from lmtune.classify_eval import evaluate_classifier as _evaluate
    return _evaluate(str(run), str(data), **options)


def merge(run: str, out: str, *, trust_remote_code: bool = False,
          allow_pickle: bool = False) -> MergeResult:
    """Merge a LoRA run into its base and save a standalone model in `out`."""
    return _merge(str(run), str(out), trust_remote_code=trust_remote_code,
                  allow_pickle=allow_pickle)


def serve(*models, on_event: Callable[[str, dict], None] | None = None, **options) -> None:
    """Serve models and runs over an OpenAI-compatible HTTP API until SIGTERM or Ctrl-C;
    `options` are the `lmtune serve` flags with underscores (see ServeConfig)."""
    from lmtune.serving import serve as _serve

    if models:
        options["models"] = [str(m) for m in models]
    _serve(on_event=on_event, **options)


# ---------------------------------------------------------------------------------------------
# Did it learn, did it memorise, what changed (issue 4). Options are the flags of the matching
# command with underscores (EvalConfig, CompareConfig, InspectConfig in config.py).

def evaluate_model(model: str | None = None, data: str = "", **options):
    """Loss, perplexity and token count of `model` (a run, model folder, hub id or the
    default) on `data`, packed as in training: an EvalResult. For a classification run, the
    metrics dict of `evaluate_classifier`."""
    from lmtune.config import EvalConfig
    from lmtune.evaluation import evaluate

    if model is not None:
        options["model"] = str(model)
    return evaluate(config_mod.build(EvalConfig, dict(options, data=str(data))))


def compare(base: str, tuned: str | None = None, **options):
    """The base and the tuned model side by side (`compare(run)` uses the run's own base):
    a CompareResult with perplexity rows for `data=` and `reference=` and same-seed samples
    for `prompts=`."""
    from lmtune.comparison import compare as _compare
    from lmtune.config import CompareConfig

    values = dict(options, base=str(base), tuned=None if tuned is None else str(tuned))
    for key in ("data", "reference"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    return _compare(config_mod.build(CompareConfig, values))


def diff(base: str, tuned: str | None = None, *, trust_remote_code: bool = False,
         allow_pickle: bool = False):
    """Per-tensor and per-block weight change of `tuned` against `base` (`diff(run)` uses
    the run's own base): a DiffResult; LoRA runs are measured without merging."""
    from lmtune.weight_diff import diff as _diff

    return _diff(str(base), None if tuned is None else str(tuned),
                 trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def write_report(run: str, *, compare: bool = True, device: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False):
    """Write loss.png and report.html into the run folder: a ReportResult with their paths."""
    from lmtune.report import write_report as _write_report

    return _write_report(str(run), compare=compare, device=device,
                         trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def inspect_data(data: str, **options):
    """What `data` becomes for a model (options: model=, block_size= and the data flags):
    a DataReport with counts, lengths, padding waste, duplicates and warnings."""
    from lmtune.config import InspectConfig
    from lmtune.data_report import inspect_data as _inspect

    return _inspect(config_mod.build(InspectConfig, dict(options, data=str(data))))


def check_memorization(samples, data: str, *, model: str | None = None) -> list:
    """For each sample (a Sample from `generate`, or a string), the longest run of tokens
    copied from `data` and whether it is a verbatim copy of an example (a list of Check).
    `data` is read as the run `model` read its training data; its tokenizer counts."""
    from lmtune.memorization import index_for_file
    from lmtune.models import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve(None if model is None else str(model)))
    index = index_for_file(str(data), tokenizer, None if model is None else str(model))
    return [index.check(*(("", s) if isinstance(s, str) else (s.prompt, s.text)))
            for s in samples]
