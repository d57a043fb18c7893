"""Certified rows (`pgray.core.certify`: attack `certified`, one per L2 radius) among a run's
results: flagged apart from the attacked rows, their base detector's sides joined from those
rows, and the certified table of a dataset as data (results.md and report.html draw it).

A certified row is no attack's row of its threat: the tables per budget, the cards' budgets
and the reliability checks of the attacked rows leave it out; it keeps its own bracket flag
(`certified_above_attacked`)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from pgray.core.certify import METRICS, SIDES, is_certified, with_base
from pgray.tracking.table_columns import METRIC_LABELS

Row = dict[str, Any]

# (side, its column heading) in the order a reader meets the bracket: what smoothing costs
# clean, then the certified lower bound, the attacked upper bound, the base under attack
TABLE_SIDES = (("base", "base clean"), ("smoothed", "smoothed clean"),
               ("certified", "certified"), ("attacked", "attacked"),
               ("base_attacked", "base attacked"))
CERTIFIED_NOTE = (
    "Certified: the smoothed detector's number with every anomalous image (pixel) at its"
    " certified lower bound and every normal one at its upper bound, a lower bound on any L2"
    " attack within the radius at the row's confidence; attacked: the l2 suite's worst case"
    " against the same smoothed detector (an upper bound); smoothed clean: it unattacked; base"
    " clean / base attacked: the detector itself, clean and under the l2 suite at the same"
    " radius. Brackets: bootstrap 95 % intervals over the test images (docs/method.md,"
    " \"Certification\").")


def flag_rows(rows: list[Row]) -> list[Row]:
    """The reliability flags of the attacked rows (`reliability_flags`), and the certified
    rows with their base sides joined from their model's rows (`with_base`), their own flags
    kept."""
    from pgray.attacks.checks import SCOPE, reliability_flags  # torch: only where rows are flagged

    attacked = reliability_flags([r for r in rows if not is_certified(r)])
    by_model: dict[tuple, list[Row]] = defaultdict(list)
    for r in attacked:
        by_model[tuple(r.get(k) for k in SCOPE)].append(r)
    return attacked + [with_base(r, by_model[tuple(r.get(k) for k in SCOPE)])
                       for r in rows if is_certified(r)]


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _cell(row: Row, column: str) -> str:
    """`87.2 [84.1, 90.0]` in percent; `–` without a value."""
    value = _number(row.get(column))
    if value is None:
        return "–"
    low, high = (_number(row.get(f"{column}_ci_{end}")) for end in ("low", "high"))
    text = f"{100 * value:.1f}"
    return text if low is None or high is None else f"{text} [{100 * low:.1f}, {100 * high:.1f}]"


def certified_table(rows: list[Row], metric: str, detectors: list[str]
                    ) -> tuple[list[str], list[list[str]]] | None:
    """One dataset's certified rows (merged over seeds where seeded) as a table of `metric`:
    per model, category and radius, each side of the bracket with its interval, and the
    row's flags. None without certified rows."""
    mine = [r for r in rows if is_certified(r)]
    if not mine:
        return None
    order = {d: i for i, d in enumerate(detectors)}
    mine.sort(key=lambda r: (order.get(r.get("detector") or "patchguard", len(order)),
                             r.get("detector") or "", r["category"], r["radius"]))
    cols = ["model", "category", "radius (L2)", "sigma",
            *(heading for _, heading in TABLE_SIDES), "flags"]
    body = [[r.get("detector") or "patchguard", r["category"], f"{r['radius']:g}",
             f"{r['sigma']:g}", *(_cell(r, f"{side}_{metric}") for side, _ in TABLE_SIDES),
             ", ".join(r.get("flags") or [])] for r in mine]
    return cols, body


def settings_text(rows: list[Row]) -> str:
    """The smoothing settings of a dataset's certified rows, as a line under its tables."""
    seen = sorted({(r["sigma"], r["samples"], r["confidence"], r.get("percentile"),
                    r.get("eot_samples")) for r in rows if is_certified(r)})
    return "; ".join(f"sigma {s:g}, {n:,} samples per image, confidence {c:g}, percentile"
                     f" {p:g}, {e} EOT samples per attack step" for s, n, c, p, e in seen)


def certified_markdown(ds: str, rows: list[Row], detectors: list[str]) -> list[str]:
    """A dataset's certified tables for results.md (one per metric: AD, AL, AUPRO), rows
    merged over seeds already, and the smoothing they were made with."""
    if not rows:
        return []
    lines = []
    for metric, label in METRIC_LABELS:
        cols, body = certified_table(rows, metric, detectors)
        lines += [f"### {ds}: certified {label} by randomized smoothing, bracketed\n",
                  "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|",
                  *("| " + " | ".join(cells) + " |" for cells in body), ""]
    return lines + [f"Smoothing: {settings_text(rows)}. {CERTIFIED_NOTE}", ""]


def certified_text(rows: list[Row]) -> str:
    """One line per certified radius for the console: each side of the bracket
    (`pgray.core.certify.SIDES`) as image AUROC / pixel AUROC / AUPRO, then the flags."""
    lines = []
    for r in rows:
        flags = f"  flags: {', '.join(r['flags'])}" if r.get("flags") else ""
        numbers = "  ".join(f"{side} " + "/".join(f"{r[f'{side}_{m}']:.4f}" for m in METRICS)
                            for side in SIDES)
        lines.append(f"l2 radius {r['radius']:<6g} sigma {r['sigma']:g}  {numbers}{flags}")
    return "\n".join(lines)
