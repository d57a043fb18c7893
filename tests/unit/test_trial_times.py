"""A trial's wall time split into start-up, epochs, proxy, checkpoints, shutdown and the rest,
from what the trial reports and what the driver sees (pgray.distributed.trial_times)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


class Clock:
    """The driver's clock, set by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_trials_parts_add_up_to_its_wall_time_and_start_at_its_first_epoch():
    from pgray.distributed.trial_times import PARTS, TrialTimes, collected, shares

    clock = Clock()
    callback, trial = TrialTimes("exp-a", clock), SimpleNamespace(trial_id="t1")
    clock.now = 1000.0
    callback.on_trial_start(0, [], trial)
    # two epochs, the first begun 6 s after the launch; 2 s each, the first with a 0.5 s
    # proxy (NaN where an epoch has none), a 0.1 s checkpoint each
    clock.now = 1008.7
    callback.on_trial_result(0, [], trial, {"trial_began_at": 1004.0, "epoch_began_at": 1006.0,
                                            "epoch_time_s": 2.0, "proxy_time_s": 0.5,
                                            "checkpoint_time_s": 0.1})
    clock.now = 1011.0
    callback.on_trial_result(0, [], trial, {"epoch_began_at": 1008.8, "epoch_time_s": 2.0,
                                            "proxy_time_s": float("nan"),
                                            "checkpoint_time_s": 0.1})
    clock.now = 1013.0
    callback.on_trial_complete(0, [], trial)

    times = collected("exp-a")["t1"]
    assert times == pytest.approx({"wall_s": 13.0, "startup_s": 6.0, "epochs_s": 4.0,
                                   "proxy_s": 0.5, "checkpoint_s": 0.2, "shutdown_s": 2.0,
                                   "other_s": 0.3, "process_s": 4.0, "setup_s": 2.0})
    total = shares(collected("exp-a"))
    assert total["trials"] == 1 and total["startup_share"] == pytest.approx(6 / 13)
    assert sum(total[p.replace("_s", "_share")] for p in PARTS) == pytest.approx(1)


def test_only_a_trial_seen_from_launch_to_end_has_times_and_a_retry_starts_afresh():
    from pgray.distributed.trial_times import TrialTimes, collected

    clock = Clock()
    callback, trial = TrialTimes("exp-b", clock), SimpleNamespace(trial_id="t2")
    # restored from an earlier driver: results and an end, but no launch seen here
    callback.on_trial_result(0, [], trial, {"epoch_began_at": 5.0, "epoch_time_s": 1.0})
    callback.on_trial_complete(0, [], trial)
    assert collected("exp-b") == {}
    # started again (a retry): the failed attempt's epochs do not count
    clock.now = 100.0
    callback.on_trial_start(0, [], trial)
    clock.now = 104.0
    callback.on_trial_result(0, [], trial, {"trial_began_at": 101.0, "epoch_began_at": 102.0,
                                            "epoch_time_s": 1.5})
    clock.now = 105.0
    callback.on_trial_error(0, [], trial)
    assert collected("exp-b")["t2"] == pytest.approx(
        {"wall_s": 5.0, "startup_s": 2.0, "epochs_s": 1.5, "proxy_s": 0.0, "checkpoint_s": 0.0,
         "shutdown_s": 1.0, "other_s": 0.5, "process_s": 1.0, "setup_s": 1.0})
