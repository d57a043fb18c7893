"""Where to look in the MLflow UI: the runs table of an experiment, the compare view of runs
(the UI's own routes, as MLflow 3.17 writes them)."""

from __future__ import annotations


def runs_url(uri: str, experiment_id: str) -> str:
    """Where to look: the 'Training runs' table, not the GenAI overview the UI opens first."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return (
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open "
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    )


def ui_base(uri: str) -> str:
    """Where the MLflow UI answers: the tracking server itself, or `mlflow ui` started on
    127.0.0.1:5000 for a local store (runs_url says how)."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


def compare_url(uri: str, experiment_id: str, run_ids: list[str]) -> str:
    """The MLflow UI's compare view of these runs (parameters, metrics, curves side by side)."""
    import json
    from urllib.parse import quote

    def listed(items) -> str:  # as the UI writes it: JSON.stringify, no spaces
        return quote(json.dumps([str(i) for i in items], separators=(",", ":")))

    runs, experiments = listed(run_ids), listed([experiment_id])
    return f"{ui_base(uri)}/#/compare-runs?runs={runs}&experiments={experiments}"
