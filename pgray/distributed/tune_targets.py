"""One Optuna study and one ASHA per target (dataset, category), multiplexed into the single
searcher and scheduler a Tune experiment takes: proxy AUROCs of different categories are not
comparable, so a trial is only ever compared with trials of its own target."""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

TARGET_KEY = "target"  # trial config key holding the target ("dataset/category")
TIME_ATTR = "epoch"  # reported by the training loop; survives a trial restarted on resume


class NoSearch(Searcher):
    """Nothing searched (a fixed configuration): every trial runs the fixed settings."""

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return {}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


class _PickledState:
    """Tune saves and restores searchers and schedulers through these two methods: the whole
    state is this object's own attributes (written by Tune into its experiment folder)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class PerTargetSearch(_PickledState, Searcher):
    """One inner searcher (an Optuna study) per target; trials are handed out round robin,
    `trials` per target, and each result is told to the study of its own target."""

    def __init__(self, inner: dict[str, Any], trials: int, metric, mode):
        super().__init__(metric=metric, mode=mode)
        self._inner = inner  # not named `searcher`: Tune would take it for a wrapper
        self._trials = trials
        self._started = dict.fromkeys(inner, 0)
        self._owner: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return all(s.set_search_properties(metric, mode, config, **spec)
                   for s in self._inner.values())

    def _next_target(self) -> str | None:
        open_targets = [t for t, n in self._started.items() if n < self._trials]
        return min(open_targets, key=lambda t: self._started[t]) if open_targets else None

    def suggest(self, trial_id: str):
        target = self._next_target()
        if target is None:
            return self.FINISHED
        config = self._inner[target].suggest(trial_id)
        if config is None or config == self.FINISHED:
            return config
        self._owner[trial_id] = target
        self._started[target] += 1
        return {**config, TARGET_KEY: target}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # With train.proxy_every > 1 the proxy objective is measured on proxy epochs only
        # (NaN or absent on the others); the studies hear of those alone.
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if trial_id in self._owner and all(_measured(result.get(m)) for m in metrics):
            self._inner[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        target = self._owner.pop(trial_id, None)
        if target is not None:
            self._inner[target].on_trial_complete(trial_id, result=result, error=error)



class PerTargetScheduler(_PickledState, FIFOScheduler):
    """ASHA per target: a trial is only compared with trials of its own category.

    It keeps its own record of which trials each inner ASHA knows and how many it stopped
    early, so it needs nothing but ASHA's public callbacks.
    """

    def __init__(self, targets: list[str], metric: str, mode: str, max_t: int,
                 grace_period: int, reduction_factor: float):
        from ray.tune.schedulers import ASHAScheduler

        super().__init__()
        self._max_t = max_t
        self._inner = {t: ASHAScheduler(time_attr=TIME_ATTR, metric=metric, mode=mode,
                                        max_t=max_t, grace_period=grace_period,
                                        reduction_factor=reduction_factor)
                       for t in targets}
        self._known: dict[str, set[str]] = {t: set() for t in targets}
        self._stopped = dict.fromkeys(targets, 0)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objective is fixed by the search space

    def _target(self, trial) -> str:
        return trial.config[TARGET_KEY]

    def on_trial_add(self, tune_controller, trial) -> None:
        target = self._target(trial)
        self._inner[target].on_trial_add(tune_controller, trial)
        self._known[target].add(trial.trial_id)
        if trial.status == trial.TERMINATED or trial.has_reported_at_least_once:
            self._replay(tune_controller, trial, target)

    def _replay(self, tune_controller, trial, target: str) -> None:
        """A restored trial: feed its recorded results to ASHA again, so a resumed sweep
        compares new trials with the rungs the finished ones reached (Tune does not save
        scheduler state)."""
        inner = self._inner[target]
        for result in trial_results(trial):
            inner.on_trial_result(tune_controller, trial, result)
        if trial.status == trial.TERMINATED:
            self._forget(tune_controller, trial)

    def _forget(self, tune_controller, trial) -> None:
        target = self._target(trial)
        if trial.trial_id in self._known[target]:
            self._known[target].discard(trial.trial_id)
            self._inner[target].on_trial_remove(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        target = self._target(trial)
        action = self._inner[target].on_trial_result(tune_controller, trial, result)
        if action == self.STOP and result.get(TIME_ATTR, self._max_t) < self._max_t:
            self._stopped[target] += 1
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        target = self._target(trial)
        if trial.trial_id in self._known[target]:
            self._known[target].discard(trial.trial_id)
            self._inner[target].on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._forget(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._forget(tune_controller, trial)

    def stopped(self) -> int:
        """Trials stopped early by ASHA (before the full budget), over all targets."""
        return sum(self._stopped.values())

    def debug_string(self) -> str:
        return "ASHA per target: " + ", ".join(
            f"{t} stopped {n}" for t, n in self._stopped.items())


def trial_results(trial) -> list[dict[str, Any]]:
    """Every result a trial reported, from its result.json in storage (one JSON a line)."""
    import json

    from ray.tune.result import EXPR_RESULT_FILE

    storage = trial.storage
    try:
        path = f"{storage.trial_fs_path.rstrip('/')}/{EXPR_RESULT_FILE}"
        with storage.storage_filesystem.open_input_stream(path) as f:
            text = f.readall().decode()
    except (OSError, RuntimeError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _measured(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
