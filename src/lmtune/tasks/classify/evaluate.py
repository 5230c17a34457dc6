"""Evaluate a classification run on labelled data: what `lmtune eval RUN --data FILE` does
when the run's lmtune.json says `"task": "classify"`.

    evaluate_classifier(run: str, data: str, *, text_column: str | None = None,
                        label_column: str | None = None, template: str | None = None,
                        format: str | None = None, encoding: str = "utf-8",
                        batch_size: int = 32, device: str = "auto") -> dict

`run` is a run folder, one of its checkpoints, or a final/ folder. The text and label columns
default to the ones the run was trained with (lmtune.json). The result (JSON-ready):

    task "classify", run, data, examples, loss (mean cross-entropy, unweighted),
    accuracy, macro_precision, macro_recall, macro_f1,
    per_class {label: {precision, recall, f1, support}},
    confusion_matrix [[...]] (row = true label, column = predicted, in `labels` order), labels,
    majority_baseline {label, accuracy, macro_f1}: always answering the most common training
    label (from lmtune.json; the data's own most common label for runs without the counts).

Metric definitions are scikit-learn's (metrics.py). `plot_confusion(result, path)`
draws the confusion matrix to a PNG (or any format matplotlib knows from the extension).
A label in the data that the run was not trained on is an error that names it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmtune.atomic import write_file
from lmtune.errors import UserError
from lmtune.tasks.classify.data import label_ids
from lmtune.tasks.classify.metrics import classification_metrics, majority_baseline
from lmtune.tasks.classify.predict import load_classifier, texts_of


def evaluate_classifier(run: str, data: str, *, text_column: str | None = None,
                        label_column: str | None = None, template: str | None = None,
                        format: str | None = None, encoding: str = "utf-8",
                        batch_size: int = 32, device: str = "auto",
                        trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    clf = load_classifier(str(run), device=device, trust_remote_code=trust_remote_code,
                          allow_pickle=allow_pickle)
    rows = texts_of(str(data), clf.info, text_column=text_column, template=template,
                    label_column=label_column, fmt=format, encoding=encoding, need_labels=True)
    y_true = label_ids(rows.labels, clf.labels, str(data))
    probs = clf.probabilities(rows.texts, batch_size)  # (N, C)
    got = classification_metrics(y_true, probs.argmax(axis=1), clf.labels)
    counts = clf.info.get("label_counts") or np.bincount(y_true, minlength=len(clf.labels))
    # Clipped so a confidently wrong answer costs a large but finite loss.
    loss = -np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)).mean()
    return {"task": "classify", "run": str(run), "data": str(data), "examples": len(y_true),
            "loss": round(float(loss), 6), **got,
            "majority_baseline": majority_baseline(y_true, int(np.argmax(counts)), clf.labels)}


def plot_confusion(result: dict, path: str | Path) -> Path:
    """The confusion matrix of `evaluate_classifier`'s result as an image; cells show counts,
    colour shows each true label's share (so small classes are as readable as large ones)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    m = np.array(result["confusion_matrix"], dtype=np.float64)
    labels = result["labels"]
    shares = m / np.maximum(1, m.sum(axis=1, keepdims=True))
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true label")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_title(f"accuracy {result['accuracy']:.3f}, macro F1 {result['macro_f1']:.3f}")
    fig.tight_layout()
    try:  # written beside the target and renamed, so a failed save leaves no half image
        write_file(path, lambda tmp: fig.savefig(
            tmp, dpi=120, format=path.suffix.lstrip(".").lower() or "png"))
    except ValueError as e:
        raise UserError(f"cannot write {path}: {e}", hint="use a .png, .svg or .pdf file name")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}")
    finally:
        plt.close(fig)
    return path
