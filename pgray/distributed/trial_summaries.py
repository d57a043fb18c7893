"""Tune's trials as pgray's own records (`pgray.tracking.trials.TrialSummary`): a finished
ResultGrid's, and a live trial's in a callback. Nothing past this module reads a Tune object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgray.config.search_space import SearchSpace
from pgray.distributed.train import CHECKPOINT_URI, reported_checkpoint
from pgray.tracking.trials import TrialSummary, evaluated_scores


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
    df = result.metrics_dataframe
    if df is not None and CHECKPOINT_URI in df:
        uris = [p for p in df[CHECKPOINT_URI].tolist() if isinstance(p, str) and p]
        if uris:
            return uris[-1]
    return reported_checkpoint(result.metrics, result.checkpoint)


def summary_of_trial(trial, space: SearchSpace) -> TrialSummary:
    """A live Tune trial (in a callback) as the sweep's trial row; one not ended yet (pending,
    running or paused) is "running"."""
    metrics = dict(trial.last_result or {})
    epochs = int(metrics.get("epoch", 0) or 0)
    if trial.status == "ERROR":
        state = "error"
    elif trial.status != "TERMINATED":
        state = "running"
    else:
        state = "completed" if epochs >= space.epochs() else "stopped_early"
    return _summary(
        trial.trial_id, str(trial.config.get("target", "")),
        space.decode({k: v for k, v in trial.config.items() if k in space.search}), metrics,
        epochs, state, space, trial_checkpoint(trial))


def trial_checkpoint(trial) -> str | None:
    """The URI of the newest checkpoint a finished Tune trial reported."""
    return reported_checkpoint(trial.last_result, trial.checkpoint)
