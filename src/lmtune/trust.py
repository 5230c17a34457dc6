"""What lmtune checks before it loads files that strangers made.

Weights come from safetensors, which holds only tensors: a pickle (.bin, .pt) can run any
code when loaded, so a model folder with pickled weights only is refused unless the user
passes --allow-pickle. A config that asks for the model's own Python code (`auto_map`) is
refused without --trust-remote-code. A safetensors file is checked from its header before a
loader sees it: a header length past the file or past 100 MB, malformed entries, tensors
outside the file, overlapping or leaving bytes unused, or sizes that do not match their shapes
give one error line, and no more than the header is ever read to find that out. Folders lmtune
writes (checkpoints, final/, merged models) carry a manifest of their files' sha256, checked
before they are loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Callable

from lmtune.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER = 100 << 20  # the limit the safetensors library itself applies
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def refuse_remote_code(folder: Path, spec: str, trust_remote_code: bool) -> None:
    """Before transformers reads the folder: it would import the repository's code."""
    if trust_remote_code or not folder.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            asked = "auto_map" in json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            continue  # absent or unreadable: transformers reports it
        if asked:
            raise UserError(f"model {spec} asks to run code from its repository ({name} has "
                            f"auto_map)", hint="pass --trust-remote-code if you trust its author")


def check_weights(folder: Path, spec: str, allow_pickle: bool) -> None:
    """A local model folder: safetensors weights, each checked; pickles only if allowed."""
    if not folder.is_dir():
        return
    safe = sorted(folder.glob("*.safetensors"))
    for f in safe:
        check_safetensors(f)
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not safe and pickled and not allow_pickle:
        raise UserError(f"model {spec} has its weights only as pickle files "
                        f"({', '.join(pickled[:3])}), which can run code when loaded",
                        hint="pass --allow-pickle if you trust its author (they are then read "
                             "with torch.load(weights_only=True)), or convert them to "
                             "safetensors")
    for f in pickled:
        require_regular(folder / f, "weights file")
    if not safe and not pickled:
        raise UserError(f"model {spec} has no weights: {folder} holds no *.safetensors file",
                        hint="pass the folder that holds the model's weights")


def require_regular(path: Path, what: str) -> None:
    """`path` (or what its link points to) is a regular file: reading a FIFO or a device
    such as /dev/zero would block or never end."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
                "not a regular file")
        raise UserError(f"{what} {path} is {kind}, not a regular file",
                        hint="pass a regular file (lmtune does not read pipes or devices)")


def _nonnegative_ints(value, count: int | None = None) -> list[int] | None:
    """`value` as a list of non-negative ints (JSON integers only: no floats, strings or
    booleans), or None."""
    if not isinstance(value, list) or (count is not None and len(value) != count):
        return None
    if not all(type(v) is int and v >= 0 for v in value):
        return None
    return value


def check_safetensors(path: Path) -> None:
    """The header of a safetensors file against the format's rules, as the safetensors
    library itself checks them, so that no malformed file reaches it (its errors are
    tracebacks): integer offsets and shapes, known dtypes, string metadata, and tensors that
    tile the data exactly (no gap, no overlap, no trailing bytes)."""
    def bad(reason: str) -> UserError:
        return UserError(f"{path} is not a valid safetensors file ({reason})",
                         hint="the file is damaged or not what its name says; copy or download "
                              "it again")

    require_regular(path, "weights file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than its header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or n > size - 8:
            raise bad(f"header length {n} bytes, but the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    data = size - 8 - n
    spans = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offsets = _nonnegative_ints(t.get("data_offsets") if isinstance(t, dict) else None, 2)
        shape = _nonnegative_ints(t.get("shape") if isinstance(t, dict) else None)
        if offsets is None or shape is None or t.get("dtype") not in DTYPE_BYTES:
            raise bad(f"tensor {name!r} has a malformed entry")
        begin, end = offsets
        want = DTYPE_BYTES[t["dtype"]] * math.prod(shape)
        if not begin <= end <= data:
            raise bad(f"tensor {name!r} lies at bytes {begin}..{end}, past the {data} bytes "
                      f"of data (truncated?)")
        if end - begin != want:
            raise bad(f"tensor {name!r} takes {end - begin} bytes, its shape needs {want}")
        spans.append((begin, end, name))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise bad(f"tensors {a!r} and {b!r} overlap")
    covered = 0
    for begin, end, _ in spans:
        if begin > covered:
            raise bad(f"bytes {covered}..{begin} belong to no tensor")
        covered = end
    if covered != data:
        raise bad(f"{data - covered} bytes after the last tensor belong to no tensor")


# ---------------------------------------------------------------------------------------------
# Manifests: what lmtune wrote, with the sha256 of every file.

MANIFEST = "manifest.json"
_HEX = frozenset("0123456789abcdef")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_of(folder: Path) -> list[Path]:
    """Every file under `folder` but its own manifest (a nested folder's manifest is a file
    like any other)."""
    own = folder / MANIFEST
    return sorted(p for p in folder.rglob("*") if not p.is_dir() and p != own)


def write_manifest(folder: Path) -> None:
    """sha256 of every file in `folder` (written last: a folder with a manifest is whole)."""
    manifest = {p.relative_to(folder).as_posix(): sha256(p) for p in files_of(folder)}
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(folder: Path, what: str, hint: str) -> dict[str, str]:
    """The manifest of a folder lmtune wrote, checked for shape: a non-empty object of
    relative paths inside the folder to sha256 hex digests."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{what} {folder} has an unreadable manifest ({e})", hint=hint) from None
    ok = isinstance(manifest, dict) and manifest and all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 and set(v) <= _HEX
        and not Path(k).is_absolute() and ".." not in Path(k).parts and k != MANIFEST
        for k, v in manifest.items())
    if not ok:
        raise UserError(f"{what} {folder} has a malformed manifest.json (it must list every "
                        f"file with its sha256)", hint=hint)
    return manifest


def verify_manifest(folder: Path, what: str, hint: str, *,
                    extra_ok: Callable[[str], bool] = lambda name: False) -> dict[str, str]:
    """Every file the manifest lists is there, unchanged, and no other file is, except those
    `extra_ok` accepts; safetensors headers are checked too (a manifest can be rewritten
    along with a file)."""
    manifest = read_manifest(folder, what, hint)
    present = {p.relative_to(folder).as_posix() for p in files_of(folder)}
    unlisted = sorted(n for n in present - set(manifest) if not extra_ok(n))
    if unlisted:
        raise UserError(f"{what} {folder} holds {unlisted[0]}, which its manifest does not "
                        f"list (lmtune did not write it)", hint=hint)
    for rel, digest in manifest.items():
        path = folder / rel
        if not path.is_file() or path.is_symlink():
            raise UserError(f"{what} {folder} is missing {rel}", hint=hint)
        if sha256(path) != digest:
            raise UserError(f"{what} file {path} does not match its manifest (altered or "
                            f"truncated)", hint=hint)
        if path.suffix == ".safetensors":
            check_safetensors(path)
    return manifest
