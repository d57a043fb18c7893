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

from pgray.config import PROXY_METRICS, ExperimentConfig, merge
from pgray.config_keys import (
    apply_params,
    canonical,
    check_applies,
    is_scalar,
    resolve_key,
)
from pgray.configbase import check, from_dict, load_yaml
from pgray.errors import ConfigError

# "loss" (the training loss) is allowed as a sanity objective for smoke runs.
OBJECTIVE_METRICS: tuple[str, ...] = (*PROXY_METRICS, "loss")
GENERATED_ROOT = "generated"  # data root placeholder: the cached synthetic demo dataset


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


@dataclass
class Objective:
    metric: str = "proxy_score"
    mode: Literal["max", "min"] = "max"

    def validate(self) -> None:
        hint = " (test-split metrics are never tuned on)" if not self.metric.startswith(
            "proxy_") and "auroc" in self.metric else ""
        check(self.metric in OBJECTIVE_METRICS, "metric",
              f"{self.metric!r} is not a per-epoch proxy metric{hint}; allowed:"
              f" {', '.join(OBJECTIVE_METRICS)}")


@dataclass
class Budget:
    trials: int = 4  # per target (dataset, category)
    epochs: int | None = None  # sets train.epochs of every trial (None: fixed's value)
    time_budget_s: float | None = None  # wall-clock limit of the whole search

    def validate(self) -> None:
        check(self.trials >= 1, "trials", f"must be >= 1, got {self.trials}")
        check(self.epochs is None or self.epochs >= 1, "epochs", "must be >= 1")
        check(self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s",
              "must be > 0")


@dataclass
class Scheduler:
    type: Literal["asha", "none"] = "asha"
    grace_period: int = 1  # epochs before a trial can be stopped
    reduction_factor: float = 2.0

    def validate(self) -> None:
        check(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        check(self.reduction_factor > 1, "reduction_factor",
              f"must be > 1, got {self.reduction_factor:g}")


@dataclass
class Resources:
    workers_per_trial: int = 1  # Ray Train data-parallel workers of each trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # CPU held by the trial itself (it only waits on its Train run); fractional, or a small
    # cluster deadlocks with trials holding every CPU while their workers wait.
    trial_cpus: float = 0.25
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs/GPUs fit
    max_failures: int = 1  # worker failures a trial's Train run survives

    def validate(self) -> None:
        check(self.workers_per_trial >= 1, "workers_per_trial", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.gpus_per_worker >= 0, "gpus_per_worker", "must be >= 0")
        check(self.trial_cpus >= 0, "trial_cpus", "must be >= 0")
        check(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent",
              "must be >= 1 (or null: derived from the cluster)")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")

    def per_trial(self) -> dict[str, float]:
        """What one running trial holds: its own CPU share plus its Train workers."""
        return {"CPU": self.trial_cpus + self.workers_per_trial * self.cpus_per_worker,
                "GPU": self.workers_per_trial * self.gpus_per_worker}


@dataclass
class FinalEval:
    enabled: bool = True
    categories: list[str] | None = None  # "dataset/category" or "category"; None: every target
    eps: list[float] = field(default_factory=lambda: [8.0])
    steps: int = 1000  # PGD steps (the paper's protocol: 1000)
    restarts: int = 1
    top_n: int = 1  # best trials per target that are benchmarked
    batch_size: int = 32
    n_panels: int = 2
    actors: int | None = None  # benchmark actors (None: one per target, at most the CPUs)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: gpus_per_worker of the trials

    def validate(self) -> None:
        check(len(self.eps) >= 1, "eps", "needs at least one eps")
        for i, e in enumerate(self.eps):
            check(0 <= e <= 255, f"eps[{i}]", f"must be in [0, 255] (1/255 units), got {e:g}")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.restarts >= 1, "restarts", f"must be >= 1, got {self.restarts}")
        check(self.top_n >= 1, "top_n", f"must be >= 1, got {self.top_n}")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.actors is None or self.actors >= 1, "actors", "must be >= 1")
        check(self.cpus_per_actor > 0, "cpus_per_actor", "must be > 0")


@dataclass
class DatasetTargets:
    """Categories of one dataset, each swept on its own (one model per category)."""

    dataset: str
    root: str = ""  # "generated": the cached synthetic dataset; relative paths: from the cwd
    categories: list[str] | str = "all"  # "all": every category the layout knows
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check(bool(self.dataset), "dataset", "must name a dataset")
        check(self.categories == "all" or isinstance(self.categories, list), "categories",
              "must be a list of categories or 'all'")
        check(self.categories == "all" or len(self.categories) >= 1, "categories",
              "needs at least one category (or 'all')")
        check(self.root != GENERATED_ROOT or self.dataset == "synthetic", "root",
              f"'{GENERATED_ROOT}' is only for dataset synthetic, not {self.dataset}")


@dataclass(frozen=True)
class Target:
    """One (dataset, category) study: its trials, best trial and final evaluation."""

    dataset: str
    root: str
    category: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.category}"

    def data_section(self, base: dict[str, Any]) -> dict[str, Any]:
        return base | {"dataset": self.dataset, "root": self.root, "category": self.category,
                       "options": dict(base.get("options") or {}) | dict(self.options)}


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
    seed: int = 0

    def validate(self) -> None:
        check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name)), "name",
              f"must be letters, digits, '-', '_' or '.', got {self.name!r}")
        check(len(self.objectives) >= 1, "objectives", "needs at least one objective")
        metrics = [o.metric for o in self.objectives]
        check(len(set(metrics)) == len(metrics), "objectives", "lists a metric twice")
        check(not (self.datasets and self.categories), "categories",
              "give either datasets or categories, not both")
        check(self.scheduler.type == "none" or len(self.objectives) == 1, "scheduler.type",
              "asha needs a single objective; use type none for multi-objective searches")
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

    # --- derived views -------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

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
        try:
            return ExperimentConfig.from_dict(apply_params(base, params))
        except ConfigError as err:
            raise ConfigError(f"trial parameters {params}: {err}") from None

    def _base_dict(self) -> dict[str, Any]:
        base = copy.deepcopy(self.fixed)
        if self.budget.epochs is not None:
            base = merge(base, {"train": {"epochs": self.budget.epochs}})
        return base

    # --- validation helpers --------------------------------------------------------------
    def _validate_fixed(self) -> None:
        try:
            cfg = self.fixed_config()
        except ConfigError as err:
            raise ConfigError(f"fixed.{err}") from None
        uses_proxy = any(o.metric.startswith("proxy_") for o in self.objectives)
        check(not uses_proxy or cfg.train.holdout_fraction > 0, "fixed.train.holdout_fraction",
              "must be > 0: the proxy objective is measured on held-out normal images")
        check(cfg.train.proxy_every == 1, "fixed.train.proxy_every",
              "must be 1: the sweep reads the objective at every epoch")

    def _validate_search(self) -> None:
        fixed = self._base_dict()
        for key, spec in self.search.items():
            where = f"search.{key}"
            resolve_key(key, spec, fixed, where)
            for value in spec.representatives():
                check_applies(fixed, {key: value}, where)
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


def builtin_space_path(name: str = "demo") -> Path:
    """search_spaces/<name>.yaml shipped next to the package."""
    return Path(__file__).resolve().parent.parent / "search_spaces" / f"{name}.yaml"
