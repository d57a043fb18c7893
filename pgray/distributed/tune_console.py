"""What a person sees of a Tune experiment by default: one line that updates with the running
trials (on a terminal), one line per finished trial, and the warnings that matter (a failed
trial, a robust collapse). Tune's own status tables are silenced (`RunConfig(verbose=0)`);
`--verbose` brings them back instead of these lines."""

from __future__ import annotations

import math
import sys
from typing import Any

from ray.tune import Callback

from pgray.distributed.tune_targets import TARGET_KEY, TIME_ATTR


def tune_verbosity(progress: bool, verbose: bool) -> int:
    """Tune's verbose level: 2 (its full tables) with --verbose, else 0 (silent: pgray's own
    lines, `TrialConsole`, speak for it)."""
    return 2 if (progress and verbose) else 0


def quiet_tune() -> None:
    """Leave out Tune's experiment box, what Tune and Optuna say at INFO (experiment files
    written, a study created) and Tune's warning that tiny epochs snapshot its state often:
    noise beside pgray's lines. Their other warnings and errors stay."""
    import logging
    import os

    import optuna

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray 2.60's new output engine prints its experiment box and paths even at verbose 0;
    # the classic reporter at verbose 0 prints nothing (read by the driver at fit time)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


_CONSOLES: dict[str, TrialConsole] = {}  # live consoles by experiment path (ConsoleRelay)


def listen(path: str, space, total: int, on: bool) -> None:
    """Give the experiment at `path` (of `total` trials) a console, Tune quiet (on), or take
    it away (off)."""
    if not on:
        _CONSOLES.pop(path, None)
        return
    quiet_tune()
    _CONSOLES[path] = TrialConsole(space.objectives[0].metric, space.epochs(), total,
                                   list(space.search))


class ConsoleRelay(Callback):
    """Tune pickles its callbacks with the experiment and a restored experiment brings back
    the first driver's: this one holds a key and passes each event to this driver's console,
    if it has one."""

    def __init__(self, key: str) -> None:
        self._key = key

    def _console(self) -> TrialConsole | None:
        return _CONSOLES.get(self._key)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if (console := self._console()) is not None:
            console.started(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if (console := self._console()) is not None:
            console.result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if (console := self._console()) is not None:
            console.completed(trial, trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if (console := self._console()) is not None:
            console.failed(trial, trials)

    def on_experiment_end(self, trials, **info) -> None:
        if (console := self._console()) is not None:
            console.end()


class TrialConsole:
    """The lines of one experiment's trials (on stderr, beside pgray's other progress)."""

    def __init__(self, metric: str, epochs: int, total: int, searched: list[str]) -> None:
        self._metric, self._epochs, self._total = metric, epochs, total
        self._searched = list(searched)
        self._running: dict[str, str] = {}  # trial id -> its part of the live line
        self._done = 0
        self._collapsed: set[str] = set()

    @staticmethod
    def _live() -> bool:
        return sys.stderr.isatty()

    def _say(self, text: str) -> None:
        """A line that stays; the live line (if any) is drawn again under it."""
        if self._live():
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr, flush=True)
        self._draw()

    def _draw(self) -> None:
        if self._live() and self._running:
            line = "running: " + " | ".join(self._running.values())
            sys.stderr.write("\r\033[K" + line[:max(40, _width() - 1)])
            sys.stderr.flush()

    def _score(self, result: dict[str, Any]) -> str:
        value = result.get(self._metric)
        if isinstance(value, int | float) and math.isfinite(value):
            return f"{self._metric} {value:.4f}"
        return f"{self._metric} –"

    def started(self, trial) -> None:
        self._running[trial.trial_id] = f"{_target(trial)} {trial.trial_id} starting"
        self._draw()

    def result(self, trial, result: dict[str, Any]) -> None:
        epoch = int(result.get(TIME_ATTR, 0))
        self._running[trial.trial_id] = (f"{_target(trial)} {trial.trial_id} epoch {epoch}/"
                                         f"{self._epochs} {self._score(result)}")
        if result.get("robust_collapse") == 1.0 and trial.trial_id not in self._collapsed:
            self._collapsed.add(trial.trial_id)  # once: later epochs repeat the state
            self._say(f"warning: trial {trial.trial_id} ({_target(trial)}) collapsed at epoch"
                      f" {epoch}: its held-out robust AUROC fell (train.collapse_drop); later"
                      " epochs cannot be selected")
        else:
            self._draw()

    def completed(self, trial, trials: list) -> None:
        epochs = int((trial.last_result or {}).get(TIME_ATTR, 0))
        state = "completed" if epochs >= self._epochs else "stopped early (ASHA)"
        self._finish(trial, trials, f"{state} after {epochs} epoch(s),"
                            f" {self._score(trial.last_result or {})}")

    def failed(self, trial, trials: list) -> None:
        epochs = int((trial.last_result or {}).get(TIME_ATTR, 0))
        self._finish(trial, trials, f"FAILED after {epochs} epoch(s); its error: "
                            f"{trial.error_file or trial.local_path}", warn=True)

    def _finish(self, trial, trials: list, what: str, warn: bool = False) -> None:
        self._running.pop(trial.trial_id, None)
        # those that ended before this driver (a resumed experiment) count too
        ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
        self._done = max(self._done, ended) + 1
        params = ", ".join(f"{k}={_short(trial.config.get(k))}" for k in self._searched)
        self._say(f"{'warning: ' if warn else ''}trial {self._done}/{self._total}"
                  f" {trial.trial_id} {_target(trial)}: {what}" + (f" ({params})" if params
                                                                  else ""))

    def end(self) -> None:
        if self._live():
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _target(trial) -> str:
    return str(trial.config.get(TARGET_KEY, "?"))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 20)).columns
