"""Writing files and folders so that a crash, a kill or a full disk never leaves one that looks
complete but is not: everything is written under a temporary name beside its target, then
renamed (a rename within one folder is atomic on POSIX). Every writer in lmtune goes through
here. Temporary names start with TMP_PREFIX, so a later run can sweep what a crash left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from lmtune.errors import UserError

TMP_PREFIX = ".tmp-"


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """Writers in Rust (safetensors) report a full disk as their own exception, "I/O error:
    No space left on device (os error 28)"; inside this block it becomes the OSError that
    Python's own writers raise, with `where` as its file name, so one handler serves both."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        text = str(e)
        for code in (errno.ENOSPC, errno.EDQUOT):
            if f"(os error {code})" in text or os.strerror(code) in text:
                raise OSError(code, os.strerror(code), str(where)) from e
        raise


def write_file(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)`, then rename over `path`. A failure removes the temporary file and keeps
    the old `path`; the error goes on to the caller."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def remove_folder(folder: Path) -> None:
    """Rename, then delete: a kill midway leaves a temporary folder (swept at the next
    start), never a half-deleted folder under its real name."""
    doomed = folder.with_name(f"{TMP_PREFIX}old-{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def refuse_filled_folder(target: Path) -> None:
    """`--out` for a folder lmtune writes whole: a new or empty folder, never one with files."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"--out {target} already exists and is not empty",
                        hint="pass a new folder")


@contextmanager
def new_folder(target: Path, *, exists: str = "replace") -> Iterator[Path]:
    """A temporary folder beside `target` to fill; when the block ends without an error it
    becomes `target`, and on an error it is removed. If `target` exists by then: "replace"
    swaps it out (a kill between the two renames leaves no `target` at all, never a mix),
    "keep" keeps it and drops the new one (another process made the same folder first, so
    each writer has a temporary folder of its own). A "replace" writer is the only one (a
    run's, under its lock): its temporary folder is `.tmp-<name>`, and one left by a crash
    is cleared first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if exists == "keep":
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
    else:
        tmp = target.with_name(f"{TMP_PREFIX}{target.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        yield tmp
        if target.is_symlink():  # the link goes, never what it points to
            target.unlink()
        if target.exists() and exists == "keep":
            shutil.rmtree(tmp)
            return
        old = target.with_name(f"{TMP_PREFIX}old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep(folder: Path, names: tuple[str, ...] | None = None) -> None:
    """Remove what a crash left in `folder`: its temporary files and folders, or with `names`
    only those of these names (as write_file, new_folder and remove_folder name them)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        rest = p.name[len(TMP_PREFIX):]
        if not p.name.startswith(TMP_PREFIX) or (names is not None and not any(
                rest in (n, f"old-{n}") or rest.startswith(f"{n}-") for n in names)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
