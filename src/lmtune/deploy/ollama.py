"""A run as an Ollama model folder: the GGUF file and a Modelfile whose TEMPLATE reproduces
the text the run trained on, with the end token as a stop, so `ollama create` makes a model
that writes in the trained format and stops where training taught it to.

The Modelfile's TEMPLATE (Go template syntax, https://github.com/ollama/ollama/blob/main/
docs/modelfile.md): the run's --prompt-template, or the part of its --template before the
first field, with that field replaced by `{{ .Prompt }}`; plain text runs pass the prompt
as it is. A model folder that is not a run (a base or merged model) with a chat template gets
that template in Go (ollama_chat.py). llama.cpp adds the start token itself (the GGUF says
add_bos_token).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from lmtune.atomic import new_folder, refuse_filled_folder
from lmtune.data.tokenize import start_token_id
from lmtune.deploy.gguf import ExportResult, export_gguf
from lmtune.errors import UserError
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve
from lmtune.run.folder import RunFolder

MODEL_FILE = "model.gguf"


@dataclass
class OllamaResult:
    out: Path
    gguf: ExportResult
    modelfile: str
    note: str = ""


def prompt_template(info: dict) -> str:
    """The TEMPLATE for a run's lmtune.json `info`."""
    text = info.get("prompt_template") or info.get("template")
    if not text:
        return "{{ .Prompt }}"
    parts, literal, fields = [], "", 0
    for before, field, _, _ in string.Formatter().parse(text):
        literal += before  # the parser hands "{{" over as two pieces: join, then escape
        if field is not None:
            fields += 1
            parts += [_go_literal(literal), "{{ .Prompt }}"]
            literal = ""
            if not info.get("prompt_template"):
                break  # a --template: the completion continues from its first field
    if not fields or info.get("prompt_template"):
        parts.append(_go_literal(literal))
    return "".join(parts) + ("" if fields else "{{ .Prompt }}")


def _go_literal(text: str) -> str:
    # "{{" opens an action in Go templates; a literal brace pair is written as an action.
    return text.replace("{{", '{{ "{{" }}')


@dataclass
class Template:
    text: str                  # the Modelfile's TEMPLATE
    stops: list[str]           # stop strings the format needs besides the end token
    note: str = ""             # a comment for the Modelfile's reader, or why prompts pass raw


def choose_template(info: dict | None, tokenizer) -> Template:
    """A run's training format where it has one; a chat model's chat template, in Go, for a
    model folder (or a chat-format run); else prompts pass as they are."""
    if info and (info.get("template") or info.get("prompt_template") or
                 info.get("format") != "chat"):
        return Template(prompt_template(info), [])
    if not getattr(tokenizer, "chat_template", None):
        return Template("{{ .Prompt }}", [])
    from lmtune.deploy.ollama_chat import chat_glue
    from lmtune.models.chat import render_chat

    special = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    start = tokenizer.convert_ids_to_tokens(start_token_id(tokenizer))
    glue = chat_glue(lambda messages: render_chat(tokenizer, messages), special, start)
    if glue is None:
        return Template("{{ .Prompt }}", [], "the model's chat template could not be written "
                                             "in Ollama's template language, so prompts pass "
                                             "as they are")
    return Template(glue.go_template(), [glue.end_of_turn],
                    f"the chat template; llama.cpp puts {start} before every prompt itself")


def modelfile(template: Template, stops: list[str], num_ctx: int | None,
              gguf_name: str = MODEL_FILE) -> str:
    lines = [f"# {template.note}"] if template.note else []
    lines += [f"FROM ./{gguf_name}", f'TEMPLATE """{template.text}"""']
    for stop in dict.fromkeys(s for s in stops + template.stops if s):
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + re.sub(r'(["\\])', r"\\\1", text).replace("\n", "\\n") + '"'


def export_ollama(run: str, out: str, *, type: str = "q8_0", trust_remote_code: bool = False,
                  allow_pickle: bool = False) -> OllamaResult:
    target = Path(out)
    refuse_filled_folder(target)
    text, note = ollama_modelfile(run, trust_remote_code=trust_remote_code)
    with new_folder(target) as tmp:
        result = export_gguf(run, str(tmp / MODEL_FILE), type=type,
                             trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
    result.out = target / MODEL_FILE
    return OllamaResult(out=target, gguf=result, modelfile=text, note=note)


def ollama_modelfile(spec: str, gguf_name: str = MODEL_FILE, *,
                     trust_remote_code: bool = False) -> tuple[str, str | None]:
    """The Modelfile for a run or model beside its GGUF file `gguf_name` (FROM ./gguf_name),
    and a note on the prompt format chosen. Written before any export, so a format a
    Modelfile cannot hold fails before minutes of conversion."""
    resolved = resolve(spec)
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    template = choose_template(resolved.info, tokenizer)
    if '"""' in template.text:
        raise UserError("the prompt format holds three double quotes, which a Modelfile "
                        "TEMPLATE cannot", hint="export --format gguf and write the "
                                                "Modelfile by hand")
    folder = RunFolder(spec)
    num_ctx = folder.config().block_size if folder.config_file.is_file() else None
    return modelfile(template, [tokenizer.eos_token or ""], num_ctx, gguf_name), template.note
