"""Where a trial's MLflow run is found or created, by its key: by the trial on a worker node,
by its training loop, by the driver that closes it."""

from __future__ import annotations

from typing import Any

from pgray.config.search_sections import Target
from pgray.distributed.sweep_context import SweepContext


def trial_run_key(sweep: str, trial_id: str) -> str:
    return f"sweep:{sweep}:trial:{trial_id}"


def train_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def trial_run(ctx: SweepContext, trial_id: str, target: Target) -> dict[str, Any]:
    """How a trial's MLflow run is found or created (by its key), wherever it is opened: by
    the trial on a worker node, by its training loop, by the driver that closes it."""
    return {"run_key": trial_run_key(ctx.space.name, trial_id),
            "run_name": f"{target.category}-{trial_id}", "parent_run_id": ctx.parent_run_id,
            "tags": {"pgray.kind": "trial", "pgray.sweep": ctx.space.name,
                     "dataset": target.dataset, "category": target.category,
                     "pgray.trial_id": trial_id},
            "existing": True}  # opened on a worker node too: never a store of that node's own


def open_trial_run(ctx: SweepContext, trial_id: str, target: Target):
    from pgray.tracking.mlflow_runs import open_run_later

    return open_run_later(ctx.mlflow_uri, **trial_run(ctx, trial_id, target))
