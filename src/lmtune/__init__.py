"""lmtune: fine-tune GPT-style language models on your own text.

    import lmtune
    result = lmtune.train("jokes.jsonl", column="joke", epochs=2)
    samples = lmtune.generate(result.out, prompts=["Why did"], n=4)
    model, tokenizer = lmtune.load(result.out)
"""

__version__ = "0.1.0"

from lmtune.api import (evaluate_classifier, generate, load, load_classifier, merge,  # noqa: E402
                        predict, train)
from lmtune.api import (check_memorization, compare, diff, evaluate_model,  # noqa: E402
                        inspect_data, write_report)
from lmtune.api import serve  # noqa: E402
from lmtune.errors import UserError  # noqa: E402

__all__ = ["train", "generate", "load", "merge", "predict", "load_classifier",
           "evaluate_classifier", "evaluate_model", "compare", "diff", "write_report",
           "inspect_data", "check_memorization", "serve", "UserError", "__version__"]
