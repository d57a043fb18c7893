"""Where each Tune trial's wall time goes: start-up (from Tune launching the trial to its first
epoch), epochs, held-out proxies, checkpoints, shutdown (from its last result to Tune seeing it
end) and the rest (reporting, MLflow logging). The trial reports when each epoch began and
what its epoch, proxy and checkpoint took (`core.fit`, `distributed.train`); the driver adds
when it launched the trial and when the trial ended. Clocks of one machine agree; across
nodes the start-up and shutdown carry their clock offset."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

PARTS = ("startup_s", "epochs_s", "proxy_s", "checkpoint_s", "shutdown_s", "other_s")
_SUMMED = {"epoch_time_s": "epochs_s", "proxy_time_s": "proxy_s",
           "checkpoint_time_s": "checkpoint_s"}

_TIMES: dict[str, dict[str, dict[str, float]]] = {}  # experiment path -> trial id -> times


class TrialTimes(Callback):
    """Collects the times of the trials this driver runs (a restored experiment's earlier
    trials have none). Tune pickles its callbacks with the experiment: the records live in
    this module, found by the experiment's key."""

    def __init__(self, key: str, clock=time.time) -> None:
        self._key, self._clock = key, clock

    def _record(self, trial) -> dict[str, float]:
        return _TIMES.setdefault(self._key, {}).setdefault(trial.trial_id, {})

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        # a trial started again (a retry) starts its record again
        _TIMES.setdefault(self._key, {})[trial.trial_id] = {"launched": self._clock()}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        record = self._record(trial)
        record.setdefault("first_epoch_began", result.get("epoch_began_at", float("nan")))
        record.setdefault("trial_began", result.get("trial_began_at", float("nan")))
        for key, part in _SUMMED.items():
            value = result.get(key)
            if isinstance(value, int | float) and value == value:
                record[part] = record.get(part, 0.0) + float(value)
        record["last_result"] = self._clock()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._record(trial)["ended"] = self._clock()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._record(trial)["ended"] = self._clock()


def breakdown(record: dict[str, float]) -> dict[str, float] | None:
    """A trial's wall time and its parts in seconds, or None when this driver did not see it
    from launch to end."""
    if not {"launched", "ended", "last_result"} <= record.keys():
        return None
    wall = record["ended"] - record["launched"]
    parts = {"startup_s": record["first_epoch_began"] - record["launched"],
             "epochs_s": record.get("epochs_s", 0.0), "proxy_s": record.get("proxy_s", 0.0),
             "checkpoint_s": record.get("checkpoint_s", 0.0),
             "shutdown_s": record["ended"] - record["last_result"]}
    parts["other_s"] = wall - sum(parts.values())
    # the start-up in two: until the trial's function runs (its process, Ray's scheduling,
    # imports), then its set-up (MLflow run, model, data) until the first epoch
    began = record.get("trial_began", float("nan"))
    return {"wall_s": wall} | parts | {"process_s": began - record["launched"],
                                       "setup_s": record["first_epoch_began"] - began}


def collected(key: str) -> dict[str, dict[str, float]]:
    """The breakdown of every trial of experiment `key` seen whole by this driver."""
    out = {}
    for trial_id, record in _TIMES.get(key, {}).items():
        if (times := breakdown(record)) is not None:
            out[trial_id] = times
    return out


def shares(times: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The parts summed over trials, each as a share of the trials' summed wall time."""
    wall = sum(t["wall_s"] for t in times.values())
    return {"trials": len(times), "wall_s": wall,
            **{part: sum(t[part] for t in times.values()) for part in PARTS},
            **{part.replace("_s", "_share"): (sum(t[part] for t in times.values())
                                              / wall if wall else float("nan"))
               for part in PARTS}}


def time_shares_line(times: dict[str, dict[str, float]]) -> str:
    """One line: where the trials' time went."""
    total = shares(times)
    names = {"startup": "start-up", "epochs": "epochs", "proxy": "proxy",
             "checkpoint": "checkpoints", "shutdown": "shutdown", "other": "other"}
    parts = ", ".join(f"{label} {total[name + '_share']:.0%}" for name, label in names.items())
    return (f"time in trials: {total['wall_s']:.0f} s over {total['trials']} trial(s), mean "
            f"{total['wall_s'] / max(1, total['trials']):.0f} s: {parts}")
