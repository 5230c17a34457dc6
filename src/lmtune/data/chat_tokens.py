"""Conversations (data/chat.py) rendered and tokenized for training.

A conversation is rendered with the model's own chat template, the text it will see when it
is asked in chat (`lmtune generate --chat`, `lmtune serve`'s chat completions), and the loss
falls on the assistant's answers only, end-of-turn token included, and only where `weight`
is not 0 (as OpenAI trains). Which characters are an answer is found by rendering the
conversation up to each answer with and without it; the tokens whose first character falls
in an answer count in the loss. The whole text is tokenized in one piece, so the tokens are
exactly those of inference, not the joins of separately tokenized parts.

A model without a chat template gets the fallback below, written into the run's tokenizer so
that everything downstream (generate, serve, export) speaks the format it learned:

    <start>User:\\n...\\n\\nAssistant:\\n...<end>\\n\\n   (System: likewise)
"""

from __future__ import annotations

import json

import numpy as np

from lmtune.data.chat import Turn
from lmtune.data.special_tokens import eos_token_id, start_token_id
from lmtune.errors import UserError


def fallback_template(tokenizer) -> str:
    start = json.dumps(tokenizer.convert_ids_to_tokens(start_token_id(tokenizer)))
    end = json.dumps(tokenizer.convert_ids_to_tokens(eos_token_id(tokenizer)))
    # Newlines as expressions: transformers renders with trim_blocks, which drops the one
    # right after a block tag.
    return ("{{ " + start + " }}{% for m in messages %}{{ (m['role'] | capitalize) + ':\\n' + "
            "m['content'] }}{% if m['role'] == 'assistant' %}{{ " + end + " }}{% endif %}"
            "{{ '\\n\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:\\n' }}"
            "{% endif %}")


def use_chat_template(tokenizer) -> bool:
    """Give a tokenizer without a chat template the fallback one (in place: the run saves
    this tokenizer, so its model answers chats in the format it learned). True if it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = fallback_template(tokenizer)
    return True


def _render(tokenizer, turns, generation: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": t.role, "content": t.content} for t in turns]
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=tokenizer.get_chat_template(),
            add_generation_prompt=generation, **tokenizer.special_tokens_map)
    except Exception as e:  # the template is the model's code: whatever it raises is its error
        raise UserError(f"the model's chat template failed on a training conversation: "
                        f"{type(e).__name__}: {e}") from None
    return rendered[0]


def render(tokenizer, turns: tuple[Turn, ...]) -> tuple[str, list[tuple[int, int]]]:
    """(the conversation's text, the character spans of its trained answers)."""
    text = _render(tokenizer, turns, generation=False)
    spans = []
    for k, turn in enumerate(turns):
        if not turn.trained:
            continue
        before = _render(tokenizer, turns[:k], generation=True)
        upto = _render(tokenizer, turns[:k + 1], generation=False)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise UserError("the model's chat template does not write a conversation as its "
                            "turns one after another, so the answers' tokens cannot be told "
                            "apart", hint="fine-tune on prompt/completion pairs instead "
                                          "({\"prompt\": ..., \"completion\": ...})")
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_chats(tokenizer, conversations) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, loss mask) of each conversation, as inference will read it: no token added
    before (the template writes any start token), an end token after only where the text has
    none (the template's end-of-turn is usually it)."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError("chat data needs a fast (tokenizer.json) tokenizer, which finds each "
                        "token's characters")
    use_chat_template(tokenizer)
    eos = eos_token_id(tokenizer)
    rendered = [render(tokenizer, turns) for turns in conversations]
    encodings = tokenizer.backend_tokenizer.encode_batch([t for t, _ in rendered],
                                                         add_special_tokens=False)
    out = []
    for (_, spans), enc in zip(rendered, encodings):
        ids = np.asarray(enc.ids, dtype=np.int64)
        starts = np.asarray([a for a, _ in enc.offsets], dtype=np.int64)
        mask = np.zeros(len(ids), dtype=bool)
        for a, b in spans:
            mask |= (starts >= a) & (starts < b)
        if eos not in enc.ids:
            ids, mask = np.append(ids, eos), np.append(mask, True)
        out.append((ids, mask))
    return out
