"""Ray Train: one PatchGuard training run on N data-parallel workers (DDP; gloo/NCCL), or,
for one worker inside a Tune trial, in the trial's own process (`fit_in_trial`).

The per-worker function only knows its config and the context it reports to; everything
about the method lives in `pgray.core.fit.fit`.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.core.file_names import CHECKPOINT_FILE

# The result key naming a reported checkpoint as a URI every node can open (s3://..., gs://...,
# or an absolute path): Ray's own `checkpoint_path` leaves the filesystem out.
CHECKPOINT_URI = "checkpoint_uri"


@dataclass
class TrainLaunch:
    name: str
    storage: str
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    mlflow_uri: str | None = None
    mlflow_run_id: str | None = None
    # or, for a run opened when the store first answers: open_run_later's arguments
    mlflow_run: dict[str, Any] | None = None
    num_to_keep: int = 2
    progress: bool = True
    # step_hook(rank, epoch, step) after every training step (pgray.pipelines.train has the
    # one seam: TrainRequest.step_hook); shipped to the workers by Ray's cloudpickle.
    step_hook: Callable[[int, int, int], None] | None = None
    # reported first (NaN where an epoch has none), so Tune's trial table shows these
    lead_metrics: tuple[str, ...] = ()
    # (weight, metric, mode) of a sweep's objectives where ASHA stops on their weighted sum:
    # every epoch then reports objective_scalar (pgray.config.search_space.objective_scalar)
    objective_terms: list[tuple[float, str, str]] | None = None
    # wall clock when the Tune trial's function began (reported: trial_times' start-up)
    trial_began_at: float | None = None


def _load_resume_state(checkpoint) -> dict[str, Any] | None:
    from pgray.core.checkpoint import read_checkpoint

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return read_checkpoint(Path(d) / CHECKPOINT_FILE)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """A Ray Train worker: rank and world from Train's context, DDP across the workers."""
    import ray.train

    context = ray.train.get_context()
    fit_and_report(loop_config, rank=context.get_world_rank(),
                   world=context.get_world_size(), resume_from=ray.train.get_checkpoint(),
                   report=ray.train.report, checkpoint_cls=ray.train.Checkpoint,
                   device=worker_device())


def fit_in_trial(loop_config: dict[str, Any]) -> None:
    """A one-worker training inside its Tune trial's own process: no Train controller, no
    worker actor and no placement group to start (seconds of every trial on a small cluster).
    Checkpoints, resume and retries are Tune's, with the same files as a Train run's."""
    import ray
    from ray import tune

    from pgray.core.device import pick_device

    fit_and_report(loop_config, rank=0, world=1, resume_from=tune.get_checkpoint(),
                   report=tune.report, checkpoint_cls=tune.Checkpoint,
                   device=pick_device(assigned_gpus=ray.get_gpu_ids()))


def fit_and_report(loop_config: dict[str, Any], *, rank: int, world: int, resume_from,
                   report, checkpoint_cls, device) -> None:
    """Fit on this worker; each epoch's metrics (and, on rank 0, its checkpoint) go to
    `report` (Train's or Tune's), and rank 0 logs them to the run's MLflow run."""
    import ray
    import torch

    from pgray.config import ExperimentConfig
    from pgray.config.search_space import OBJECTIVE_SCALAR, objective_scalar
    from pgray.core.fit import FitContext, fit
    from pgray.tracking.lineage import TRAINING, system_metrics, training_dataset
    from pgray.tracking.mlflow_runs import Tracker, open_run_later

    cfg = ExperimentConfig.from_dict(loop_config["experiment"])
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    resume_state = _load_resume_state(resume_from)
    history: list = list((resume_state or {}).get("extra", {}).get("history", []))
    tracker = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        # logged from a worker node: the store must be the driver's, reachable from here
        tracker = Tracker(loop_config["mlflow_uri"], loop_config["mlflow_run_id"],
                          existing=True)
    elif rank == 0 and loop_config.get("mlflow_run"):  # training goes on while it is away
        tracker = open_run_later(loop_config["mlflow_uri"], **loop_config["mlflow_run"])
    if tracker is not None:
        tracker.log_history(history)
        split = training_dataset(cfg.data)
        if split is not None:
            tracker.log_input(split, TRAINING)

    def report_epoch(epoch: int, metrics: dict[str, float], save) -> None:
        metrics = metrics | {"worker_gpus": float(len(ray.get_gpu_ids())),
                             "worker_cuda": float(device.type == "cuda")}
        if loop_config.get("trial_began_at") is not None:
            metrics["trial_began_at"] = loop_config["trial_began_at"]
        if loop_config.get("objective_terms"):  # in the result, so a resumed ASHA hears it
            metrics[OBJECTIVE_SCALAR] = objective_scalar(metrics, loop_config["objective_terms"])
        history.append((epoch, metrics))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if save is not None and rank == 0:
                started = time.perf_counter()
                save(Path(tmp) / CHECKPOINT_FILE, {"history": history})
                checkpoint = checkpoint_cls.from_directory(tmp)
                metrics = metrics | {"checkpoint_time_s": time.perf_counter() - started}
            # Lead metrics sit in every result (NaN where not measured, e.g. between proxy
            # epochs): Tune picks its table's columns from whatever result it sees first.
            lead = {k: float("nan") for k in loop_config.get("lead_metrics", ())}
            report(lead | metrics, checkpoint=checkpoint)
        if tracker is not None:
            tracker.log_history(history)

    def prepare(model):
        if world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                       else None)

    uri = loop_config.get("mlflow_uri")
    try:
        with system_metrics(uri, tracker.run_id if tracker is not None else None):
            fit(cfg, FitContext(
                device=device, rank=rank, world_size=world,
                prepare_model=prepare, report=report_epoch, resume_state=resume_state,
                progress=loop_config.get("progress", True),
                step_hook=_bind_rank(loop_config.get("step_hook"), rank),
                epoch_hook=param_spread if world > 1 else None,
                reserved_cpus=loop_config.get("reserved_cpus"),
            ))
    finally:
        if tracker is not None:  # what an outage held back is sent before the worker ends
            tracker.flush(wait=True)


def worker_device():
    """The device of this Train worker: the GPU Ray gave it, or the CPU when it gave none or
    the node has no CUDA (a logical GPU, as in tests and on CPU clusters)."""
    import ray
    import ray.train.torch

    from pgray.core.device import pick_device

    device = pick_device(assigned_gpus=ray.get_gpu_ids())
    if device.type == "cuda":  # Ray Train shares CUDA_VISIBLE_DEVICES among a node's workers
        device = ray.train.torch.get_device()
    return device


def param_spread(model) -> dict[str, float]:
    """Largest difference across ranks of any parameter tensor's sum (0 when DDP keeps the
    replicas in sync), and this replica's checksum."""
    import torch
    import torch.distributed as dist

    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    high, low = sums.clone(), sums.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return {"param_spread": float((high - low).abs().max()),
            "param_checksum": float(sums.abs().sum())}


def _bind_rank(hook: Callable[[int, int, int], None] | None, rank: int):
    return None if hook is None else (lambda epoch, step: hook(rank, epoch, step))


def loop_config(experiment: dict[str, Any], launch: TrainLaunch) -> dict[str, Any]:
    """What every worker of a training gets (plain data, and the step hook by value)."""
    return {
        "experiment": experiment,
        "mlflow_uri": launch.mlflow_uri,
        "mlflow_run_id": launch.mlflow_run_id,
        "mlflow_run": launch.mlflow_run,
        "threads": max(1, int(launch.cpus_per_worker)),
        "reserved_cpus": launch.cpus_per_worker,
        "progress": launch.progress,
        "lead_metrics": list(launch.lead_metrics),
        "objective_terms": launch.objective_terms,
        "step_hook": launch.step_hook,
        "trial_began_at": launch.trial_began_at,
    }


def run_training(experiment: dict[str, Any], launch: TrainLaunch, callbacks: list | None = None):
    """Build and fit a TorchTrainer. Re-running with the same name and storage resumes from
    the latest checkpoint (Train V2 reloads the run's checkpoint snapshot). `callbacks` are
    Train callbacks (e.g. Tune's TuneReportCallback, which forwards worker reports).

    Train retries a worker group's failure itself (`launch.max_failures`), but when a worker
    dies while its controller is tearing the group down for that retry, the controller sees
    the dead actor and gives up with a ControllerError it never retries (seen on a loaded
    2-core host). That is the same lost worker, so it is resumed here, by name, from the
    latest checkpoint, within the same `max_failures`."""
    from ray.train import ControllerError

    for attempt in range(launch.max_failures + 1):
        try:
            return _fit(experiment, launch, callbacks)
        except ControllerError as err:
            lost = lost_worker_actor(err)
            if lost is None or attempt == launch.max_failures:
                raise
            warnings.warn(f"Ray Train's controller lost a worker ({lost}); resuming "
                          f"{launch.name} from its latest checkpoint "
                          f"({attempt + 1} of {launch.max_failures})", stacklevel=2)
    raise AssertionError("unreachable")  # the loop returns or raises


def lost_worker_actor(err: BaseException) -> str | None:
    """The first line of the actor death behind a Train ControllerError, or None when the
    controller failed for another reason (those are not retried)."""
    from ray.exceptions import RayActorError

    from pgray.errors import first_line

    cause = err
    while cause is not None and not isinstance(cause, RayActorError):
        cause = getattr(cause, "controller_failure", None) or cause.__cause__
    return None if cause is None else first_line(cause)


def _fit(experiment: dict[str, Any], launch: TrainLaunch, callbacks: list | None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = (launch.gpus_per_worker or 0) > 0
    resources = {"CPU": launch.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = launch.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(experiment, launch),
        torch_config=TorchConfig(backend="nccl" if use_gpu and gpu_nodes_have_cuda() else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=launch.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=launch.name,
            storage_path=launch.storage,
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=launch.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=launch.num_to_keep),
        ),
    )
    return trainer.fit()


def train_to_file(experiment: dict[str, Any], launch: TrainLaunch, dest: Path) -> Path:
    """One Ray Train run of `experiment`, its final checkpoint copied to `dest` (a plain
    pgray file); the run's error raised here."""
    result = run_training(experiment, launch)
    if result.error is not None:
        raise result.error
    return copy_result_checkpoint(result, dest)


def copy_result_checkpoint(result, dest: Path) -> Path:
    """Copy the final checkpoint of a Ray Train result into `dest` (a plain pgray .pt file)."""
    from pgray.io import copy_atomic

    with result.checkpoint.as_directory() as d:
        return copy_atomic(Path(d) / CHECKPOINT_FILE, dest)


def fetch_train_checkpoint(uri: str, dest: Path) -> Path:
    """Copy the pgray file out of a Ray Train checkpoint folder (absolute path, s3:// or
    gs:// URI) into `dest`; a storage that cannot be read fails naming it."""
    from ray.train import Checkpoint

    from pgray.errors import StorageError, first_line
    from pgray.io import copy_atomic

    if "://" not in uri and not uri.startswith("/"):
        raise StorageError(f"checkpoint {uri!r} is neither an absolute path nor a URI")
    try:
        with Checkpoint(uri).as_directory() as d:
            return copy_atomic(Path(d) / CHECKPOINT_FILE, dest)
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        raise StorageError(f"cannot read checkpoint {uri}: {first_line(err)}") from None


def checkpoint_uri(checkpoint) -> str:
    """A Ray checkpoint as one string with its filesystem: `s3://bucket/...` on S3."""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def reported_checkpoint(metrics: dict[str, Any] | None, checkpoint) -> str | None:
    """The URI of a trial's newest checkpoint: the one its Train run reported (a result key;
    Tune never holds a Train run's checkpoints) or, for a training run in the trial itself,
    the trial's own checkpoint."""
    uri = (metrics or {}).get(CHECKPOINT_URI)
    if isinstance(uri, str) and uri:
        return uri
    return None if checkpoint is None else checkpoint_uri(checkpoint)


def report_to_tune():
    """Tune's callback that forwards rank 0's reports to the trial, adding each checkpoint's
    full URI (Tune's own `checkpoint_path` is the path inside its filesystem, which on S3 has
    lost its scheme by the time the driver fetches it)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ReportToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None:
                metrics = [m | {CHECKPOINT_URI: checkpoint_uri(checkpoint)} for m in metrics]
            super().after_report(run_context, metrics, checkpoint)

    return ReportToTune()


_CUDA_ON_GPU_NODES: bool | None = None


def gpu_nodes_have_cuda() -> bool:
    """Whether the cluster's GPU nodes see CUDA: NCCL needs it, and a cluster whose GPUs are
    logical (declared, as in tests) trains over gloo on the CPU. Asked once per process, by
    a task that holds nothing, pinned to a node that declares GPUs."""
    global _CUDA_ON_GPU_NODES
    if _CUDA_ON_GPU_NODES is None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = next((n["NodeID"] for n in ray.nodes()
                     if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0), None)
        if node is None:
            _CUDA_ON_GPU_NODES = False
        else:
            from pgray.core.device import cuda_available

            probe = ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False))(cuda_available)
            _CUDA_ON_GPU_NODES = bool(ray.get(probe.remote()))
    return _CUDA_ON_GPU_NODES
