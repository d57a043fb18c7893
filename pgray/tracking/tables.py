"""Result tables: the Markdown results table and console lines computed from the rows (the
rows themselves live in one Parquet file per results folder: pgray.tracking.row_store)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from pgray.core.certify import METRICS as CERTIFIED_METRICS
from pgray.core.certify import SIDES as CERTIFIED_SIDES
from pgray.core.certify import is_certified
from pgray.core.intervals import across_seeds as seed_summary
from pgray.tracking.cards import OPERATING_POINTS
from pgray.tracking.certified import certified_markdown, certified_table, settings_text

# the results folder's rows, read and appended (kept importable from here)
from pgray.tracking.row_store import (  # noqa: F401
    RESULTS_FILE,
    append_rows,
    locked,
    read_rows,
    row_key,
)
from pgray.tracking.table_columns import (
    METRIC_LABELS,
    OPERATING_NOTE,
    budget_heading,
    complete_means,
    markdown_rows,
    model_budgets,
    operating_points,
)
from pgray.tracking.table_columns import percent as _fmt


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _interval(row: dict[str, Any], metric: str) -> tuple[float, float] | None:
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if low is None or high is None or _nan(low) or _nan(high):
        return None
    return low, high


def _cell(row: dict[str, Any], metric: str, mark: str = "") -> str:
    """A metric in percent with its bootstrap 95 % interval when the row has one:
    `87.2 [84.1, 90.0]`."""
    value = row.get(metric)
    ci = None if value is None or _nan(value) else _interval(row, metric)
    text = _fmt(value) + mark
    return text if ci is None else f"{text} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


UNCERTAINTY_NOTE = ("Brackets: bootstrap 95 % intervals (test images resampled within each"
                    " label, 1,000 times; docs/method.md, \"Uncertainty\").")
SEEDS_NOTE = ("Numbers: the mean over {n} training seeds; brackets: its 95 % interval over both"
              " the test images and the seeds (the seeds' bootstrap half-widths and the"
              " t-interval across seeds in quadrature, clipped; docs/method.md,"
              " \"Uncertainty\"; each seed's own row is in results.parquet).")


def _flag_cell(rows: list[dict[str, Any]]) -> str:
    names = sorted({f for r in rows for f in (r.get("flags") or [])})
    return ", ".join(names)


SEED_GROUP = ("dataset", "category", "detector", "attack", "setting", "eps", "threat", "suite")
# averaged over seeds (with an interval where the rows carry one); other columns are seed 0's
SEED_AVERAGED = tuple(m for m, _ in METRIC_LABELS) + OPERATING_POINTS
# a certified row's: every side of its bracket
CERTIFIED_AVERAGED = tuple(f"{side}_{m}" for side in CERTIFIED_SIDES for m in CERTIFIED_METRICS)


def across_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the same setting from checkpoints trained with different seeds, as one row:
    each metric the mean over the seeds that have it, `<metric>_ci_low/_ci_high` its 95 %
    interval over both the test images and the seeds (`pgray.core.intervals.across_seeds`:
    every seed is scored on the same split, so the seeds' spread alone would understate it),
    clipped to [0, 1]; `seeds` and `n_seeds`: the seeds with a finite image AUROC (a failed
    seed is not counted), `seeds_without_value` the others; the union of the flags. Rows
    without a seed pass unchanged. Certified rows average every side of their bracket,
    counting the seeds with a certified image AUROC."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    out = []
    for r in rows:
        if r.get("seed") is None:
            out.append(r)
        else:
            groups[tuple(r.get(k) for k in SEED_GROUP)].append(r)
    for members in groups.values():
        certified = is_certified(members[0])
        value = "certified_image_auroc" if certified else "image_auroc"
        counted = sorted(r["seed"] for r in members if not _missing(r.get(value)))
        merged = dict(members[0]) | {
            "seed": None, "seeds": counted, "n_seeds": len(counted),
            "seeds_without_value": sorted(r["seed"] for r in members
                                          if _missing(r.get(value)))}
        for metric in CERTIFIED_AVERAGED if certified else SEED_AVERAGED:
            if any(metric in r for r in members):
                merged |= _seed_interval(metric, members)
        merged["flags"] = sorted({f for r in members for f in (r.get("flags") or [])})
        out.append(merged)
    return out


def _missing(value: Any) -> bool:
    return value is None or _nan(value)


def _seed_interval(metric: str, members: list[dict[str, Any]]) -> dict[str, float]:
    """The metric's mean over the seeds' rows and its interval (NaN where no seed carries a
    test-set interval: the seeds' spread alone would claim too much)."""
    summary = seed_summary([r.get(metric) for r in members],
                           [r.get(f"{metric}_ci_low") for r in members],
                           [r.get(f"{metric}_ci_high") for r in members])
    return {metric: summary.mean, f"{metric}_ci_low": summary.low,
            f"{metric}_ci_high": summary.high}


def markdown_table(rows: list[dict[str, Any]], detailed: int | None = None) -> str:
    """Per dataset, detector and eps: each category's clean, paper-protocol and worst-case
    (adaptive suite) AD (image AUROC), AL (pixel AUROC) and AUPRO, a mean row, and the
    reliability flags of the category's rows at that eps. The worst case is the robust number.
    With several detectors on a dataset, a comparison table per eps comes first (and only
    the first `detailed` detectors get their own tables; None: all). Rows of several
    training seeds show their mean and its interval across seeds."""
    seeded = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    rows = across_seeds(rows)
    certified = [r for r in rows if is_certified(r)]
    rows = [r for r in rows if not is_certified(r)]
    out = [f"Mean over training seeds {', '.join(map(str, seeded))}; intervals are 95 % across"
           " seeds.\n"] if len(seeded) > 1 else []
    by_ds: dict[str, list] = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    for ds, ds_rows in sorted(by_ds.items()):
        detectors = _detector_order(ds_rows)
        budgets = sorted({(_threat(r), r["eps"]) for r in ds_rows
                          if r.get("attack") == "worst_case"},
                         key=lambda b: (THREAT_ORDER.get(b[0], 9), b[0], b[1]))
        if len(detectors) > 1:
            for threat, eps in budgets or [("linf", None)]:
                out += comparison_table(ds, ds_rows, detectors, eps, threat)
        for det in detectors[:detailed]:
            mine = [r for r in ds_rows if (r.get("detector") or "patchguard") == det]
            title = ds if len(detectors) == 1 else f"{ds}, {det}"
            for threat, eps in budgets or [("linf", None)]:
                out += _eps_table(title, mine, eps, threat)
                out += _operating_table(title, mine, eps, threat)
        out += certified_markdown(ds, [r for r in certified if r["dataset"] == ds],
                                  detectors)
    return "\n".join(out)


def certified_tables(rows: list[dict[str, Any]]
                     ) -> list[tuple[str, str, list[str], list[list[str]], str]]:
    """Per dataset and metric with certified rows: (dataset, the metric's label, columns,
    cells, the smoothing settings), seeds merged (`pgray.tracking.certified`)."""
    merged = across_seeds(rows)
    out = []
    for ds in sorted({r["dataset"] for r in merged if is_certified(r)}):
        mine = [r for r in merged if r["dataset"] == ds]
        detectors = _detector_order(mine)
        for metric, label in METRIC_LABELS:
            cols, body = certified_table(mine, metric, detectors)
            out.append((ds, label, cols, body, settings_text(mine)))
    return out


THREAT_ORDER = {"linf": 0, "l2": 1, "patch": 2}


def _threat(row: dict[str, Any]) -> str:
    """A row's threat; rows written before threats existed are linf."""
    return row.get("threat") or "linf"


def budget_label(threat: str, eps: float | None) -> str:
    """A budget in its threat's unit, as a table heading says it."""
    if eps is None:
        return "clean only"
    if threat == "l2":
        return f"L2 eps {eps:g}"
    if threat == "patch":
        return f"patch {100 * eps:g} % of the image"
    return f"eps {eps:g}/255"


def _at(row: dict[str, Any], eps: float | None, threat: str) -> bool:
    return row.get("eps") == eps and _threat(row) == threat


def _detector_order(rows: list[dict[str, Any]]) -> list[str]:
    """PatchGuard's own columns first (as in the paper's tables), then the others by name
    (rows arrive in whatever order their jobs finished)."""
    from pgray.detectors.registry import CLEAN_TWIN, PATCHGUARD, RECIPE, REFERENCE

    seen = {r.get("detector") or PATCHGUARD for r in rows}
    ours = [d for d in (PATCHGUARD, RECIPE, CLEAN_TWIN, REFERENCE) if d in seen]
    return ours + sorted(seen - set(ours))


def comparison_table(ds: str, rows: list[dict[str, Any]], detectors: list[str],
                     eps: float | None, threat: str = "linf") -> list[str]:
    """The paper's comparison layout: one column group per detector, clean and worst-case AD
    and AL, per category and on average, at one budget of one threat. A `*` marks a number
    whose interval does not overlap that of the first detector (the rows hold no per-image
    scores, so no paired bootstrap here: a conservative mark)."""
    from pgray.core.intervals import intervals_apart

    extra, budget_note = budget_heading([r for r in rows if _at(r, eps, threat)], threat,
                                        detectors)
    head = budget_label(threat, eps) + extra
    lines = [f"### {ds}: detectors compared ({head}; worst case of the adaptive suite)\n"]
    cols = [f"{d} {m} {k}" for d in detectors for m in ("AD", "AL") for k in ("clean", "worst")]
    lines.append("| category | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    per_category = []
    marked = False
    for cat in sorted({r["category"] for r in rows}):
        vals, cells, first = [], [], None
        for det in detectors:
            mine = [r for r in rows if r["category"] == cat
                    and (r.get("detector") or "patchguard") == det]
            clean = next((r for r in mine if r.get("attack") == "clean"), {})
            worst = next((r for r in mine if r.get("attack") == "worst_case"
                          and _at(r, eps, threat)), {})
            picks = [(clean, "image_auroc"), (worst, "image_auroc"), (clean, "pixel_auroc"),
                     (worst, "pixel_auroc")]
            first = first or picks
            for (row, metric), (ref, _) in zip(picks, first):
                apart = row is not ref and intervals_apart(row, ref, metric)
                marked |= apart
                vals.append(row.get(metric))
                cells.append(_cell(row, metric, "*" if apart else ""))
        per_category.append((cat, vals))
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    label, means = complete_means(per_category)
    lines.append(f"| **{label}** | " + " | ".join(_fmt(v) for v in means) + " |")
    if budget_note:
        lines.append(f"\n{budget_note}")
    if marked:
        lines.append(f"\n`*`: its 95 % interval and {detectors[0]}'s do not overlap.")
    random = sorted({r.get("detector") for r in rows if r.get("backbone_weights") == "random"})
    if random:
        lines.append(f"\nRandom-init backbones (no pretrained weights): {', '.join(random)};"
                     " these are not the published baselines' numbers.")
    lines.append("")
    return lines


def budget_table(ds_rows: list[dict[str, Any]], eps: float | None, threat: str = "linf"
                 ) -> tuple[list[str], list[list[str]]]:
    """One budget of one threat as data: the heading, then per category its clean, protocol
    and worst-case AD, AL and AUPRO (with intervals) and its flags, then the mean row."""
    cols = ["category", *(f"{lab} {kind}" for _, lab in METRIC_LABELS
                          for kind in ("clean", "protocol", "worst")), "flags"]
    body, per_category = [], []
    for cat in sorted({r["category"] for r in ds_rows}):
        pick = {kind: next((r for r in ds_rows if r["category"] == cat
                            and r.get("attack") == kind and (kind == "clean" or
                                                             _at(r, eps, threat))), {})
                for kind in ("clean", "protocol", "worst_case")}
        order = [(pick[k], m) for m, _ in METRIC_LABELS for k in ("clean", "protocol",
                                                                  "worst_case")]
        per_category.append((cat, [row.get(m) for row, m in order]))
        flagged = [r for r in ds_rows if r["category"] == cat
                   and (_at(r, eps, threat) or r.get("attack") == "clean")]
        body.append([cat, *(_cell(row, m) for row, m in order), _flag_cell(flagged)])
    label, means = complete_means(per_category)
    body.append([label, *(_fmt(v) for v in means), ""])
    return cols, body


def _picks(ds_rows: list[dict[str, Any]], eps: float | None, threat: str
           ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Per category: its clean row and its worst-case row at the budget ({} where absent)."""
    return [(cat, next((r for r in ds_rows if r["category"] == cat
                        and r.get("attack") == "clean"), {}),
             next((r for r in ds_rows if r["category"] == cat
                   and r.get("attack") == "worst_case" and _at(r, eps, threat)), {}))
            for cat in sorted({r["category"] for r in ds_rows})]


def operating_table(ds_rows: list[dict[str, Any]], eps: float | None, threat: str = "linf"
                    ) -> tuple[list[str], list[list[str]]] | None:
    """One budget's operating points as data (pgray.tracking.table_columns); None when no
    row has them."""
    return operating_points(_picks(ds_rows, eps, threat)) if eps is not None else None


def budget_title(ds_rows: list[dict[str, Any]], eps: float | None, threat: str) -> str:
    """A budget in its threat's unit and, for one detector's rows, as its input saw it."""
    seen = set(model_budgets([r for r in ds_rows if _at(r, eps, threat)], threat).values())
    return budget_label(threat, eps) + "".join(f"; {text}" for text in sorted(seen))


def result_budgets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, float | None,
                                                               list[dict[str, Any]]]]:
    """The tables `markdown_table` shows per detector, as data: (dataset, detector, threat,
    eps, that detector's rows of the dataset), rows of several seeds merged."""
    out = []
    by_ds: dict[str, list] = defaultdict(list)
    for r in across_seeds(rows):
        if not is_certified(r):  # certified_tables has them
            by_ds[r["dataset"]].append(r)
    for ds, ds_rows in sorted(by_ds.items()):
        budgets = sorted({(_threat(r), r["eps"]) for r in ds_rows
                          if r.get("attack") == "worst_case"},
                         key=lambda b: (THREAT_ORDER.get(b[0], 9), b[0], b[1]))
        for det in _detector_order(ds_rows):
            mine = [r for r in ds_rows if (r.get("detector") or "patchguard") == det]
            out += [(ds, det, threat, eps, mine) for threat, eps in budgets or [("linf", None)]]
    return out


def _eps_table(ds: str, ds_rows: list[dict[str, Any]], eps: float | None,
               threat: str = "linf") -> list[str]:
    """One budget of one threat; the protocol column is linf's (other threats leave it
    empty: the paper's PGD is linf)."""
    at = [r for r in ds_rows if _at(r, eps, threat)]
    steps = max((r.get("steps") or 0 for r in at if r.get("attack") == "protocol"), default=0)
    head = budget_title(ds_rows, eps, threat)
    if eps is not None and threat == "linf":
        head += f", protocol PGD-{steps}"
    lines = [f"### {ds} ({head}; worst case = the robust number)\n"]
    lines += markdown_rows(*budget_table(ds_rows, eps, threat))
    if any(_interval(r, m) for r in at + ds_rows for m, _ in METRIC_LABELS):
        seeds = max((r.get("n_seeds") or 1 for r in ds_rows), default=1)
        lines.append(f"\n{UNCERTAINTY_NOTE}" if seeds == 1 else
                     f"\n{SEEDS_NOTE.format(n=seeds)}")
    lines.append("")
    return lines


def _operating_table(ds: str, ds_rows: list[dict[str, Any]], eps: float | None,
                     threat: str) -> list[str]:
    table = operating_table(ds_rows, eps, threat)
    if table is None:
        return []
    return [f"#### {ds} ({budget_label(threat, eps)}): operating points\n",
            *markdown_rows(*table), "", OPERATING_NOTE, ""]


def incomplete_note(failed: list[str], total: int) -> str:
    """What a results page says first when some of its jobs failed (`failed`: one line per
    failed job, its label and why): the tables hold the finished jobs only."""
    if not failed:
        return ""
    shown = "; ".join(failed[:10]) + ("; ..." if len(failed) > 10 else "")
    return (f"Incomplete: {len(failed)} of {total} evaluation jobs failed ({shown}). The"
            " tables hold the finished jobs only and no robustness card was written; run"
            " again to retry the failed jobs (the finished ones are kept).")


def rows_text(rows: list[dict[str, Any]]) -> str:
    """One line per row for the console: attack, setting, metrics, flags."""
    lines = []
    for r in rows:
        flags = f"  flags: {', '.join(r['flags'])}" if r.get("flags") else ""
        metrics = "  ".join(f"{m} {_plain(r, m)}" for m, _ in METRIC_LABELS)
        lines.append(f"{r.get('threat') or 'linf':<6} {r.get('attack', ''):<16}"
                     f" {r['setting']:<44} {metrics}  n={r.get('n_images')}{flags}")
    return "\n".join(lines)


def _plain(row: dict[str, Any], metric: str) -> str:
    """`0.8720 [0.8410, 0.9000]`: the console's form of a metric and its interval."""
    ci = _interval(row, metric)
    text = f"{row[metric]:.4f}"
    return text if ci is None or _nan(row[metric]) else f"{text} [{ci[0]:.4f}, {ci[1]:.4f}]"
