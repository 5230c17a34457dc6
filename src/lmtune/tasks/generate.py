"""--task generate: a language model learns to continue text, with the next-token loss on
packed (or padded) documents. Also the validation loss that `lmtune eval` reports, and
tokenizing a corpus once into the cache (`lmtune data prepare`)."""

from __future__ import annotations

import math

import torch

from lmtune import distributed
from lmtune.config import TrainConfig, flag
from lmtune.data.cache import CachedCorpus, prepare
from lmtune.data.chat_tokens import use_chat_template
from lmtune.data.corpus import make_dataset, token_splits
from lmtune.data.tokenize import special_text_warning
from lmtune.models.forward import loss_sum
from lmtune.models.load import load_base, load_tokenizer
from lmtune.models.resolve import refuse_classifier, resolve
from lmtune.progress import iterate
from lmtune.tasks.base import TaskData
from lmtune.tasks.plan import plan_run


class LanguageModeling:
    """--task generate: next-token loss on packed (or padded) documents."""

    name = "generate"
    best_metric = "val_loss"
    chat = False              # the data is conversations (data/chat.py)
    # Chat data: the samples during training ask the first conversations' first questions
    sample_prompts: list[str] = []
    val_chars = 0             # characters of the validation targets (bits per character)

    def check(self, cfg: TrainConfig) -> list[str]:
        given = [flag(n) for n in ("text_column", "label_column") if getattr(cfg, n) is not None]
        if cfg.class_weights != "none":
            given.append("--class-weights")
        return [f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to "
                f"--task classify"] if given else []

    def prepare(self, cfg: TrainConfig, tokenizer, *, context: int, n_layers: int | None,
                world: int = 1) -> TaskData:
        splits = token_splits(cfg, tokenizer)
        train_docs, val_docs = splits.train, splits.val
        if splits.stats.get("chat"):
            # The run saves this tokenizer: a model without a chat template gets the one its
            # conversations were rendered with (a cached corpus skips rendering, so here).
            use_chat_template(tokenizer)
            self.chat, self.sample_prompts = True, list(splits.stats.get("chat_prompts", []))
        cfg, plan = plan_run(
            cfg, n_train_tokens=train_docs.n_tokens, context=context, n_layers=n_layers,
            world=world, n_blocks_for=lambda bs: make_dataset(
                train_docs, bs, pack=cfg.pack, shuffle=False, seed=0).num_blocks())
        train_set = make_dataset(train_docs, plan.block_size, pack=cfg.pack, shuffle=True,
                                 seed=cfg.seed)
        val_set = (make_dataset(val_docs, plan.block_size, pack=cfg.pack, shuffle=False, seed=0)
                   if val_docs else None)
        self.val_chars = target_characters(val_docs, tokenizer) if val_docs else 0
        return TaskData(cfg=cfg, plan=plan, train_set=train_set, val_set=val_set,
                        data_hash=splits.key,
                        summary={"train_examples": len(train_docs),
                                 "val_examples": len(val_docs) if val_docs else 0,
                                 "train_tokens": train_docs.n_tokens, "stats": splits.stats},
                        messages=_long_examples(train_docs, plan.block_size, cfg.pack)
                        + _data_notes(splits.stats))

    def load_model(self, resolved, cfg: TrainConfig, tokenizer):
        refuse_classifier(resolved)
        return load_base(resolved, trust_remote_code=cfg.trust_remote_code,
                         allow_pickle=cfg.allow_pickle)

    def loss_sum(self, model, batch, device):
        return loss_sum(model, batch, device)

    def evaluate(self, model, val_set, batch_size: int, device, autocast) -> dict:
        val_loss, count = mean_loss(model, val_set, batch_size, device, autocast)  # all ranks
        record = {"val_loss": round(val_loss, 6), "val_ppl": round(perplexity(val_loss), 4)}
        if self.val_chars:  # the loss per character: comparable across tokenizers
            record["val_bits_per_char"] = round(val_loss * count / self.val_chars
                                                / math.log(2), 6)
        return record

    def rank(self, record: dict) -> list:
        return [record["val_loss"]]

    def info(self) -> dict:
        return {"task": self.name, **({"format": "chat"} if self.chat else {})}


# Decoding the validation targets once costs about a second per million tokens; a larger
# split goes without bits per character rather than delay the start.
MAX_DECODED_TOKENS = 5_000_000


def target_characters(docs, tokenizer) -> int:
    """Characters of the text the validation loss predicts: each document's target tokens
    (special tokens left out), decoded. 0 when the split is too large to decode at start."""
    if docs.n_tokens > MAX_DECODED_TOKENS:
        return 0
    rows = [docs.ids[s:s + n][docs.loss_mask[s:s + n]].tolist()
            for s, n in zip(docs.starts, docs.lengths)]
    return sum(map(len, tokenizer.batch_decode(rows, skip_special_tokens=True)))


def _data_notes(stats: dict) -> list[str]:
    """What reading the data changed or found that the user should know."""
    notes = []
    if stats.get("crlf"):
        notes.append("note: the data has Windows line ends (\\r\\n); they were read as \\n, "
                     "so --split-on splits at them")
    warning = special_text_warning(stats)
    if warning:
        notes.append(f"warning: {warning}")
    return notes


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


@torch.no_grad()
def mean_loss(model, dataset, batch_size: int, device, autocast=None) -> tuple[float, int]:
    """(mean token loss, target tokens) over every block of `dataset`, in order. Under several
    processes `dataset` is this rank's share (distributed.World.shard) and the result is
    the whole set's."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    # Under several processes every rank runs every forward, even of a batch with nothing to
    # count: FSDP gathers each block's weights in a collective.
    every = distributed.active()
    batches = iterate(dataset.batches(0, batch_size), "evaluating",
                      dataset.num_batches(batch_size), "batch")
    for batch in batches:
        if batch.n_target_tokens == 0 and not every:
            continue
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            total += loss_sum(model, batch, device).double()
        count += batch.n_target_tokens
    model.train(was_training)
    if every:
        sums = distributed.all_sum(torch.stack([total, torch.tensor(float(count), dtype=torch
                                                                   .float64, device=device)]))
        total, count = sums[0], int(sums[1].item())
    return (total.item() / count if count else float("nan")), count


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def prepare_corpus(cfg) -> CachedCorpus:
    """`lmtune data prepare`: the corpus `cfg.data` tokenized into the cache that training
    reads. `cfg` has the DataOptions fields plus `model` and `trust_remote_code`."""
    tokenizer = load_tokenizer(resolve(cfg.model), cfg.trust_remote_code)
    return prepare(cfg.data, cfg, tokenizer)
