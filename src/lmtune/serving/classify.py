"""/v1/classify: classification runs (`lmtune train --task classify`) behind the server.

The classifier is tasks/classify/predict.py's own (`load_classifier`, `Classifier.predict`);
this file only shapes its predictions as the endpoint's answer.
"""

from __future__ import annotations


def load(resolved, device: str, trust_remote_code: bool = False, allow_pickle: bool = False):
    from lmtune.tasks.classify.predict import load_classifier
    return load_classifier(resolved.spec, device=device, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle)


def predict(served, texts: list[str]) -> tuple[list[dict], int]:
    """[{"index", "label", "probabilities": {label: p}}], and how many tokens were read."""
    classifier = served.classifier
    predictions = classifier.predict(texts)
    n_tokens = sum(len(ids) for ids in classifier.tokenizer(texts)["input_ids"])
    data = [{"index": i, "label": p.label, "probabilities": p.probs}
            for i, p in enumerate(predictions)]
    return data, n_tokens
