"""Read a user's data file (or a folder of .txt files) into a list of records.

A record is a dict of column -> value. Plain text gives `{"text": ...}`; CSV values are
strings; JSON values are kept as they are. Turning records into training text is the
next stage (`examples.py`), so this module knows nothing about templates or tokens.
"""

import csv
import io
import json
import re
from pathlib import Path

from lmtune.config.defaults import DATA_FORMATS
from lmtune.errors import UserError
from lmtune.trust import require_regular

FORMATS = DATA_FORMATS

_EXTENSIONS = {
    ".txt": "txt", ".text": "txt", ".md": "txt",
    ".csv": "csv", ".tsv": "tsv",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
}

# Python's csv module refuses fields over 128 KiB by default; a long story in one cell is
# normal for us. 2**31 - 1 rather than sys.maxsize, which overflows a C long on Windows.
csv.field_size_limit(2**31 - 1)


def read_records(path: str | Path, fmt: str | None = None, encoding: str = "utf-8",
                 split_on: str | None = None) -> list[dict]:
    """Read `path` as `fmt` (default: from the extension; a folder means .txt files)."""
    path = check_data_path(path)
    fmt = resolve_format(path, fmt)
    if split_on is not None and fmt != "txt":
        raise UserError(f"--split-on only applies to plain text, but {path} is read as {fmt}",
                        hint="drop --split-on, or pass --format txt")
    separator = unescape_separator(split_on) if split_on is not None else None
    if separator == "":
        raise UserError("--split-on is empty", hint='pass a separator such as "\\n\\n" (blank line) or "\\n"')
    if path.is_dir():
        return _read_folder(path, encoding, separator)
    if fmt == "parquet":
        return _read_parquet(path)
    text = _decode(path, encoding)
    if not text.strip():
        raise UserError(f"{path} is empty", hint="point to a file that contains text")
    if fmt == "txt":
        return _split_text(text, separator)
    if fmt in ("csv", "tsv"):
        return _read_csv(path, text, "," if fmt == "csv" else "\t")
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    return _read_json(path, text)


# Compressed files are refused rather than expanded: a few kilobytes of gzip can expand to
# gigabytes (a "zip bomb"), and the user can decompress knowingly with the tools they trust.
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".bz2": "bzip2", ".xz": "xz",
                        ".zst": "zstd", ".zip": "zip", ".7z": "7z", ".lz4": "lz4"}
_COMPRESSED_MAGIC = ((b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"), (b"\xfd7zXZ\x00", "xz"),
                     (b"(\xb5/\xfd", "zstd"), (b"7z\xbc\xaf\x27\x1c", "7z"))


def _refuse_compressed(path: Path) -> None:
    kind = _COMPRESSED_SUFFIXES.get(path.suffix.lower())
    if kind is None and path.is_file():
        with open(path, "rb") as f:
            head = f.read(10)
        kind = next((k for magic, k in _COMPRESSED_MAGIC if head.startswith(magic)), None)
        if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
            kind = "bzip2"
    if kind:
        raise UserError(f"{path} is a {kind}-compressed file; lmtune reads uncompressed data "
                        f"only", hint="decompress it first (e.g. gunzip -k FILE or unzip FILE) "
                                      "and pass the extracted file")


def check_data_path(path: str | Path) -> Path:
    """A data path that exists and is a folder or a regular file: a named pipe or a device
    (/dev/zero, or a link to it) would block the reader or never end."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file not found: {path}", hint="check the path, or pass a folder of .txt files")
    if not path.is_dir():
        require_regular(path, "data file")
    return path


def resolve_format(path: Path, fmt: str | None) -> str:
    _refuse_compressed(path)
    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        if fmt not in FORMATS:
            raise UserError(f"unknown data format '{fmt}'; choose one of: {', '.join(FORMATS)}",
                            hint="--format txt|csv|tsv|json|jsonl|parquet")
        if path.is_dir() and fmt != "txt":
            raise UserError(f"{path} is a folder; folders are read as .txt files, not {fmt}",
                            hint="pass a single file for csv/json/parquet data")
        return fmt
    if path.is_dir():
        return "txt"
    suffix = path.suffix.lower()
    if suffix not in _EXTENSIONS:
        raise UserError(f"cannot tell the format of {path} from its extension '{suffix}'; "
                        f"formats: {', '.join(FORMATS)}", hint="pass --format FORMAT, e.g. --format txt")
    return _EXTENSIONS[suffix]


def unescape_separator(separator: str) -> str:
    # A shell passes --split-on "\n\n" as backslash-n; nobody means a literal backslash there.
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\([ntr\\])", lambda m: escapes[m.group(1)], separator)


_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def decode_error(path: Path, line: int, encoding: str, reason: str, head: bytes) -> UserError:
    """Bytes that are not `encoding`: the line, and the likely encoding when the file says it
    (a UTF-16 or UTF-32 byte-order mark)."""
    bom = next((name for mark, name in _BOMS if head.startswith(mark)), None)
    if bom and bom not in encoding.lower().replace("_", "-"):
        return UserError(f"{path} is {bom} (it starts with a {bom} byte-order mark), not "
                         f"{encoding}", hint=f"pass --encoding {bom}")
    return UserError(f"{path} line {line}: bytes that are not valid {encoding} ({reason})",
                     hint="pass the file's encoding, e.g. --encoding latin-1 or --encoding "
                          "cp1252")


def splits_lines(separator: str | None) -> bool:
    """A separator written with LF (and no CR) means line ends, which a file written on
    Windows spells CR LF: such a file is then read with its line ends as LF."""
    return separator is not None and "\n" in separator and "\r" not in separator


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except LookupError:
        raise UserError(f"unknown encoding '{encoding}'", hint="--encoding utf-8 (or latin-1, cp1252, utf-16)") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise decode_error(path, line, encoding, e.reason, data[:4]) from None
    # Editors on Windows start UTF-8 files with a byte-order mark; it is not text.
    return text.removeprefix("\ufeff")


def _split_text(text: str, separator: str | None) -> list[dict]:
    if splits_lines(separator):
        text = text.replace("\r\n", "\n")
    pieces = [text] if separator is None else text.split(separator)
    # Strip only the newlines and spaces at the edges: indentation and tabs inside stay.
    return [{"text": p.strip(" \r\n")} for p in pieces if p.strip()]


def _read_folder(folder: Path, encoding: str, separator: str | None) -> list[dict]:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"no .txt files in folder {folder}", hint="put .txt files in it, or pass a single data file")
    records = []
    for file in files:
        # An empty file in a folder is skipped (it yields no pieces), not fatal.
        name = file.relative_to(folder).as_posix()
        records += [{**r, "source": name} for r in _split_text(_decode(file, encoding), separator)]
    if not records:
        raise UserError(f"all .txt files in {folder} are empty", hint="point to a folder whose files contain text")
    return records


def _read_csv(path: Path, text: str, delimiter: str) -> list[dict]:
    # strict=True makes a stray quote an error with a line number instead of silently
    # swallowing the rest of the file into one field.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind = "CSV" if delimiter == "," else "TSV"
    header, records, line = None, [], 1
    try:
        for row in reader:
            # A quoted value may span lines: report the line where its row starts.
            line, row_line = reader.line_num + 1, line
            if not row:
                continue  # blank line
            if header is None:
                header = row
                _check_header(path, header)
            elif len(row) != len(header):
                raise UserError(f"{path} line {row_line}: {len(row)} fields but the header has {len(header)}",
                                hint="quote values that contain the delimiter or newlines, e.g. \"a, b\"")
            else:
                records.append(dict(zip(header, row)))
    except csv.Error as e:
        raise UserError(f"{path} line {line}: malformed {kind} ({e})",
                        hint="check the quotes from that line on; a quote inside a quoted value is written \"\"") from None
    if not records:
        raise UserError(f"{path} has a header but no rows", hint="add rows below the header line")
    return records


def _check_header(path: Path, header: list[str]) -> None:
    seen = set()
    for name in header:
        if not name.strip():
            raise UserError(f"{path}: the header has an empty column name",
                            hint="give every column a name in the first line")
        if name in seen:
            raise UserError(f"{path}: column '{name}' appears twice in the header",
                            hint="rename one of the columns")
        seen.add(name)


def _read_jsonl(path: Path, text: str) -> list[dict]:
    records, where = [], []
    # split("\n"), not splitlines(): the latter also breaks at U+2028, which JSON allows
    # unescaped inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {number}: invalid JSON ({e.msg}, column {e.colno})",
                            hint="each line of a .jsonl file must be one complete JSON object") from None
        except RecursionError:
            raise _too_deep(f"{path} line {number}") from None
        records.append(_as_record(value, f"{path} line {number}"))
        where.append(f"line {number}")
    return Records(records, [], where)


class Records(list):
    """Records, with `notes`: choices the reader made that the user should hear about (the
    key of a JSON object whose list was read). Examples carry them into their stats."""

    def __init__(self, items, notes: list[str], where: list[str] | None = None):
        super().__init__(items)
        self.notes = notes
        self.where = where  # "line N" of each record, where the format has lines (JSONL)

    def place(self, i: int) -> str:
        """Where record i is, for an error message: its line, else its position."""
        return self.where[i] if self.where else f"record {i + 1}"


def _read_json(path: Path, text: str) -> list[dict]:
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(str(path)) from None
    except json.JSONDecodeError as e:
        hint = "fix the JSON syntax at that position"
        if e.msg == "Extra data":
            hint = "a file with one JSON object per line is JSONL: rename it .jsonl or pass --format jsonl"
        raise UserError(f"{path} line {e.lineno}: invalid JSON ({e.msg}, column {e.colno})", hint=hint) from None
    notes = []
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path} holds a JSON object, expected a list of records",
                            hint='use a list [{"text": ...}, ...] or an object holding exactly one such list')
        notes.append(f"{path.name} is a JSON object: its records are the list under the key "
                     f"'{lists[0]}'")
        value = value[lists[0]]
    if not isinstance(value, list):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, expected a list of records",
                        hint='use a list such as [{"text": "..."}, ...]')
    if not value:
        raise UserError(f"{path} is empty (an empty JSON list)", hint="add records to the list")
    return Records((_as_record(v, f"{path} item {i}") for i, v in enumerate(value)), notes)


def _too_deep(where: str) -> UserError:
    return UserError(f"{where}: JSON nested too deeply to read (thousands of levels)",
                     hint="a record is an object of fields holding text, numbers or short "
                          "lists; flatten the data")


def _as_record(value, where: str) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return {"text": value}
    raise UserError(f"{where}: a JSON {type(value).__name__}, expected an object or a string",
                    hint='write each record as {"text": "..."} or {"field": value, ...}')


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path} is not a readable parquet file ({e})",
                        hint="check the file, or pass --format to read it as another format") from None
    if table.num_rows == 0:
        raise UserError(f"{path} is empty (0 rows)", hint="point to a parquet file that has rows")
    return table.to_pylist()
