"""A run as an Ollama model folder: the GGUF file and a Modelfile whose TEMPLATE reproduces
the text the run trained on, with the end token as a stop, so `ollama create` makes a model
that writes in the trained format and stops where training taught it to.

The Modelfile's TEMPLATE (Go template syntax, https://github.com/ollama/ollama/blob/main/
docs/modelfile.md): the run's --prompt-template, or the part of its --template before the
first field, with that field replaced by `{{ .Prompt }}`; plain text runs pass the prompt
as it is. llama.cpp adds the start token itself (the GGUF says add_bos_token).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from lmtune.atomic import new_folder
from lmtune.deploy.gguf import ExportResult, export_gguf
from lmtune.errors import UserError
from lmtune.models.resolve import resolve
from lmtune.run.folder import RunFolder

MODEL_FILE = "model.gguf"


@dataclass
class OllamaResult:
    out: Path
    gguf: ExportResult
    modelfile: str


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


def modelfile(info: dict, stops: list[str], num_ctx: int | None) -> str:
    lines = [f"FROM ./{MODEL_FILE}", f'TEMPLATE """{prompt_template(info)}"""']
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + re.sub(r'(["\\])', r"\\\1", text).replace("\n", "\\n") + '"'


def export_ollama(run: str, out: str, *, type: str = "q8_0", trust_remote_code: bool = False,
                  allow_pickle: bool = False) -> OllamaResult:
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"--out {target} already exists and is not empty",
                        hint="pass a new folder")
    resolved = resolve(run)
    info = resolved.info or {}
    folder = RunFolder(run)
    num_ctx = folder.config().block_size if folder.config_file.is_file() else None
    with new_folder(target) as tmp:
        result = export_gguf(run, str(tmp / MODEL_FILE), type=type,
                             trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        stops = [result.eos_token]
        text = modelfile(info, stops, num_ctx)
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
    result.out = target / MODEL_FILE
    return OllamaResult(out=target, gguf=result, modelfile=text)
