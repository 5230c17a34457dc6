"""A packed batch of short documents for a tiny model, and the gradients a backward left:
what the loss and step-memory tests compare between the fast and the plain paths."""

from lmtune.data import Example, PackedDataset, tokenize_examples
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import Resolved


def packed_batch(folder):
    tok = load_tokenizer(Resolved(str(folder), str(folder)))
    docs = tokenize_examples([Example("", t) for t in (
        "the cat sat on the mat", "a dog ran in the park while birds sang",
        "question answer two plus four")] * 3, tok)
    return next(PackedDataset(docs, 32, shuffle=False).batches(0, 4))


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
