"""The simulation switch: trainings and evaluation jobs that sleep for what the cost model says
they take, scaled down, on a cluster whose GPUs are logical; everything around them is real.

A `Simulation` in `SweepContext.simulate` makes each Tune trial `simulated_trial` instead of
a training: it opens its MLflow run, sleeps each epoch's duration, reports proxy scores made
up from its parameters (so Optuna and ASHA decide on something that depends on them), writes
a small checkpoint file through Tune at the epochs a training would, and resumes from it when
Tune restarts it (a lost node). `SimulatedJobs` is the evaluation pool's worker: it sleeps a
job's duration. Neither imports torch, so hundreds of them fit on one host.

Durations are simulated seconds (the cost model's: `pgray.pipelines.plan`); `scale` is host
seconds per simulated second. Every piece of simulated work appends one line to a log under
`log_dir` (host wall clock), which `pgray.tracking.timeline` reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.core.file_names import CHECKPOINT_FILE
from pgray.tracking.timeline import JOBS_LOG, TRIALS_LOG


@dataclass(frozen=True)
class Simulation:
    """What the simulated work takes, in simulated seconds, and where it says so."""

    scale: float  # host seconds per simulated second
    log_dir: str
    epoch_s: dict[str, float]  # per target: one epoch of its training
    start_s: float = 10.0  # a training's process, model and data (plan.FixedCosts.training_s)
    report_every: dict[str, int] = field(default_factory=dict)  # per target; else 10
    checkpoint_bytes: int = 4096

    def sleep_until(self, began: float, simulated_s: float) -> None:
        """Sleep until `simulated_s` after host time `began`: the host's own work in between
        (reports, checkpoints, MLflow) is absorbed, not added, as a GPU's would overlap it."""
        time.sleep(max(0.0, began + simulated_s * self.scale - time.time()))


@dataclass(frozen=True)
class SimulatedJob:
    """An evaluation job as the pool sees it (`key`, `cost`, `label()`), with its checkpoint
    file (copied to the actor once per digest, as a real job's) and its simulated seconds."""

    key: str
    seconds: float
    what: str
    checkpoint: str
    checkpoint_sha256: str

    @property
    def cost(self) -> float:
        return self.seconds

    def label(self) -> str:
        return self.what


def append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended in one write (O_APPEND: lines of processes never interleave)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def made_up_quality(target: str, params: dict[str, Any]) -> float:
    """A trial's final proxy score in [0.55, 0.95]: fixed by its target and parameters, so the
    searcher and ASHA see scores that depend on what they chose."""
    text = json.dumps([target, sorted((k, str(v)) for k, v in params.items())])
    unit = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return 0.55 + 0.4 * unit


def simulated_metrics(quality: float, epoch: int, epochs: int,
                      objectives: list[tuple[str, str]]) -> dict[str, float]:
    """Proxy scores after `epoch` epochs: rising toward `quality` (each objective's metric, a
    loss falling as they rise; for a `min` objective its complement)."""
    reached = quality * (1.0 - math.exp(-4.0 * (epoch + 1) / max(epochs, 1)))
    out = {"loss": 1.0 - reached, "proxy_clean_image_auroc": reached,
           "proxy_worst_image_auroc": reached}
    for metric, mode in objectives:
        out[metric] = reached if mode == "max" else 1.0 - reached
    return out


def simulated_trial(config: dict[str, Any], ctx) -> None:
    """A Tune trial that sleeps where a training would train (`Simulation`), with its real
    MLflow run, reports, checkpoints, resume and failures."""
    from ray import tune

    from pgray.config.search_space import objective_scalar
    from pgray.distributed.trial_runs import open_trial_run
    from pgray.distributed.tune_targets import TARGET_KEY, TIME_ATTR

    sim: Simulation = ctx.simulate
    began, trial_id = time.time(), tune.get_context().get_trial_id()
    key = config[TARGET_KEY]
    if key not in ctx.targets:
        return
    target = ctx.targets[key]
    params = ctx.target_params.get(key, {}) | ctx.space.decode(config)
    experiment = ctx.space.trial_config(target, params)
    epochs, every = experiment.train.epochs, sim.report_every.get(key, 10)
    run = open_trial_run(ctx, trial_id, target)
    run.log_params(experiment.to_dict())
    run.set_tags({"pgray.searched": ", ".join(f"{k}={v}" for k, v in params.items())})
    first, history = _resume_state(tune.get_checkpoint())
    quality = made_up_quality(key, params)
    objectives = [(o.metric, o.mode) for o in ctx.space.objectives]
    terms = ctx.space.scalar_terms()
    due = sim.start_s  # simulated seconds after `began` the work has reached
    sim.sleep_until(began, due)
    work_began, epoch = time.time(), first
    try:
        while epoch < epochs:
            stop = min(epochs, (epoch // every + 1) * every)  # the next epoch that reports
            due += sim.epoch_s[key] * (stop - epoch)
            sim.sleep_until(began, due)
            epoch = stop
            metrics = simulated_metrics(quality, epoch - 1, epochs, objectives)
            if terms:
                metrics["objective_scalar"] = objective_scalar(metrics, terms)
            history.append((epoch - 1, metrics))
            run.log_history(history)
            with tempfile.TemporaryDirectory() as tmp:
                _write_checkpoint(Path(tmp), epoch, history, sim.checkpoint_bytes)
                tune.report(metrics | {TIME_ATTR: epoch},
                            checkpoint=tune.Checkpoint.from_directory(tmp))
    finally:
        append_line(Path(sim.log_dir) / TRIALS_LOG, {
            "trial": trial_id, "target": key, "began": began, "work_began": work_began,
            "ended": time.time(), "from_epoch": first, "to_epoch": epoch,
            "node": _node_id()})
        run.flush(wait=True)


def _write_checkpoint(folder: Path, epoch: int, history: list, size: int) -> None:
    """A small stand-in for a checkpoint: the epoch and history, padded to `size` bytes."""
    body = json.dumps({"epochs_done": epoch, "history": history})
    (folder / CHECKPOINT_FILE).write_text(body + " " * max(0, size - len(body)))


def _resume_state(checkpoint) -> tuple[int, list]:
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as d:
        state = json.loads((Path(d) / CHECKPOINT_FILE).read_text())
    return int(state["epochs_done"]), [tuple(h) for h in state["history"]]


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class SimulatedJobs:
    """The evaluation pool's worker under the switch: sleeps a job's duration (its image-steps
    at `Simulation.job_rate`, plus its fixed cost) and logs it."""

    def __init__(self, sim: Simulation, *, assigned_gpus=(), node: str = "") -> None:
        self._sim = sim
        self._node = node
        self._gpus = list(assigned_gpus)

    def run(self, job, *inputs) -> dict[str, Any]:
        began = time.time()
        self._sim.sleep_until(began, job.seconds)
        ended = time.time()
        record = {"job": job.key, "began": began, "ended": ended, "node": self._node,
                  "input_bytes": sum(len(i) for i in inputs if isinstance(i, bytes | bytearray))}
        append_line(Path(self._sim.log_dir) / JOBS_LOG, record)
        return record


def start_logical_cluster(gpus: int, nodes: int, cpus_per_gpu: float = 4.0,
                          object_store_mb: int = 200):
    """A Ray cluster on this host (`ray.cluster_utils.Cluster`): a head that holds no GPU (the
    driver's; removing it ends the cluster) and `nodes` workers sharing `gpus` logical GPUs,
    with `cpus_per_gpu` logical CPUs each; connected. Returns the Cluster
    (`remove_node` takes a node away, as a lost machine)."""
    import ray
    from ray.cluster_utils import Cluster

    if gpus % nodes:
        raise ValueError(f"{gpus} GPUs do not split evenly over {nodes} nodes")
    store = object_store_mb * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 0, "object_store_memory": store})
    for _ in range(nodes):
        cluster.add_node(num_cpus=int(gpus // nodes * cpus_per_gpu), num_gpus=gpus // nodes,
                         object_store_memory=store)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster
