"""The sweep's trials as rows (from a finished ResultGrid or a live Tune trial) and the choice
of the best per target: top-n by the objective, or the Pareto front of several."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.config.search_space import SearchSpace


@dataclass
class TrialSummary:
    trial_id: str
    target: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    epochs: int
    state: str  # completed | stopped_early | error
    checkpoint: str | None = None
    error: str | None = None


def summarise(results, space: SearchSpace) -> list[TrialSummary]:
    """One row per trial of a Tune ResultGrid: decoded params, last metrics and state."""
    rows = []
    for r in results:
        metrics = dict(r.metrics or {})
        config = dict(r.config or {})
        epochs = int(metrics.get("epoch", 0) or 0)
        if r.error is not None:
            state = "error"
        else:
            state = "completed" if epochs >= space.epochs() else "stopped_early"
        rows.append(TrialSummary(
            trial_id=str(metrics.get("trial_id") or Path(r.path).name),
            target=str(config.get("target", "")),
            params=space.decode({k: v for k, v in config.items() if k in space.search}),
            metrics={k: v for k, v in metrics.items() if k != "config"},
            epochs=epochs, state=state, checkpoint=_last_checkpoint(r),
            error=None if r.error is None else f"{type(r.error).__name__}: {r.error}"[:500],
        ))
    return sorted(rows, key=lambda t: (t.target, t.trial_id))


def _last_checkpoint(result) -> str | None:
    """The URI of the newest Train checkpoint a trial reported (every epoch, or every
    checkpoint_every)."""
    from pgray.distributed.train import CHECKPOINT_URI, reported_checkpoint

    df = result.metrics_dataframe
    if df is not None and CHECKPOINT_URI in df:
        uris = [p for p in df[CHECKPOINT_URI].tolist() if isinstance(p, str) and p]
        if uris:
            return uris[-1]
    return reported_checkpoint(result.metrics, result.checkpoint)


def _objective_values(trial: TrialSummary, space: SearchSpace) -> list[float] | None:
    values = []
    for o in space.objectives:
        v = trial.metrics.get(o.metric)
        if not isinstance(v, int | float) or v != v:
            return None
        values.append(float(v) if o.mode == "max" else -float(v))  # larger is better
    return values


def pareto_front(points: list[list[float]]) -> list[int]:
    """Indices of the points no other point dominates (larger is better everywhere)."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
            for j, q in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def select_best(trials: list[TrialSummary], space: SearchSpace) -> dict[str, list[TrialSummary]]:
    """Per target: the top_n trials by the objective, or the Pareto front (best first by the
    first objective) when there are several objectives. Trials with a checkpoint only; trials
    that trained the whole budget rank before those ASHA stopped (a stopped trial lost at its
    rung, even if its last proxy value happens to be higher)."""
    best: dict[str, list[TrialSummary]] = {}
    for target in sorted({t.target for t in trials}):
        scored = [(t, v) for t in trials if t.target == target and t.state != "error"
                  and t.checkpoint and (v := _objective_values(t, space)) is not None]
        if space.multi_objective:
            keep = pareto_front([v for _, v in scored])
            scored = [scored[i] for i in keep]
        scored.sort(key=lambda tv: (tv[0].state == "completed", tv[1]), reverse=True)
        best[target] = [t for t, _ in scored[: space.final_eval.top_n]]
    return best


# --- the sweep -----------------------------------------------------------------------------
def summary_of_trial(trial, space: SearchSpace) -> TrialSummary:
    """A live Tune trial (in a callback) as the sweep's trial row."""
    from pgray.pipelines.train_eval import trial_checkpoint

    metrics = dict(trial.last_result or {})
    epochs = int(metrics.get("epoch", 0) or 0)
    state = "error" if trial.status == "ERROR" else (
        "completed" if epochs >= space.epochs() else "stopped_early")
    return TrialSummary(
        trial_id=trial.trial_id, target=str(trial.config.get("target", "")),
        params=space.decode({k: v for k, v in trial.config.items() if k in space.search}),
        metrics={k: v for k, v in metrics.items() if k != "config"}, epochs=epochs,
        state=state, checkpoint=trial_checkpoint(trial))
