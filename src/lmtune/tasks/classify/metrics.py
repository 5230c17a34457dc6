"""Classification metrics from label ids, with scikit-learn's definitions (so numbers can be
compared with what people compute elsewhere), in numpy.

- precision, recall and F1 of a class are 0 where their denominator is 0 (sklearn's
  `zero_division=0`);
- the macro averages are over the classes that occur in the true labels or the predictions
  (sklearn's `labels=None`): a training class absent from the evaluation data and never
  predicted does not drag the average to 0;
- the confusion matrix has a row per true class and a column per predicted class, over every
  training class.
"""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: [true, predicted]."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def classification_metrics(y_true, y_pred, names: list[str]) -> dict:
    """accuracy, macro_precision, macro_recall, macro_f1, per_class {name: precision, recall,
    f1, support}, confusion_matrix (rows true, columns predicted) and labels (the order of
    its rows and columns)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    m = confusion(y_true, y_pred, len(names))
    tp = np.diag(m).astype(np.float64)
    support, predicted = m.sum(axis=1), m.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    seen = (support > 0) | (predicted > 0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "support": int(support[i])}
                 for i, name in enumerate(names)}
    return {"accuracy": float(tp.sum() / max(1, len(y_true))),
            "macro_precision": float(precision[seen].mean()) if seen.any() else 0.0,
            "macro_recall": float(recall[seen].mean()) if seen.any() else 0.0,
            "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
            "per_class": per_class, "confusion_matrix": m.tolist(), "labels": list(names)}


def majority_baseline(y_true, majority: int, names: list[str]) -> dict:
    """What always answering the training data's most common label scores on `y_true`."""
    y_true = np.asarray(y_true, dtype=np.int64)
    got = classification_metrics(y_true, np.full(len(y_true), majority), names)
    return {"label": names[majority], "accuracy": got["accuracy"], "macro_f1": got["macro_f1"]}
