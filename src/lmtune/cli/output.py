"""Printing helpers the command handlers share: data on stdout, as tables for people or as one
JSON object with --json."""

from __future__ import annotations

import json


def print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=1, default=str))


def g(value: float, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def short_count(n: int) -> str:
    """One way to write a large count everywhere (train's start lines, data inspect): 134.5M."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
