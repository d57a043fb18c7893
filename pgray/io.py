"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A crash, a full disk or a kill leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pgray.errors import PgrayError


class OutputError(PgrayError):
    """The output folder cannot be written."""


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"output folder {path} is not writable")
    return path


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call write(fileobj) on a temp file next to `path`, then rename it into place."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"could not write {path}: {err.strerror or err}") from None
        raise
    return path


def copy_atomic(source: str | Path, dest: str | Path) -> Path:
    """Copy a file so that `dest` is either absent, its old self, or the whole new copy."""
    import shutil

    with open(source, "rb") as src:
        return atomic_write(dest, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def publish_dir(build: Callable[[Path], object], target: Path) -> Path:
    """Build a folder under a temporary sibling name, then rename it into place: readers see
    no folder or the whole one. Losing a race to another process building the same folder is
    fine (its copy stays)."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():  # not a lost race with another process: a real failure
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path, n: int = 16) -> str:
    """Short content hash of a file (identifies a checkpoint in result rows)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(name: str, what: str = "run name") -> str:
    """Names become folder names (run storage, results): letters, digits, '-', '_', '.' only,
    not starting with '.', so no name can point outside the folder it is put in."""
    if not name or name.startswith(".") or not set(name) <= NAME_CHARS or len(name) > 200:
        raise PgrayError(
            f"invalid {what} {name!r}: use 1-200 letters, digits, '-', '_' or '.', not starting"
            " with '.'"
        )
    return name


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), held for the `with` block: how
    processes of one machine take turns (several writers of one store or cache entry)."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def spool_copy(path: str | Path) -> Path:
    """A copy of a file in a folder of its own (same name), for work that reads it later
    while the original may go away; remove the folder when done."""
    import shutil

    spool = Path(tempfile.mkdtemp(prefix="pgray-spool-"))
    copy = spool / Path(path).name
    shutil.copy2(path, copy)
    return copy
