"""The Python API: the same functions the CLI calls, returning values and printing nothing.
`import lmtune` exposes them (lmtune/__init__.py loads this module on first use).

Every function runs inside `progress.quiet_libraries()`: transformers' loading and saving
bars, its info logs and library warnings stay off, and are restored on return. Callbacks
(`on_event`) take two arguments, the event's name and a dict, and are checked before any work.
"""

from __future__ import annotations

import functools
from typing import Callable

from lmtune import config as config_mod
from lmtune.progress import check_callback, quiet_libraries
from lmtune.config import GenerateConfig
from lmtune.models.generate import Sample, generate_from_config
from lmtune.models.merge import MergeResult, merge as _merge
from lmtune.training.result import TrainResult


def _quiet(fn):
    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with quiet_libraries():
            return fn(*args, **kwargs)
    return quiet


@_quiet
def train(data: str | None = None, *, config_file: str | None = None,
          on_event: Callable[[str, dict], None] | None = None, **options) -> TrainResult:
    """Fine-tune; `options` are the `lmtune train` flags with underscores (see TrainConfig).
    `on_event(event, data)` receives what the CLI shows: "start", "progress", "log", "eval",
    "sample", "stage" (loading, evaluating, sampling...), "end", "report" and "message"."""
    from lmtune.training.train import train as _train

    check_callback(on_event)
    if data is not None:
        options["data"] = str(data)
    return _train(config_file=config_file, on_event=on_event, **options)


@_quiet
def load(model: str | None = None, *, device: str = "auto", precision: str = "fp32",
         trust_remote_code: bool = False, allow_pickle: bool = False):
    """(model, tokenizer) for a run folder, checkpoint, model folder, hub id or the default."""
    from lmtune.device import pick_device, pick_precision, torch_dtype
    from lmtune.models.load import load as _load

    dev = pick_device(device)
    dtype = torch_dtype(pick_precision(precision, dev))
    m, tok, _ = _load(None if model is None else str(model), dtype=dtype,
                      trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return m.to(dev), tok


@_quiet
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
    return generate_from_config(cfg, m, tok)


@_quiet
def load_classifier(run: str, *, device: str = "auto", trust_remote_code: bool = False,
                    allow_pickle: bool = False):
    """A classification run, loaded once: `clf.predict(["text", ...])` -> Predictions."""
    from lmtune.tasks.classify.predict import load_classifier as _load_classifier
    return _load_classifier(str(run), device=device, trust_remote_code=trust_remote_code,
                            allow_pickle=allow_pickle)


@_quiet
def predict(run, texts: list[str] | str | None = None, *, data: str | None = None,
            **options) -> list:
    """Label texts (or every text of the file `data`) with a classification run or a
    classifier from `load_classifier`: a list of Prediction(text, label, probs).
    `options`: text_column, template, format, encoding, batch_size, device,
    trust_remote_code, allow_pickle."""
    from lmtune.tasks.classify.predict import predict as _predict
    return _predict(run, texts, data=None if data is None else str(data), **options)


@_quiet
def evaluate_classifier(run: str, data: str, **options) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, the confusion matrix and the
    majority baseline of a classification run on labelled data (tasks/classify/evaluate.py)."""
    from lmtune.tasks.classify.evaluate import evaluate_classifier as _evaluate
    return _evaluate(str(run), str(data), **options)


@_quiet
def merge(run: str, out: str, *, trust_remote_code: bool = False,
          allow_pickle: bool = False) -> MergeResult:
    """Merge a LoRA run into its base and save a standalone model in `out`."""
    return _merge(str(run), str(out), trust_remote_code=trust_remote_code,
                  allow_pickle=allow_pickle)


@_quiet
def export(run: str, out: str, *, format: str = "gguf", type: str | None = None,
           trust_remote_code: bool = False, allow_pickle: bool = False):
    """Write a run (a LoRA run merged first) or model folder for where people run models:
    format "gguf" (one file for llama.cpp, Ollama, LM Studio: an ExportResult with the path,
    architecture, type, tensor count and size), "ollama" (that file and a Modelfile: an
    OllamaResult), "gguf-lora" (a LoRA run's adapter alone) or "vllm" (a folder and the
    `vllm serve` command: a VllmResult). `type` defaults per format (see ExportConfig)."""
    from lmtune.deploy.gguf import export_gguf
    from lmtune.deploy.gguf_lora import export_gguf_lora
    from lmtune.deploy.ollama import export_ollama
    from lmtune.deploy.vllm import export_vllm

    writers = {"gguf": export_gguf, "ollama": export_ollama, "gguf-lora": export_gguf_lora,
               "vllm": export_vllm}
    if format not in writers:
        from lmtune.errors import UserError
        raise UserError(f"format {format!r} is not one lmtune exports",
                        hint="format='gguf', 'ollama', 'gguf-lora' or 'vllm'")
    typed = {} if type is None else {"type": type}
    return writers[format](str(run), str(out), trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle, **typed)


def jobs(url: str | None = None, api_key: str | None = None):
    """A client of a running server's fine-tuning API (the one `lmtune serve` offers):
    `.create(data, model, suffix=..., hyperparameters={...})` uploads and starts a job,
    `.show(id)`, `.list()`, `.events(id)`, `.follow(id)` (events until it ends) and
    `.action(id, "cancel" | "pause" | "resume")`; every call returns the API's JSON."""
    from lmtune.finetune.client import JobsClient

    return JobsClient(url, api_key)


@_quiet
def serve(*models, on_event: Callable[[str, dict], None] | None = None, **options) -> None:
    """Serve models and runs over an OpenAI-compatible HTTP API until SIGTERM or Ctrl-C;
    `options` are the `lmtune serve` flags with underscores (see ServeConfig)."""
    from lmtune.serving import serve as _serve

    check_callback(on_event)
    if models:
        options["models"] = [str(m) for m in models]
    _serve(on_event=on_event, **options)


# ---------------------------------------------------------------------------------------------
# Did it learn, did it memorise, what changed (issue 4). Options are the flags of the matching
# command with underscores (EvalConfig, CompareConfig, InspectConfig in config.py).

@_quiet
def evaluate_model(model: str | None = None, data: str = "", **options):
    """Loss, perplexity and token count of `model` (a run, model folder, hub id or the
    default) on `data`, packed as in training: an EvalResult. For a classification run, the
    metrics dict of `evaluate_classifier`."""
    from lmtune.analysis.evaluate import evaluate
    from lmtune.config import EvalConfig

    if model is not None:
        options["model"] = str(model)
    return evaluate(config_mod.build(EvalConfig, dict(options, data=str(data))))


@_quiet
def compare(base: str, tuned: str | None = None, **options):
    """The base and the tuned model side by side (`compare(run)` uses the run's own base):
    a CompareResult with perplexity rows for `data=` and `reference=` and same-seed samples
    for `prompts=`."""
    from lmtune.analysis.compare import compare as _compare
    from lmtune.config import CompareConfig

    values = dict(options, base=str(base), tuned=None if tuned is None else str(tuned))
    for key in ("data", "reference"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    return _compare(config_mod.build(CompareConfig, values))


@_quiet
def diff(base: str, tuned: str | None = None, *, trust_remote_code: bool = False,
         allow_pickle: bool = False):
    """Per-tensor and per-block weight change of `tuned` against `base` (`diff(run)` uses
    the run's own base): a DiffResult; LoRA runs are measured without merging."""
    from lmtune.analysis.diff import diff as _diff

    return _diff(str(base), None if tuned is None else str(tuned),
                 trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


@_quiet
def write_report(run: str, *, compare: bool = True, device: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False):
    """Write loss.png and report.html into the run folder: a ReportResult with their paths."""
    from lmtune.analysis.report import write_report as _write_report

    return _write_report(str(run), compare=compare, device=device,
                         trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


@_quiet
def inspect_data(data: str, **options):
    """What `data` becomes for a model (options: model=, block_size= and the data flags):
    a DataReport with counts, lengths, padding waste, duplicates and warnings."""
    from lmtune.analysis.data_report import inspect_data as _inspect
    from lmtune.config import InspectConfig

    return _inspect(config_mod.build(InspectConfig, dict(options, data=str(data))))


@_quiet
def check_memorization(samples, data: str, *, model: str | None = None) -> list:
    """For each sample (a Sample from `generate`, or a string), the longest run of tokens
    copied from `data` and whether it is a verbatim copy of an example (a list of Check).
    `data` is read as the run `model` read its training data; its tokenizer counts."""
    from lmtune.analysis.memorization import index_for_file
    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import resolve

    tokenizer = load_tokenizer(resolve(None if model is None else str(model)))
    index = index_for_file(str(data), tokenizer, None if model is None else str(model))
    return [index.check(*(("", s) if isinstance(s, str) else (s.prompt, s.text)))
            for s in samples]


@_quiet
def prepare_data(data: str, **options):
    """Tokenize `data` once into the token cache that training reads (`lmtune data prepare`;
    options: model= and the data flags): a CachedCorpus with the cache folder and counts."""
    from lmtune.config import PrepareConfig
    from lmtune.tasks.generate import prepare_corpus

    return prepare_corpus(config_mod.build(PrepareConfig, dict(options, data=str(data))))
