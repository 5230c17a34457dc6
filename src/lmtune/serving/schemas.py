"""Request bodies in the OpenAI shapes, with the bounds every request must respect.

Limits that depend on the server (the max_tokens cap, the model's context) are checked in
app.py once the model is known; these are the ones that hold for any model. Unknown fields
are ignored, as OpenAI-compatible servers do (clients send `user` and the like); fields that
would change the answer and that lmtune does not implement are refused instead, so nobody
gets a silently different result.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 16                 # choices per prompt
MAX_CHOICES = 16           # prompts x n per request: one request cannot fill the whole batch
MAX_STOPS, MAX_STOP_CHARS = 8, 256
MAX_MESSAGES = 256
SEED_RANGE = (-(2**63), 2**64 - 1)   # what torch.Generator.manual_seed accepts


# JSON may spell a lone UTF-16 surrogate ("\ud800"), which Python keeps in a str but which is
# no character: no tokenizer and no UTF-8 encoder takes it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise ValueError("contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is "
                             "not a character; send valid Unicode")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _no_surrogates(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_surrogates(key)
            _no_surrogates(item)
    return value


class _Body(BaseModel):
    # NaN and inf are valid JSON to Python's parser; no setting here accepts them.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value):
        return _no_surrogates(value)


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted only at their "off" values.
    logprobs: bool | int | None = None
    logit_bias: dict | None = None
    best_of: int | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop string must have 1 to {MAX_STOP_CHARS} characters")
        return stops

    def unsupported(self) -> str | None:
        if self.logprobs not in (None, False, 0):
            return "logprobs"
        if self.logit_bias:
            return "logit_bias"
        if self.best_of not in (None, 1, self.n):
            return "best_of"
        return None


TokenIds = list[int]


class CompletionRequest(_Generation):
    prompt: Union[str, list[str], TokenIds, list[TokenIds]]
    max_tokens: int | None = Field(16, ge=1)    # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        return super().unsupported()

    def prompt_list(self) -> list[str | list[int]]:
        """A string, a list of strings, a list of token ids, or a list of those."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]
        return list(p)


class TextPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)   # the newer name of max_tokens
    tools: list | None = None
    response_format: dict | None = None

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools"
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            return "response_format"
        return super().unsupported()


class ClassifyRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str]
