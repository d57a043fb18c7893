"""Search spaces for `python -m pgray.sweep`: a typed schema, validated once on load.

A search space names fixed experiment settings, the config keys to search and how, the
objective(s), the budget, the scheduler, per-trial resources and the final evaluation. Every
error names the offending key and what is allowed. No Ray or torch here: the Tune layer
(`pgray.distributed.tune`) turns a validated space into Tune domains.
"""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pgray.config.base import check, from_dict, load_yaml
from pgray.config.experiment import ExperimentConfig, merge
from pgray.config.keys import apply_params, check_applies, resolve_key
from pgray.config.param_spec import ParamSpec, canonical
from pgray.config.passes import default_proxy_every
from pgray.config.search_sections import (
    Budget,
    DatasetTargets,
    FinalEval,
    Objective,
    Resources,
    Scheduler,
    Target,
    check_seeds,
)
from pgray.errors import ConfigError


@dataclass
class SearchSpace:
    name: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)  # a nested ExperimentConfig dict
    datasets: list[DatasetTargets] | None = None
    categories: list[str] | None = None  # shorthand: these categories of fixed.data.dataset
    search: dict[str, ParamSpec] = field(default_factory=dict)
    start_points: list[dict[str, Any]] = field(default_factory=list)  # evaluated first
    objectives: list[Objective] = field(default_factory=lambda: [Objective()])
    budget: Budget = field(default_factory=Budget)
    scheduler: Scheduler = field(default_factory=Scheduler)
    resources: Resources = field(default_factory=Resources)
    final_eval: FinalEval = field(default_factory=FinalEval)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0  # of the sampler
    # training seeds of the final evaluation: each target's best config is trained again with
    # every one of them besides fixed.train.seed, all evaluated; tables show the mean and its
    # interval across seeds
    seeds: list[int] = field(default_factory=list)

    def validate(self) -> None:
        check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name)), "name",
              f"must be letters, digits, '-', '_' or '.', got {self.name!r}")
        check(len(self.objectives) >= 1, "objectives", "needs at least one objective")
        metrics = [o.metric for o in self.objectives]
        check(len(set(metrics)) == len(metrics), "objectives", "lists a metric twice")
        check(not (self.datasets and self.categories), "categories",
              "give either datasets or categories, not both")
        self._validate_scheduler_weights()
        check(bool(self.search) or self.budget.trials == 1, "budget.trials",
              "nothing is searched, so each target needs exactly 1 trial")
        self._validate_fixed()
        epochs = self.epochs()
        check(self.scheduler.type == "none" or self.scheduler.grace_period < epochs,
              "scheduler.grace_period",
              f"must be < the epochs of a trial ({epochs}) for asha to stop anything")
        self._validate_search()
        self._validate_start_points()
        self._validate_final_categories()
        check_seeds(self.seeds)
        check(not self.seeds or self.final_eval.enabled, "seeds",
              "are trained for the final evaluation; enable final_eval or drop seeds")

    def extra_seeds(self) -> list[int]:
        """The seeds the best configs are trained again with (the trials ran fixed's)."""
        return [s for s in self.seeds if s != self.fixed_config().train.seed]

    # --- derived views -------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def scalar_terms(self) -> list[tuple[float, str, str]] | None:
        """(weight, metric, mode) of each objective where ASHA stops trials on their weighted
        sum (`objective_scalar`), else None."""
        if self.scheduler.type == "none" or self.scheduler.weights is None:
            return None
        return [(float(w), o.metric, o.mode)
                for w, o in zip(self.scheduler.weights, self.objectives)]

    def asha_objective(self) -> tuple[str, str]:
        """The metric and mode ASHA compares trials by: the single objective, or
        `objective_scalar` (always max) for several."""
        if self.scalar_terms() is not None:
            return OBJECTIVE_SCALAR, "max"
        return self.objectives[0].metric, self.objectives[0].mode

    def fixed_config(self) -> ExperimentConfig:
        """The fixed settings with the budget applied (data: the first target's)."""
        return ExperimentConfig.from_dict(self._base_dict())

    def epochs(self) -> int:
        return self.fixed_config().train.epochs

    def target_entries(self) -> list[DatasetTargets]:
        """The datasets block, or the one dataset of fixed.data with `categories`."""
        if self.datasets:
            return list(self.datasets)
        data = self.fixed.get("data", {})
        cats: list[str] | str = self.categories or ([data["category"]] if data.get("category")
                                                    else "all")
        return [DatasetTargets(dataset=data.get("dataset", "synthetic"),
                               root=data.get("root", ""), categories=cats,
                               options=dict(data.get("options", {})))]

    def trial_config(self, target: Target, params: dict[str, Any]) -> ExperimentConfig:
        """The full experiment of one trial: fixed, then the target's data, then params."""
        base = self._base_dict()
        base["data"] = target.data_section(base.get("data", {}))
        if target.seed is not None:
            base = merge(base, {"train": {"seed": target.seed}})
        try:
            return ExperimentConfig.from_dict(apply_params(base, params))
        except ConfigError as err:
            raise ConfigError(f"trial parameters {params}: {err}") from None

    def _base_dict(self) -> dict[str, Any]:
        base = copy.deepcopy(self.fixed)
        if self.budget.epochs is not None:
            base = merge(base, {"train": {"epochs": self.budget.epochs}})
        if self.scheduler.type != "none" and (base.get("train") or {}).get("proxy_every") is None:
            # one value for every trial, on every ASHA rung (a trial's own cost estimate
            # would put its proxies on other epochs than its rivals')
            base = merge(base, {"train": {"proxy_every": self._rung_proxy_every(base)}})
        return base

    def _rung_proxy_every(self, base: dict[str, Any]) -> int:
        """The largest divisor of the grace period at most the cost-derived default (1 when
        the reduction factor is not an integer: rungs then fall on arbitrary epochs)."""
        sched = self.scheduler
        if not float(sched.reduction_factor).is_integer():
            return 1
        most = default_proxy_every(ExperimentConfig.from_dict(base))
        return max(d for d in range(1, sched.grace_period + 1)
                   if sched.grace_period % d == 0 and d <= most)

    # --- validation helpers --------------------------------------------------------------
    def _validate_fixed(self) -> None:
        try:
            cfg = self.fixed_config()
        except ConfigError as err:
            raise ConfigError(f"fixed.{err}") from None
        check(cfg.eval.certify is None or not self.final_eval.enabled
              or self.final_eval.suite.name == "adaptive", "final_eval.suite",
              "fixed.eval.certify needs the adaptive suite in the final evaluation (its l2"
              " members attack the smoothed detector)")
        uses_proxy = any(o.metric.startswith("proxy_") for o in self.objectives)
        check(not uses_proxy or cfg.train.holdout_fraction > 0, "fixed.train.holdout_fraction",
              "must be > 0: the proxy objective is measured on held-out normal images")
        every, sched = cfg.train.proxy_every, self.scheduler
        # ASHA compares trials at epochs grace_period * reduction_factor^k: each must be a
        # proxy epoch, or it would compare objectives measured at different epochs.
        check(sched.type == "none" or every == 1 or (
            sched.grace_period % every == 0 and float(sched.reduction_factor).is_integer()),
            "fixed.train.proxy_every",
            f"{every} does not divide every ASHA rung (scheduler.grace_period"
            f" {sched.grace_period} x an integer reduction_factor, got"
            f" {sched.reduction_factor:g}); use a grace_period that is a multiple of it")

    def _validate_scheduler_weights(self) -> None:
        n, weights = len(self.objectives), self.scheduler.weights
        if self.scheduler.type == "none":
            check(weights is None, "scheduler.weights",
                  "state ASHA's scalarisation; scheduler type none stops nothing")
        elif n == 1:
            check(weights is None, "scheduler.weights",
                  "are for several objectives; asha stops on the single objective itself")
        else:
            check(weights is not None and len(weights) == n, "scheduler.weights",
                  f"asha with {n} objectives stops trials on their weighted sum: give one"
                  f" weight (> 0) per objective, in their order, got {weights}; or use"
                  " scheduler type none")

    def _validate_search(self) -> None:
        fixed = self._base_dict()
        for key, spec in self.search.items():
            where = f"search.{key}"
            resolve_key(key, spec, fixed, where)
            for value in spec.representatives():
                check_applies(fixed, {key: value}, where)
        check("train.attack.eps" not in self.search
              or self.fixed_config().train.proxy_eps is not None, "search.train.attack.eps",
              "the held-out proxy attacks at the training eps unless train.proxy_eps is fixed:"
              " fix it (for example at final_eval's eps) so every trial is tested alike")
        # A few joint draws catch combinations that are invalid together (layers vs weights).
        rng = random.Random(self.seed)
        for _ in range(8 if self.search else 0):
            params = {k: s.draw(rng) for k, s in self.search.items()}
            check_applies(fixed, params, "search")

    def _validate_start_points(self) -> None:
        for i, point in enumerate(self.start_points):
            where = f"start_points[{i}]"
            unknown = sorted(set(point) - set(self.search))
            check(not unknown, where, f"unknown key {unknown[:1]}; searched keys:"
                  f" {', '.join(self.search)}")
            missing = sorted(set(self.search) - set(point))
            check(not missing, where, f"misses {missing[:1]} (a start point sets every searched"
                  " key)")
            for key, value in point.items():
                spec = self.search[key]
                if spec.type == "categorical":
                    try:
                        spec.decode(value)
                    except ConfigError as err:
                        raise ConfigError(f"{where}.{key}: {err}") from None
                else:
                    check(isinstance(value, int | float) and not isinstance(value, bool),
                          f"{where}.{key}", f"expected a number, got {value!r}")
                    check(spec.low <= value <= spec.high, f"{where}.{key}",
                          f"{value!r} is outside [{spec.low:g}, {spec.high:g}]")

    def _validate_final_categories(self) -> None:
        if not self.final_eval.categories:
            return
        entries = self.target_entries()
        named = {f"{e.dataset}/{c}" for e in entries if e.categories != "all"
                 for c in e.categories}
        if any(e.categories == "all" for e in entries):
            return  # resolved later against the dataset tree
        for i, c in enumerate(self.final_eval.categories):
            check(c in named or any(n.endswith(f"/{c}") for n in named),
                  f"final_eval.categories[{i}]",
                  f"{c!r} is not swept; swept: {', '.join(sorted(named))}")

    def start_point_choices(self) -> list[dict[str, Any]]:
        """start_points in the form Optuna is given (labels for non-scalar choices)."""
        out = []
        for point in self.start_points:
            row = {}
            for key, value in point.items():
                spec = self.search[key]
                if spec.type == "categorical":
                    decoded = spec.decode(value)
                    row[key] = spec.choices()[[canonical(v) for v in spec.values].index(
                        canonical(decoded))]
                else:
                    row[key] = value
            out.append(row)
        return out

    def decode(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Config values of the sampled choices (keys not searched are dropped)."""
        return {k: self.search[k].decode(v) for k, v in sampled.items() if k in self.search}


OBJECTIVE_SCALAR = "objective_scalar"  # the per-result metric ASHA stops several objectives on


def objective_scalar(metrics: dict[str, Any], terms: list[tuple[float, str, str]]) -> float:
    """sum_i w_i x (metric_i if mode max, else -metric_i) over (w_i, metric_i, mode_i) in
    `terms` (`SearchSpace.scalar_terms`); NaN unless every objective is measured (a finite
    number), as between proxy epochs."""
    total = 0.0
    for weight, metric, mode in terms:
        value = metrics.get(metric)
        if not (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value)):
            return float("nan")
        total += weight * (value if mode == "max" else -value)
    return total


def scalarisation_text(terms: list[tuple[float, str, str]]) -> str:
    """`0.5 x proxy_clean_image_auroc + 0.5 x proxy_worst_image_margin` (a min objective
    is subtracted)."""
    text = ""
    for i, (weight, metric, mode) in enumerate(terms):
        sign = ("-" if mode == "min" else "") if i == 0 else (" - " if mode == "min" else " + ")
        text += f"{sign}{weight:g} x {metric}"
    return text


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML; `name` defaults to the file's stem."""
    path = Path(path)
    data = load_yaml(path)
    data.setdefault("name", path.stem)
    try:
        return from_dict(SearchSpace, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def space_from_dict(data: dict[str, Any]) -> SearchSpace:
    return from_dict(SearchSpace, data)


BUILTIN_SPACES = Path(__file__).resolve().parent / "search_spaces"  # package data


def builtin_space_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_SPACES.glob("*.yaml"))


def builtin_space_path(name: str = "demo") -> Path:
    """The built-in search space `name` (shipped inside the package, so an installed pgray
    finds it from any folder)."""
    path = BUILTIN_SPACES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no built-in search space {name!r}; built-in: "
                          f"{', '.join(builtin_space_names())}")
    return path


def resolve_space_path(value: str) -> Path:
    """--config: a YAML file, or the name of a built-in search space (demo, attention, ...)."""
    path = Path(value).expanduser()
    if path.is_file() or path.suffix in (".yaml", ".yml") or "/" in value:
        return path  # load_search_space names a missing file
    return builtin_space_path(value)
