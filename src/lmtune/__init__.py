"""lmtune: fine-tune GPT-style language models on your own text.

    import lmtune
    result = lmtune.train("jokes.jsonl", column="joke", epochs=2)
    samples = lmtune.generate(result.out, prompts=["Why did"], n=4)
    model, tokenizer = lmtune.load(result.out)

The functions are those of lmtune.api, loaded on first use: `import lmtune` (and so
`lmtune --help`) does not import torch. docs/ARCHITECTURE.md shows where everything lives.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lmtune.errors import UserError
from lmtune.version import __version__

_API = ("train", "generate", "load", "merge", "export", "predict", "load_classifier",
        "evaluate_classifier", "evaluate_model", "compare", "diff", "write_report",
        "inspect_data", "check_memorization", "prepare_data", "serve", "jobs")

__all__ = [*_API, "UserError", "__version__"]

if TYPE_CHECKING:  # for editors and type checkers; at run time __getattr__ loads them
    from lmtune.api import (check_memorization, compare, diff, evaluate_classifier,  # noqa
                            evaluate_model, export, generate, inspect_data, load,
                            load_classifier,
                            merge, predict, prepare_data, serve, train, write_report)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module("lmtune.api"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'lmtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
