"""One Optuna study and one ASHA per target (dataset, category), multiplexed into the single
searcher and scheduler a Tune experiment takes: proxy AUROCs of different categories are not
comparable, so a trial is only ever compared with trials of its own target.

Only Tune's public interfaces are used: the searcher saves and restores each inner study
through the study's own `save`/`restore`; the scheduler, whose state Tune does not keep, hears
a resumed experiment's past results again from `Tuner.get_results()` (`remember_results`)."""

from __future__ import annotations

import math
import pickle
import tempfile
from pathlib import Path
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

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(b"")  # nothing to keep

    def restore(self, checkpoint_path: str) -> None:
        pass


class PerTargetSearch(Searcher):
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

    def save(self, checkpoint_path: str) -> None:
        """Tune keeps this file in the experiment: the hand-out counts, and each study as it
        saves itself."""
        studies = {}
        with tempfile.TemporaryDirectory() as tmp:
            for target, searcher in self._inner.items():
                path = Path(tmp) / "study"
                searcher.save(str(path))
                studies[target] = path.read_bytes()
        state = {"started": self._started, "owner": self._owner, "studies": studies}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self._started.update(state["started"])
        self._owner = dict(state["owner"])
        with tempfile.TemporaryDirectory() as tmp:
            for target, blob in state["studies"].items():
                if target in self._inner:
                    path = Path(tmp) / "study"
                    path.write_bytes(blob)
                    self._inner[target].restore(str(path))



# The results a restored experiment's trials reported before, by experiment path: Tune does
# not keep scheduler state, so run_search reads them (`Tuner.get_results()`) before it
# continues, and the scheduler replays each trial's when Tune adds it.
_PAST_RESULTS: dict[str, dict[str, list[dict[str, Any]]]] = {}


def remember_results(experiment: str, results) -> None:
    """Keep every result of a restored experiment's trials (a ResultGrid) for its scheduler."""
    past = {}
    for result in results:
        df = result.metrics_dataframe
        trial_id = (result.metrics or {}).get("trial_id")
        if df is not None and trial_id:
            past[trial_id] = df.to_dict("records")
    _PAST_RESULTS[experiment] = past


class PerTargetScheduler(FIFOScheduler):
    """ASHA per target: a trial is only compared with trials of its own category.

    It keeps its own record of which trials each inner ASHA knows and how many it stopped
    early, so it needs nothing but ASHA's public callbacks.
    """

    def __init__(self, targets: list[str], metric: str, mode: str, max_t: int,
                 grace_period: int, reduction_factor: float, experiment: str = ""):
        from ray.tune.schedulers import ASHAScheduler

        super().__init__()
        self._asha_metric = metric  # what the inner ASHAs compare (objective_scalar: several)
        self._max_t = max_t
        self._inner = {t: ASHAScheduler(time_attr=TIME_ATTR, metric=metric, mode=mode,
                                        max_t=max_t, grace_period=grace_period,
                                        reduction_factor=reduction_factor)
                       for t in targets}
        self._known: dict[str, set[str]] = {t: set() for t in targets}
        self._stopped = dict.fromkeys(targets, 0)
        self._experiment = experiment

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objective is fixed by the search space

    def _target(self, trial) -> str:
        return trial.config[TARGET_KEY]

    def on_trial_add(self, tune_controller, trial) -> None:
        target = self._target(trial)
        self._inner[target].on_trial_add(tune_controller, trial)
        self._known[target].add(trial.trial_id)
        past = _PAST_RESULTS.get(self._experiment, {}).get(trial.trial_id)
        if past:
            self._replay(tune_controller, trial, target, past)

    def _replay(self, tune_controller, trial, target: str, past: list[dict[str, Any]]) -> None:
        """A restored trial: feed its recorded results to ASHA again, so a resumed sweep
        compares new trials with the rungs the finished ones reached."""
        inner = self._inner[target]
        for result in past:
            if self._decides_on(result):
                inner.on_trial_result(tune_controller, trial, result)
        if trial.status == trial.TERMINATED:
            self._forget(tune_controller, trial)

    def _forget(self, tune_controller, trial) -> None:
        target = self._target(trial)
        if trial.trial_id in self._known[target]:
            self._known[target].discard(trial.trial_id)
            self._inner[target].on_trial_remove(tune_controller, trial)

    def _decides_on(self, result: dict) -> bool:
        """Only results that measured the metric reach ASHA: one without it (NaN between
        proxy epochs) at a rung would be recorded there as NaN, never compared, and the
        trial's later measured results would pass that rung unjudged."""
        return _measured(result.get(self._asha_metric))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._decides_on(result):
            return self.CONTINUE
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


def _measured(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
