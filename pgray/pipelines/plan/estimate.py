"""The plan's pieces (a training, an evaluation job), the rates they run at, and the estimate
of device-hours and wall time, rendered as text."""

from __future__ import annotations

from dataclasses import dataclass

from pgray.pipelines.plan.cluster import Cluster
from pgray.pipelines.plan.costs import (
    gflop_per_image_step,
    proxy_epochs,
    proxy_image_steps,
    training_image_steps,
)


@dataclass(frozen=True)
class FixedCosts:
    """Seconds that do not scale with image-steps, read off the log of
    `python -m pgray.benchmark --config benchmarks/demo.yaml` on a 2-core machine
    (benchmarks/README.md, "Plan check"): assumed, not measured per plan."""

    start_s: float = 20.0  # imports, the local Ray instance, MLflow's tables, Tune's set-up
    training_s: float = 10.0  # one training's process, model and data
    # one epoch's report to Tune, and one checkpoint (every epoch on a CPU, every 10th on
    # CUDA: core.fit): together 0.7 s per epoch on the CPU. A ViT-S checkpoint (hundreds of MB,
    # fsync'd) likely costs more than the demo's tiny one.
    epoch_s: float = 0.2
    checkpoint_s: float = 0.5
    job_s: float = 2.0  # one evaluation job's model load, data, metrics, panels, MLflow
    finish_s: float = 5.0  # tables, plots, the report, Ray's shutdown


FIXED_COSTS = FixedCosts()


def make_speed(cluster: Cluster, model_cfg, *, gpu: str, gpu_profile: str | None,
               gpu_utilization: float | None):
    """The rates the plan uses: the GPU's (cluster with GPUs), else this machine's CPU's."""
    from pgray.pipelines.plan.speed import CpuSpeed, gpu_speed

    if cluster.gpus > 0:
        return gpu_speed(gflop_per_image_step(model_cfg), gpu, gpu_profile, gpu_utilization)
    return CpuSpeed(model_cfg)


@dataclass
class Piece:
    kind: str  # training | evaluation
    what: str
    image_steps: float
    cpus: float
    gpus: float
    note: str = ""
    batch: int = 16  # images per forward: the utilisation depends on it
    precision: str = "fp32"  # the PEAK_TFLOPS column on a GPU (plan.speed.gpu_precision)
    epochs: int = 0  # a training's: each costs FixedCosts.epoch_s beside its image-steps
    checkpoints: int = 0  # a training's: each costs FixedCosts.checkpoint_s
    jobs: int = 1  # an evaluation's: jobs it stands for (each costs FixedCosts.job_s)


def training_piece(what: str, exp_cfg, n_train: int, per_trial: dict[str, float],
                   workers: int, note: str, on_gpu: bool) -> Piece:
    """One training: its steps and its proxies, at the per-worker batch and its precision."""
    from pgray.core.training_data import per_worker_batch
    from pgray.pipelines.plan.speed import gpu_precision

    proxies = proxy_image_steps(exp_cfg, n_train)
    said = f"{proxy_epochs(exp_cfg, n_train)} proxies ({proxies:,.0f} image-steps)"
    precision = gpu_precision(exp_cfg.train.precision, training=True) if on_gpu else "fp32"
    epochs = exp_cfg.train.epochs
    # core.fit: train.checkpoint_every, else every epoch on a CPU and every 10th on CUDA;
    # the last epoch always
    every = exp_cfg.train.checkpoint_every or (10 if on_gpu else 1)
    checkpoints = sum((e + 1) % every == 0 or e + 1 == epochs for e in range(epochs))
    return Piece("training", what, training_image_steps(exp_cfg, n_train) + proxies,
                 per_trial["CPU"], per_trial["GPU"], "; ".join(n for n in (said, note) if n),
                 per_worker_batch(exp_cfg.train.batch_size, workers), precision, epochs,
                 checkpoints)


@dataclass
class Estimate:
    """Device-hours and wall time of a plan's pieces."""

    device_h: float
    wall_s: float
    overlapped_s: float  # if every evaluation ran beside the trainings


def device_seconds(p: Piece, speed) -> float:
    """Seconds of the resource that bounds the piece (its GPUs, else its CPU threads)."""
    units = p.gpus if speed.device == "GPU" else max(p.cpus, 1.0)
    return p.image_steps / (speed.rate(p.batch, p.precision) * max(units, 1e-9))


def estimate(pieces: list[Piece], cluster: Cluster, speed, concurrent_trainings: int,
             concurrent_actors: int, fixed: FixedCosts = FIXED_COSTS) -> Estimate:
    """Trainings in waves of `concurrent_trainings` (each wave as long as its longest), then
    the evaluation jobs spread over the actors; plus the fixed costs. `overlapped_s` is the
    floor where the evaluations run entirely beside the trainings."""
    trainings = sorted((p for p in pieces if p.kind == "training"),
                       key=lambda p: -device_seconds(p, speed))
    evals = [p for p in pieces if p.kind == "evaluation"]
    gpu = speed.device == "GPU"
    held = sum(device_seconds(p, speed) * (p.gpus if gpu else max(p.cpus, 1.0))
               for p in pieces)
    at_once = max(concurrent_trainings, 1)
    train_s = sum(device_seconds(p, speed) + fixed.training_s + fixed.epoch_s * p.epochs
                  + fixed.checkpoint_s * p.checkpoints
                  for p in trainings[::at_once])  # the longest of each wave
    eval_s = (sum(device_seconds(p, speed) for p in evals)
              + fixed.job_s * sum(p.jobs for p in evals)) / max(
        concurrent_actors, 1)
    capacity = cluster.gpus if gpu else cluster.cpus
    ends = fixed.start_s + fixed.finish_s
    return Estimate(held / 3600, ends + train_s + eval_s,
                    ends + max(train_s, eval_s, held / max(capacity, 1e-9)))


def render(title: str, pieces: list[Piece], cluster: Cluster, speed,
           concurrent_trainings: int, concurrent_actors: int) -> str:
    """The plan as text: the rates used, the pieces, their resources, how many at once,
    device-hours and wall time."""
    trainings = [p for p in pieces if p.kind == "training"]
    evals = [p for p in pieces if p.kind == "evaluation"]
    unit = "GPU" if speed.device == "GPU" else "CPU"
    lines = [f"# Plan: {title}", "",
             f"cluster: {cluster.source}: {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs", "",
             "throughput:"]
    lines += [f"- {speed.describe(b, prec)}"
              for b, prec in sorted({(p.batch, p.precision) for p in pieces})]
    lines += ["", f"## {len(trainings)} trainings ({concurrent_trainings} at once)", "",
              "| training | image-steps | batch | precision | CPUs | GPUs | hours each | note |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p.what} | {p.image_steps:,.0f} | {p.batch} | {p.precision} | {p.cpus:g} |"
              f" {p.gpus:g} | {device_seconds(p, speed) / 3600:.3f} | {p.note} |"
              for p in trainings]
    lines += ["", f"## {len(evals)} evaluation jobs (up to {concurrent_actors} actors at once,"
              " created as checkpoints appear)", "",
              "| job | image-steps | batch | precision | CPUs | GPUs | hours each |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {p.what} | {p.image_steps:,.0f} | {p.batch} | {p.precision} | {p.cpus:g} |"
              f" {p.gpus:g} | {device_seconds(p, speed) / 3600:.4f} |" for p in evals]
    est = estimate(pieces, cluster, speed, concurrent_trainings, concurrent_actors)
    f = FIXED_COSTS
    capacity = cluster.gpus if unit == "GPU" else cluster.cpus
    lines += ["", f"## Estimate: {est.device_h:,.2f} {unit}-hours in all; wall time about"
              f" {_duration(est.wall_s)} on {capacity:g} {unit}s",
              "", f"(trainings in waves of {concurrent_trainings}, then the evaluation jobs on"
              f" {concurrent_actors} actors; {_duration(est.overlapped_s)} if the evaluations"
              " ran entirely beside the trainings. Fixed costs included, assumed, not measured:"
              f" {f.start_s:g} s to start, {f.training_s:g} s per training, {f.epoch_s:g} s per"
              f" epoch, {f.checkpoint_s:g} s per checkpoint, {f.job_s:g} s per job,"
              f" {f.finish_s:g} s to finish)"]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 600:
        return f"{seconds:,.0f} s"
    return f"{seconds / 3600:,.2f} h"
