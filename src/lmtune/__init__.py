"""lmtune: fine-tune GPT-style language models on your own text.

    import lmtune
    result = lmtune.train("jokes.jsonl", column="joke", epochs=2)
    samples = lmtune.generate(result.out, prompts=["Why did"], n=4)
    model, tokenizer = lmtune.load(result.out)
"""

__version__ = "0.1.0"

from lmtune.api import generate, load, merge, train  # noqa: E402
from lmtune.errors import UserError  # noqa: E402

__all__ = ["train", "generate", "load", "merge", "UserError", "__version__"]
