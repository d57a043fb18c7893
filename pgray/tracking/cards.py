"""Robustness cards: one JSON file per (detector, dataset, category, threat), in the spirit of
RobustBench's model_info files. A card says what the model is (backbone and its initial
weights, how it was trained), what it was tested on (dataset, category, split fingerprint),
under which threat and budgets, and what came out: clean, protocol and worst-case AD (image
AUROC), AL (pixel AUROC) and AUPRO with their bootstrap intervals where rows carry them, the
forward passes the suite spent, and the reliability flags (a flagged card is `unreliable`).

`build_cards(rows)` is a pure function of the result rows (`pgray.tracking.tables`); the
benchmark, the sweep's final evaluation (through the benchmark's `finalize`) and
`python -m pgray.evaluate` write its output under OUT/cards/ (`write_cards`), and
`python -m pgray.leaderboard` merges cards of many runs into one table.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEMA = "pgray.robustness_card"
SCHEMA_VERSION = 1
CARDS_DIR = "cards"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
DEFAULT_THREAT = "linf"  # rows written before the `threat` column attacked in L-inf
CLEAN_THREAT = "none"
EPS_UNITS = {"linf": "1/255 of the [0, 1] pixel range",
             "l2": "L2 norm of the perturbation on [0, 1] pixels",
             "patch": "patch area as a fraction of the image"}
PROTOCOL, WORST, CLEAN = "protocol", "worst_case", "clean"

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


def _metrics(row: Row | None) -> dict[str, dict[str, float | None]] | None:
    if row is None:
        return None
    return {m: {"value": _number(row.get(m)), "ci_low": _number(row.get(f"{m}_ci_low")),
                "ci_high": _number(row.get(f"{m}_ci_high"))} for m in METRICS}


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _first(rows: list[Row], key: str) -> Any:
    """The first non-null value of a column over the rows (model and data columns are the
    same on every row of a card)."""
    for r in rows:
        value = r.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return value
    return None


def _strongest_protocol(rows: list[Row]) -> Row | None:
    """The paper's number: the protocol run with the most work (the first of the grid)."""
    runs = [r for r in rows if r.get("attack") == PROTOCOL]
    return max(runs, key=lambda r: (r.get("steps") or 0) * (r.get("restarts") or 1),
               default=None)


def _budget(eps: float, rows: list[Row]) -> dict[str, Any]:
    protocol = _strongest_protocol(rows)
    worst = next((r for r in rows if r.get("attack") == WORST), None)
    passes = None
    if worst is not None and worst.get("image_steps") is not None:
        passes = int(worst.get("image_steps") or 0) + int(worst.get("queries") or 0)
    return {
        "eps": eps,
        "protocol": None if protocol is None else _metrics(protocol) | {
            "steps": _int(protocol.get("steps")), "restarts": _int(protocol.get("restarts"))},
        "worst_case": None if worst is None else _metrics(worst) | {
            "steps": _int(worst.get("steps")), "restarts": _int(worst.get("restarts"))},
        "forward_passes": passes,
        "flags": sorted({f for r in rows for f in r.get("flags") or []}),
    }


def card_name(detector: str, dataset: str, category: str, threat: str) -> str:
    return f"{detector}/{dataset}/{category}/{threat}"


def _card(key: tuple, rows: list[Row], clean: Row | None, *, git_commit: str | None,
          reported: Mapping[str, Any] | None) -> dict[str, Any]:
    detector, dataset, category, threat, _ = key
    everything = [*([clean] if clean else []), *rows]  # the clean row counts every image
    by_eps: dict[float, list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("attack") in (PROTOCOL, WORST) and _number(r.get("eps")) is not None:
            by_eps[float(r["eps"])].append(r)
    budgets = [_budget(eps, by_eps[eps]) for eps in sorted(by_eps)]
    spent = [b["forward_passes"] for b in budgets if b["forward_passes"] is not None]
    flags = sorted({f for r in everything for f in r.get("flags") or []})
    notes = sorted({f"{r.get('attack')} eps {r.get('eps'):g}: {n}"
                    if _number(r.get("eps")) is not None else f"{r.get('attack')}: {n}"
                    for r in everything for n in r.get("flag_notes") or []})
    seed = _first(everything, "seed")
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
        "clean": _metrics(clean),
        "robust": budgets,
        "forward_passes": sum(spent) if spent else None,
        "flags": flags,
        "flag_notes": notes,
        "unreliable": bool(flags),
        "reported": dict(reported) if reported else None,
        "pgray_version": _first(everything, "pgray_version"),
        "git_commit": git_commit,
    }


def build_cards(rows: Iterable[Row], *, git_commit: str | None = None,
                reported: Mapping[tuple[str, str], Mapping[str, Any]] | None = None
                ) -> list[dict[str, Any]]:
    """One card per (detector, dataset, category, threat) of the rows, sorted by name.
    A model's clean row goes into each of its threat cards; rows of other single attacks
    (`attack`) and the large-budget check contribute only their flags. `reported`: the paper's
    numbers per (dataset, category), put on L-inf cards of PatchGuard. Two checkpoints of one
    detector on one category (a results folder re-used after retraining) give two cards."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    clean: dict[tuple, Row] = {}
    for r in rows:
        model = (r.get("detector") or "patchguard", r["dataset"], r["category"])
        sha = r.get("checkpoint_sha256")
        if r.get("attack") == CLEAN:
            clean[(*model, sha)] = r
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
                           git_commit=git_commit, reported=paper))
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


def git_commit() -> str | None:
    """The commit of the pgray checkout this code runs from; None outside a git checkout
    (an installed wheel) or without git."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None
