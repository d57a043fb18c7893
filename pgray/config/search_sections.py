"""The sections of a search space (`pgray.config.search_space.SearchSpace`): searched
parameters, objectives, budget, scheduler, resources, final evaluation and targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pgray.config.base import check, check_eps, check_worker_gpus
from pgray.config.experiment import PROXY_METRICS, SuiteConfig

# "loss" (the training loss) is allowed as a sanity objective for smoke runs.
OBJECTIVE_METRICS: tuple[str, ...] = (*PROXY_METRICS, "loss")
GENERATED_ROOT = "generated"  # data root placeholder: the cached synthetic demo dataset


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
    # asha with several objectives: one weight (> 0) per objective; ASHA stops trials on
    # objective_scalar = sum of weight x objective (negated where its mode is min)
    weights: list[float] | None = None

    def validate(self) -> None:
        check(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        check(self.reduction_factor > 1, "reduction_factor",
              f"must be > 1, got {self.reduction_factor:g}")
        check(self.weights is None or all(w > 0 for w in self.weights), "weights",
              f"must each be > 0, got {self.weights}")


OPTUNA_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://",
                  "mysql+pymysql://")


@dataclass
class Resources:
    """What each training asks of the cluster (a sweep's trials, a benchmark's trainings)."""

    workers_per_trial: int = 1  # Ray Train data-parallel workers of each trial
    cpus_per_worker: float = 1.0
    # None: one GPU per worker when the cluster has GPUs, else none. 0 on a cluster with
    # GPUs is refused unless allow_cpu (it would train on CPUs with every GPU idle).
    gpus_per_worker: float | None = None
    allow_cpu: bool = False
    # CPU held by a trial of several workers itself (it only waits on its Train run;
    # fractional, or a small cluster deadlocks with trials holding every CPU while their
    # workers wait). A one-worker trial trains in its own process and holds that worker's.
    trial_cpus: float = 0.25
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs/GPUs fit
    max_failures: int = 1  # failures a trial survives (lost worker or node): resumed from checkpoint
    # A one-worker trial trains in the trial's own process. false: through a Ray Train run,
    # as a trial of several workers does (a controller and a worker actor to start per
    # trial: seconds each; benchmarks/trial_overhead.py compares the two).
    one_worker_in_trial: bool = True
    # An Optuna RDB storage URL (the deployment's PostgreSQL, postgresql://..., or
    # sqlite:////abs/path.db) keeping each target's study as `<sweep>:<target>`, where
    # optuna-dashboard and optuna.load_study read it; None: the studies live only in Tune's
    # experiment (resumable with it either way)
    optuna_storage: str | None = None

    def validate(self) -> None:
        check(self.workers_per_trial >= 1, "workers_per_trial", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check_worker_gpus(self.workers_per_trial, self.gpus_per_worker)
        check(self.trial_cpus >= 0, "trial_cpus", "must be >= 0")
        check(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent",
              "must be >= 1 (or null: derived from the cluster)")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(self.optuna_storage is None or self.optuna_storage.startswith(OPTUNA_SCHEMES),
              "optuna_storage", f"an Optuna RDB storage URL ({', '.join(OPTUNA_SCHEMES)}...),"
              f" got {self.optuna_storage!r}")

    @property
    def trains_in_trial(self) -> bool:
        return self.workers_per_trial == 1 and self.one_worker_in_trial

    def per_trial(self) -> dict[str, float]:
        """What one running trial holds (call it on resolved resources: gpus_per_worker
        set): a one-worker trial trains in its own process; a trial of several holds its own
        CPU share plus its Train workers."""
        own = 0.0 if self.trains_in_trial else self.trial_cpus
        return {"CPU": own + self.workers_per_trial * self.cpus_per_worker,
                "GPU": self.workers_per_trial * (self.gpus_per_worker or 0.0)}


@dataclass
class RankAgreement:
    """After the pick, the sweep's trials on the test split with a short suite (the proxy's
    own two attacks and their worst case), and how well the proxy ranked them
    (pgray.tracking.rank_agreement). Test numbers never reach the search or the pick."""

    enabled: bool = True
    # per target; None: every completed or early-stopped trial with a checkpoint; a cap
    # keeps trials spread evenly over the proxy's ranking (deterministic)
    max_trials: int | None = None
    steps: int = 10  # of each of the two attacks
    eps: float | None = None  # None: final_eval.eps[0]
    bootstrap: int = 1000  # resamples of the trials for the 95 % intervals
    seed: int = 0  # of the bootstrap

    def validate(self) -> None:
        check(self.max_trials is None or self.max_trials >= 2, "max_trials",
              f"must be >= 2 (a rank correlation needs pairs), got {self.max_trials}")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        if self.eps is not None:
            check_eps(self.eps)
            check(self.eps > 0, "eps", "must be > 0 (the test suite attacks)")
        check(self.bootstrap >= 0, "bootstrap", f"must be >= 0 (0: no intervals), got"
              f" {self.bootstrap}")


@dataclass
class FinalEval:
    enabled: bool = True
    categories: list[str] | None = None  # "dataset/category" or "category"; None: every target
    eps: list[float] = field(default_factory=lambda: [8.0])
    steps: int = 1000  # the protocol's PGD steps (the paper's: 1000)
    restarts: int = 1
    # the attack suite (pgray.attacks.suite): its per-image worst case is the robust number
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    # also train the best trial's config without the adversarial terms, and evaluate it
    # beside the best trial (detector patchguard_clean): the robustness gain, or its absence
    clean_baseline: bool = False
    # also train the sweep's `fixed` config (the paper recipe as the space fixes it, nothing
    # searched) for the same epochs, and evaluate it beside the best trial (detector
    # patchguard_recipe) and like the trials (rank_agreement): the point the front must beat
    recipe_baseline: bool = False
    rank_agreement: RankAgreement = field(default_factory=RankAgreement)
    top_n: int = 1  # best trials per target that are benchmarked
    batch_size: int = 32
    n_panels: int = 2
    actors: int | None = None  # benchmark actors (None: one per target, at most the CPUs)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: gpus_per_worker of the trials

    def validate(self) -> None:
        check(len(self.eps) >= 1, "eps", "needs at least one eps")
        check_eps(self.eps)
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.restarts >= 1, "restarts", f"must be >= 1, got {self.restarts}")
        check(self.top_n >= 1, "top_n", f"must be >= 1, got {self.top_n}")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.actors is None or self.actors >= 1, "actors", "must be >= 1")
        check(self.cpus_per_actor > 0, "cpus_per_actor", "must be > 0")

    @property
    def rank_eps(self) -> float:
        """The eps of the rank-agreement test suite."""
        ra = self.rank_agreement
        return float(self.eps[0]) if ra.eps is None else float(ra.eps)


@dataclass
class DatasetTargets:
    """Categories of one dataset, each swept on its own (one model per category)."""

    dataset: str
    root: str = ""  # "generated": the cached synthetic dataset; relative paths: from the cwd
    categories: list[str] | str = "all"  # "all": every category the layout knows
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None  # the targets' own training seed (a benchmark's `seeds`)

    def validate(self) -> None:
        check(bool(self.dataset), "dataset", "must name a dataset")
        check(self.categories == "all" or isinstance(self.categories, list), "categories",
              "must be a list of categories or 'all'")
        check(self.categories == "all" or len(self.categories) >= 1, "categories",
              "needs at least one category (or 'all')")
        check(self.root != GENERATED_ROOT or self.dataset == "synthetic", "root",
              f"'{GENERATED_ROOT}' is only for dataset synthetic, not {self.dataset}")


def target_key(dataset: str, category: str, seed: int | None = None) -> str:
    """`dataset/category`, and `@seed<n>` for a training seed of its own."""
    return f"{dataset}/{category}" + ("" if seed is None else f"@seed{seed}")


def check_seeds(seeds: list[int], where: str = "seeds") -> None:
    check(all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds),
          where, f"must be non-negative integers, got {seeds}")
    check(len(set(seeds)) == len(seeds), where, f"lists a seed twice: {seeds}")


@dataclass(frozen=True)
class Target:
    """One (dataset, category) study: its trials, best trial and final evaluation."""

    dataset: str
    root: str
    category: str
    options: tuple[tuple[str, Any], ...] = ()
    seed: int | None = None  # a training seed of its own (None: fixed.train.seed)

    @property
    def key(self) -> str:
        return target_key(self.dataset, self.category, self.seed)

    def data_section(self, base: dict[str, Any]) -> dict[str, Any]:
        return base | {"dataset": self.dataset, "root": self.root, "category": self.category,
                       "options": dict(base.get("options") or {}) | dict(self.options)}
