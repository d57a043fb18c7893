"""A sweep's trials as pgray's own records (`pgray.distributed.trial_summaries` makes them out
of Tune's), the objectives of the epoch each is ranked by, and the Pareto front of several
objectives (the pick uses it; the sweep's page draws it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgray.config.search_space import SearchSpace


@dataclass
class TrialSummary:
    trial_id: str
    target: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    epochs: int
    state: str  # completed | stopped_early | error | running (a live trial not ended yet)
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


