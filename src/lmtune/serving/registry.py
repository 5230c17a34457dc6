"""Which models a server holds, under which names, and how they share weights.

Runs whose LoRA adapters sit on the same base model share one copy of that base: the base
loads once and each adapter is added to it under its own PEFT adapter name (`load_adapter`,
a few MB each). Requests pick their adapter per row through PEFT's mixed-adapter batches
(`adapter_names=` in forward), so requests for different adapters still share one forward
pass. A full model (a full fine-tuning run, a merged model, a hub model) loads on its own,
and serving the bare base next to its adapters costs nothing extra: it runs as PEFT's
"__base__" rows of the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.models.load import attach_adapter, context_length, load_base, load_tokenizer
from lmtune.models.resolve import Resolved, is_classifier, resolve

BASE_ROWS = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass
class Group:
    """One set of weights in memory; every model served from it runs in one batch."""
    key: str
    model: Any                   # a transformers model, or a PeftModel holding many adapters
    is_peft: bool
    names: list[str] = field(default_factory=list)


@dataclass
class Served:
    """A name requests can ask for."""
    name: str
    resolved: Resolved
    task: str                    # "generate" or "classify"
    tokenizer: Any = None
    group: Group | None = None
    adapter: str | None = None   # PEFT adapter name in group.model; None: the base weights
    context: int = 0
    vocab: int = 0               # rows of the embedding: the largest token id + 1
    eos_ids: frozenset[int] = frozenset()
    classifier: Any = None       # what the classification module loaded, for task "classify"

    @property
    def row_adapter(self) -> str | None:
        """The `adapter_names` entry for this model's rows (None when the model has no PEFT)."""
        if not self.group.is_peft:
            return None
        return self.adapter or BASE_ROWS


def default_name(spec: str) -> str:
    """A run folder is served under its folder name, anything else under what was typed."""
    p = Path(spec).expanduser()
    if not p.exists():
        return spec
    p = p.resolve()
    if p.name in ("final", "model"):
        p = p.parent
    if p.parent.name == "checkpoints":
        return f"{p.parent.parent.name}-{p.name}"
    return p.name


def plan(models: list[str], named: list[str]) -> dict[str, Resolved]:
    """Names -> where their weights are. Fast (reads small JSON files, loads no weights),
    so a wrong path fails before the server binds its port."""
    pairs: list[tuple[str, str]] = [(default_name(m), m) for m in models]
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--name {item!r} must look like NAME=PATH",
                            hint="e.g. --name jokes=runs/jokes-20260101-120000")
        pairs.append((name.strip(), path.strip()))
    if not pairs:
        from lmtune.config import DEFAULT_MODEL
        pairs = [(DEFAULT_MODEL, DEFAULT_MODEL)]
    out: dict[str, Resolved] = {}
    for name, spec in pairs:
        if name in out:
            raise UserError(f"two models would be served as {name!r}",
                            hint="give one of them another name with --name NAME=PATH")
        out[name] = resolve(spec)
    return out


def load(planned: dict[str, Resolved], *, device: str, dtype,
         trust_remote_code: bool = False, allow_pickle: bool = False) -> dict[str, Served]:
    """Load every planned model, each distinct base exactly once."""
    served = {name: Served(name, r, "classify" if is_classifier(r) else "generate")
              for name, r in planned.items()}
    by_base: dict[str, list[Served]] = {}
    for s in served.values():
        if s.task == "classify":
            from lmtune.serving import classify
            s.classifier = classify.load(s.resolved, device, trust_remote_code, allow_pickle)
            continue
        # The base's folder identifies it: two runs of the same base name the same folder.
        by_base.setdefault(str(Path(s.resolved.path).resolve())
                           if Path(s.resolved.path).exists() else s.resolved.path, []).append(s)
    for key, members in by_base.items():
        _load_group(key, members, device=device, dtype=dtype,
                    trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return served


def _load_group(key: str, members: list[Served], *, device: str, dtype,
                trust_remote_code: bool, allow_pickle: bool) -> None:
    model = load_base(members[0].resolved, dtype=dtype, trust_remote_code=trust_remote_code,
                      allow_pickle=allow_pickle)
    adapters = [s for s in members if s.resolved.adapter is not None]
    for i, s in enumerate(adapters):
        # PEFT adapter names become module keys, which may not contain dots: number them.
        s.adapter = f"adapter{i}"
        model = attach_adapter(model, s.resolved.adapter, allow_pickle=allow_pickle,
                               adapter_name=s.adapter)
    model.to(device).eval()
    group = Group(key, model, is_peft=bool(adapters), names=[s.name for s in members])
    # The weight's rows, not num_embeddings: PEFT wraps the embedding of a run that trained
    # new token rows (train --extend-tokenizer) in a module without that attribute.
    vocab = model.get_input_embeddings().weight.shape[0]
    for s in members:
        s.group = group
        s.tokenizer = load_tokenizer(s.resolved, trust_remote_code)
        if len(s.tokenizer) > vocab:
            raise UserError(f"the tokenizer of {s.name} has {len(s.tokenizer)} tokens but its "
                            f"base model only {vocab}", hint="serve it on its own base model")
        s.context = context_length(model.config)
        s.vocab = vocab
        s.eos_ids = _eos_ids(s.tokenizer, model)


def _eos_ids(tokenizer, model) -> frozenset[int]:
    """The tokenizer's EOS (what lmtune trains every example to end with), plus any end ids the
    model's generation config names (an instruct model's end-of-turn token)."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    return frozenset(i for i in ids if isinstance(i, int))

