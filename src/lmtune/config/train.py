"""The options of `lmtune train` (and the data options that eval, compare and the data
commands share), the checks that need no file or model, and the few that need the model's
config. Defaults that lmtune chooses are constants in defaults.py; the help texts below are
built from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lmtune.config.defaults import (CLASS_WEIGHTS, CLASSIFY_MAX_LENGTH, DATA_FORMATS,
                                    DEFAULT_LR, DEFAULT_MODEL, DEVICES, EVALS_PER_RUN,
                                    FREEZE_SHARE, LLAMA_LIKE, LORA_TARGETS, MAX_BLOCK,
                                    MAX_WARMUP, METHODS, PRECISIONS, PREFERENCE_BETA,
                                    PREFERENCE_LOSSES, PREFERENCE_LR, PREFERENCE_MAX_LENGTH,
                                    SAVE_MINUTES, SCHEDULES, SIMPO_GAMMA, TASKS, WARMUP_SHARE)
from lmtune.config.fields import THREADS_HELP, TRUST_REMOTE_CODE_HELP, build, flag, opt
from lmtune.errors import UserError

# Saved as false in a run's config.yaml: the file describes the run, not the command that last
# touched it, so `--config RUN/config.yaml` starts a like run instead of resuming or
# overwriting, and a later plain --resume checks its settings again.
ONE_SHOT_ACTIONS = ("resume", "force_resume", "overwrite", "dry_run", "json")
# What a run resolves at its start and saves: a saved config.yaml without these was cut short.
RESOLVED_AT_START = ("data", "model", "out", "method", "lr", "block_size", "batch_size",
                     "warmup_steps", "eval_every", "save_every", "sample_every")


def short_float(value: float) -> str:
    """1e-3 rather than 0.001 or 1e-03: how people write learning rates."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


@dataclass
class DataOptions:
    """How a data file becomes training examples (shared by train, eval and data commands)."""

    data: str = opt("", "Training data: a .txt file or folder of them, .csv, .tsv, .json, .jsonl "
                    "or .parquet.", positional=True, group="data")
    format: str | None = opt(None, "Data format; detected from the extension when not given.",
                             choices=DATA_FORMATS, group="data")
    column: str | None = opt(None, "Column (CSV/Parquet) or field (JSON) that holds the text.",
                             alias="--field", group="data")
    template: str | None = opt(None, "Build each example from fields, e.g. "
                               "'Quote by {author}: \"{quote}\"'.", group="data")
    prompt_template: str | None = opt(None, "Prompt part of a prompt/completion pair (with --task "
                                      "preference: the prompt of each pair); its tokens are "
                                      "context only and do not count in the loss.", group="data")
    completion_template: str | None = opt(None, "Completion part of a prompt/completion pair "
                                          "(the text the model learns).", group="data")
    split_on: str | None = opt(None, "For .txt data: split the text into one example per piece "
                               "at this string, e.g. '\\n\\n' (blank line) or '\\n'.", group="data")
    encoding: str = opt("utf-8", "Text encoding of the data files.", group="data")


@dataclass
class TrainConfig(DataOptions):
    task: str = opt("generate", "What to learn: generate (continue text, the default), "
                    "classify (a label per text, with --text-column or --template and "
                    "--label-column) or preference (a chosen over a rejected answer to each "
                    "prompt, with --loss).", choices=TASKS, group="task")
    text_column: str | None = opt(None, "With --task classify: the column or field that holds "
                                  "the text (or build it with --template).", group="task")
    label_column: str | None = opt(None, "With --task classify: the column or field that holds "
                                   "the label (strings or integers).", group="task")
    class_weights: str = opt("none", "With --task classify: 'auto' weighs each class's loss by "
                             "n / (classes x its count), so rare labels count as much as "
                             "common ones.", choices=CLASS_WEIGHTS, group="task")
    loss: str | None = opt(None, "With --task preference: dpo (the default; rewards are measured "
                           "against the base model), or orpo or simpo (no reference model).",
                           choices=PREFERENCE_LOSSES, group="task")
    beta: float | None = opt(None, "With --task preference: the strength of the preference term "
                             "(default: " + ", ".join(f"{v:g} for {k}" for k, v in
                                                      PREFERENCE_BETA.items()) + "): DPO's "
                             "beta (higher keeps closer to the base), ORPO's lambda, SimPO's "
                             "reward scale.", group="task")
    gamma: float | None = opt(None, f"With --loss simpo: the target reward margin (default "
                              f"{SIMPO_GAMMA:g}).", group="task")
    chosen_column: str | None = opt(None, "With --task preference: the column or field that holds "
                                    "the preferred answer (default: chosen).", group="task")
    rejected_column: str | None = opt(None, "With --task preference: the column or field that "
                                      "holds the other answer (default: rejected).", group="task")
    model: str | None = opt(None, f"Model to fine-tune: a Hugging Face id, a local model folder, "
                            f"a run folder or checkpoint of lmtune, or '{DEFAULT_MODEL}' "
                            f"(the embedded default, used when not given).", group="model")
    out: str | None = opt(None, "Run folder to write (default: runs/<data name>-<timestamp>).",
                          group="output")
    method: str = opt("lora", "What trains: lora (small adapter), full (every weight) or freeze "
                      "(only the top --train-layers blocks, final norm and LM head).",
                      choices=METHODS, group="method")
    train_layers: int | None = opt(None, "With --method freeze: how many top transformer blocks "
                                   f"train (default: 1/{FREEZE_SHARE} of them, at least 1).",
                                   group="method")
    lora_r: int = opt(8, "LoRA rank; higher learns more and costs more memory.", group="method")
    lora_alpha: int = opt(16, "LoRA scaling numerator (the update is scaled by alpha / r).",
                          group="method")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input (PEFT's default 0; 0.05-0.1 may "
                              "help on tiny data, at about 15% more time per step on CPU).",
                              group="method")
    lora_targets: list[str] | None = opt(None, "Module names LoRA adapts (default per "
                                         f"architecture: GPT-2 {' '.join(LORA_TARGETS['gpt2'])}; "
                                         f"Llama-family {' '.join(LLAMA_LIKE)}; others every "
                                         f"linear layer but the head).", group="method")
    val_split: float = opt(0.1, "Fraction of examples held out for validation (0 turns it "
                           "off); deterministic for a seed.", group="data")
    val_data: str | None = opt(None, "Validation data file (same format flags); replaces "
                               "--val-split.", group="data")
    pack: bool = opt(True, "Pack examples into blocks with no cross-document attention "
                     "(--no-pack: one padded example per row).", group="data")
    block_size: int | None = opt(None, "Tokens per packed block (default: chosen from the data, "
                                 f"at most min({MAX_BLOCK}, the model's context)); with --task "
                                 "classify, the most tokens kept of each text, in training and "
                                 f"prediction (default: {CLASSIFY_MAX_LENGTH}, or the model's "
                                 "context if shorter); with --task preference, the most tokens "
                                 "kept of each prompt with its answer (default: "
                                 f"{PREFERENCE_MAX_LENGTH}, or the model's context if shorter).",
                                 group="training")
    batch_size: int | None = opt(None, "Blocks (with --task classify: texts; with --task "
                                 "preference: pairs) per device per "
                                 "optimizer micro-step (default: chosen from the data so each "
                                 "epoch has enough steps).", group="training")
    grad_accum: int = opt(1, "Micro-steps accumulated per optimizer step.", group="training")
    epochs: float = opt(3.0, "Passes over the training data (ignored when --max-steps is set).",
                        group="training")
    max_steps: int | None = opt(None, "Total optimizer steps; overrides --epochs.",
                                group="training")
    lr: float | None = opt(None, "Peak learning rate (default: " + ", ".join(
        f"{short_float(v)} for {k}" for k, v in DEFAULT_LR.items()) + "; with --task preference "
        + ", ".join(f"{short_float(v)} for {k}" for k, v in PREFERENCE_LR.items()) + ").",
        group="training")
    weight_decay: float = opt(0.0, "AdamW weight decay.", group="training")
    lr_schedule: str = opt("cosine", "Learning-rate schedule after warmup.", choices=SCHEDULES,
                           group="training")
    warmup_steps: int | None = opt(None, "Linear warmup steps (default: "
                                   f"{WARMUP_SHARE:.0%} of the steps, at most {MAX_WARMUP}).",
                                   group="training")
    grad_clip: float = opt(1.0, "Clip the gradient norm to this (0 turns clipping off).",
                           group="training")
    seed: int = opt(42, "Random seed for data order, validation split, dropout and samples.",
                    group="training")
    precision: str = opt("auto", "Numeric precision: auto picks bf16 on GPUs and CPUs that "
                         "support it, else fp32; fp16 only on CUDA (GPT-2/Neo overflow in it).",
                         choices=PRECISIONS, group="training")
    device: str = opt("auto", "Device to train on.", choices=DEVICES, group="training")
    threads: int | None = opt(None, THREADS_HELP, group="training")
    gradient_checkpointing: bool = opt(False, "Keep only each layer's input and recompute the "
                                       "rest in the backward pass (activation "
                                       "checkpointing): long blocks and large batches fit in "
                                       "far less memory, for about a third more compute per "
                                       "step.", group="training")
    devices: int = opt(1, "Train on this many processes on this machine, one per GPU (on the "
                       "CPU, processes that share the cores): lmtune starts itself under "
                       "torchrun. Under torchrun or accelerate launch leave it out; the "
                       "launcher sets the number.", group="distributed")
    fsdp: bool = opt(False, "With several processes and --method full or freeze: shard the "
                     "weights, gradients and optimizer state over the processes (torch FSDP2) "
                     "instead of keeping a whole copy on each (DDP), for models too large for "
                     "one device.", group="distributed")
    log_every: int = opt(10, "Optimizer steps between metrics.jsonl records.", group="logging")
    eval_every: int | None = opt(None, "Steps between validation passes (default: about "
                                 f"{EVALS_PER_RUN} per run); always at the end.", group="logging")
    sample_every: int | None = opt(None, "Steps between generated samples (default: with each "
                                   "evaluation; 0 turns samples off).", group="logging")
    sample_prompts: list[str] = opt([], repeat=True,
                                    help="Prompt for the samples written during training; "
                                    "repeatable (default: unconditional).", alias="--sample-prompt",
                                    group="logging")
    sample_max_new_tokens: int = opt(64, "Length limit of samples written during training.",
                                     group="logging")
    save_every: int | None = opt(None, "Steps between checkpoints (default: with each "
                                 "evaluation); one is always written at the end and on a stop.",
                                 group="output")
    save_minutes: float | None = opt(None, "Fewest minutes between two checkpoints (default: "
                                     f"{SAVE_MINUTES:g} when --save-every is left to its "
                                     "default, 0 when it is given).", group="output")
    keep: int = opt(2, "Keep this many newest checkpoints (at least the newest one), plus the "
                    "best by validation loss.", group="output")
    patience: int | None = opt(None, "Stop after this many evaluations without a better "
                               "validation loss.", group="training")
    resume: bool = opt(False, "Continue the run in --out from its newest complete checkpoint.",
                       group="output")
    force_resume: bool = opt(False, "With --resume: continue even though settings, data or "
                             "base model differ from the run's (each change is reported).",
                             group="output")
    overwrite: bool = opt(False, "Replace a previous run in --out.", group="output")
    extend_tokenizer: int | None = opt(None, "Before training, teach the model's tokenizer up "
                                       "to N pieces of the training data's language (as "
                                       "'lmtune tokenizer extend' does, with the training "
                                       "file as corpus: e.g. 20000 for Chinese) and grow its "
                                       "embedding to match; the extended model is kept in "
                                       "$LMTUNE_HOME/extended/, where resuming finds it. "
                                       "With --method lora the new embedding rows train too.",
                                       group="model")
    warmup_embeddings: int = opt(0, "The first N optimizer steps update only the embedding "
                                 "(and an untied LM head; with --method lora only the new "
                                 "rows), then the method trains as usual: new rows settle "
                                 "before the rest of the model adapts to them.",
                                 group="method")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP, group="model")
    allow_pickle: bool = opt(False, "Allow a base model whose weights are only in pickle files "
                             "(.bin, .pt); loaded with torch.load(weights_only=True). "
                             "safetensors needs no such trust.", group="model")
    dry_run: bool = opt(False, "Print the data report and the plan, time a few steps, estimate "
                        "the time per epoch, and exit without training or writing anything.",
                        group="output")
    json: bool = opt(False, "With --dry-run: print one JSON object (the data report, the plan "
                     "and the timings) instead of the report.", group="output")
    report: bool = opt(True, "Write loss.png and report.html in the run folder at the end "
                       "(--no-report to skip; lmtune report RUN writes them later).",
                       group="output")


# ---------------------------------------------------------------------------------------------
# Checks, all before anything is read or loaded; each returns every problem it finds.

def check_train(cfg: TrainConfig) -> list[str]:
    """Problems with the numbers and combinations of a TrainConfig."""
    problems = []
    positive = ["grad_accum", "lora_r", "lora_alpha", "log_every", "sample_max_new_tokens",
                "devices"]
    for name in positive + ["max_steps", "batch_size", "eval_every", "save_every", "patience",
                            "train_layers", "threads"]:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            problems.append(f"{flag(name)} must be at least 1 (got {value})")
    if cfg.epochs <= 0 and cfg.max_steps is None:
        problems.append(f"--epochs must be above 0 (got {cfg.epochs})")
    if not 0 <= cfg.val_split < 1:
        problems.append(f"--val-split must be in [0, 1) (got {cfg.val_split})")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"--lora-dropout must be in [0, 1) (got {cfg.lora_dropout})")
    if cfg.lr is not None and cfg.lr <= 0:
        problems.append(f"--lr must be above 0 (got {cfg.lr})")
    for name in ("weight_decay", "grad_clip", "warmup_steps", "keep", "sample_every",
                 "save_minutes"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            problems.append(f"{flag(name)} must not be negative (got {value})")
    problems += check_block_size(cfg.block_size)
    if cfg.train_layers is not None and cfg.method != "freeze":
        problems.append("--train-layers only applies to --method freeze")
    if bool(cfg.prompt_template) != bool(cfg.completion_template) and cfg.task != "preference":
        problems.append("--prompt-template and --completion-template go together")
    preference = [flag(n) for n in ("loss", "beta", "gamma", "chosen_column", "rejected_column")
                  if getattr(cfg, n) is not None]
    if preference and cfg.task != "preference":
        problems.append(f"{', '.join(preference)} only appl{'ies' if len(preference) == 1 else 'y'}"
                        f" to --task preference")
    if cfg.template and cfg.prompt_template:
        problems.append("use either --template or --prompt-template/--completion-template")
    if cfg.fsdp and cfg.method == "lora":
        problems.append("--fsdp is for --method full or freeze: a LoRA adapter is small, and "
                        "LoRA trains under DDP with the base model whole on every device "
                        "(drop --fsdp)")
    if cfg.beta is not None and cfg.beta <= 0:
        problems.append(f"--beta must be above 0 (got {cfg.beta})")
    if cfg.gamma is not None and cfg.gamma < 0:
        problems.append(f"--gamma must not be negative (got {cfg.gamma})")
    problems += check_extension(cfg)
    if cfg.dry_run and cfg.devices > 1:
        problems.append("--dry-run times steps on one process (drop --devices)")
    return problems


def check_extension(cfg: TrainConfig) -> list[str]:
    problems = []
    if cfg.extend_tokenizer is not None and cfg.extend_tokenizer < 1:
        problems.append(f"--extend-tokenizer must be at least 1 (got {cfg.extend_tokenizer}): "
                        f"it is how many pieces to add, e.g. --extend-tokenizer 20000")
    if cfg.extend_tokenizer is not None and cfg.task != "generate":
        problems.append(f"--extend-tokenizer is for --task generate (got --task {cfg.task}): "
                        f"extend first with lmtune tokenizer extend, then train on its folder")
    if cfg.warmup_embeddings < 0:
        problems.append(f"--warmup-embeddings must not be negative (got "
                        f"{cfg.warmup_embeddings})")
    elif cfg.warmup_embeddings and cfg.method == "lora" and cfg.extend_tokenizer is None:
        problems.append("--warmup-embeddings with --method lora needs --extend-tokenizer: "
                        "LoRA trains no embedding row otherwise")
    return problems


def check_block_size(block_size: int | None, context: int | None = None) -> list[str]:
    """The one check of --block-size: at least 2 (one token per block leaves nothing to
    predict) and, once the model is known, no longer than its context."""
    if block_size is None:
        return []
    if block_size < 2:
        return [f"--block-size must be at least 2 (got {block_size})"]
    if context is not None and block_size > context:
        return [f"--block-size {block_size} is above the model's context of {context} tokens "
                f"(use {context} or less)"]
    return []


def check_against_model(cfg: TrainConfig, *, context: int, n_layers: int | None) -> list[str]:
    """The checks that need the model's config (read before the data or the weights)."""
    problems = check_block_size(cfg.block_size, context)
    if cfg.method == "freeze":
        if n_layers is None:
            problems.append("cannot tell how many blocks this model has, so --method freeze "
                            "cannot pick the top ones (use --method lora or full)")
        elif cfg.train_layers is not None and not 1 <= cfg.train_layers <= n_layers:
            problems.append(f"--train-layers {cfg.train_layers} is outside 1..{n_layers} (the "
                            f"model has {n_layers} blocks)")
    return problems


def refuse(problems: list[str]) -> None:
    """Every problem in one error, so a user fixes them all in one go."""
    if problems:
        raise UserError("; ".join(problems))


def read_saved(path: Path) -> TrainConfig:
    """A run's config.yaml as the typed config it was written from."""
    return build(TrainConfig, {}, path, required=RESOLVED_AT_START)


def saved_form(cfg: TrainConfig) -> TrainConfig:
    """What a run's config.yaml holds: the resolved config with one-shot actions off."""
    return dataclasses.replace(cfg, **{name: False for name in ONE_SHOT_ACTIONS})
