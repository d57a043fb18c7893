"""One searched config key's distribution (`ParamSpec`: a float or int range, or a choice) and
the JSON form that compares and labels its values. Below `keys` (which resolves a spec's key
in the experiment config) and `search_sections` (the other sections of a search space)."""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from pgray.config.base import check
from pgray.errors import ConfigError


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


@dataclass
class ParamSpec:
    """One searched key: a float range (uniform / loguniform), an int range, or a choice."""

    type: Literal["uniform", "loguniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False  # int ranges only: sample on a log scale
    values: list[Any] | None = None  # categorical only; a mapping value is merged into a section
    labels: list[str] | None = None  # categorical: names shown in Tune and MLflow

    def validate(self) -> None:
        if self.type == "categorical":
            self._validate_choice()
        else:
            self._validate_range()

    def _validate_range(self) -> None:
        check(self.values is None and self.labels is None, "values",
              f"only categorical parameters take values/labels (type is {self.type})")
        check(self.low is not None, "low", f"required for type {self.type}")
        check(self.high is not None, "high", f"required for type {self.type}")
        check(self.low <= self.high, "low", f"low > high ({self.low:g} > {self.high:g})")
        check(self.low < self.high, "high",
              f"empty range [{self.low:g}, {self.high:g}]; put a single value in `fixed`")
        if self.type == "int":
            for key in ("low", "high"):
                value = getattr(self, key)
                check(float(value).is_integer(), key, f"must be an integer for type int, got"
                      f" {value:g}")
        check(not self.log or self.type == "int", "log",
              "only int ranges take log (use type loguniform for floats)")
        if self.type == "loguniform" or self.log:
            check(self.low > 0, "low",
                  f"a log range must be > 0 (got [{self.low:g}, {self.high:g}])")

    def _validate_choice(self) -> None:
        check(self.low is None and self.high is None, "low",
              "categorical parameters take values, not low/high")
        check(bool(self.values), "values", "needs at least one value")
        keys = [canonical(v) for v in self.values]
        check(len(set(keys)) == len(keys), "values", "lists a value twice")
        if self.labels is not None:
            check(len(self.labels) == len(self.values), "labels",
                  f"needs one label per value ({len(self.values)}), got {len(self.labels)}")
            check(len(set(self.labels)) == len(self.labels), "labels", "lists a label twice")

    def choices(self) -> list[Any]:
        """What Optuna sees: the values themselves when they are scalars, else labels."""
        assert self.values is not None
        if self.labels is not None:
            return list(self.labels)
        if all(is_scalar(v) for v in self.values):
            return list(self.values)
        return [canonical(v) for v in self.values]

    def decode(self, choice: Any) -> Any:
        """The config value of a sampled choice (a value, its label or its JSON form)."""
        if self.type != "categorical":
            return int(round(choice)) if self.type == "int" else float(choice)
        assert self.values is not None
        for value, label in zip(self.values, self.choices()):
            if choice == label or canonical(choice) == canonical(value):
                return copy.deepcopy(value)
        raise ConfigError(f"{choice!r} is not one of {self.choices()}")

    def representatives(self) -> list[Any]:
        """Values that must all make a valid config (checked on load)."""
        if self.type == "categorical":
            return list(self.values or [])
        low, high = float(self.low), float(self.high)
        if self.type == "int":
            return [int(low), int(high)]
        mid = math.sqrt(low * high) if self.type == "loguniform" else (low + high) / 2
        return [low, mid, high]

    def draw(self, rng: random.Random) -> Any:
        if self.type == "categorical":
            return copy.deepcopy(rng.choice(self.values))
        low, high = float(self.low), float(self.high)
        if self.type == "int":
            return rng.randint(int(low), int(high))
        if self.type == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.uniform(low, high)
