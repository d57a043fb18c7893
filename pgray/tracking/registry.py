"""The model registry: `--register NAME` (sweep and benchmark) registers the best model of each
category as a version of `NAME-<category>` and moves its `champion` alias only where the new
model's worst-case AD beats the champion's like with like (same split fingerprint, suite,
evaluation version, threat and budget) beyond both intervals: the new interval's low end above
the champion's high end. A version that does not win gets the `challenger` alias. Every
decision is said in one line (printed by the command, kept in the result)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgray.tracking.models import LIKE_KEYS, headline_tags

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class Pick:
    """A model to register: its logged model id and key figures (`models.headline`)."""

    model_id: str
    figures: dict[str, Any]


def registered_name(name: str, figures: dict[str, Any], picks: list[Pick]) -> str:
    """`NAME-<category>`; `NAME-<dataset>-<category>` where two datasets of one run share the
    category name."""
    category = figures["category"]
    datasets = {p.figures["dataset"] for p in picks if p.figures["category"] == category}
    return f"{name}-{category}" if len(datasets) == 1 else (
        f"{name}-{figures['dataset']}-{category}")


def sweep_picks(models: dict[str, dict[str, Any]], trial_seed: int | None) -> list[Pick]:
    """The sweep's own pick per category: the PatchGuard model of its best trial (the top1
    benchmark's, at the trials' seed), never one chosen by a test number."""
    return [Pick(mid, f) for mid, f in models.items()
            if f["detector"] == "patchguard" and f.get("seed") in (None, trial_seed)]


def benchmark_picks(models: dict[str, dict[str, Any]]) -> list[Pick]:
    """Per (dataset, category), the benchmark's model with the highest worst-case AD at its
    headline budget (models without one are not candidates)."""
    best: dict[tuple[str, str], Pick] = {}
    for mid, f in models.items():
        if f.get("worst_case_ad") is None:
            continue
        key = (f["dataset"], f["category"])
        if key not in best or f["worst_case_ad"] > best[key].figures["worst_case_ad"]:
            best[key] = Pick(mid, f)
    return list(best.values())


def unlike(new: dict[str, Any], champion: dict[str, str]) -> list[str]:
    """The like-with-like keys on which the new figures and a champion's tags differ."""
    tags = headline_tags(new)
    return [k for k in LIKE_KEYS if tags.get(f"pgray.{k}") != champion.get(f"pgray.{k}")]


def beats(new: dict[str, Any], champion: dict[str, str]) -> bool:
    """The new worst-case AD's interval lies wholly above the champion's."""
    low = new.get("worst_case_ad_ci_low")
    high = champion.get("pgray.worst_case_ad_ci_high")
    return low is not None and high not in (None, "None") and low > float(high)


def _ad(figures: dict[str, Any]) -> str:
    value, lo, hi = (figures.get(k) for k in ("worst_case_ad", "worst_case_ad_ci_low",
                                               "worst_case_ad_ci_high"))
    if value is None:
        return "worst-case AD unknown"
    return f"worst-case AD {value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else (
        f"worst-case AD {value:.3f}")


def _tag_figures(tags: dict[str, str]) -> dict[str, Any]:
    def number(key: str) -> float | None:
        value = tags.get(f"pgray.{key}")
        return None if value in (None, "None") else float(value)

    return {k: number(k) for k in ("worst_case_ad", "worst_case_ad_ci_low",
                                   "worst_case_ad_ci_high")}


def register(uri: str, name: str, picks: list[Pick]) -> list[str]:
    """Register each pick as a version of its `NAME-<category>` (once per model: a model
    registered before keeps its version) and move or keep the champion alias; returns one
    line per pick saying what was done."""
    from mlflow.exceptions import MlflowException

    from pgray.io import check_name
    from pgray.tracking.mlflow_store import client_for

    check_name(name, "registered model name")
    client = client_for(uri)
    lines = []
    for pick in picks:
        registered = registered_name(name, pick.figures, picks)
        try:
            client.get_registered_model(registered)
        except MlflowException:
            client.create_registered_model(
                registered, description=f"pgray detectors of {pick.figures['dataset']}/"
                f"{pick.figures['category']}; alias {CHAMPION}: the most robust like with"
                " like (worst-case AD beyond the intervals)")
        lines.append(_register_one(client, registered, pick))
    return lines


def _register_one(client, registered: str, pick: Pick) -> str:
    from mlflow.exceptions import MlflowException

    earlier = [v for v in client.search_model_versions(f"name = '{registered}'")
               if v.tags.get("pgray.model_id") == pick.model_id]
    if earlier:
        return (f"{registered}: model {pick.model_id} is version {earlier[0].version} already;"
                " nothing changed")
    tags = headline_tags(pick.figures) | {"pgray.model_id": pick.model_id}
    # the logged model's own artifact location and run: a `models:/m-...` source would be
    # resolved through MLflow's global tracking URI, not this client's
    model = client.get_logged_model(pick.model_id)
    version = client.create_model_version(registered, source=model.artifact_location,
                                          run_id=model.source_run_id, tags=tags,
                                          model_id=pick.model_id).version
    flagged = " (its card is flagged unreliable: read its flags)" if pick.figures.get(
        "unreliable") else ""
    mine = f"{registered} version {version} ({_ad(pick.figures)}{flagged})"
    try:
        champion = client.get_model_version_by_alias(registered, CHAMPION)
    except MlflowException:
        client.set_registered_model_alias(registered, CHAMPION, version)
        return f"{mine}: {CHAMPION} (the first)"
    held = f"version {champion.version} ({_ad(_tag_figures(champion.tags))})"
    differs = unlike(pick.figures, champion.tags)
    if differs:
        client.set_registered_model_alias(registered, CHALLENGER, version)
        return (f"{mine}: {CHALLENGER}; {CHAMPION} stays {held}: not like with like (differs"
                f" in {', '.join(differs)}), so not compared")
    if beats(pick.figures, champion.tags):
        client.set_registered_model_alias(registered, CHAMPION, version)
        return f"{mine}: {CHAMPION}, beating {held} beyond both intervals"
    client.set_registered_model_alias(registered, CHALLENGER, version)
    return (f"{mine}: {CHALLENGER}; {CHAMPION} stays {held}: not better beyond both"
            " intervals")
