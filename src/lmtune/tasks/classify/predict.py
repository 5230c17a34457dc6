"""A trained classifier: load it once, label texts many times (`lmtune predict`, the server's
/v1/classify, `lmtune eval` on a classification run)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmtune.atomic import write_file
from lmtune.errors import UserError
from lmtune.progress import iterate
from lmtune.tasks.classify.data import (TextDataset, is_plain_text, read_labelled,
                                        tokenize_texts)
from lmtune.tasks.classify.task import forward_logits, head_config

@dataclass
class Prediction:
    text: str
    label: str
    probs: dict[str, float]  # every label, in the classifier's label order

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _quiet_transformers():
    # Loading a LoRA classifier builds the label head at random before the adapter replaces
    # it; transformers reports that as "newly initialized", which here is not true.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class Classifier:
    def __init__(self, model, tokenizer, info: dict, device: torch.device):
        self.model, self.tokenizer, self.info, self.device = model, tokenizer, info, device
        self.labels: list[str] = list(info["labels"])

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), num_labels) class probabilities, in the order of `texts`."""
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
        empty = [i + 1 for i, t in enumerate(texts) if not t or not t.strip()]
        if empty:
            raise UserError(f"text {empty[0]} is empty" if len(texts) > 1 else "the text is empty",
                            hint="pass text to classify")
        tok = tokenize_texts(list(texts), self.tokenizer, self.info.get("max_length"))
        data = TextDataset(tok, pad_id=self.tokenizer.pad_token_id,
                           padding_side=self.tokenizer.padding_side, shuffle=False)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        batches = iterate(data.batches(0, batch_size), "classifying",
                          data.num_batches(batch_size), "batch") if texts else ()
        for batch in batches:
            logits = forward_logits(self.model, batch, self.device)  # (B, C)
            out[batch.rows] = logits.softmax(-1).cpu().numpy()
        return out

    def predict(self, texts: list[str] | str, batch_size: int = 32) -> list[Prediction]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        probs = self.probabilities(texts, batch_size)
        return [Prediction(text=t, label=self.labels[int(p.argmax())],
                           probs={n: round(float(v), 6) for n, v in zip(self.labels, p)})
                for t, p in zip(texts, probs)]


def load_classifier(run: str, *, device: str = "auto", trust_remote_code: bool = False,
                    allow_pickle: bool = False) -> Classifier:
    """A classification run folder, one of its checkpoints, or its final/ folder."""
    from transformers import AutoModelForSequenceClassification

    from lmtune.device import pick_device
    from lmtune.models.load import attach_adapter, load_base, load_tokenizer
    from lmtune.models.resolve import is_classifier, resolve

    resolved = resolve(run)
    if not is_classifier(resolved):
        raise UserError(f"{run} is not a classification run",
                        hint="train one with: lmtune train DATA --task classify --label-column "
                             "LABEL")
    dev = torch.device(pick_device(device))
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    with _quiet_transformers():
        model = load_base(resolved, trust_remote_code=trust_remote_code,
                          allow_pickle=allow_pickle,
                          auto_class=AutoModelForSequenceClassification,
                          **head_config(resolved.info["labels"], tokenizer.pad_token_id))
        if resolved.adapter is not None:
            model = attach_adapter(model, resolved.adapter, allow_pickle=allow_pickle)
    return Classifier(model.eval().to(dev), tokenizer, resolved.info, dev)


def texts_of(path: str, info: dict, *, text_column: str | None = None,
             template: str | None = None, label_column: str | None = None,
             fmt: str | None = None, encoding: str = "utf-8", need_labels: bool = False):
    """Read a file the way the run read its training data, unless told otherwise: its
    template, or its text column, and its label column."""
    if text_column is None and template is None and not is_plain_text(path, fmt):
        template, text_column = info.get("template"), info.get("text_column")
        text_column = None if template else text_column
    return read_labelled(path, text_column=text_column, template=template,
                         label_column=label_column or info.get("label_column"), fmt=fmt,
                         encoding=encoding, need_labels=need_labels)


def predict(run: "str | Classifier", texts: list[str] | str | None = None, *,
            data: str | None = None, text_column: str | None = None,
            template: str | None = None, format: str | None = None, encoding: str = "utf-8",
            batch_size: int = 32, device: str = "auto", trust_remote_code: bool = False,
            allow_pickle: bool = False) -> list[Prediction]:
    """Label `texts`, or every text of the file `data` (read like the run's training data
    unless `text_column`/`template` say otherwise). `run` may be a `Classifier` from
    `load_classifier`, which keeps the model loaded between calls."""
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    if bool(texts) == bool(data):
        raise UserError("pass texts to classify (--text) or a file of them (--data), not both"
                        if texts else "nothing to classify",
                        hint="lmtune predict RUN --text '...' [--text ...], or --data FILE")
    clf = run if isinstance(run, Classifier) else load_classifier(
        str(run), device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if data:
        texts = texts_of(str(data), clf.info, text_column=text_column, template=template,
                         fmt=format, encoding=encoding).texts
    return clf.predict(texts, batch_size)


def write_predictions(predictions: list[Prediction], labels: list[str], path: str) -> Path:
    """CSV with text, label and one `prob_<label>` column per label; written beside the target
    and renamed, so an interrupted write leaves no half file."""
    import csv

    target = Path(path)
    if target.is_dir():
        raise UserError(f"--out {target} is a folder", hint="pass a file name such as preds.csv")
    if not target.parent.is_dir():
        raise UserError(f"--out {target}: folder {target.parent} does not exist")
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"] + [f"prob_{n}" for n in labels])
            for p in predictions:
                w.writerow([p.text, p.label] + [p.probs[n] for n in labels])
    write_file(target, write)
    return target
