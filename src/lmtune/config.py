"""Typed configs: the one place where defaults and help text live.

Each dataclass field's `metadata["help"]` becomes its `--help` text (see cli.py), the same
field names are the keys of a `--config run.yaml`, and the resolved config of a run is saved
as `config.yaml` in its folder so it can be passed back with `--config`.
`None` means "choose for me": the value is resolved from the data and model at run start
and the resolved value is what gets saved.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import UserError

DEFAULT_MODEL = "smollm2-135m"
METHODS = ("lora", "full", "freeze")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("cosine", "linear", "constant")


def opt(default: Any, help: str, *, choices: tuple | None = None, positional: bool = False,
        alias: str | None = None, group: str = "options") -> Any:
    meta = {"help": help, "choices": choices, "positional": positional, "alias": alias,
            "group": group}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataOptions:
    """How a data file becomes training examples (shared by train, eval and data commands)."""

    data: str = opt("", "Training data: a .txt file or folder of them, .csv, .tsv, .json, .jsonl "
                    "or .parquet.", positional=True, group="data")
    format: str | None = opt(None, "Data format; detected from the extension when not given.",
                             choices=("txt", "csv", "tsv", "json", "jsonl", "parquet"), group="data")
    column: str | None = opt(None, "Column (CSV/Parquet) or field (JSON) that holds the text.",
                             alias="--field", group="data")
    template: str | None = opt(None, "Build each example from fields, e.g. "
                               "'Quote by {author}: \"{quote}\"'.", group="data")
    prompt_template: str | None = opt(None, "Prompt part of a prompt/completion pair; its tokens "
                                      "are context only and do not count in the loss.", group="data")
    completion_template: str | None = opt(None, "Completion part of a prompt/completion pair "
                                          "(the text the model learns).", group="data")
    split_on: str | None = opt(None, "For .txt data: split the text into one example per piece "
                               "at this string, e.g. '\\n\\n' (blank line) or '\\n'.", group="data")
    encoding: str = opt("utf-8", "Text encoding of the data files.", group="data")


@dataclass
class TrainConfig(DataOptions):
    model: str | None = opt(None, f"Model to fine-tune: a Hugging Face id, a local model folder, "
                            f"a run folder or checkpoint of lmtune, or '{DEFAULT_MODEL}' "
                            f"(the embedded default, used when not given).", group="model")
    out: str | None = opt(None, "Run folder to write (default: runs/<data name>-<timestamp>).",
                          group="output")
    method: str = opt("lora", "What trains: lora (small adapter), full (every weight) or freeze "
                      "(only the top --train-layers blocks, final norm and LM head).",
                      choices=METHODS, group="method")
    train_layers: int | None = opt(None, "With --method freeze: how many top transformer blocks "
                                   "train (default: a quarter of them, at least 1).", group="method")
    lora_r: int = opt(8, "LoRA rank; higher learns more and costs more memory.", group="method")
    lora_alpha: int = opt(16, "LoRA scaling numerator (the update is scaled by alpha / r).",
                          group="method")
    lora_dropout: float = opt(0.05, "Dropout on the LoRA input.", group="method")
    lora_targets: list[str] | None = opt(None, "Module names LoRA adapts (default per "
                                         "architecture: GPT-2 c_attn c_proj c_fc; Llama all "
                                         "attention and MLP projections).", group="method")
    val_split: float = opt(0.1, "Fraction of examples held out for validation (0 turns it "
                           "off); deterministic for a seed.", group="data")
    val_data: str | None = opt(None, "Validation data file (same format flags); replaces "
                               "--val-split.", group="data")
    pack: bool = opt(True, "Pack examples into blocks with no cross-document attention "
                     "(--no-pack: one padded example per row).", group="data")
    block_size: int | None = opt(None, "Tokens per packed block (default: chosen from the data, "
                                 "at most min(1024, the model's context)).", group="training")
    batch_size: int | None = opt(None, "Blocks per device per optimizer micro-step (default: "
                                 "chosen from the data so each epoch has enough steps).",
                                 group="training")
    grad_accum: int = opt(1, "Micro-steps accumulated per optimizer step.", group="training")
    epochs: float = opt(3.0, "Passes over the training data (ignored when --max-steps is set).",
                        group="training")
    max_steps: int | None = opt(None, "Total optimizer steps; overrides --epochs.",
                                group="training")
    lr: float | None = opt(None, "Peak learning rate (default: 1e-3 for lora, 5e-5 for full "
                           "and freeze).", group="training")
    weight_decay: float = opt(0.0, "AdamW weight decay.", group="training")
    lr_schedule: str = opt("cosine", "Learning-rate schedule after warmup.", choices=SCHEDULES,
                           group="training")
    warmup_steps: int | None = opt(None, "Linear warmup steps (default: 5% of the steps, "
                                   "at most 100).", group="training")
    grad_clip: float = opt(1.0, "Clip the gradient norm to this (0 turns clipping off).",
                           group="training")
    seed: int = opt(42, "Random seed for data order, validation split, dropout and samples.",
                    group="training")
    precision: str = opt("auto", "Numeric precision: auto picks bf16 on GPUs and CPUs that "
                         "support it, else fp32; fp16 only on CUDA (GPT-2/Neo overflow in it).",
                         choices=PRECISIONS, group="training")
    device: str = opt("auto", "Device to train on.", choices=DEVICES, group="training")
    log_every: int = opt(10, "Optimizer steps between metrics.jsonl records.", group="logging")
    eval_every: int | None = opt(None, "Steps between validation passes (default: about 5 per "
                                 "run); always at the end.", group="logging")
    sample_every: int | None = opt(None, "Steps between generated samples (default: with each "
                                   "evaluation; 0 turns samples off).", group="logging")
    sample_prompts: list[str] = opt([], "Prompt for the samples written during training; "
                                    "repeatable (default: unconditional).", alias="--sample-prompt",
                                    group="logging")
    sample_max_new_tokens: int = opt(64, "Length limit of samples written during training.",
                                     group="logging")
    save_every: int | None = opt(None, "Steps between checkpoints (default: with each "
                                 "evaluation); one is always written at the end.", group="output")
    keep: int = opt(2, "Keep this many newest checkpoints (at least the newest one), plus the best by "
                    "validation loss.",
                    group="output")
    patience: int | None = opt(None, "Stop after this many evaluations without a better "
                               "validation loss.", group="training")
    resume: bool = opt(False, "Continue the run in --out from its newest complete checkpoint.",
                       group="output")
    overwrite: bool = opt(False, "Replace a previous run in --out.", group="output")
    trust_remote_code: bool = opt(False, "Allow a model to run code from its repository.",
                                  group="model")


@dataclass
class GenerateConfig:
    model: str = opt(DEFAULT_MODEL, "Model or run folder (a run means its final/ model).",
                     positional=True)
    prompts: list[str] = opt([], "Prompt; repeatable (default: one unconditional sample).",
                             alias="--prompt")
    n: int = opt(1, "Samples per prompt, generated as one batch.", alias="-n")
    max_new_tokens: int = opt(100, "Most tokens generated per sample.")
    temperature: float = opt(0.8, "Sampling temperature (0 = greedy).")
    top_k: int = opt(50, "Sample from the k most likely tokens (0 = off).")
    top_p: float = opt(0.95, "Nucleus sampling: smallest set of tokens with this probability.")
    repetition_penalty: float = opt(1.0, "Penalty > 1 discourages repeating tokens.")
    seed: int | None = opt(None, "Random seed for reproducible samples.")
    stop: list[str] = opt([], "Stop a sample at this string; repeatable.")
    chat: bool = opt(False, "Wrap each prompt in the model's chat template.")
    json: bool = opt(False, "Print one JSON object per sample instead of text.")
    device: str = opt("auto", "Device to run on.", choices=DEVICES)
    precision: str = opt("auto", "Numeric precision.", choices=PRECISIONS)
    trust_remote_code: bool = opt(False, "Allow a model to run code from its repository.")


@dataclass
class MergeConfig:
    run: str = opt("", "LoRA run folder (or adapter folder) to merge into its base.",
                   positional=True)
    out: str = opt("", "Folder for the standalone merged model.")
    trust_remote_code: bool = opt(False, "Allow a model to run code from its repository.")


@dataclass
class DemoConfig:
    out: str | None = opt(None, "Run folder (default: runs/pyjokes-en-<time>).")
    epochs: float = opt(3.0, "Passes over the jokes.")
    model: str | None = opt(None, "Model to fine-tune (default: the embedded "
                            "SmolLM2-135M-Instruct).")


# ---------------------------------------------------------------------------------------------
# Building configs from YAML files and overrides, with one-line errors for every mistake.

def _base_type(tp: Any) -> Any:
    """`int | None` -> int, `list[str] | None` -> list."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        tp = args[0]
    return list if typing.get_origin(tp) is list else tp


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """Check one value against the field's type; YAML gives us ints for floats and the like."""
    tp = field_types(cls)[name]
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if value is None:
        return None
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    elif tp is list:
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
        value = [str(v) for v in value] if ok else value
    if not ok:
        raise UserError(f"{where}: '{name}' must be {tp.__name__}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        flag = "--" + name.replace("_", "-")
        raise UserError(f"{where}: unknown {flag} {value!r}; choose one of: {', '.join(choices)}")
    return value


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid YAML: {str(e).splitlines()[0]}")
    if not isinstance(raw, dict):
        raise UserError(f"{p} must hold a mapping of option: value")
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"{p}: unknown option '{key}'",
                            hint="valid options: " + ", ".join(sorted(names)))
        out[name] = coerce(cls, name, value, str(p))
    return out


def build(cls: type, overrides: dict[str, Any], config_file: str | None = None):
    """defaults < YAML file < explicit overrides (CLI flags or API keyword arguments)."""
    values = load_yaml(config_file, cls) if config_file else {}
    names = {f.name for f in dataclasses.fields(cls)}
    for name, value in overrides.items():
        if name not in names:
            raise UserError(f"unknown option '{name}'",
                            hint="valid options: " + ", ".join(sorted(names)))
        values[name] = coerce(cls, name, value, "option")
    return cls(**values)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True)


def build_train(overrides: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """On --resume the run's saved config is the base layer, so `lmtune train --resume --out
    RUN` needs no other flag; flags given again are then checked against it by train()."""
    if overrides.get("resume") and overrides.get("out") and not config_file:
        saved = Path(overrides["out"]) / "config.yaml"
        if saved.is_file():
            return build(TrainConfig, overrides, str(saved))
    return build(TrainConfig, overrides, config_file)


BUILDERS = {TrainConfig: build_train}
