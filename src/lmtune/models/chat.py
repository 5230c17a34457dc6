"""Chat messages -> prompt text, through the model's own chat template.

A chat template is Jinja code that comes with the model, so from whoever published it. It is
rendered by transformers' own renderer (`render_jinja_template`, the one `apply_chat_template`
uses and template authors test against), in Jinja's ImmutableSandboxedEnvironment: no
attribute access to Python internals, no mutation of the arguments. Anything a template raises
(a SecurityError, its own `raise_exception`, an undefined variable) is one error line.

A sandbox does not bound time or memory: `{% for i in range(100000) %}{% for j in
range(100000) %}{% endfor %}{% endfor %}` runs for hours and `{{ 'a' * 300000000 }}` takes
gigabytes. `IsolatedRenderer` (the server's) renders in a child process of its own, which it
kills past a time limit; the child has a memory limit and answers at most MAX_CHARS. The
command line renders in its own process: a user can stop their own command with Ctrl-C.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

from lmtune.errors import UserError

TEMPLATE_SECONDS = 5.0       # a template renders in milliseconds; this is a stuck one
START_SECONDS = 60.0         # the child imports transformers' renderer before its first render
MAX_CHARS = 1_000_000        # far past any context a model here takes
CHILD_MEMORY = 1 << 30       # bytes the rendering child may take beyond its start


def template_inputs(tokenizer, messages: list[dict]) -> tuple[str, list[dict], dict]:
    """(template, messages, keyword values) exactly as apply_chat_template passes them."""
    from transformers.utils.chat_template_utils import _normalize_chat_messages

    if not getattr(tokenizer, "chat_template", None):
        raise UserError("this model's tokenizer has no chat template, so it cannot take chat "
                        "messages", hint="use a plain prompt")
    try:
        template = tokenizer.get_chat_template()
    except ValueError as e:  # several named templates and no default
        raise UserError(f"the model's chat template cannot be chosen: {e}") from None
    return template, _normalize_chat_messages(messages), dict(tokenizer.special_tokens_map)


def _render(template: str, messages: list[dict], values: dict) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=True, **values)
    return rendered[0]


def render_chat(tokenizer, messages: list[dict], renderer: "IsolatedRenderer | None" = None,
                *, who: str = "the model") -> str:
    """The prompt text of `messages`; with `renderer`, rendered under its limits."""
    template, messages, values = template_inputs(tokenizer, messages)
    if renderer is not None:
        return renderer.render(template, messages, values, who=who)
    try:
        text = _render(template, messages, values)
    except Exception as e:  # the template is the model's code: whatever it raises is its error
        raise UserError(f"the chat template of {who} failed on these messages: "
                        f"{type(e).__name__}: {e}") from None
    if not isinstance(text, str):
        raise UserError(f"the chat template of {who} did not render text")
    return text


# ---------------------------------------------------------------------------------------------
# Rendering in a child process, under limits.

def _child(conn, memory: int, max_chars: int) -> None:
    """The rendering process: one request at a time from `conn`, one answer each."""
    import resource

    import transformers.utils.chat_template_utils  # noqa: F401 (imported before the limit)

    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + memory, used + memory))
    conn.send(("ready", None))
    while True:
        try:
            template, messages, values = conn.recv()
        except EOFError:
            return
        try:
            text = _render(template, messages, values)
            if not isinstance(text, str):
                answer = ("error", "it did not render text")
            elif len(text) > max_chars:
                answer = ("error", f"it rendered more than {max_chars:,} characters")
            else:
                answer = ("ok", text)
        except MemoryError:
            answer = ("error", f"it needed more than {memory >> 20} MB of memory")
        except Exception as e:
            answer = ("error", f"{type(e).__name__}: {e}")
        conn.send(answer)


class IsolatedRenderer:
    """Chat templates rendered in a child process: past `seconds` the child is killed and the
    render refused; a new child starts for the next one. Renders take turns (each takes
    milliseconds). The child starts on first use; `close()` stops it."""

    def __init__(self, seconds: float = TEMPLATE_SECONDS, max_chars: int = MAX_CHARS,
                 memory: int = CHILD_MEMORY):
        self.seconds, self.max_chars, self.memory = seconds, max_chars, memory
        self._lock = threading.Lock()
        self._closing = threading.Lock()
        self._process = self._conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fork would copy the models and threads
        self._conn, child_end = ctx.Pipe()
        self._process = ctx.Process(target=_child, args=(child_end, self.memory,
                                                         self.max_chars),
                                    name="lmtune-chat-template", daemon=True)
        self._process.start()
        child_end.close()
        if not self._conn.poll(START_SECONDS) or self._conn.recv()[0] != "ready":
            self.close()
            raise UserError("the chat-template renderer did not start")

    def render(self, template: str, messages: list[dict], values: dict, *,
               who: str = "the model") -> str:
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._start()
            try:
                self._conn.send((template, messages, values))
                if self._conn.poll(self.seconds):
                    status, payload = self._conn.recv()
                else:
                    self.close()
                    status, payload = "error", (f"it took longer than {self.seconds:g} s to "
                                                f"render, and was stopped")
            except (EOFError, OSError, BrokenPipeError):  # the child died (a hard limit)
                self.close()
                status, payload = "error", "rendering it stopped its process"
        if status != "ok":
            raise UserError(f"the chat template of {who} failed on these messages: {payload}")
        return payload

    def close(self) -> None:
        # Two threads may close at once (a render past its time, and the server stopping):
        # each takes the child away under its own lock, so the pipe is closed once.
        with self._closing:
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if process is not None:
            process.kill()
            process.join(5)
        if conn is not None:
            conn.close()
