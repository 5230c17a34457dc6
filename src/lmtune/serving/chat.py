"""Chat messages -> prompt tokens, through the model's own chat template, rendered by
models/chat.py in a child process under a time, output and memory limit (a template is code
from whoever published the model). Whatever the template does wrong is a 400 naming the
model, never a 500 or a server that cannot stop.
"""

from __future__ import annotations

from lmtune.errors import UserError
from lmtune.models.chat import render_chat


def message_text(content) -> str:
    """OpenAI content: a string, or a list of parts of which lmtune reads the text ones."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text":
            raise UserError(f"messages: content parts of type {part.type!r} are not supported; "
                            f"lmtune serves text models")
        texts.append(part.text or "")
    return "".join(texts)


def encode_chat(served, messages, renderer) -> list[int]:
    tokenizer = served.tokenizer
    conversation = [{"role": m.role, "content": message_text(m.content)} for m in messages]
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"model {served.name!r} has no chat template, so it cannot take "
                        f"messages", hint="use /v1/completions with a plain prompt")
    text = render_chat(tokenizer, conversation, renderer, who=f"model {served.name!r}")
    # The template writes any start token itself, so no special tokens are added here.
    return tokenizer(text, add_special_tokens=False)["input_ids"]
