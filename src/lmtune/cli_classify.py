"""Command-line handlers for classification: `lmtune predict` and the end of `lmtune train
--task classify` (`lmtune eval` on a classification run is printed by cli_analysis.py). They
print; the work is done by classify.py, which prints nothing. Data goes to stdout."""

from __future__ import annotations

import json

from lmtune.config import PredictConfig


def run_predict(cfg: PredictConfig) -> int:
    from lmtune.classify import load_classifier, predict, write_predictions
    from lmtune.errors import UserError

    if not cfg.run:
        raise UserError("predict needs a classification run folder",
                        hint="lmtune predict RUN --text '...' (or --data FILE)")
    if bool(cfg.texts) == bool(cfg.data):
        raise UserError("pass texts to classify (--text) or a file of them (--data), not both"
                        if cfg.texts else "nothing to classify",
                        hint="lmtune predict RUN --text '...' [--text ...], or --data FILE")
    clf = load_classifier(cfg.run, device=cfg.device)
    predictions = predict(clf, cfg.texts, data=cfg.data, text_column=cfg.text_column,
                          template=cfg.template, format=cfg.format, encoding=cfg.encoding,
                          batch_size=cfg.batch_size)
    if cfg.out:
        path = write_predictions(predictions, clf.labels, cfg.out)
        print(f"{len(predictions)} predictions written to {path}")
        return 0
    for p in predictions:
        if cfg.json:
            print(json.dumps(p.to_dict(), ensure_ascii=False))
        else:
            text = p.text if len(p.text) <= 70 else p.text[:67] + "..."
            print(f"{p.label}\t{p.probs[p.label]:.3f}\t{text}".replace("\n", " "))
    return 0


def print_train_end(result) -> int:
    """After `lmtune train --task classify`: the last and the best validation scores."""
    m = result.metrics
    if m is not None:
        print(f"validation at step {m['step']}: accuracy {m['accuracy']:.3f}, macro F1 "
              f"{m['macro_f1']:.3f}")
    if result.best_step is not None:
        print(f"best macro F1 {result.best_score:.3f} at step {result.best_step} (kept in "
              f"{result.out}/checkpoints/step-{result.best_step:06d})")
    print(f"try it: lmtune predict {result.out} --text '...'")
    return 0

