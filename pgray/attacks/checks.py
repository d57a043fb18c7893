"""Reliability checks on robust numbers, in the spirit of RobustBench's and AutoAttack's: a
robust number that trips one is suspect (the attack did not work, or gradients are masked),
and every row it concerns carries the flag with the numbers that raised it.

Rows are plain dicts (`pgray.core.scoring` writes them): dataset, category, checkpoint (or
detector) identity, `threat`, `attack`, eps, steps, restarts and the metrics. Rows of different
threats are never compared (their eps are in different units): the rising checks group by
threat, and each threat's large-budget check and black-box member flag the rows of their own
threat; the clean row is every threat's reference. A model is one model whatever the threat,
though: once any check trips at one threat, every robust row of its other threats carries
`flagged_at_other_threat`, its note naming the threat and the flags raised there, so no card
of a flagged model reads clean. The flags and what each means: `FLAG_MEANINGS`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from pgray.attacks.suite import CHECK, WORST

# The metric(s) an attack is aimed at: a detection attack that happens to raise pixel AUROC
# says nothing about the attack's strength.
AIMED = {"detection": ("image_auroc",), "localization": ("pixel_auroc",),
         "both": ("image_auroc", "pixel_auroc")}
TOL_CLEAN = 0.005  # AUROC units: below these, differences are noise
TOL_RISE = 0.01
TOL_BLACKBOX = 0.01
LARGE_EPS_AUROC = 0.05
ZERO_GRAD_FRACTION = 0.01
SCOPE = ("dataset", "category", "checkpoint_sha256", "detector")
OTHER_THREAT = "flagged_at_other_threat"
CERTIFIED_ABOVE = "certified_above_attacked"
BRACKETED = ("image_auroc", "pixel_auroc", "aupro")  # the metrics a certified row brackets

# What each flag means (the report and the docs show these words).
FLAG_MEANINGS = {
    "robust_above_clean": "an attack raised AUROC above the clean one.",
    "rises_with_eps": "a larger budget of the same attack gave a higher AUROC.",
    "more_steps_higher": "more steps or restarts of the same attack gave a higher AUROC.",
    "blackbox_stronger": ("the black-box member of the threat (Square for linf and l2, the"
                          " random patch search for patch) beat the white-box detection"
                          " attacks on the same images: the gradients mislead (gradient"
                          " masking)."),
    "weak_at_large_eps": ("at the threat's large budget (linf eps 64/255, l2 an RMS change of"
                          " 0.25 per pixel value, patch half the image: suite.check_*)"
                          f" detection AUROC stayed above {LARGE_EPS_AUROC}: the attack does"
                          " not converge, or gradients are masked."),
    "zero_gradients": (f"more than {100 * ZERO_GRAD_FRACTION:g} % of the images had an"
                       " all-zero input gradient: the attack did nothing to them (features"
                       " computed under torch.no_grad, a step function)."),
    CERTIFIED_ABOVE: ("a certified number (smoothed detector, certified at the row's"
                      " confidence) is above the number the l2 suite reached against the same"
                      " smoothed detector at the same radius: the certificate or the"
                      " attacked evaluation is wrong, or the noise gave a rare sample."),
    OTHER_THREAT: ("a check tripped on the same model under another threat (the note names"
                   " the threat and its flags): the attacks here follow the same gradients,"
                   " so these numbers are suspect too."),
}

Row = dict[str, Any]


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _scope(row: Row) -> tuple:
    return tuple(row.get(k) for k in SCOPE)


def _threat(row: Row) -> str:
    """Rows written before threats existed are linf."""
    return row.get("threat") or "linf"


def _robust(row: Row) -> bool:
    return row.get("attack") not in ("clean", CHECK)


def _aimed(row: Row) -> tuple[str, ...]:
    return AIMED.get(row.get("aims_at") or "both", AIMED["both"])


def _on_subset(row: Row) -> bool:
    return row.get("whitebox_image_auroc") is not None


class _Flags:
    def __init__(self, n: int) -> None:
        self.found: list[dict[str, str]] = [{} for _ in range(n)]

    def add(self, index: int, name: str, note: str) -> None:
        self.found[index].setdefault(name, note)


def _above_clean(rows: list[Row], flags: _Flags) -> None:
    clean = {_scope(r): r for r in rows if r.get("attack") == "clean"}
    for i, r in enumerate(rows):
        base = clean.get(_scope(r))
        if base is None or not _robust(r) or _on_subset(r):
            continue
        for m in _aimed(r):
            a, b = _num(r.get(m)), _num(base.get(m))
            if a is not None and b is not None and a > b + TOL_CLEAN:
                flags.add(i, "robust_above_clean", f"{m} {a:.4f} > clean {b:.4f}")


def _rising(rows: list[Row], flags: _Flags, axis: str, group_keys: tuple[str, ...],
            name: str) -> None:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        # rows of another precision or threat (eps in another unit) are another attack
        if _robust(r):
            groups[(_scope(r), _threat(r), r.get("attack"), r.get("precision"),
                    *(r.get(k) for k in group_keys))].append(i)
    for members in groups.values():
        members.sort(key=lambda i: _num(_axis(rows[i], axis)) or 0.0)
        for prev, cur in zip(members, members[1:]):
            for m in _aimed(rows[cur]):
                a, b = _num(rows[cur].get(m)), _num(rows[prev].get(m))
                if a is not None and b is not None and a > b + TOL_RISE:
                    flags.add(cur, name, f"{m} {a:.4f} at {axis} {_axis(rows[cur], axis):g} >"
                                         f" {b:.4f} at {_axis(rows[prev], axis):g}")


def _axis(row: Row, axis: str) -> float:
    if axis == "work":
        return float((row.get("steps") or 0) * (row.get("restarts") or 1))
    return float(row.get(axis) or 0)


def _scope_flags(rows: list[Row], flags: _Flags) -> None:
    """Checks that make every robust row of their scope (and eps) suspect."""
    for r in rows:
        scope, eps = _scope(r), r.get("eps")
        name, note = None, ""
        if r.get("attack") == CHECK:
            auroc = _num(r.get("image_auroc"))
            if auroc is not None and auroc > LARGE_EPS_AUROC:
                name, note, eps = "weak_at_large_eps", (
                    f"image_auroc {auroc:.4f} > {LARGE_EPS_AUROC} at {_threat(r)} eps"
                    f" {r['eps']:g}"), None
        elif _on_subset(r):
            box, white = _num(r.get("image_auroc")), _num(r.get("whitebox_image_auroc"))
            if box is not None and white is not None and box < white - TOL_BLACKBOX:
                name, note = "blackbox_stronger", (
                    f"black-box image_auroc {box:.4f} < white-box {white:.4f}")
        elif r.get("attack") == WORST:
            zero = max(_num(r.get("zero_grad_detection")) or 0.0,
                       _num(r.get("zero_grad_localization")) or 0.0)
            if zero > ZERO_GRAD_FRACTION:
                name, note = "zero_gradients", f"{100 * zero:.1f} % of images"
        if name is None:
            continue
        for i, other in enumerate(rows):  # a check speaks for its own threat only
            if _scope(other) == scope and _threat(other) == _threat(r) and (
                    eps is None or other.get("eps") == eps) and (_robust(other) or other is r):
                flags.add(i, name, note)


def _other_threats(rows: list[Row], flags: _Flags) -> None:
    """Every robust row (and check) of a model carries the flags of its other threats."""
    raised: dict[tuple, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r, found in zip(rows, flags.found):
        if r.get("attack") != "clean":
            raised[_scope(r)][_threat(r)].update(found)
    for i, r in enumerate(rows):
        if r.get("attack") == "clean":
            continue
        others = {t: names for t, names in raised[_scope(r)].items()
                  if t != _threat(r) and names}
        if others:
            flags.add(i, OTHER_THREAT, "; ".join(f"{t}: {', '.join(sorted(names))}"
                                                 for t, names in sorted(others.items())))


def reliability_flags(rows: list[Row]) -> list[Row]:
    """The rows with `flags` (names) and `flag_notes` ("name: the numbers") filled in."""
    flags = _Flags(len(rows))
    _above_clean(rows, flags)
    _rising(rows, flags, "eps", ("steps", "restarts"), "rises_with_eps")
    _rising(rows, flags, "work", ("eps",), "more_steps_higher")
    _scope_flags(rows, flags)
    _other_threats(rows, flags)  # last: it reads what the others found
    return [r | {"flags": sorted(found), "flag_notes": [f"{k}: {v}" for k, v in
                                                        sorted(found.items())]}
            for r, found in zip(rows, flags.found)]


def bracket_flags(row: Row) -> Row:
    """A certified row (`pgray.core.certify`) with `flags` and `flag_notes`: the bracket
    [certified, attacked] must not be upside down for any metric (`CERTIFIED_ABOVE`)."""
    notes = []
    for m in BRACKETED:
        low, high = _num(row.get(f"certified_{m}")), _num(row.get(f"attacked_{m}"))
        if low is not None and high is not None and low > high:
            notes.append(f"{m} certified {low:.4f} > attacked {high:.4f}")
    found = {CERTIFIED_ABOVE: "; ".join(notes)} if notes else {}
    return row | {"flags": sorted(found), "flag_notes": [f"{k}: {v}" for k, v in
                                                         sorted(found.items())]}
