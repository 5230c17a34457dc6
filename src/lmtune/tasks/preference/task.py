"""--task preference: a language model learns to prefer the chosen answer of each pair over
the rejected one, with DPO, ORPO or SimPO (losses.py), on pairs read and batched by data.py.

A batch is its pairs' chosen sequences followed by their rejected ones, padded on the right,
in one forward pass; each sequence's answer log-probabilities are summed over its answer
tokens only (models/forward.py's sequence_logps). DPO measures them against a reference, the
model before training: with LoRA that is the same model with its adapter switched off (no
second copy); with full or freeze it is computed once before training and cached
(reference.py). ORPO and SimPO need no reference.

The loss is a sum over pairs, so the loop's division by the batches' `n_target_tokens` (their
pairs) makes it the mean per pair, however the pairs are batched or accumulated. Training log
records and validation records carry the mean rewards, margin and reward accuracy (losses.py's
STATS); the best checkpoint is the one with the lowest validation loss (see `rank`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from lmtune import distributed
from lmtune.config import TrainConfig, flag
from lmtune.data.chat_tokens import use_chat_template
from lmtune.data.examples import split_indices
from lmtune.device import pick_device
from lmtune.errors import UserError
from lmtune.models.forward import sequence_logps
from lmtune.models.load import load_base
from lmtune.models.resolve import refuse_classifier
from lmtune.progress import iterate
from lmtune.tasks.base import TaskData
from lmtune.tasks.plan import plan_preference
from lmtune.tasks.preference import reference
from lmtune.tasks.preference.data import (PairDataset, answer_tokens, read_pairs,
                                          tokenize_pairs)
from lmtune.tasks.preference.losses import STATS, batch_stats, pair_losses

MAX_SAMPLE_PROMPTS = 2  # prompts of held-out pairs that the samples during training answer


class Preference:
    """--task preference: DPO, ORPO or SimPO on pairs of a chosen and a rejected answer."""

    name = "preference"
    best_metric = "val_loss"

    def __init__(self):
        self.chat = False  # the pairs are messages, rendered with the chat template
        self.sample_prompts: list[str] = []
        self.loss, self.beta, self.gamma = "dpo", 0.1, None
        self.cached_reference = False  # dpo with full or freeze: the reference is on disk
        self.sets: dict[str, PairDataset | None] = {}
        self.messages: list[str] = []
        self.data_hash, self.max_length, self.batch_size = "", 0, 1

    def check(self, cfg: TrainConfig) -> list[str]:
        problems = []
        not_here = {"column": "the answers come from --chosen-column and --rejected-column",
                    "template": "the prompt comes from --prompt-template",
                    "completion_template": "the answers come from --chosen-column and "
                                           "--rejected-column",
                    "split_on": "plain text holds no pairs",
                    "text_column": "it is for --task classify",
                    "label_column": "it is for --task classify"}
        for name, why in not_here.items():
            if getattr(cfg, name) is not None:
                problems.append(f"{flag(name)} does not apply to --task preference: {why}")
        if cfg.class_weights != "none":
            problems.append("--class-weights is for --task classify")
        if cfg.gamma is not None and (cfg.loss or "dpo") != "simpo":
            problems.append("--gamma only applies to --loss simpo")
        if cfg.chosen_column is not None and cfg.chosen_column == cfg.rejected_column:
            problems.append(f"--chosen-column and --rejected-column are both "
                            f"'{cfg.chosen_column}'")
        return problems

    def prepare(self, cfg: TrainConfig, tokenizer, *, context: int, n_layers: int | None,
                world: int = 1) -> TaskData:
        def read(path: str):
            return read_pairs(path, fmt=cfg.format, encoding=cfg.encoding,
                              prompt_template=cfg.prompt_template,
                              chosen_column=cfg.chosen_column,
                              rejected_column=cfg.rejected_column)

        pairs = read(cfg.data)
        if cfg.val_data:
            train_pairs, val_pairs = pairs, read(cfg.val_data)
        else:
            train_idx, val_idx = split_indices(len(pairs), cfg.val_split, cfg.seed)
            train_pairs, val_pairs = [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]
        self.chat = bool(pairs[0].turns)
        if self.chat:  # the run saves this tokenizer, with the template its pairs were read in
            use_chat_template(tokenizer)
        shown = val_pairs or train_pairs
        self.sample_prompts = [_question(p) for p in shown[:MAX_SAMPLE_PROMPTS] if _question(p)]
        train, val = tokenize_pairs(train_pairs, tokenizer), (
            tokenize_pairs(val_pairs, tokenizer) if val_pairs else None)
        lengths = np.maximum(train[0].lengths, train[1].lengths)
        cfg, plan = plan_preference(cfg, lengths=lengths, context=context, n_layers=n_layers,
                                    world=world)
        kept, dropped = _answerable(train, plan.block_size)
        if dropped:
            if not len(kept):
                raise UserError(f"every prompt of {cfg.data} fills the {plan.block_size}-token "
                                f"limit, leaving no answer tokens",
                                hint="raise --block-size (up to the model's context)")
            cfg, plan = plan_preference(cfg, lengths=lengths[kept], context=context,
                                        n_layers=n_layers, world=world)
        self.messages = self._settings(cfg, plan, dropped, len(train_pairs))
        self.max_length, self.batch_size = plan.block_size, plan.batch_size
        pad = tokenizer.pad_token_id
        train_set = PairDataset(train[0].subset(kept), train[1].subset(kept),
                                max_length=self.max_length, pad_id=pad, seed=cfg.seed)
        val_set = None
        if val is not None:
            val_kept, _ = _answerable(val, self.max_length)
            val_set = PairDataset(val[0].subset(val_kept), val[1].subset(val_kept),
                                  max_length=self.max_length, pad_id=pad, shuffle=False)
        self.sets = {"train": train_set, "val": val_set}
        self.data_hash = _hash(train, val, kept, self.max_length)
        return TaskData(cfg=cfg, plan=plan, train_set=train_set, val_set=val_set,
                        data_hash=self.data_hash,
                        summary={"train_examples": len(train_set),
                                 "val_examples": len(val_set) if val_set is not None else 0,
                                 "train_tokens": train[0].n_tokens + train[1].n_tokens,
                                 "stats": {"records": len(pairs), "chat": self.chat}},
                        messages=self.messages)

    def _settings(self, cfg: TrainConfig, plan, dropped: int, n_train: int) -> list[str]:
        self.loss, self.beta, self.gamma = cfg.loss, cfg.beta, cfg.gamma
        self.cached_reference = cfg.loss == "dpo" and cfg.method != "lora"
        if cfg.loss == "dpo":
            what = ("against the base model: this model with its adapter off"
                    if cfg.method == "lora" else
                    "against the base model's log-probabilities, computed before training")
        else:
            what = (f"gamma {cfg.gamma:g}; " if cfg.loss == "simpo" else "") + "no reference"
        messages = [f"preference loss: {cfg.loss} (beta {cfg.beta:g}; {what})"]
        if dropped:
            messages.append(f"note: {dropped} of {n_train} training pairs were left out: their "
                            f"prompt fills the {plan.block_size}-token limit, so no answer "
                            f"token is left (--block-size sets it)")
        return messages

    def load_model(self, resolved, cfg: TrainConfig, tokenizer):
        refuse_classifier(resolved)
        model = load_base(resolved, trust_remote_code=cfg.trust_remote_code,
                          allow_pickle=cfg.allow_pickle)
        disable_dropout(model)
        if self.cached_reference:  # the model is still the base here: before the method
            key = reference.reference_key(model, self.data_hash, self.max_length)
            self.messages.append(reference.attach(
                model, self.sets, key=key, batch_size=self.batch_size,
                device=pick_device(cfg.device)))
        return model

    def loss_sum(self, model, batch, device) -> torch.Tensor:
        return self.loss_and_stats(model, batch, device)[0]

    def loss_and_stats(self, model, batch, device) -> tuple[torch.Tensor, dict]:
        """(the summed loss of the batch's pairs, sums of STATS over them)."""
        sums, counts = sequence_logps(model, batch, device)  # (2B,), (2B,)
        ref = None
        if self.loss == "dpo":
            ref = (batch.reference.to(device) if batch.reference is not None
                   else self._reference(model, batch, device))
        losses, rewards_c, rewards_r = pair_losses(self.loss, self.beta, self.gamma, sums,
                                                   counts, ref)
        n_chosen, n_rejected = counts.chunk(2)
        valid = ((n_chosen > 0) & (n_rejected > 0)).float()  # a stand-in batch has none
        return (losses * valid).sum(), batch_stats(rewards_c, rewards_r, valid)

    def _reference(self, model, batch, device) -> torch.Tensor:
        """LoRA: the model with its adapter switched off is the base, the reference."""
        inner = getattr(model, "module", model)  # DDP: the weights are the same on each rank
        if self.cached_reference or not hasattr(inner, "disable_adapter"):
            raise RuntimeError("a DPO batch without reference log-probabilities")
        with torch.no_grad(), inner.disable_adapter():
            return sequence_logps(inner, batch, device)[0]

    @torch.no_grad()
    def evaluate(self, model, val_set, batch_size: int, device, autocast) -> dict:
        was_training = model.training
        model.eval()
        totals = torch.zeros(len(STATS) + 2, dtype=torch.float64, device=device)
        for batch in iterate(val_set.batches(0, batch_size), "evaluating",
                             val_set.num_batches(batch_size), "batch"):
            with autocast():
                loss, stats = self.loss_and_stats(model, batch, device)
            totals += torch.stack([loss.double(), *(stats[s].double() for s in STATS),
                                   torch.tensor(float(batch.n_target_tokens), device=device,
                                                dtype=torch.float64)])
        model.train(was_training)
        if distributed.active():  # every rank's pairs
            totals = distributed.all_sum(totals)
        values = (totals[:-1] / totals[-1].clamp_min(1)).tolist()
        return {"val_loss": round(values[0], 6),
                **{name: round(v, 4) for name, v in zip(STATS, values[1:])}}

    def rank(self, record: dict) -> list:
        # The validation loss, not the reward accuracy: on a few dozen held-out pairs the
        # accuracy moves in steps of a few percent and ties often (at 1.0 on easy data), while
        # the loss still tells a wider margin from a narrower one. TRL's default too.
        return [record["val_loss"]]

    def info(self) -> dict:
        return {"task": self.name, "loss": self.loss, "beta": self.beta,
                **({"gamma": self.gamma} if self.gamma is not None else {}),
                **({"format": "chat"} if self.chat else {})}


def disable_dropout(model: nn.Module) -> None:
    """Dropout off in the model (TRL's DPOConfig.disable_dropout, True by default): the
    rewards compare log-probabilities, and dropout noise in them would be noise in the
    loss. LoRA's own dropout (--lora-dropout) stays as given."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _question(pair) -> str:
    """What a sample during training answers: the pair's prompt (of a chat prompt, its last
    user message, which `generate` asks in the chat format)."""
    if pair.turns:
        return next((t.content for t in reversed(pair.turns) if t.role == "user"), "")
    return pair.prompt


def _answerable(tokens, max_length: int) -> tuple[np.ndarray, int]:
    """(indices of the pairs that keep answer tokens in both sequences when cut at
    `max_length`, how many do not)."""
    chosen, rejected = tokens
    ok = (answer_tokens(chosen, max_length) > 0) & (answer_tokens(rejected, max_length) > 0)
    return np.flatnonzero(ok), int((~ok).sum())


def _hash(train, val, kept: np.ndarray, max_length: int) -> str:
    h = hashlib.sha256(f"preference;max_length={max_length};".encode())
    for docs in (*train, *(val or ())):
        for a in (docs.ids, docs.loss_mask, docs.offsets):
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(kept.tobytes())
    return h.hexdigest()[:16]
