"""`lmtune data prepare`: tokenize a corpus into the cache that `lmtune train` reads."""

from __future__ import annotations

from lmtune.data.cache import Prepared, prepare
from lmtune.models import load_tokenizer, resolve


def prepare_corpus(cfg) -> Prepared:
    """`cfg` has the DataOptions fields plus `model` and `trust_remote_code`."""
    resolved = resolve(cfg.model)
    tokenizer = load_tokenizer(resolved, cfg.trust_remote_code)
    return prepare(cfg.data, cfg, tokenizer)
