"""The extended model that `lmtune train --extend-tokenizer N` trains on.

It is kept in $LMTUNE_HOME/extended/<key>, the key a hash of the base model's files, the
training file's bytes, N and the read options, rather than in the run folder: the run folder
is created only once every input is checked (training/train.py), while the data must be
tokenized with the extended tokenizer before that; the dry run, the run, its --resume and a
sweep of runs on the same data and N then share one extension, learned and written once
(whole or not at all). The cost: a LoRA run's final/ names that folder as its base, so the
folder must stay while the adapter is used (lmtune merge makes a whole model of it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lmtune.home import lmtune_home
from lmtune.models.resolve import Resolved
from lmtune.run.artifact import read_run_info
from lmtune.vocab.extend import extend_model

KEY_VERSION = 2           # raised when extension changes what it writes for the same inputs
# 2: the new output rows are calibrated to the corpus (vocab/calibrate.py)
_WHOLE_FILE_LIMIT = 64 << 20  # larger base files (weights) are keyed by name and size only


def extended_dir() -> Path:
    return lmtune_home() / "extended"


def extension_key(base: Resolved, data: str, add: int, column: str | None,
                  encoding: str) -> str:
    h = hashlib.sha256(f"lmtune-extended-v{KEY_VERSION}|{add}|{column}|{encoding}".encode())
    folder = Path(base.path)
    if folder.is_dir():
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            size = f.stat().st_size
            h.update(f"|{f.name}|{size}|".encode())
            if size <= _WHOLE_FILE_LIMIT:
                h.update(hashlib.sha256(f.read_bytes()).digest())
    else:  # a hub id whose files resolve elsewhere
        h.update(base.path.encode())
    _hash_data(h, Path(data))
    return h.hexdigest()[:20]


def _hash_data(h, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f"|{f.relative_to(path) if path.is_dir() else ''}|".encode())
        with f.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                h.update(chunk)


def extended_for_training(base: Resolved, cfg) -> Resolved:
    """`base` extended with up to cfg.extend_tokenizer pieces of cfg.data: the cached folder,
    made first when it is not there. A tokenizer that cannot be extended is refused before
    anything is written (vocab/extend.py)."""
    folder = extended_dir() / extension_key(base, cfg.data, cfg.extend_tokenizer, cfg.column,
                                            cfg.encoding)
    if not (folder / "lmtune.json").is_file():  # written last: the folder is whole
        extend_model(base.spec, cfg.data, cfg.extend_tokenizer, str(folder),
                     column=cfg.column, encoding=cfg.encoding,
                     trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle,
                     exists="keep")
    return Resolved(str(folder), str(folder), info=read_run_info(folder))


def new_token_ids(info: dict | None) -> list[int]:
    """The ids an extension added (consecutive from its first), from its lmtune.json."""
    ext = (info or {}).get("tokenizer_extension") or {}
    return list(range(ext["first_id"], ext["first_id"] + ext["added"])) if ext else []


def untrained_rows(info: dict | None) -> list[int]:
    """The ids of an extension no run has trained yet: the folder `lmtune tokenizer extend`
    or --extend-tokenizer wrote. A trained or merged run's lmtune.json names its method; its
    rows have learned, and LoRA on it leaves them frozen like every other base weight."""
    return [] if (info or {}).get("method") else new_token_ids(info)
