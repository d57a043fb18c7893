"""Rank agreement: does the held-out proxy rank a sweep's trials as the test split does?

Per target, each evaluated trial gives a pair (its proxy value at the evaluated epoch, its
test value under the short suite: the proxy's own two attacks and their per-image worst
case), for four metrics. Spearman and Kendall (tau-b) coefficients come with percentile
bootstrap 95 % intervals over the trials (seeded); across targets, the mean of the per-target
coefficients with a stratified bootstrap (trials resampled within each target). A coefficient
is NaN, with its reason, where fewer than 3 trials paired or one side is constant.

Test numbers are computed after the pick and never reach the search (`pgray.pipelines.sweep`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_TRIALS = 3
# Below this many trials a percentile bootstrap cannot show the uncertainty: with 3
# concordant trials every resample is concordant too, and the interval reads [1, 1].
MIN_INTERVAL_TRIALS = 8
METHODS = ("spearman", "kendall")
# metric -> (the proxy's per-epoch key, the test row's attack, the test row's column). The
# worst-case pixel AUROC is the per-image pick's, as the proxy computes it (the benchmark's
# robust number is the lower of the pick and each member: not what the proxy measures).
RANK_METRICS: dict[str, tuple[str, str, str]] = {
    "clean_image_auroc": ("proxy_clean_image_auroc", "clean", "image_auroc"),
    "worst_image_auroc": ("proxy_worst_image_auroc", "worst_case", "image_auroc"),
    "clean_pixel_auroc": ("proxy_clean_pixel_auroc", "clean", "pixel_auroc"),
    "worst_pixel_auroc": ("proxy_worst_pixel_auroc", "worst_case", "pixel_auroc_pick"),
}


def proxy_values(metrics: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """A trial's proxy values of `RANK_METRICS` out of its last result, and their source:
    "selected" (the selected epoch's, whose weights best.pt holds) or "last" (the last epoch's,
    where the trial selected nothing)."""
    from pgray.core.fit import SELECTED_PREFIX

    selected = metrics.get("selected_epoch") is not None
    prefix = SELECTED_PREFIX if selected else ""
    out = {}
    for name, (key, _, _) in RANK_METRICS.items():
        value = metrics.get(prefix + key)
        if _finite(value):
            out[name] = float(value)
    return out, "selected" if selected else "last"


def values_on_test(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """A model's test values of `RANK_METRICS` out of its rows (the clean job's and the short
    suite's)."""
    out = {}
    for name, (_, attack, column) in RANK_METRICS.items():
        row = next((r for r in rows if r.get("attack") == attack), None)
        value = None if row is None else row.get(column, row.get("pixel_auroc"))
        if _finite(value):
            out[name] = float(value)
    return out


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def coefficient(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """Spearman's rho or Kendall's tau-b of paired values (NaN where a side is constant)."""
    from scipy import stats

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = stats.spearmanr if method == "spearman" else stats.kendalltau
        # rounded: identical rankings give 1 exactly, not 1 - 1e-16 of floating noise
        return round(float(fn(x, y)[0]), 12)


def why_undefined(x: np.ndarray, y: np.ndarray) -> str:
    """Why no coefficient is defined for these pairs ("" where one is)."""
    if len(x) < MIN_TRIALS:
        return f"{len(x)} trial(s) paired: a rank correlation needs at least {MIN_TRIALS}"
    if np.ptp(x) == 0:
        return f"the proxy is constant over the {len(x)} trials ({x[0]:.4f})"
    if np.ptp(y) == 0:
        return f"the test is constant over the {len(y)} trials ({y[0]:.4f})"
    return ""


def bootstrap_replicates(x: np.ndarray, y: np.ndarray, method: str, n: int,
                         rng: np.random.Generator) -> np.ndarray:
    """The coefficient over `n` resamples of the pairs (NaN where a resample is constant)."""
    picks = rng.integers(0, len(x), size=(n, len(x)))
    return np.array([coefficient(x[p], y[p], method) for p in picks])


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def _entry(value: float, replicates: np.ndarray) -> dict[str, float]:
    lo, hi = _interval(replicates) if math.isfinite(value) else (float("nan"),) * 2
    return {"value": value, "lo": lo, "hi": hi}


def agreement(pairs: Mapping[str, Sequence[tuple[float, float]]], *, bootstrap: int,
              seed: int = 0) -> dict[str, Any]:
    """One metric's rank agreement: `pairs` maps each target to its (proxy, test) pairs, one
    per trial. Per target and across targets (the mean of the targets' defined coefficients,
    its interval from resampling each target's trials on its own)."""
    out: dict[str, Any] = {"n": sum(len(p) for p in pairs.values()), "targets": {}}
    replicates: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for index, target in enumerate(sorted(pairs)):
        x, y = (np.array([p[i] for p in pairs[target]], dtype=float) for i in (0, 1))
        reason = why_undefined(x, y)
        entry: dict[str, Any] = {"n": len(x)}
        for method in METHODS:
            # the same resamples for both coefficients: one bootstrap per target
            rng = np.random.default_rng([seed, index])
            value = float("nan") if reason else coefficient(x, y, method)
            reps = (bootstrap_replicates(x, y, method, bootstrap, rng)
                    if not reason and bootstrap else np.full(max(bootstrap, 1), np.nan))
            entry[method] = _entry(value, reps)
            if not reason:
                replicates[method].append(reps)
        if reason:
            entry["reason"] = reason
        elif len(x) < MIN_INTERVAL_TRIALS:
            entry["note"] = few_trials_note(len(x))
        out["targets"][target] = entry
    defined = [t for t in out["targets"].values() if "reason" not in t]
    for method in METHODS:
        if not defined:
            out[method] = {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
            continue
        value = float(np.mean([t[method]["value"] for t in defined]))
        if bootstrap:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resamples where every target is constant
                reps = np.nanmean(np.vstack(replicates[method]), axis=0)
        else:
            reps = np.array([np.nan])
        out[method] = _entry(value, reps)
    if not defined:
        out["reason"] = "no target has a defined coefficient: " + "; ".join(
            f"{k}: {t['reason']}" for k, t in sorted(out["targets"].items()))
    elif any("note" in t for t in defined):
        out["note"] = few_trials_note(min(t["n"] for t in defined))
    return out


def few_trials_note(n: int) -> str:
    return (f"{n} trials: the bootstrap interval understates the uncertainty (it needs"
            f" {MIN_INTERVAL_TRIALS} or more)")


def rank_agreement(trials: Sequence, tests: Mapping[str, Mapping[str, float]], *,
                   bootstrap: int, seed: int = 0) -> dict[str, Any]:
    """The sweep's rank agreement: `trials` (TrialSummary rows) and each evaluated trial's
    test values (`tests[trial_id]`, from `values_on_test`). Per metric of `RANK_METRICS`: the
    coefficients with intervals, n, each target's, and the pairs themselves; and where the
    proxy values came from (`proxy_source`: trials per source)."""
    from collections import Counter

    pairs: dict[str, dict[str, list[tuple[float, float]]]] = {m: {} for m in RANK_METRICS}
    points: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in RANK_METRICS}
    sources: Counter = Counter()
    for trial in sorted(trials, key=lambda t: (t.target, t.trial_id)):
        test = tests.get(trial.trial_id)
        if test is None:
            continue
        proxy, source = proxy_values(trial.metrics)
        sources[source] += 1
        for metric in RANK_METRICS:
            if metric in proxy and metric in test:
                pair = (proxy[metric], test[metric])
                pairs[metric].setdefault(trial.target, []).append(pair)
                points[metric].setdefault(trial.target, {})[trial.trial_id] = list(pair)
    out: dict[str, Any] = {}
    for metric in RANK_METRICS:
        out[metric] = agreement(pairs[metric], bootstrap=bootstrap, seed=seed) | {
            "pairs": points[metric]}
    return out | {"proxy_source": dict(sources)}


def agreement_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """The table's cells: per metric, across targets then each target (coefficients with
    intervals, n)."""
    rows = []
    for metric in RANK_METRICS:
        entry = summary.get(metric)
        if not entry:
            continue
        rows.append(_cells(metric, "all", entry))
        if len(entry["targets"]) > 1:
            rows += [_cells(metric, t, e) for t, e in sorted(entry["targets"].items())]
    return rows


AGREEMENT_NOTE = ("Per trial: the proxy (held-out pseudo-anomalies) at the evaluated epoch"
                  " against the test split under the proxy's own attacks (clean; worst case"
                  " of the protocol's mask attack and det_topk, label-true, per image);"
                  " 95 % bootstrap intervals over trials; 'all': the mean over targets,"
                  " trials resampled within each. Test numbers never reach the search or"
                  " the pick.")
AGREEMENT_HEAD = ["metric", "target", "n", "Spearman [95 % CI]", "Kendall [95 % CI]", "note"]


def _cells(metric: str, target: str, entry: Mapping[str, Any]) -> list[str]:
    return [metric, target, str(entry["n"]), coefficient_text(entry["spearman"]),
            coefficient_text(entry["kendall"]), entry.get("reason", entry.get("note", ""))]


def coefficient_text(c: Mapping[str, float | None]) -> str:
    """A coefficient with its interval (NaN, or null as sweep_summary.json writes it: –)."""
    if not _finite(c.get("value")):
        return "–"
    if not _finite(c.get("lo")):
        return f"{c['value']:+.2f}"
    return f"{c['value']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]"


def source_text(summary: Mapping[str, Any]) -> str:
    """Where the proxy values came from, in words."""
    sources = summary.get("proxy_source") or {}
    parts = [f"{n} at the selected epoch (best.pt)" if s == "selected" else
             f"{n} at the last epoch (no selection)" for s, n in sorted(sources.items())]
    return "proxy values: " + (", ".join(parts) or "none")
