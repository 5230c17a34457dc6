"""Text classification with a decoder model (GPT-2, GPT-Neo, Llama-family): the task that
the training loop runs for `--task classify` (a trained classifier predicts in predict.py).

The model is the family's AutoModelForSequenceClassification: the transformer plus a linear
label head (`score`) read at the last real token (see data.py for how padding is kept out of
that position). The label set is read from the training data and saved twice: as
`id2label`/`label2id` in the model config, and as `labels` in lmtune.json (a LoRA run has no
config.json of its own).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from lmtune import distributed
from lmtune.config import TrainConfig
from lmtune.models.load import load_base
from lmtune.models.resolve import refuse_classifier
from lmtune.progress import iterate
from lmtune.tasks.base import TaskData
from lmtune.tasks.classify.data import (TextDataset, label_ids, label_set, read_labelled,
                                        stratified_split, tokenize_texts)
from lmtune.tasks.classify.metrics import classification_metrics
from lmtune.tasks.plan import plan_classify

METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def head_config(names: list[str], pad_token_id: int) -> dict:
    """Config values of the label head; the pad id is how the head finds the last real token."""
    return dict(num_labels=len(names), id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)}, pad_token_id=pad_token_id)


def forward_logits(model, batch, device) -> torch.Tensor:
    """(B, num_labels) float32 logits at each text's last real token."""
    out = model(input_ids=batch.input_ids.to(device), use_cache=False,
                attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device))
    return out.logits.float()


class Classification:
    """--task classify: cross-entropy of the label head, optionally class-weighted."""

    name = "classify"
    best_metric = "macro_f1"

    def __init__(self):
        self.names: list[str] = []
        self.counts: list[int] = []
        self.weights: torch.Tensor | None = None  # (num_labels,) with --class-weights auto
        self.max_length: int | None = None
        self.columns: dict = {}  # text_column / label_column, for lmtune.json

    def check(self, cfg: TrainConfig) -> list[str]:
        problems = []
        if cfg.column is not None:
            problems.append("--task classify takes the text from --text-column (or "
                            "--template), not --column")
        if cfg.text_column is not None and cfg.template is not None:
            problems.append("use either --text-column or --template for the text")
        if cfg.text_column is not None and cfg.text_column == cfg.label_column:
            problems.append(f"--text-column and --label-column are both '{cfg.text_column}'")
        if cfg.prompt_template or cfg.completion_template:
            problems.append("--prompt-template/--completion-template are for --task generate")
        if cfg.split_on is not None:
            problems.append("--split-on is for plain text; --task classify needs a table with "
                            "a text and a label column")
        if cfg.sample_prompts or cfg.sample_every:
            problems.append("--sample-prompt/--sample-every: a classifier generates no samples")
        return problems

    def prepare(self, cfg: TrainConfig, tokenizer, *, context: int, n_layers: int,
                world: int = 1) -> TaskData:
        def read(path: str):
            return read_labelled(path, text_column=cfg.text_column, template=cfg.template,
                                 label_column=cfg.label_column, fmt=cfg.format,
                                 encoding=cfg.encoding)

        data = read(cfg.data)
        self.columns = {"text_column": None if cfg.template else cfg.text_column or "text",
                        "label_column": cfg.label_column}
        self.names = label_set(data.labels, cfg.data)
        ids = label_ids(data.labels, self.names, cfg.data)
        if cfg.val_data:
            val = read(cfg.val_data)
            texts, labels = data.texts, ids
            val_texts, val_labels = val.texts, label_ids(val.labels, self.names, cfg.val_data)
        else:
            train_rows, val_rows = stratified_split(ids, cfg.val_split, cfg.seed)
            texts, labels = [data.texts[i] for i in train_rows], ids[train_rows]
            val_texts, val_labels = [data.texts[i] for i in val_rows], ids[val_rows]
        full = tokenize_texts(texts, tokenizer)
        cfg, plan = plan_classify(cfg, lengths=full.lengths, context=context, n_layers=n_layers,
                                  world=world)
        self.max_length = plan.block_size
        train = full.cut(self.max_length, labels)
        valid = (tokenize_texts(val_texts, tokenizer, self.max_length, val_labels)
                 if val_texts else None)
        self.counts = np.bincount(labels, minlength=len(self.names)).tolist()
        if cfg.class_weights == "auto":
            # sklearn's "balanced": n / (k * n_c); the weights average 1 over the examples,
            # so the loss keeps its scale and the learning rate its meaning.
            counts = torch.tensor(self.counts, dtype=torch.float32)
            self.weights = len(labels) / (len(self.names) * counts)
        pad, side = tokenizer.pad_token_id, tokenizer.padding_side
        train_set = TextDataset(train, pad_id=pad, padding_side=side, shuffle=True,
                                seed=cfg.seed)
        val_set = (TextDataset(valid, pad_id=pad, padding_side=side, shuffle=False)
                   if valid is not None else None)
        messages = ["labels (training examples): " + ", ".join(
            f"{n} ({c})" for n, c in zip(self.names, self.counts))]
        if self.weights is not None:
            messages.append("class weights: " + ", ".join(
                f"{n} {w:.3g}" for n, w in zip(self.names, self.weights.tolist())))
        cut = train.truncated + (valid.truncated if valid is not None else 0)
        if cut:
            messages.append(f"note: {cut} texts are longer than {self.max_length} tokens and "
                            f"were cut (--block-size sets the limit)")
        return TaskData(cfg=cfg, plan=plan, train_set=train_set, val_set=val_set,
                        data_hash=self._hash(train, valid),
                        summary={"train_examples": len(train), "train_tokens": train.n_tokens,
                                 "val_examples": len(valid) if valid is not None else 0,
                                 "stats": {"records": len(data.texts)}},
                        messages=messages)

    def _hash(self, *parts) -> str:
        h = hashlib.sha256("\n".join(self.names).encode())
        for p in parts:
            if p is not None:
                for a in (p.ids, p.offsets, p.labels):
                    h.update(a.tobytes())
        return h.hexdigest()[:16]

    def load_model(self, resolved, cfg: TrainConfig, tokenizer):
        from transformers import AutoModelForSequenceClassification

        refuse_classifier(resolved)
        return load_base(resolved, trust_remote_code=cfg.trust_remote_code,
                         allow_pickle=cfg.allow_pickle,
                         auto_class=AutoModelForSequenceClassification,
                         **head_config(self.names, tokenizer.pad_token_id))

    def loss_sum(self, model, batch, device) -> torch.Tensor:
        logits = forward_logits(model, batch, device)  # (B, C)
        weight = None if self.weights is None else self.weights.to(device)
        return F.cross_entropy(logits, batch.labels.to(device), weight=weight, reduction="sum")

    @torch.no_grad()
    def evaluate(self, model, val_set, batch_size: int, device, autocast) -> dict:
        was_training = model.training
        model.eval()
        logits, labels = [], []
        for batch in iterate(val_set.batches(0, batch_size), "evaluating",
                             val_set.num_batches(batch_size), "batch"):
            with autocast():
                logits.append(forward_logits(model, batch, device).cpu())
            labels.append(batch.labels)
        model.train(was_training)
        logits, labels = torch.cat(logits), torch.cat(labels)  # (N, C), (N,)
        if distributed.active():  # every rank's rows; stand-ins for empty shares have -100
            logits, labels = distributed.gather_rows(logits, labels)
            logits, labels = logits[labels >= 0], labels[labels >= 0]
        loss = F.cross_entropy(logits, labels, weight=self.weights, reduction="sum") / len(labels)
        predicted = logits.argmax(-1)
        got = classification_metrics(labels.numpy(), predicted.numpy(), self.names)
        # The majority class's share: what always answering it scores. A model that predicts
        # one class for every text sits there, and the console says so with what to change.
        baseline = torch.bincount(labels, minlength=len(self.names)).max().item() / len(labels)
        one = predicted.unique()
        return {"val_loss": round(loss.item(), 6), **{k: round(got[k], 4) for k in METRICS},
                "baseline_accuracy": round(baseline, 4),
                **({"only_label": self.names[int(one[0])]} if len(one) == 1 else {})}

    def rank(self, record: dict) -> list:
        # Macro F1 first; on a small validation set it often ties (at 1.0, say), and then the
        # lower validation loss is the more confident, better-trained checkpoint.
        return [-record["macro_f1"], record["val_loss"]]

    def info(self) -> dict:
        return {"task": self.name, **self.columns, "labels": self.names,
                "label_counts": self.counts,
                "max_length": self.max_length,
                "class_weights": None if self.weights is None else self.weights.tolist()}
