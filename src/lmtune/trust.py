"""What lmtune checks before it loads files that strangers made.

Weights come from safetensors, which holds only tensors: a pickle (.bin, .pt) can run any
code when loaded, so a model folder with pickled weights only is refused unless the user
passes --allow-pickle. A config that asks for the model's own Python code (`auto_map`) is
refused without --trust-remote-code. A safetensors file is checked from its header before a
loader sees it: a header length past the file or past 100 MB, tensors outside the file or
overlapping, or sizes that do not match their shapes give one error line, and no more than
the header is ever read to find that out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmtune.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
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
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES
                     and p.is_file())
    if not safe and pickled and not allow_pickle:
        raise UserError(f"model {spec} has its weights only as pickle files "
                        f"({', '.join(pickled[:3])}), which can run code when loaded",
                        hint="pass --allow-pickle if you trust its author (they are then read "
                             "with torch.load(weights_only=True)), or convert them to "
                             "safetensors")


def check_safetensors(path: Path) -> None:
    def bad(reason: str) -> UserError:
        return UserError(f"{path} is not a valid safetensors file ({reason})",
                         hint="the file is damaged or not what its name says; copy or download "
                              "it again")

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
        except (UnicodeDecodeError, ValueError):
            raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data = size - 8 - n
    spans = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in t["data_offsets"])
            want = DTYPE_BYTES[t["dtype"]] * math.prod(int(d) for d in t["shape"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has a malformed entry") from None
        if not 0 <= begin <= end <= data:
            raise bad(f"tensor {name!r} lies at bytes {begin}..{end}, past the {data} bytes "
                      f"of data (truncated?)")
        if end - begin != want:
            raise bad(f"tensor {name!r} takes {end - begin} bytes, its shape needs {want}")
        spans.append((begin, end, name))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise bad(f"tensors {a!r} and {b!r} overlap")
