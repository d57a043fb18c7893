"""The sweep's trials as rows (from a finished ResultGrid or a live Tune trial) and the choice
of the best per target: top-n by the objective, or the Pareto front of several."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # The objectives at the epoch whose weights are evaluated: the selected epoch (best.pt)
    # when the trial selected by train.select_metric, else the last epoch. Trials are ranked
    # by these, never by a last epoch whose weights nobody evaluates.
    scores: dict[str, float] = field(default_factory=dict)
    score_epoch: int | None = None
    score_source: str = "last"  # "selected" (best.pt) | "last" (checkpoint.pt)
    # where its wall time went (distributed.trial_times.breakdown); None for a trial this
    # driver did not see from launch to end
    times: dict[str, float] | None = None


def evaluated_scores(metrics: dict[str, Any], space: SearchSpace
                     ) -> tuple[dict[str, float], int | None, str]:
    """The objectives of the epoch that is evaluated, that epoch and where it comes from,
    out of a trial's last result (the training loop reports `selected_<metric>` beside
    `selected_epoch` once it has selected an epoch)."""
    from pgray.core.fit import SELECTED_PREFIX

    selected = _number(metrics.get("selected_epoch"))
    if selected is not None:
        prefix, epoch, source = SELECTED_PREFIX, int(selected), "selected"
    else:
        last = _number(metrics.get("epoch"))
        prefix, epoch, source = "", None if last is None else int(last), "last"
    scores = {o.metric: v for o in space.objectives
              if (v := _number(metrics.get(prefix + o.metric))) is not None}
    return scores, epoch, source


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    return float(value) if ok else None


def _summary(trial_id: str, target: str, params: dict[str, Any], metrics: dict[str, Any],
             epochs: int, state: str, space: SearchSpace, checkpoint: str | None,
             error: str | None = None) -> TrialSummary:
    scores, epoch, source = evaluated_scores(metrics, space)
    return TrialSummary(trial_id=trial_id, target=target, params=params,
                        metrics={k: v for k, v in metrics.items() if k != "config"},
                        epochs=epochs, state=state, checkpoint=checkpoint, error=error,
                        scores=scores, score_epoch=epoch, score_source=source)


def summarise(results, space: SearchSpace) -> list[TrialSummary]:
    """One row per trial of a Tune ResultGrid: decoded params, last metrics, state and the
    objectives of the evaluated epoch."""
    rows = []
    for r in results:
        metrics = dict(r.metrics or {})
        config = dict(r.config or {})
        epochs = int(metrics.get("epoch", 0) or 0)
        if r.error is not None:
            state = "error"
        else:
            state = "completed" if epochs >= space.epochs() else "stopped_early"
        rows.append(_summary(
            str(metrics.get("trial_id") or Path(r.path).name), str(config.get("target", "")),
            space.decode({k: v for k, v in config.items() if k in space.search}), metrics,
            epochs, state, space, _last_checkpoint(r),
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
        v = trial.scores.get(o.metric)
        if v is None or v != v:
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
    """Per target: the top_n trials by the objective at the evaluated epoch (`scores`), or
    the Pareto front when there are several objectives, best first by the stated
    scalarisation (`scheduler.weights`, what ASHA stopped trials on) where there is one, else
    by the first objective. Trials with a checkpoint only; trials that trained the whole
    budget rank before those ASHA stopped (a stopped trial lost at its rung, even if its last
    proxy value happens to be higher)."""
    weights = [w for w, _, _ in space.scalar_terms() or []]

    def order(values: list[float]) -> list[float]:
        # values are signed larger-is-better, so the weighted sum is objective_scalar
        return [sum(w * v for w, v in zip(weights, values)), *values] if weights else values

    best: dict[str, list[TrialSummary]] = {}
    for target in sorted({t.target for t in trials}):
        scored = [(t, v) for t in trials if t.target == target and t.state != "error"
                  and t.checkpoint and (v := _objective_values(t, space)) is not None]
        if space.multi_objective:
            keep = pareto_front([v for _, v in scored])
            scored = [scored[i] for i in keep]
        scored.sort(key=lambda tv: (tv[0].state == "completed", order(tv[1])), reverse=True)
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
    return _summary(
        trial.trial_id, str(trial.config.get("target", "")),
        space.decode({k: v for k, v in trial.config.items() if k in space.search}), metrics,
        epochs, state, space, trial_checkpoint(trial))
