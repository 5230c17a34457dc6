"""What differs between training tasks, as a few functions the one loop calls
(training/loop.py and training/step.py); the registry is tasks/__init__.py.

A task (`generate`: continue text, generate.py; `classify`: a label per text, classify/;
`preference`: a chosen over a rejected answer, preference/) provides:
  check(cfg)             -> problems with the flags, reported with the others before loading
  prepare(cfg, tok, ...) -> TaskData: datasets of batches, the step plan (for `world` processes) and
                            the data's hash
  load_model(...)        -> the model with the task's head (LM head or label head)
  loss_sum(model, batch) -> summed loss; the loop divides by the batches' n_target_tokens
  loss_and_stats(...)    -> optional: the summed loss and {name: sum over the targets}; each
                            training log record reports name = sum / targets (preference's
                            rewards), summed over ranks and kept across a resume like the loss
  evaluate(model, val)   -> one flat metrics record, with val_loss and `best_metric`; under
                            several processes `val` is this rank's share and the record
                            is the whole set's (sums are all-reduced)
  rank(record)           -> what picks the best checkpoint: a list, lower is better
  info()                 -> what lmtune.json records for later commands
Text samples during training are for the language models (generate, preference); a task's
`sample_prompts` are what they answer when --sample-prompt is not given. Classify's plan sets
sample_every to 0.

Batches of every task have `n_target_tokens` (what the loss is a sum over) and `n_tokens`
(real tokens, for throughput), and datasets have `batches(epoch, batch_size, start, rank=,
world=)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmtune.config import TrainConfig
from lmtune.tasks.plan import Plan


@dataclass
class TaskData:
    """What a task's `prepare` makes of the training data, before any model loads."""
    cfg: TrainConfig  # with what the data decides filled in
    plan: Plan
    train_set: object
    val_set: object | None
    data_hash: str  # identifies the tokenized data, for resume checks
    summary: dict  # train_examples, val_examples, train_tokens, stats: for the start event
    messages: list[str] = field(default_factory=list)  # said once at start
