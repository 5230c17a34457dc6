"""Chat messages -> prompt tokens, through the model's own chat template.

A chat template is Jinja code that comes with the model, so from whoever published it. It is
rendered by transformers' `apply_chat_template`, which compiles it in Jinja's
`ImmutableSandboxedEnvironment` (no attribute access to Python internals, no mutation of
the arguments) and further refuses underscore names on namespaces and dict subclasses: the
renderer the template authors test against, and a stricter one than a second copy here would
be. Anything a template raises (a SecurityError, its own `raise_exception`, an undefined
variable) is a clean 400 naming the model, never a 500.
"""

from __future__ import annotations

from lmtune.errors import UserError


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


def encode_chat(served, messages) -> list[int]:
    tokenizer = served.tokenizer
    conversation = [{"role": m.role, "content": message_text(m.content)} for m in messages]
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"model {served.name!r} has no chat template, so it cannot take "
                        f"messages", hint="use /v1/completions with a plain prompt")
    try:
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                             tokenize=False)
    except Exception as e:  # the template is the model's code: whatever it raises is a 400
        raise UserError(f"the chat template of model {served.name!r} failed on these "
                        f"messages: {type(e).__name__}: {e}")
    if not isinstance(text, str):
        raise UserError(f"the chat template of model {served.name!r} did not render text")
    # The template writes any start token itself, so no special tokens are added here.
    return tokenizer(text, add_special_tokens=False)["input_ids"]
