"""Conversations as training data: OpenAI's chat fine-tuning format, one record per line,
`{"messages": [{"role", "content", "weight"?}, ...]}`, read and checked as OpenAI's data
checker does. How they are rendered and which tokens count in the loss: chat_tokens.py."""

from __future__ import annotations

from dataclasses import dataclass

from lmtune.errors import UserError

FIELD = "messages"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_SHOWN_PROMPTS = 2  # conversations whose first user message becomes a sample prompt


@dataclass(frozen=True)
class Turn:
    role: str       # system, user or assistant
    content: str
    trained: bool   # an assistant turn with weight 1 (the default)


def is_chat(records) -> bool:
    """Every record holds a list of messages (the file is chat data)."""
    return bool(records) and all(isinstance(r.get(FIELD), list) for r in records)


def chat_turns(records, source: str) -> list[tuple[Turn, ...]]:
    """Each record's turns, checked as OpenAI's data checker does; a bad record is an error
    naming where it is, and nothing is trained on a file that has one."""
    place = getattr(records, "place", lambda i: f"record {i + 1}")
    return [message_turns(r[FIELD], f"{source} {place(i)}") for i, r in enumerate(records)]


def message_turns(messages, where: str, need_answer: bool = True) -> tuple[Turn, ...]:
    """A list of messages as turns; an error naming `where` for anything lmtune cannot train
    on. Without `need_answer` (a preference pair's prompt) no assistant message is needed."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: expected a non-empty list of messages, got "
                        f"{type(messages).__name__}",
                        hint='write messages as [{"role": "user", "content": "..."}, ...]')
    turns = []
    for j, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            raise UserError(f"{where}: message {j} is not an object",
                            hint='write each message as {"role": "user", "content": "..."}')
        role = ROLES.get(m.get("role"))
        if role is None:
            raise UserError(f"{where}: message {j} has role {m.get('role')!r}; lmtune trains "
                            f"on system, developer, user and assistant messages",
                            hint="tool and function messages are not supported")
        content = _text(m.get("content"), where, j)
        weight = m.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool) or (weight == 0 and
                                                                role != "assistant"):
            raise UserError(f"{where}: message {j} has weight {weight!r}",
                            hint="weight is 0 or 1, and only on assistant messages")
        turns.append(Turn(role, content, role == "assistant" and weight == 1))
    if need_answer and not any(t.role == "assistant" for t in turns):
        raise UserError(f"{where}: the conversation has no assistant message",
                        hint="each example needs at least one assistant answer to learn from")
    return tuple(turns)


def _text(content, where: str, j: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise UserError(f"{where}: message {j} has no text content",
                    hint='"content" is a string, or a list of {"type": "text", "text": ...}')


def sample_prompts(conversations: list[tuple[Turn, ...]]) -> list[str]:
    """The first user message of the first conversations: samples during training ask them."""
    firsts = [next((t.content for t in c if t.role == "user"), None) for c in conversations]
    return [p for p in firsts if p][:MAX_SHOWN_PROMPTS]
