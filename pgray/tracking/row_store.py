"""The rows of a results folder: one Parquet file, appended under a file lock (concurrent
benchmarks write one at a time), written atomically; a row replaces the one of its key."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pgray.io import atomic_write, ensure_dir

RESULTS_FILE = "results.parquet"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on a results folder: concurrent benchmarks append one at a time."""
    ensure_dir(folder)
    with open(folder / ".results.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_rows(folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    path = Path(folder) / RESULTS_FILE
    if not path.exists():
        return []
    return pq.read_table(path).to_pylist()


def _write_rows(folder: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {}
    keys = sorted({k for r in rows for k in r})
    for k in keys:
        columns[k] = [r.get(k) for r in rows]
    table = pa.table(columns)
    return atomic_write(Path(folder) / RESULTS_FILE, lambda f: pq.write_table(table, f))


def append_rows(folder: Path, new_rows: Iterable[dict[str, Any]]) -> int:
    """Add rows, replacing any with the same `row_key`; returns the table's row count."""
    folder = Path(folder)
    with locked(folder):
        rows = {row_key(r): r for r in read_rows(folder)}
        for r in new_rows:
            rows[row_key(r)] = r
        ordered = list(rows.values())
        _write_rows(folder, ordered)
        return len(ordered)


def row_key(row: dict[str, Any]) -> str:
    """A row's identity in the table: its job, and within a suite job its attack."""
    return row.get("row_key") or row["job_key"]


class RowFolder:
    """A results folder as the sink of jobs' results: which jobs it holds rows of (a re-run
    skips them), and each result's rows appended as it lands."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.done = {r["job_key"] for r in read_rows(self.folder)}

    def on_result(self, job: Any, result: dict[str, Any]) -> None:
        append_rows(self.folder, result["rows"])
