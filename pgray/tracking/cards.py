"""Robustness cards: one JSON file per (detector, dataset, category, threat), in the spirit of
RobustBench's model_info files. A card says what the model is (backbone and its initial
weights, how it was trained), what it was tested on (dataset, category, split fingerprint),
under which threat and budgets, and what came out: clean, protocol and worst-case AD (image
AUROC), AL (pixel AUROC) and AUPRO with their bootstrap intervals where rows carry them, the
operating points (TPR at 1 % and 5 % FPR; the worst case split into attacks on normal and on
anomalous images only), the forward passes the suite spent, and the reliability flags (a
flagged card is `unreliable`). Per budget it says what made the number, so that only like
numbers are compared: the suite (`name`, and its `members` with their steps, restarts and
queries), the precision the attacks ran in and why, the real budget at the model's input size
(`patch_area`, `l2_per_pixel`) and the commit the rows were computed with. A model that was
certified (randomized smoothing, `pgray.core.certify`) has a `certified` block on every card
of it: per L2 radius the certified, attacked and smoothed clean numbers and the smoothing.

`build_cards(rows)` is a pure function of the result rows (`pgray.tracking.tables`); the
benchmark, the sweep's final evaluation (through the benchmark's `finalize`) and
`python -m pgray.evaluate` write its output under OUT/cards/ (`write_cards`), and
`python -m pgray.leaderboard` merges cards of many runs into one table.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEMA = "pgray.robustness_card"
# 2: per budget `suite`, `precision`, `precision_reason`, `git_commit`, `eval_version`, the real
# budget and the operating points; `worst_case` lost `steps` and `restarts` (the most over the
# members, which described no attack); the card's `git_commit` is the rows' commit, the
# writer's is `written_by_commit`
# 3: `certified`: the model's certified L2 radii (randomized smoothing), on every card of it
# (null where it certified none)
SCHEMA_VERSION = 3
CARDS_DIR = "cards"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
TPRS = ("tpr_at_fpr1", "tpr_at_fpr5")
ATTACK_SIDES = ("image_auroc_attack_normal", "image_auroc_attack_anomalous")
OPERATING_POINTS = TPRS + ATTACK_SIDES
DEFAULT_THREAT = "linf"  # rows written before the `threat` column attacked in L-inf
CLEAN_THREAT = "none"
EPS_UNITS = {"linf": "1/255 of the [0, 1] pixel range",
             "l2": "L2 norm of the perturbation on [0, 1] pixels",
             "patch": "patch area as a fraction of the image"}
PROTOCOL, WORST, CLEAN = "protocol", "worst_case", "clean"
CERTIFIED = "certified"  # a certified row's attack (pgray.core.certify): no threat's budget
# the sides of a certified row a card keeps: the bracket, and the smoothed detector clean
CERTIFIED_SIDES = ("certified", "attacked", "smoothed")
ADAPTIVE, UNKNOWN = "adaptive", "unknown"
MEMBER_FIELDS = ("name", "method", "library", "objective", "steps", "restarts", "queries")
NOT_SUITE = (CLEAN, "attack")  # single attacks outside a suite; checks start with "check"

Row = Mapping[str, Any]


def threat_of(row: Row) -> str:
    """A row's threat; rows without the column are L-inf attacks (clean rows: none)."""
    threat = row.get("threat")
    if threat:
        return str(threat)
    return CLEAN_THREAT if row.get("attack") == CLEAN else DEFAULT_THREAT


def _number(value: Any) -> float | None:
    """A finite float, else None (NaN metrics and absent columns are null in a card)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _metrics(row: Row | None, names: tuple[str, ...] = METRICS
             ) -> dict[str, dict[str, float | None]] | None:
    if row is None:
        return None
    return {m: {"value": _number(row.get(m)), "ci_low": _number(row.get(f"{m}_ci_low")),
                "ci_high": _number(row.get(f"{m}_ci_high"))} for m in names}


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _first(rows: list[Row], key: str) -> Any:
    """The first non-null value of a column over the rows (model and data columns are the
    same on every row of a card)."""
    return next((r.get(key) for r in rows if _known(r.get(key))), None)


def _strongest_protocol(rows: list[Row]) -> Row | None:
    """The paper's number: the protocol run with the most work (the first of the grid)."""
    runs = [r for r in rows if r.get("attack") == PROTOCOL]
    return max(runs, key=lambda r: (r.get("steps") or 0) * (r.get("restarts") or 1),
               default=None)


def _member(entry: Any) -> dict[str, Any]:
    entry = entry if isinstance(entry, Mapping) else {}
    return {k: (_int(entry.get(k)) if k in ("steps", "restarts", "queries") else entry.get(k))
            for k in MEMBER_FIELDS}


def _members_of(value: Any) -> list[dict[str, Any]] | None:
    """The `suite_members` column (a JSON list, or the list itself) in the card's form; None
    where it is absent or unreadable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return [_member(m) for m in value] if isinstance(value, list) else None


def suite_block(worst: Row | None, rows: list[Row]) -> dict[str, Any]:
    """The suite that made a budget's numbers: the worst-case row's `suite` and
    `suite_members`. Rows written before those columns: `protocol` when the budget holds the
    protocol alone (no other member's row, no black-box query), its members read from the
    protocol rows; otherwise `unknown` (never presumed adaptive)."""
    if worst is not None and worst.get("suite"):
        return {"name": str(worst["suite"]), "members": _members_of(worst.get("suite_members")),
                "inferred": False}
    others = {r.get("attack") for r in rows} - {PROTOCOL, WORST}
    if not others and not (worst is not None and (worst.get("queries") or 0) > 0) and any(
            r.get("attack") == PROTOCOL for r in rows):
        members = [_member(dict(r) | {"name": PROTOCOL, "queries": 0}) for r in rows
                   if r.get("attack") == PROTOCOL]
        return {"name": PROTOCOL, "members": members, "inferred": True}
    return {"name": UNKNOWN, "members": None, "inferred": True}


def _common(values: Iterable[Any]) -> Any:
    """The one value all give (None when they disagree or give none)."""
    distinct = {json.dumps(v, sort_keys=True) for v in values if v is not None}
    return json.loads(distinct.pop()) if len(distinct) == 1 else None


def _shared(rows: list[Row], key: str) -> Any:
    """The value every row gives for `key`; None when one lacks it or they disagree."""
    values = [r.get(key) for r in rows]
    return None if not values or not all(_known(v) for v in values) else _common(values)


def _budget(eps: float, rows: list[Row]) -> dict[str, Any]:
    """One budget: `rows` are every suite row of the card at this eps (members too)."""
    protocol = _strongest_protocol(rows)
    worst = next((r for r in rows if r.get("attack") == WORST), None)
    made_by = worst or protocol or {}
    passes = None
    if worst is not None and worst.get("image_steps") is not None:
        passes = int(worst.get("image_steps") or 0) + int(worst.get("queries") or 0)
    return {
        "eps": eps,
        "patch_area": _number(_first(rows, "patch_area")),
        "l2_per_pixel": _number(_first(rows, "l2_per_pixel")),
        "input_size": _int(_first(rows, "input_size")),
        "suite": suite_block(worst, rows),
        "precision": made_by.get("precision"),
        "precision_reason": made_by.get("precision_reason"),
        "git_commit": made_by.get("git_commit"),
        "eval_version": _int(made_by.get("eval_version")),
        "protocol": None if protocol is None else _metrics(protocol, METRICS + TPRS) | {
            "steps": _int(protocol.get("steps")), "restarts": _int(protocol.get("restarts"))},
        "worst_case": _metrics(worst, METRICS + OPERATING_POINTS),
        "forward_passes": passes,
        "flags": sorted({f for r in rows for f in r.get("flags") or []}),
    }


def certified_block(rows: list[Row]) -> list[dict[str, Any]] | None:
    """A model's certified rows, one entry per radius (smallest first): the smoothing
    (sigma, samples, confidence, percentile, EOT samples), the certified numbers, those the
    l2 suite reached against the smoothed detector and its clean ones, each with its
    interval, and the row's flags. None where the model has none."""
    if not rows:
        return None
    return [{
        "radius": _number(r.get("radius")),
        "sigma": _number(r.get("sigma")), "samples": _int(r.get("samples")),
        "confidence": _number(r.get("confidence")),
        "percentile": _number(r.get("percentile")),
        "eot_samples": _int(r.get("eot_samples")),
        "l2_per_pixel": _number(r.get("l2_per_pixel")),
        **{side: _metrics({m + tail: r.get(f"{side}_{m}{tail}") for m in METRICS
                           for tail in ("", "_ci_low", "_ci_high")})
           for side in CERTIFIED_SIDES},
        "flags": sorted(r.get("flags") or []),
    } for r in sorted(rows, key=lambda r: _number(r.get("radius")) or 0.0)]


def card_name(detector: str, dataset: str, category: str, threat: str) -> str:
    return f"{detector}/{dataset}/{category}/{threat}"


def _suite_row(row: Row) -> bool:
    """A row of a suite run: a member's or the worst case (not clean, not a single attack,
    not a check)."""
    attack = str(row.get("attack") or "")
    return attack not in NOT_SUITE and not attack.startswith("check")


def _card(key: tuple, rows: list[Row], clean: Row | None, *, git_commit: str | None,
          reported: Mapping[str, Any] | None, certified: list[Row] = ()) -> dict[str, Any]:
    detector, dataset, category, threat, _ = key
    everything = [*([clean] if clean else []), *rows]  # the clean row counts every image
    by_eps: dict[float, list[Row]] = defaultdict(list)
    for r in rows:
        if _suite_row(r) and _number(r.get("eps")) is not None:
            by_eps[float(r["eps"])].append(r)
    budgets = [_budget(eps, by_eps[eps]) for eps in sorted(by_eps)
               if any(r.get("attack") in (PROTOCOL, WORST) for r in by_eps[eps])]
    spent = [b["forward_passes"] for b in budgets if b["forward_passes"] is not None]
    flags = sorted({f for r in everything for f in r.get("flags") or []})
    notes = sorted({f"{r.get('attack')} eps {r.get('eps'):g}: {n}"
                    if _number(r.get("eps")) is not None else f"{r.get('attack')}: {n}"
                    for r in everything for n in r.get("flag_notes") or []})
    seed = _first(everything, "seed")
    commits = {r.get("git_commit") for r in everything}
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "name": card_name(detector, dataset, category, threat),
        "detector": detector,
        "model": {
            "backbone": _first(everything, "backbone"),
            "backbone_weights": _first(everything, "backbone_source"),
            "checkpoint_file": _first(everything, "checkpoint_file"),
            "checkpoint_sha256": _first(everything, "checkpoint_sha256"),
            "checkpoint_epoch": _int(_first(everything, "checkpoint_epoch")),
            "seed": _int(seed),
            # the MLflow logged model of the checkpoint (pgray.tracking.models), where logged
            "model_id": _first(everything, "model_id"),
        },
        "training": {
            "method": _first(everything, "train_method"),
            "attack": _first(everything, "train_attack"),
            "eps": _number(_first(everything, "train_eps")),
            "steps": _int(_first(everything, "train_steps")),
        },
        "data": {
            "dataset": dataset, "category": category,
            "split": _first(everything, "split"),
            "mask_resize": _first(everything, "mask_resize"),
            "fingerprint": _first(everything, "data_fingerprint"),
            "n_images": _int(_first(everything, "n_images")),
            "n_anomalous": _int(_first(everything, "n_anomalous")),
        },
        "threat": threat,
        "eps_unit": EPS_UNITS.get(threat),
        "budgets": [b["eps"] for b in budgets],
        "clean": _metrics(clean, METRICS + TPRS),
        "robust": budgets,
        # the model's certified radii, whatever the card's threat (their own flags inside)
        "certified": certified_block(list(certified)),
        # the one suite and precision of every budget (null where budgets differ: read theirs)
        "suite": _common(b["suite"] for b in budgets),
        "precision": _common(b["precision"] for b in budgets),
        "forward_passes": sum(spent) if spent else None,
        "flags": flags,
        "flag_notes": notes,
        "unreliable": bool(flags),
        "reported": dict(reported) if reported else None,
        "pgray_version": _first(everything, "pgray_version"),
        # the rows' commit where they all give one; each commit met, unknown (rows written
        # before rows carried it) as null
        "git_commit": _shared(everything, "git_commit"),
        "git_commits": sorted(commits, key=lambda c: (c is None, c or "")),
        "eval_version": _int(_shared(everything, "eval_version")),
        "written_by_commit": git_commit,
    }


def build_cards(rows: Iterable[Row], *, git_commit: str | None = None,
                reported: Mapping[tuple[str, str], Mapping[str, Any]] | None = None
                ) -> list[dict[str, Any]]:
    """One card per (detector, dataset, category, threat) of the rows, sorted by name.
    `git_commit`: the commit of the process writing the cards (`written_by_commit`; the rows
    say what they were computed with).
    A model's clean row goes into each of its threat cards, its certified rows into the
    `certified` block of each (they are no budget of the l2 threat: their own flags stay in
    the block); rows of other single attacks (`attack`) and the large-budget check
    contribute only their flags. `reported`: the paper's
    numbers per (dataset, category), put on L-inf cards of PatchGuard. Two checkpoints of one
    detector on one category (a results folder re-used after retraining) give two cards."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    clean: dict[tuple, Row] = {}
    certified: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        model = (r.get("detector") or "patchguard", r["dataset"], r["category"])
        sha = r.get("checkpoint_sha256")
        if r.get("attack") == CLEAN:
            clean[(*model, sha)] = r
        elif r.get("attack") == CERTIFIED:
            certified[(*model, sha)].append(r)
        else:
            groups[(*model, threat_of(r), sha)].append(r)
    for (*model, sha) in clean:  # a model evaluated clean only still gets a card
        if not any(list(k[:3]) == model and k[4] == sha for k in groups):
            groups[(*model, DEFAULT_THREAT, sha)] = []
    cards = []
    for key, mine in groups.items():
        detector, dataset, category, threat, sha = key
        paper = (reported or {}).get((dataset, category)) if (
            threat == DEFAULT_THREAT and detector == "patchguard") else None
        cards.append(_card(key, mine, clean.get((detector, dataset, category, sha)),
                           git_commit=git_commit, reported=paper,
                           certified=certified.get((detector, dataset, category, sha), [])))
    return sorted(cards, key=lambda c: (c["name"], c["model"]["checkpoint_sha256"] or ""))


def paper_numbers(entries: Iterable[Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The paper's numbers of benchmark entries (`DatasetEntry.reported`), keyed as
    build_cards wants them."""
    return {(e.dataset, category): numbers for e in entries
            for category, numbers in e.reported.items()}


def is_card(data: Any) -> bool:
    return isinstance(data, dict) and data.get("schema") == SCHEMA


def card_filename(card: Mapping[str, Any], clash: bool = False) -> str:
    """`detector__dataset__category__threat.json` in file-name-safe characters; with a
    checkpoint digest where two cards of a folder would share the name."""
    base = "__".join([card["detector"], card["data"]["dataset"], card["data"]["category"],
                      card["threat"]])
    if clash:
        base += f"__{(card['model']['checkpoint_sha256'] or 'unknown')[:8]}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", base) + ".json"


def write_cards(cards: list[dict[str, Any]], out: Path) -> list[Path]:
    """Each card as OUT/cards/<name>.json, written atomically; returns the paths."""
    from collections import Counter

    from pgray.io import write_json

    names = Counter(card_filename(c) for c in cards)
    return [write_json(Path(out) / CARDS_DIR / card_filename(c, names[card_filename(c)] > 1), c)
            for c in cards]
