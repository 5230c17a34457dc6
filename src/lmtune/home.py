"""Where lmtune keeps files of its own on this machine: $LMTUNE_HOME (default
~/.cache/lmtune) holds the converted default model (models/), token caches (tokens/) and the
demo's data (data/)."""

from __future__ import annotations

import os
from pathlib import Path


def lmtune_home() -> Path:
    return Path(os.environ.get("LMTUNE_HOME", Path.home() / ".cache" / "lmtune"))
