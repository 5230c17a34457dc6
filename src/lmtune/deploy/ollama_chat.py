"""A model's chat template (Jinja) as an Ollama TEMPLATE (Go template syntax).

Jinja cannot be translated to Go in general, so the template is not parsed: it is rendered
(by the same renderer as `lmtune generate --chat`) on conversations whose contents are
placeholder words, and the text between the placeholders is read off as "glue": what comes
before a system, user or assistant message, before a first user message (where templates put
a default system prompt), and after the last message (the start of the answer). The Go
template then writes that glue around `.Messages`. It is used only when the glue model
reproduces the Jinja output exactly on conversations it was not read from; a template whose
text depends on more than the next message's role gets None, and the caller falls back.

What this cannot see: a template that changes the contents themselves (trimming whitespace,
as Llama 3's does) renders such contents unchanged in Ollama.
"""

from __future__ import annotations

from dataclasses import dataclass

WORDS = {"system": "LMTUNExSYSTEMx", "user": "LMTUNExUSERx", "assistant": "LMTUNExASSISTANTx",
         "second": "LMTUNExSECONDx"}


@dataclass
class ChatGlue:
    first_user: str        # before a first message that is the user's
    user: str              # before a user message after another message
    assistant: str         # before an assistant message
    generation: str        # after the last message
    system: str | None     # before a (first) system message; None: the template refuses one
    end_of_turn: str = ""  # the text that ends an assistant turn: a stop for Ollama

    def render(self, messages: list[dict]) -> str:
        """What the Go template below renders for `messages` (its reference)."""
        out = []
        for i, m in enumerate(messages):
            if m["role"] == "system" and self.system is not None:
                out += [self.system, m["content"]]
            elif m["role"] == "user":
                out += [self.first_user if i == 0 else self.user, m["content"]]
            elif m["role"] == "assistant":
                out += [self.assistant, m["content"]]
        return "".join(out) + self.generation

    def go_template(self) -> str:
        # One line with no trim markers ({{- -}}): every byte of glue stays as it is.
        system = ("" if self.system is None else
                  f'{{{{ if eq $m.Role "system" }}}}{_go(self.system)}{{{{ $m.Content }}}}'
                  f"{{{{ else ")
        user = (f'if eq $m.Role "user" }}}}{{{{ if eq $i 0 }}}}{_go(self.first_user)}'
                f"{{{{ else }}}}{_go(self.user)}{{{{ end }}}}{{{{ $m.Content }}}}")
        assistant = (f'{{{{ else if eq $m.Role "assistant" }}}}{_go(self.assistant)}'
                     f"{{{{ $m.Content }}}}{{{{ end }}}}")
        opener = system if system else "{{ "
        return (f"{{{{ range $i, $m := .Messages }}}}{opener}{user}{assistant}{{{{ end }}}}"
                f"{_go(self.generation)}")


def _go(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')  # a literal "{{" would open an action


def chat_glue(render, special_tokens: list[str], bos: str | None) -> ChatGlue | None:
    """The glue of a chat template; `render(messages)` renders it with the generation prompt.
    None when the template's text is not glue around contents (see the module's note)."""
    s, u, a, u2 = WORDS["system"], WORDS["user"], WORDS["assistant"], WORDS["second"]

    def text(messages):
        out = render(messages)
        # llama.cpp puts the start token before every prompt itself (the GGUF says so).
        return out[len(bos):] if bos and out.startswith(bos) else out

    turns = [_msg("user", u), _msg("assistant", a), _msg("user", u2)]
    try:
        plain = text(turns)
        parts = _between(plain, [u, a, u2])
        if parts is None:
            return None
        first_user, assistant, user, generation = parts
        try:
            with_system = _between(text([_msg("system", s)] + turns), [s, u, a, u2])
        except Exception:  # a template that refuses a system message (Mistral's, Gemma's)
            with_system = None
        system = None
        if with_system is not None and with_system[2:] == [assistant, user, generation] and \
                with_system[1] == user:
            system = with_system[0]
        glue = ChatGlue(first_user, user, assistant, generation, system,
                        _end_of_turn(user, special_tokens))
        return glue if _reproduces(glue, text, system is not None) else None
    except Exception:  # the template failed on an ordinary conversation: nothing to derive
        return None


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _between(rendered: str, words: list[str]) -> list[str] | None:
    """The text before each word and after the last, or None if the words are not there
    once each and in order."""
    parts, at = [], 0
    for word in words:
        if rendered.count(word) != 1:
            return None
        i = rendered.find(word, at)
        if i < 0:
            return None
        parts.append(rendered[at:i])
        at = i + len(word)
    return parts + [rendered[at:]]


def _reproduces(glue: ChatGlue, text, system: bool) -> bool:
    """The glue renders conversations it was not read from exactly as the template does."""
    u, a, s = (WORDS[r] for r in ("user", "assistant", "system"))
    checks = [[_msg("user", "hi")],
              [_msg("user", u), _msg("assistant", a), _msg("user", "x"),
               _msg("assistant", "y"), _msg("user", "z")]]
    if system:
        checks += [[_msg("system", s), _msg("user", "hi")],
                   [_msg("system", s), _msg("user", u), _msg("assistant", a),
                    _msg("user", "x"), _msg("assistant", "y"), _msg("user", "z")]]
    return all(text(m) == glue.render(m) for m in checks)


def _end_of_turn(after_assistant: str, special_tokens: list[str]) -> str:
    """The special token that closes an assistant's turn (<|im_end|>, <|eot_id|>, </s>): the
    first one in the glue between an answer and the next user message."""
    found = [(after_assistant.find(t), -len(t), t) for t in special_tokens
             if t and t in after_assistant]
    return min(found)[2] if found else ""
