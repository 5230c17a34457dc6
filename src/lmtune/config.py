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
TASKS = ("generate", "classify")
CLASS_WEIGHTS = ("none", "auto")
# Every command that loads weights takes these two; trust.py's refusals name the flags.
TRUST_REMOTE_CODE_HELP = "Allow a model to run code from its repository."
ALLOW_PICKLE_HELP = ("Allow a model whose weights are only in pickle files (.bin, .pt); "
                     "loaded with torch.load(weights_only=True).")


def opt(default: Any, help: str, *, choices: tuple | None = None, positional: bool = False,
        alias: str | None = None, group: str = "options", repeat: bool = False,
        metavar: str | None = None) -> Any:
    """`repeat`: a list option whose flag takes one value and is repeated (free text, NAME=PATH),
    so a value can hold spaces and a positional after it is not swallowed."""
    meta = {"help": help, "choices": choices, "positional": positional, "alias": alias,
            "group": group, "repeat": repeat, "metavar": metavar}
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
    task: str = opt("generate", "What to learn: generate (continue text, the default) or "
                    "classify (a label per text, with --text-column or --template and "
                    "--label-column).", choices=TASKS, group="task")
    text_column: str | None = opt(None, "With --task classify: the column or field that holds "
                                  "the text (or build it with --template).", group="task")
    label_column: str | None = opt(None, "With --task classify: the column or field that holds "
                                   "the label (strings or integers).", group="task")
    class_weights: str = opt("none", "With --task classify: 'auto' weighs each class's loss by "
                             "n / (classes x its count), so rare labels count as much as "
                             "common ones.", choices=CLASS_WEIGHTS, group="task")
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
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input (PEFT's default 0; 0.05-0.1 may "
                              "help on tiny data, at about 15% more time per step on CPU).",
                              group="method")
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
                                 "at most min(1024, the model's context)); with --task classify, "
                                 "the most tokens kept of each text, in training and prediction "
                                 "(default: 512, or the model's context if shorter).",
                                 group="training")
    batch_size: int | None = opt(None, "Blocks (with --task classify: texts) per device per "
                                 "optimizer micro-step (default: chosen from the data so each "
                                 "epoch has enough steps).", group="training")
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
    devices: int = opt(1, "Train on this many processes on this machine, one per GPU (on the "
                       "CPU, processes that share the cores): lmtune starts itself under "
                       "torchrun. Under torchrun or accelerate launch leave it out; the "
                       "launcher sets the number.", group="distributed")
    fsdp: bool = opt(False, "With several processes and --method full or freeze: shard the "
                     "weights, gradients and optimizer state over the processes (torch FSDP2) "
                     "instead of keeping a whole copy on each (DDP), for models too large for "
                     "one device.", group="distributed")
    log_every: int = opt(10, "Optimizer steps between metrics.jsonl records.", group="logging")
    eval_every: int | None = opt(None, "Steps between validation passes (default: about 5 per "
                                 "run); always at the end.", group="logging")
    sample_every: int | None = opt(None, "Steps between generated samples (default: with each "
                                   "evaluation; 0 turns samples off).", group="logging")
    sample_prompts: list[str] = opt([], repeat=True,
                                    help="Prompt for the samples written during training; "
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
    force_resume: bool = opt(False, "With --resume: continue even though settings, data or "
                             "base model differ from the run's (each change is reported).",
                             group="output")
    overwrite: bool = opt(False, "Replace a previous run in --out.", group="output")
    trust_remote_code: bool = opt(False, "Allow a model to run code from its repository.",
                                  group="model")
    allow_pickle: bool = opt(False, "Allow a base model whose weights are only in pickle files "
                             "(.bin, .pt); loaded with torch.load(weights_only=True). "
                             "safetensors needs no such trust.", group="model")
    dry_run: bool = opt(False, "Print the data report and the plan, time a few steps, estimate "
                        "the time per epoch, and exit without training or writing anything.",
                        group="output")
    report: bool = opt(True, "Write loss.png and report.html in the run folder at the end "
                       "(--no-report to skip; lmtune report RUN writes them later).",
                       group="output")


@dataclass
class GenerateConfig:
    model: str = opt(DEFAULT_MODEL, "Model or run folder (a run means its final/ model).",
                     positional=True)
    prompts: list[str] = opt([], repeat=True,
                             help="Prompt; repeatable (default: one unconditional sample).",
                             alias="--prompt")
    n: int = opt(1, "Samples per prompt, generated as one batch.", alias="-n")
    max_new_tokens: int = opt(100, "Most tokens generated per sample.")
    temperature: float = opt(0.8, "Sampling temperature (0 = greedy).")
    top_k: int = opt(50, "Sample from the k most likely tokens (0 = off).")
    top_p: float = opt(0.95, "Nucleus sampling: smallest set of tokens with this probability.")
    repetition_penalty: float = opt(1.0, "Penalty > 1 discourages repeating tokens.")
    seed: int | None = opt(None, "Random seed for reproducible samples.")
    stop: list[str] = opt([], repeat=True, help="Stop a sample at this string; repeatable.")
    chat: bool = opt(False, "Wrap each prompt in the model's chat template.")
    json: bool = opt(False, "Print one JSON object per sample instead of text.")
    device: str = opt("auto", "Device to run on.", choices=DEVICES)
    precision: str = opt("auto", "Numeric precision.", choices=PRECISIONS)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)
    check_memorization: str | None = opt(None, "Training data to check each sample against "
                                         "(read with the run's own template): the longest run "
                                         "of tokens copied from it and whether the sample is a "
                                         "verbatim copy of a training example.")


@dataclass
class MergeConfig:
    run: str = opt("", "LoRA run folder (or adapter folder) to merge into its base.",
                   positional=True)
    out: str = opt("", "Folder for the standalone merged model.")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class PredictConfig:
    run: str = opt("", "Classification run folder (a run means its final/ model) or one of its "
                   "checkpoints.", positional=True)
    texts: list[str] = opt([], repeat=True, help="Text to classify; repeatable.", alias="--text")
    data: str | None = opt(None, "File of texts to classify (.csv, .tsv, .json, .jsonl, "
                           ".parquet, or .txt with one text per line); '-' reads one text per "
                           "line from standard input and answers each as it arrives (the "
                           "model loads once).")
    text_column: str | None = opt(None, "Column or field of --data that holds the text "
                                  "(default: the run's own).")
    template: str | None = opt(None, "Build each text of --data from fields (default: the "
                               "run's own template, if it had one).")
    format: str | None = opt(None, "Format of --data; detected from the extension when not "
                             "given.", choices=("txt", "csv", "tsv", "json", "jsonl", "parquet"))
    encoding: str = opt("utf-8", "Text encoding of --data.")
    out: str | None = opt(None, "Write the predictions to this CSV file (text, label, and one "
                          "probability column per label) instead of printing them.")
    json: bool = opt(False, "Print one JSON object per text: text, label, probabilities.")
    batch_size: int = opt(32, "Texts per forward pass.")
    device: str = opt("auto", "Device to run on.", choices=DEVICES)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class PrepareConfig(DataOptions):
    model: str | None = opt(None, "Model whose tokenizer to use (default: the embedded "
                            f"'{DEFAULT_MODEL}').", group="model")
    json: bool = opt(False, "Print the result as one JSON object.")
    trust_remote_code: bool = opt(False, "Allow a tokenizer to run code from its repository.",
                                  group="model")


@dataclass
class DemoConfig:
    out: str | None = opt(None, "Run folder (default: runs/pyjokes-en-<time>).")
    epochs: float = opt(3.0, "Passes over the jokes.")
    model: str | None = opt(None, "Model to fine-tune (default: the embedded "
                            "SmolLM2-135M-Instruct).")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class ServeConfig:
    models: list[str] = opt([], "Models or run folders to serve; runs whose LoRA adapters "
                            "share a base load that base once (default: the embedded "
                            f"'{DEFAULT_MODEL}').", positional=True)
    names: list[str] = opt([], repeat=True, metavar="NAME=PATH",
                           help="Serve a model or run under a name of your choice: NAME=PATH; "
                           "repeatable. Requests select it with \"model\": \"NAME\".",
                           alias="--name")
    host: str = opt("127.0.0.1", "Address to listen on; anything but loopback needs --api-key "
                    "or --insecure.")
    port: int = opt(8000, "Port to listen on (0 picks a free one).")
    api_key: str | None = opt(None, "Require 'Authorization: Bearer KEY' on every route but "
                              "/health (default: the LMTUNE_API_KEY environment variable, "
                              "which keeps the key out of the process list).")
    insecure: bool = opt(False, "Allow listening on a non-loopback address without an API key.")
    max_tokens_cap: int = opt(512, "Largest max_tokens a request may ask for.")
    max_concurrency: int = opt(16, "Requests generated at once, as one batch.")
    max_queue: int = opt(64, "Requests waiting beyond --max-concurrency; more are answered "
                         "429 at once.")
    max_request_bytes: int = opt(1_000_000, "Largest request body; larger ones get 413.")
    drain_timeout: float = opt(60.0, "On SIGTERM, seconds to let in-flight requests finish "
                               "before stopping anyway.")
    device: str = opt("auto", "Device to run on.", choices=DEVICES)
    precision: str = opt("auto", "Numeric precision of the weights: auto picks bf16 on GPUs and "
                         "CPUs that support it, else fp32.", choices=PRECISIONS)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class EvalConfig(DataOptions):
    data: str = opt("", "Data to evaluate on (same formats and data flags as train; a run's own "
                    "template is used when none is given).", group="data")
    model: str = opt(DEFAULT_MODEL, "Model, run folder or checkpoint to evaluate.",
                     positional=True, group="model")
    block_size: int | None = opt(None, "Tokens per packed block (default: the run's own, else "
                                 "min(1024, the model's context)).", group="evaluation")
    batch_size: int | None = opt(None, "Blocks per forward pass (default: the run's own, else "
                                 "about 8K tokens per batch).", group="evaluation")
    json: bool = opt(False, "Print one JSON object (loss, perplexity, tokens, ...; for a "
                     "classification run accuracy, macro_f1, per_class, confusion_matrix, ...).",
                     group="output")
    plot: str | None = opt(None, "With a classification run: write the confusion matrix to this "
                           "image file (e.g. confusion.png).", group="output")
    text_column: str | None = opt(None, "With a classification run: the column that holds the "
                                  "text (default: the run's own).", group="data")
    label_column: str | None = opt(None, "With a classification run: the column that holds "
                                   "the label (default: the run's own).", group="data")
    device: str = opt("auto", "Device to run on.", choices=DEVICES, group="evaluation")
    precision: str = opt("auto", "Numeric precision (auto: as training picks it).",
                         choices=PRECISIONS, group="evaluation")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP, group="model")
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP, group="model")


@dataclass
class CompareConfig(DataOptions):
    data: str = opt("", "Target data: the perplexity of both models on it (a run's own "
                    "template is used when none is given).", group="data")
    base: str = opt("", "Base model; given alone, a run folder compared against the base "
                    "named in its lmtune.json.", positional=True, group="models")
    tuned: str | None = opt(None, "Fine-tuned model or run folder.", positional=True,
                            group="models")
    reference: str | None = opt(None, "General text (read as plain documents, no template): "
                                "perplexity on it shows forgetting next to learning.",
                                group="data")
    prompts: list[str] = opt([], repeat=True,
                             help="Prompt to generate from with both models; repeatable.",
                             alias="--prompt", group="generation")
    n: int = opt(2, "Samples per prompt from each model.", alias="-n", group="generation")
    max_new_tokens: int = opt(60, "Most tokens per sample.", group="generation")
    temperature: float = opt(0.8, "Sampling temperature (0 = greedy).", group="generation")
    top_k: int = opt(50, "Sample from the k most likely tokens (0 = off).", group="generation")
    top_p: float = opt(0.95, "Nucleus sampling threshold.", group="generation")
    seed: int = opt(0, "Seed shared by both models' samples.", group="generation")
    block_size: int | None = opt(None, "Tokens per packed block for perplexity (default: the "
                                 "run's own, else min(1024, the model's context)).",
                                 group="evaluation")
    batch_size: int | None = opt(None, "Blocks per forward pass.", group="evaluation")
    json: bool = opt(False, "Print one JSON object instead of tables.", group="output")
    device: str = opt("auto", "Device to run on.", choices=DEVICES, group="evaluation")
    precision: str = opt("auto", "Numeric precision.", choices=PRECISIONS, group="evaluation")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP, group="models")
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP, group="models")


@dataclass
class DiffConfig:
    base: str = opt("", "Base model; given alone, a run folder compared against the base named "
                    "in its lmtune.json.", positional=True)
    tuned: str | None = opt(None, "Fine-tuned model or run folder (full, freeze or LoRA).",
                            positional=True)
    json: bool = opt(False, "Print one JSON object with every tensor and block.")
    plot: str | None = opt(None, "Write a PNG showing, block by block, where the weights "
                           "changed.")
    top: int = opt(15, "Tensors listed in the table, largest relative change first (0: all).")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class ReportConfig:
    run: str = opt("", "Run folder.", positional=True)
    compare: bool = opt(True, "Generate before/after samples on the run's sample prompts "
                        "(loads the base model).")
    device: str = opt("auto", "Device for the before/after samples.", choices=DEVICES)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class InspectConfig(DataOptions):
    model: str | None = opt(None, f"Model whose tokenizer counts the tokens (default: "
                            f"'{DEFAULT_MODEL}'); a run folder also lends its template.",
                            group="model")
    block_size: int | None = opt(None, "Block size to check example lengths against (default: "
                                 "min(1024, the model's context)).", group="data")
    json: bool = opt(False, "Print one JSON object instead of the report.", group="output")
    trust_remote_code: bool = opt(False, "Allow a model to run code from its repository.",
                                  group="model")


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
