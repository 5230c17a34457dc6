"""What differs between training tasks, as a few functions the one loop in train.py calls.

A task (`generate`: continue text; `classify`: a label per text, in classify.py) provides:
  check(cfg)             -> problems with the flags, reported with the others before loading
  prepare(cfg, tok, ...) -> datasets of batches, the step plan (for `world` processes) and
                            the data's hash
  load_model(...)        -> the model with the task's head (LM head or label head)
  loss_sum(model, batch) -> summed loss; the loop divides by the batches' n_target_tokens
  evaluate(model, val)   -> one flat metrics record, with val_loss and `best_metric`; under
                            several processes `val` is this rank's share and the record
                            is the whole set's (sums are all-reduced)
  rank(record)           -> what picks the best checkpoint: a list, lower is better
  info()                 -> what lmtune.json records for later commands
Text samples during training are for generate only: classify's plan sets sample_every to 0.

Batches of either task have `n_target_tokens` (what the loss is a sum over) and `n_tokens`
(real tokens, for throughput), and datasets have `batches(epoch, batch_size, start, rank=,
world=)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmtune.config import TrainConfig
from lmtune.errors import UserError
from lmtune.plan import Plan


@dataclass
class Prepared:
    cfg: TrainConfig  # with what the data decides filled in
    plan: Plan
    train_set: object
    val_set: object | None
    data_hash: str  # identifies the tokenized data, for resume checks
    summary: dict  # train_examples, val_examples, train_tokens, stats: for the start event
    messages: list[str] = field(default_factory=list)  # said once at start


class LanguageModeling:
    """--task generate: next-token loss on packed (or padded) documents."""

    name = "generate"
    best_metric = "val_loss"

    def check(self, cfg: TrainConfig) -> list[str]:
        given = [f"--{n.replace('_', '-')}" for n in ("text_column", "label_column")
                 if getattr(cfg, n) is not None]
        if cfg.class_weights != "none":
            given.append("--class-weights")
        return [f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to "
                f"--task classify"] if given else []

    def prepare(self, cfg: TrainConfig, tokenizer, *, context: int, n_layers: int,
                world: int = 1) -> Prepared:
        from lmtune.corpus import make_dataset, token_splits
        from lmtune.plan import plan_run

        splits = token_splits(cfg, tokenizer)
        train_docs, val_docs = splits.train, splits.val
        cfg, plan = plan_run(
            cfg, n_train_tokens=train_docs.n_tokens, context=context, n_layers=n_layers,
            world=world, n_blocks_for=lambda bs: make_dataset(train_docs, bs, pack=cfg.pack, shuffle=False,
                                                 seed=0).num_blocks())
        train_set = make_dataset(train_docs, plan.block_size, pack=cfg.pack, shuffle=True,
                                 seed=cfg.seed)
        val_set = (make_dataset(val_docs, plan.block_size, pack=cfg.pack, shuffle=False, seed=0)
                   if val_docs else None)
        return Prepared(cfg=cfg, plan=plan, train_set=train_set, val_set=val_set,
                        data_hash=splits.key,
                        summary={"train_examples": len(train_docs),
                                 "val_examples": len(val_docs) if val_docs else 0,
                                 "train_tokens": train_docs.n_tokens, "stats": splits.stats},
                        messages=_long_examples(train_docs, plan.block_size, cfg.pack))

    def load_model(self, resolved, cfg: TrainConfig, tokenizer):
        from lmtune.models import load_base, refuse_classifier

        refuse_classifier(resolved)
        return load_base(resolved, trust_remote_code=cfg.trust_remote_code,
                         allow_pickle=cfg.allow_pickle)

    def loss_sum(self, model, batch, device):
        from lmtune.loss import loss_sum

        return loss_sum(model, batch, device)

    def evaluate(self, model, val_set, batch_size: int, device, autocast) -> dict:
        from lmtune.evaluate import mean_loss, perplexity

        val_loss, _ = mean_loss(model, val_set, batch_size, device, autocast)  # all ranks
        return {"val_loss": round(val_loss, 6), "val_ppl": round(perplexity(val_loss), 4)}

    def rank(self, record: dict) -> list:
        return [record["val_loss"]]

    def info(self) -> dict:
        return {"task": self.name}


def _long_examples(docs, block_size: int, pack: bool) -> list[str]:
    """Examples longer than a block are split, never dropped or cut: say how many."""
    lengths = docs.lengths
    n_long = int((lengths > block_size).sum())
    if not n_long:
        return []
    how = ("continue across blocks (packing)" if pack
           else "are cut into block-sized rows (--no-pack); nothing is dropped")
    return [f"{n_long} of {len(lengths)} training examples are longer than the {block_size}-token "
            f"block (longest {int(lengths.max())} tokens) and {how}"]


def task_for(cfg: TrainConfig):
    if cfg.task == "classify":
        from lmtune.classify import Classification
        return Classification()
    if cfg.task == "generate":
        return LanguageModeling()
    raise UserError(f"unknown --task {cfg.task!r}; choose generate or classify")
