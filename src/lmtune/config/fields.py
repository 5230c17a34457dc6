"""The machinery behind the typed configs: a field with its help text, and building a config
from defaults, a YAML file and explicit values, with one error line for every mistake.

Each dataclass field's `metadata["help"]` becomes its `--help` text (cli/parser.py), the same
field names are the keys of a `--config run.yaml`, and a run's resolved config is saved as
`config.yaml` in its folder so it can be passed back with `--config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from lmtune.errors import UserError

# Every command that loads weights takes these two; trust.py's refusals name the flags.
TRUST_REMOTE_CODE_HELP = "Allow a model to run code from its repository."
ALLOW_PICKLE_HELP = ("Allow a model whose weights are only in pickle files (.bin, .pt); "
                     "loaded with torch.load(weights_only=True).")


def opt(default: Any, help: str, *, choices: tuple | None = None, positional: bool = False,
        alias: str | None = None, group: str = "options", repeat: bool = False,
        metavar: str | None = None) -> Any:
    """`repeat`: a list option whose flag takes one value and is repeated (free text, NAME=PATH),
    so a value can hold spaces and a positional after it is not swallowed."""
    meta = {"help": help, "choices": choices, "positional": positional, "alias": alias,
            "group": group, "repeat": repeat, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The command-line spelling of a field name."""
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """`int | None` -> int, `list[str] | None` -> list."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = args[0]
    return list if typing.get_origin(tp) is list else tp


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """Check one value against the field's type; YAML gives us ints for floats and the like."""
    tp = field_types(cls)[name]
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if value is None:
        return None
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    elif tp is list:
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
        value = [str(v) for v in value] if ok else value
    if not ok:
        raise UserError(f"{where}: '{name}' must be {tp.__name__}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"{where}: unknown {flag(name)} {value!r}; choose one of: "
                        f"{', '.join(choices)}")
    return value


def load_yaml(path: str | Path, cls: type, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options in a YAML file, checked. `required`: options the file must hold (a run's
    config.yaml always holds what the run resolved; one that lacks them was cut short, and
    their defaults would misdescribe the run)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise UserError(f"{p} is nested too deeply to be a config file") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p} must hold a mapping of option: value")
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"{p}: unknown option '{key}'",
                            hint="valid options: " + ", ".join(sorted(names)))
        out[name] = coerce(cls, name, value, str(p))
    missing = [name for name in required if name not in out]
    if missing:
        raise UserError(f"{p} is incomplete: it lacks {', '.join(missing[:4])}"
                        f"{' and more' if len(missing) > 4 else ''}, which lmtune always "
                        f"writes (the file was cut short or edited)",
                        hint="restore the file, or start a new run with another --out")
    return out


def build(cls: type, overrides: dict[str, Any], config_file: str | Path | None = None, *,
          required: tuple[str, ...] = ()):
    """defaults < YAML file < explicit overrides (CLI flags or API keyword arguments)."""
    values = load_yaml(config_file, cls, required=required) if config_file else {}
    names = {f.name for f in dataclasses.fields(cls)}
    for name, value in overrides.items():
        if name not in names:
            raise UserError(f"unknown option '{name}'",
                            hint="valid options: " + ", ".join(sorted(names)))
        values[name] = coerce(cls, name, value, "option")
    return cls(**values)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True)


THREADS_HELP = ("CPU threads for the model's work (default: the cores this process may use: "
                "its CPU affinity and cgroup quota, one per physical core, shared between "
                "--devices processes; training takes fewer while other processes use them). "
                "Given here or as OMP_NUM_THREADS, the count stays fixed.")
