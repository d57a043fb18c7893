"""What every trial of one Tune experiment needs besides its sampled parameters, built in one
place for a sweep's search and for the fixed trainings (a benchmark's missing checkpoints, a
sweep's twins, recipe baselines and seeds), with the one rule for where their Train runs go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgray.config.search_sections import Resources, Target
from pgray.config.search_space import SearchSpace


@dataclass
class SweepContext:
    """What every trial needs besides its sampled parameters (shipped via the object store);
    built by `sweep_context`."""

    space: SearchSpace
    targets: dict[str, Target]
    mlflow_uri: str
    parent_run_id: str
    train_storage: str
    resources: Resources  # the space's, with gpus_per_worker resolved on this cluster
    progress: bool = False
    # per target, parameters fixed on top of the space (a clean twin: its target's best trial)
    target_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the simulation switch (distributed.simulation.Simulation): trials sleep, never train
    simulate: Any = None


# Where a Tune experiment's Train runs go: beside it, `<storage>/<space name>-<suffix>`. A
# sweep's own search keeps the name its interrupted sweeps resume their Train runs from.
SEARCH_RUNS, FIXED_RUNS = "train", "runs"


def sweep_context(space: SearchSpace, targets: dict[str, Target], *, mlflow_uri: str,
                  parent_run_id: str, storage: str, resources: Resources, search: bool = False,
                  target_params: dict[str, dict[str, Any]] | None = None) -> SweepContext:
    """The context of one Tune experiment of `space` over `targets`: a sweep's search
    (`search`), or one fixed training per target (a benchmark's missing checkpoints, a
    sweep's twins, recipe and seeds)."""
    suffix = SEARCH_RUNS if search else FIXED_RUNS
    return SweepContext(space=space, targets=targets, mlflow_uri=mlflow_uri,
                        parent_run_id=parent_run_id, resources=resources,
                        train_storage=f"{storage.rstrip('/')}/{space.name}-{suffix}",
                        target_params=dict(target_params or {}))
