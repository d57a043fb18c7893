"""Which trials go on: the best per target (top-n by the objective at the evaluated epoch, or
the Pareto front of several), and the trials whose test numbers the rank agreement measures."""

from __future__ import annotations

from pgray.config.search_space import SearchSpace
from pgray.tracking.trials import TrialSummary, pareto_front


def _objective_values(trial: TrialSummary, space: SearchSpace) -> list[float] | None:
    values = []
    for o in space.objectives:
        v = trial.scores.get(o.metric)
        if v is None or v != v:
            return None
        values.append(float(v) if o.mode == "max" else -float(v))  # larger is better
    return values


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


EVALUATED_STATES = ("completed", "stopped_early")


def chosen_trials(trials: list[TrialSummary], space: SearchSpace
                  ) -> dict[str, list[TrialSummary]]:
    """Per target, the trials evaluated: every completed or early-stopped one with a
    checkpoint, or, with max_trials, that many spread evenly over the ranking by the first
    objective at the evaluated epoch (its best and its worst included)."""
    cap = space.final_eval.rank_agreement.max_trials
    objective = space.objectives[0]
    sign = 1.0 if objective.mode == "max" else -1.0
    out: dict[str, list[TrialSummary]] = {}
    for target in sorted({t.target for t in trials}):
        mine = [t for t in trials if t.target == target and t.state in EVALUATED_STATES
                and t.checkpoint]

        def rank_key(t: TrialSummary) -> tuple:
            value = t.scores.get(objective.metric)
            known = value is not None and value == value
            return (not known, -sign * value if known else 0.0, t.trial_id)

        mine.sort(key=rank_key)
        if cap is not None and len(mine) > cap:
            picks = sorted({round(i * (len(mine) - 1) / (cap - 1)) for i in range(cap)})
            mine = [mine[i] for i in picks]
        out[target] = mine
    return out
