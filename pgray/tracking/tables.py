"""Result tables: one Parquet file per results folder, appended under a file lock, written
atomically; Markdown tables and sanity flags computed from the rows."""

from __future__ import annotations

import contextlib
import fcntl
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pgray.io import atomic_write, ensure_dir

RESULTS_FILE = "results.parquet"
# Tolerances for the sanity flags (AUROC units): below them, differences are noise.
RISE_TOL = 0.01
STRONGER_TOL = 0.02


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


def append_rows(folder: Path, new_rows: Iterable[dict[str, Any]], key: str = "job_key") -> int:
    """Add rows, replacing any with the same key; returns the table's row count."""
    folder = Path(folder)
    with locked(folder):
        rows = {r[key]: r for r in read_rows(folder)}
        for r in new_rows:
            rows[r[key]] = r
        ordered = list(rows.values())
        _write_rows(folder, ordered)
        return len(ordered)


def is_protocol(row: dict[str, Any]) -> bool:
    return (row.get("method") == "pgd" and row.get("restarts") == 1
            and not row.get("random_start") and not row.get("keep_best"))


def sanity_flags(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """job_key -> flags that hint at a weak or broken attack."""
    flags: dict[str, list[str]] = defaultdict(list)
    clean = {(r["dataset"], r["category"], r["checkpoint_sha256"]): r
             for r in rows if r["setting"] == "clean"}
    attacked = [r for r in rows if r["setting"] != "clean"]
    for r in attacked:
        base = clean.get((r["dataset"], r["category"], r["checkpoint_sha256"]))
        if base is None:
            continue
        for m in ("image_auroc", "pixel_auroc"):
            if _gt(r[m], base[m], 0.005):
                flags[r["job_key"]].append(f"{m}>clean")
    _flag_monotone(attacked, "eps", ("steps",), flags)
    _flag_monotone(attacked, "steps", ("eps",), flags)
    _flag_stronger(attacked, flags)
    return dict(flags)


def _group(rows, extra_keys):
    groups = defaultdict(list)
    for r in rows:
        if is_protocol(r):
            key = (r["dataset"], r["category"], r["checkpoint_sha256"], r["objective"],
                   *[r[k] for k in extra_keys])
            groups[key].append(r)
    return groups


def _flag_monotone(rows, axis: str, fixed: tuple[str, ...], flags) -> None:
    for group in _group(rows, fixed).values():
        group.sort(key=lambda r: r[axis])
        for prev, cur in zip(group, group[1:]):
            if _gt(cur["image_auroc"], prev["image_auroc"], RISE_TOL):
                flags[cur["job_key"]].append(f"rises_with_{axis}")


def _flag_stronger(rows, flags) -> None:
    protocol = {(r["dataset"], r["category"], r["checkpoint_sha256"], r["eps"]): r
                for r in rows if is_protocol(r)}
    for r in rows:
        if is_protocol(r):
            continue
        p = protocol.get((r["dataset"], r["category"], r["checkpoint_sha256"], r["eps"]))
        if p is not None and _gt(p["image_auroc"], r["image_auroc"], STRONGER_TOL):
            flags[p["job_key"]].append(f"stronger_attack_lower({r['setting']})")


def _gt(a, b, tol: float) -> bool:
    if a is None or b is None or _nan(a) or _nan(b):
        return False
    return a > b + tol


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _fmt(x) -> str:
    return "–" if x is None or _nan(x) else f"{100 * x:.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Per dataset: each category's clean and adversarial AD (image AUROC), AL (pixel AUROC)
    and AUPRO under the strongest protocol attack, and a mean row; flags in the last column."""
    out = []
    by_ds = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    for ds, ds_rows in sorted(by_ds.items()):
        attacked = [r for r in ds_rows if r["setting"] != "clean" and is_protocol(r)]
        if attacked:
            eps = max(r["eps"] for r in attacked)
            steps = max(r["steps"] for r in attacked if r["eps"] == eps)
            head = f"PGD-{steps} eps {eps:g}/255"
        else:
            eps, steps, head = None, None, "no attack"
        out.append(f"### {ds} (adversarial: {head})\n")
        out.append("| category | AD clean | AD adv | AL clean | AL adv | AUPRO clean | AUPRO adv "
                   "| flags |")
        out.append("|---|---|---|---|---|---|---|---|")
        sums = defaultdict(list)
        for cat in sorted({r["category"] for r in ds_rows}):
            c = next((r for r in ds_rows if r["category"] == cat and r["setting"] == "clean"),
                     {})
            a = next((r for r in attacked if r["category"] == cat and r["eps"] == eps
                      and r["steps"] == steps), {})
            vals = [c.get("image_auroc"), a.get("image_auroc"), c.get("pixel_auroc"),
                    a.get("pixel_auroc"), c.get("aupro"), a.get("aupro")]
            for i, v in enumerate(vals):
                if v is not None and not _nan(v):
                    sums[i].append(v)
            flags = sorted({f for r in ds_rows if r["category"] == cat
                            for f in (r.get("flags") or "").split(",") if f})
            out.append(f"| {cat} | " + " | ".join(_fmt(v) for v in vals)
                       + f" | {', '.join(flags)} |")
        means = [sum(sums[i]) / len(sums[i]) if sums[i] else None for i in range(6)]
        out.append("| **mean** | " + " | ".join(_fmt(v) for v in means) + " | |")
        out.append("")
    return "\n".join(out)
