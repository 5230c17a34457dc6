"""The quick-start job: fine-tune the default model on the jokes that `pyjokes` ships and
compare samples before and after. It shows the three things people ask about first: the
model learns the format, it stops on its own, and it still writes new text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmtune.atomic import write_file
from lmtune.home import lmtune_home
from lmtune.models.generate import Sample

TEMPLATE = "Joke: {joke}"
PROMPT = "Joke:"


@dataclass
class DemoResult:
    data: Path
    before: list[Sample]
    after: list[Sample]
    train: object  # TrainResult


def jokes_file() -> Path:
    """The English jokes of pyjokes as JSONL (the repo ships no third-party text)."""
    import pyjokes

    path = lmtune_home() / "data" / "pyjokes-en.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"joke": joke}, ensure_ascii=False) + "\n"
                 for joke in pyjokes.get_jokes(language="en", category="all")]
        write_file(path, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))
    return path


def run_demo(*, out: str | None = None, epochs: float = 3.0, model: str | None = None,
             n: int = 4, on_event: Callable[[str, dict], None] | None = None,
             trust_remote_code: bool = False, allow_pickle: bool = False) -> DemoResult:
    from lmtune.api import generate, load, train

    data = jokes_file()
    options = dict(max_new_tokens=60, n=n, seed=0, temperature=0.8)
    trust = dict(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    base = load(model, precision="fp32", **trust)
    before = generate(base, [PROMPT], **options)
    del base
    result = train(str(data), template=TEMPLATE, model=model, epochs=epochs, out=out,
                   sample_prompts=[PROMPT], on_event=on_event, **trust)
    after = generate(str(result.out), [PROMPT], **options, **trust)
    return DemoResult(data=data, before=before, after=after, train=result)
