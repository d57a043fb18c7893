"""What the results tables show beside each category's AUROCs: a mean row that averages the
same categories in every column, each model's budget as its own input saw it (the L2 change
per pixel value, the real patch area), and the operating points (TPR at 1 % and 5 % FPR; the
worst case with only the normal or only the anomalous images attacked). Pure functions of
result rows; a row written before a column existed shows "–" there."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]
# each metric's column label, in the paper's order
METRIC_LABELS = (("image_auroc", "AD"), ("pixel_auroc", "AL"), ("aupro", "AUPRO"))
# the column that says how much of the input a budget of the threat changes
BUDGET_COLUMNS = {"l2": "l2_per_pixel", "patch": "patch_area"}
OPERATING_NOTE = ("TPR at 1 % (5 %) FPR: the share of anomalous images flagged at the threshold"
                  " that flags 1 % (5 %) of the normal ones, clean and in the worst case of the"
                  " suite. AD normal attacked: image AUROC when only the normal images are"
                  " attacked (the anomalous ones scored clean); AD anomalous attacked: the"
                  " converse.")


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def percent(x: Any) -> str:
    return "–" if is_missing(x) else f"{100 * x:.1f}"


def complete_means(rows: Sequence[tuple[str, Sequence[Any]]]) -> tuple[str, list[Any]]:
    """The mean row of a table of (category, values): its label and its values. Every column
    averages the same categories: those with a value in each column that any category fills
    (a failed job leaves one cell of a category empty; its category then leaves the mean, and
    the label says so, rather than the clean column averaging more categories than the
    worst-case one)."""
    width = max((len(v) for _, v in rows), default=0)
    live = [i for i in range(width) if any(not is_missing(v[i]) for _, v in rows)]
    kept = [v for _, v in rows if all(not is_missing(v[i]) for i in live)]
    means = [sum(v[i] for v in kept) / len(kept) if kept and i in live else None
             for i in range(width)]
    left = [c for c, v in rows if any(is_missing(v[i]) for i in live)]
    if not left:
        return "mean", means
    return f"mean of {len(kept)}/{len(rows)} (left out: {', '.join(left)})", means


def model_budgets(rows: Sequence[Row], threat: str) -> dict[str, str]:
    """Per detector, its budget of `threat` as its input saw it, from its worst-case rows:
    the RMS change per pixel value (L2; the same eps is a smaller change at a larger input)
    or the real patch area (the side is rounded to whole pixels at each input size). Empty
    for linf (the same per pixel at any size) and for rows without the column."""
    column = BUDGET_COLUMNS.get(threat)
    seen: dict[str, set[tuple[float, Any]]] = {}
    for r in rows:
        if column and r.get("attack") == "worst_case" and not is_missing(r.get(column)):
            seen.setdefault(r.get("detector") or "patchguard", set()).add(
                (round(float(r[column]), 8), r.get("input_size")))
    return {det: ", ".join(_budget_text(threat, value, size) for value, size in sorted(
        values, key=lambda v: (v[0], str(v[1])))) for det, values in seen.items()}


def _budget_text(threat: str, value: float, size: Any) -> str:
    at = "" if is_missing(size) else f" at {int(size)} px"
    if threat == "l2":
        return f"{255 * value:.3g}/255 RMS per pixel value{at}"
    return f"real area {100 * value:.2f} %{at}"


def budget_heading(rows: Sequence[Row], threat: str, detectors: Sequence[str]
                   ) -> tuple[str, str]:
    """What a comparison table's heading adds to its budget, and the note under the table:
    the budget per pixel where every detector saw the same, else a warning that the columns
    are not the same budget, and each detector's."""
    budgets = model_budgets(rows, threat)
    if not budgets:
        return "", ""
    if len(set(budgets.values())) == 1 and len(budgets) == len(detectors):
        return f"; {next(iter(budgets.values()))}", ""
    what, why = (("budget per pixel", "the same L2 eps spreads over more pixels at a larger"
                  " input") if threat == "l2" else
                 ("patch area", "the patch side is rounded to whole pixels at each input size"))
    each = "; ".join(f"{d}: {budgets.get(d, 'unknown')}" for d in detectors)
    return (f"; not the same {what} for every detector",
            f"Not one budget: {why}. Per detector: {each}.")


def operating_points(picks: Sequence[tuple[str, Row, Row]]
                     ) -> tuple[list[str], list[list[str]]] | None:
    """Per category (category, its clean row, its worst-case row at one budget): TPR at 1 %
    and 5 % FPR clean and in the worst case, and the worst case split by the side attacked,
    then the mean row. None when no row carries any of these columns."""
    cols = ["category", "TPR@1%FPR clean", "TPR@1%FPR worst", "TPR@5%FPR clean",
            "TPR@5%FPR worst", "AD worst, normal attacked", "AD worst, anomalous attacked"]
    values = [(cat, [clean.get("tpr_at_fpr1"), worst.get("tpr_at_fpr1"),
                     clean.get("tpr_at_fpr5"), worst.get("tpr_at_fpr5"),
                     worst.get("image_auroc_attack_normal"),
                     worst.get("image_auroc_attack_anomalous")]) for cat, clean, worst in picks]
    if all(is_missing(v) for _, vals in values for v in vals):
        return None
    label, means = complete_means(values)
    body = [[cat, *(percent(v) for v in vals)] for cat, vals in values]
    return cols, body + [[label, *(percent(v) for v in means)]]


def markdown_rows(cols: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """A table of cells as Markdown lines; the last row (the mean) in bold."""
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body[:-1]]
    if body:
        lines.append("| " + " | ".join([f"**{body[-1][0]}**", *body[-1][1:]]) + " |")
    return lines
