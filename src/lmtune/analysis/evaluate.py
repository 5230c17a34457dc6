"""`lmtune eval`: loss, perplexity and token count of a model on a data file.

The data goes through the same pipeline as training (read -> template -> tokenize -> packed
blocks with no attention across documents), so evaluating a run on its validation file gives
the validation loss that training logged. A run's own template, block size and batch size
are the defaults, so `lmtune eval RUN --data val.json` needs no other flag.

A run trained with `--task classify` is evaluated by tasks/classify/evaluate.py instead, and
preference pairs (any model's preference for their chosen answers) by
tasks/preference/evaluate.py.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.config import DEFAULT_MODEL, EvalConfig, TrainConfig, check_block_size, refuse
from lmtune.config.defaults import MAX_BLOCK, TOKENS_PER_EVAL_BATCH
from lmtune.data.corpus import make_dataset, read_examples
from lmtune.data.tokenize import tokenize_examples
from lmtune.errors import UserError
from lmtune.models.load import context_length, load_tokenizer, peek_config
from lmtune.models.resolve import resolve
from lmtune.run.folder import RunFolder
from lmtune.tasks.generate import mean_loss, perplexity
from lmtune.tasks.preference.data import holds_pairs
from lmtune.tasks.preference.evaluate import evaluate_preferences

TEXT_OPTIONS = ("column", "template", "prompt_template", "completion_template")


@dataclass
class EvalResult:
    model: str
    data: str
    loss: float
    perplexity: float
    tokens: int        # target tokens counted in the loss
    examples: int
    block_size: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# What a run folder says about how its data was read and packed.

def run_config(spec: str | None) -> TrainConfig | None:
    """The config of the run that `spec` (a run, its final/ folder or a checkpoint) belongs
    to; None for anything else (a model folder, a hub id)."""
    run = RunFolder.containing(spec)
    return run.config() if run is not None else None


def with_run_data_options(opts, spec: str | None):
    """`opts` (any config with the DataOptions fields) with the run's own way of reading data
    filled in where the user chose none: every data flag of its config.yaml when `opts.data`
    has the training data's extension, else its column/template from lmtune.json."""
    if spec is None or any(getattr(opts, name) for name in TEXT_OPTIONS):
        return opts
    saved = run_config(spec)
    if saved is not None and saved.task == "preference":  # its data options read pairs
        return opts
    same_kind = saved is not None and Path(saved.data).suffix == Path(str(opts.data)).suffix
    if same_kind and saved.data:
        names = TEXT_OPTIONS + ("format", "split_on")
        fill = {n: getattr(saved, n) for n in names if getattr(opts, n, None) is None}
        return dataclasses.replace(opts, **fill)
    info = resolve(spec).info
    if not info:
        return opts
    return dataclasses.replace(opts, **{name: info.get(name) for name in TEXT_OPTIONS})


def read_docs(opts, tokenizer, spec: str | None = None):
    """(examples, tokenized documents) of `opts.data`, read like the training data of the
    run `spec` when the data flags do not say otherwise."""
    chosen = with_run_data_options(opts, spec)
    try:
        examples, _ = read_examples(chosen.data, chosen)
    except UserError as e:
        if chosen is opts:
            raise
        used = ", ".join(f"--{n.replace('_', '-')} {getattr(chosen, n)!r}"
                         for n in TEXT_OPTIONS + ("split_on",) if getattr(chosen, n))
        raise UserError(f"{e.message} (read as the run read its data: {used})",
                        hint="pass --column or --template to read this file differently")
    return examples, tokenize_examples(examples, tokenizer)


def run_precision(spec: str, precision: str) -> str:
    """--precision auto means the run's own setting, so eval repeats training's numerics."""
    saved = run_config(spec)
    return saved.precision if precision == "auto" and saved is not None else precision


def packing_for(spec: str, model_config, block_size: int | None, batch_size: int | None,
                pack: bool | None = None) -> tuple[int, int, bool]:
    """(block size, batch size, pack): the flags, else the run's own, else defaults."""
    saved = run_config(spec) or TrainConfig()  # a plain model: the defaults
    context = context_length(model_config)
    refuse(check_block_size(block_size, context))
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    block = block_size or min(saved.block_size or MAX_BLOCK, context)
    batch = batch_size or saved.batch_size or max(1, TOKENS_PER_EVAL_BATCH // block)
    return block, batch, saved.pack if pack is None else pack


# ---------------------------------------------------------------------------------------------
# Loading a model for inference with the precision training would use.

def load_for_eval(spec: str, device: str = "auto", precision: str = "auto",
                  trust_remote_code: bool = False, allow_pickle: bool = False):
    """(model, tokenizer, resolved, device, autocast factory). Weights stay fp32 and bf16/fp16
    run under autocast, as in training, so the numbers match the logged validation loss."""
    from lmtune.device import pick_device, pick_precision, torch_dtype
    from lmtune.models.load import load

    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    model, tokenizer, resolved = load(spec, dtype=torch.float32,
                                      trust_remote_code=trust_remote_code,
                                      allow_pickle=allow_pickle)
    model.to(dev)
    if prec == "fp32":
        return model, tokenizer, resolved, dev, nullcontext
    dtype = torch_dtype(prec)
    return model, tokenizer, resolved, dev, lambda: torch.autocast(dev, dtype=dtype)


def loss_on_docs(model, docs, block: int, batch: int, device: str, autocast, pack: bool = True):
    dataset = make_dataset(docs, block, pack=pack, shuffle=False, seed=0)
    return mean_loss(model, dataset, batch, device, autocast)


# ---------------------------------------------------------------------------------------------
# The command.

def evaluate(cfg: EvalConfig) -> EvalResult | dict:
    """An `EvalResult` for a language model; for a classification run, the dict of
    `lmtune.classify_eval.evaluate_classifier` (accuracy, macro_f1, per_class, ...)."""
    spec = cfg.model or DEFAULT_MODEL
    if not cfg.data:
        raise UserError("eval needs data", hint=f"lmtune eval {spec} --data FILE")
    resolved = resolve(spec)
    if (resolved.info or {}).get("task") == "classify":
        return _classifier_eval(cfg)
    if cfg.chosen_column or cfg.rejected_column or holds_pairs(cfg.data, cfg.format,
                                                               cfg.encoding):
        return _preference_eval(cfg)
    given = [f"--{n.replace('_', '-')}" for n in ("plot", "text_column", "label_column")
             if getattr(cfg, n)]
    if given:
        raise UserError(f"{', '.join(given)}: only for classification runs, and {spec} is a "
                        f"language model")
    return evaluate_lm(cfg)


def _classifier_eval(cfg: EvalConfig) -> dict:
    from lmtune.tasks.classify.evaluate import evaluate_classifier

    return evaluate_classifier(cfg.model, cfg.data, text_column=cfg.text_column,
                               label_column=cfg.label_column, template=cfg.template,
                               format=cfg.format, encoding=cfg.encoding,
                               batch_size=cfg.batch_size or 32, device=cfg.device,
                               trust_remote_code=cfg.trust_remote_code,
                               allow_pickle=cfg.allow_pickle)


def _preference_eval(cfg: EvalConfig) -> dict:
    given = [f"--{n.replace('_', '-')}" for n in ("plot", "text_column", "label_column",
                                                  "column", "template", "completion_template",
                                                  "split_on") if getattr(cfg, n)]
    if given:
        raise UserError(f"{', '.join(given)}: not for preference pairs, which take "
                        f"--prompt-template, --chosen-column and --rejected-column")
    return evaluate_preferences(
        cfg.model or DEFAULT_MODEL, cfg.data, prompt_template=cfg.prompt_template,
        chosen_column=cfg.chosen_column, rejected_column=cfg.rejected_column,
        format=cfg.format, encoding=cfg.encoding, block_size=cfg.block_size,
        batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision,
        trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)


def evaluate_lm(cfg: EvalConfig) -> EvalResult:
    spec = cfg.model or DEFAULT_MODEL
    # The data and the flags are checked before the weights load.
    resolved = resolve(spec)
    examples, docs = read_docs(cfg, load_tokenizer(resolved, cfg.trust_remote_code), spec)
    block, batch, pack = packing_for(spec, peek_config(resolved, cfg.trust_remote_code),
                                     cfg.block_size, cfg.batch_size)
    model, _, _, device, autocast = load_for_eval(
        spec, cfg.device, run_precision(spec, cfg.precision), cfg.trust_remote_code,
        cfg.allow_pickle)
    loss, tokens = loss_on_docs(model, docs, block, batch, device, autocast, pack)
    if tokens == 0:
        raise UserError(f"{cfg.data} has no tokens that count in the loss")
    return EvalResult(model=spec, data=str(cfg.data), loss=loss, perplexity=perplexity(loss),
                      tokens=tokens, examples=len(examples), block_size=block)
