"""Command-line handlers for classification: `lmtune predict` and the end of `lmtune train
--task classify` (`lmtune eval` on a classification run is printed by analysis.py). They
print; the work is done by tasks/classify/, which prints nothing. Data goes to stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmtune.config import PredictConfig


def cmd_predict(cfg: PredictConfig) -> int:
    from lmtune.tasks.classify.predict import load_classifier, predict, write_predictions
    from lmtune.errors import UserError

    if not cfg.run:
        raise UserError("predict needs a classification run folder",
                        hint="lmtune predict RUN --text '...' (or --data FILE)")
    if bool(cfg.texts) == bool(cfg.data):
        raise UserError("pass texts to classify (--text) or a file of them (--data), not both"
                        if cfg.texts else "nothing to classify",
                        hint="lmtune predict RUN --text '...' [--text ...], or --data FILE")
    if cfg.out and cfg.data and cfg.data != "-" and Path(cfg.out).exists() \
            and Path(cfg.out).resolve() == Path(cfg.data).resolve():
        raise UserError(f"--out {cfg.out} is the --data file itself; the predictions would "
                        f"replace the texts they came from",
                        hint="write the predictions to another file")
    clf = load_classifier(cfg.run, device=cfg.device, trust_remote_code=cfg.trust_remote_code,
                          allow_pickle=cfg.allow_pickle)
    if cfg.data == "-" and not cfg.out:
        # Interactive: the model loads once, then each line is answered as it arrives
        # (about 0.1 s a text for the default model on a CPU; loading takes seconds).
        for line in sys.stdin:
            if line.strip():
                _print(clf.predict([line.rstrip("\r\n")], cfg.batch_size)[0], cfg.json)
        return 0
    if cfg.data == "-":
        predictions = clf.predict([x.rstrip("\r\n") for x in sys.stdin if x.strip()],
                                  cfg.batch_size)
    else:
        predictions = predict(clf, cfg.texts, data=cfg.data, text_column=cfg.text_column,
                              template=cfg.template, format=cfg.format, encoding=cfg.encoding,
                              batch_size=cfg.batch_size)
    if cfg.out:
        path = write_predictions(predictions, clf.labels, cfg.out)
        print(f"{len(predictions)} predictions written to {path}")
        return 0
    for p in predictions:
        _print(p, cfg.json)
    return 0


def _print(p, as_json: bool) -> None:
    if as_json:
        print(json.dumps(p.to_dict(), ensure_ascii=False), flush=True)
    else:
        text = p.text if len(p.text) <= 70 else p.text[:67] + "..."
        print(f"{p.label}\t{p.probs[p.label]:.3f}\t{text}".replace("\n", " "), flush=True)


def print_train_end(result) -> int:
    """After `lmtune train --task classify`: the last and the best validation scores."""
    m = result.metrics
    if m is not None:
        baseline = (f" (the most common label alone: {m['baseline_accuracy']:.3f})"
                    if "baseline_accuracy" in m else "")
        print(f"validation at step {m['step']}: accuracy {m['accuracy']:.3f}{baseline}, macro "
              f"F1 {m['macro_f1']:.3f}")
        if "only_label" in m:
            from lmtune.cli.console import collapse_note
            print(collapse_note(m))
    if result.best_step is not None:
        print(f"best macro F1 {result.best_score:.3f} at step {result.best_step} (kept in "
              f"{result.out}/checkpoints/step-{result.best_step:06d})")
    print(f"try it: lmtune predict {result.out} --text '...'")
    return 0

