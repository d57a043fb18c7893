"""`--plan`: what a benchmark or a sweep would run, what each piece asks of the cluster, how
many run at once, and an estimate of device-hours and wall time, without running anything.

Costs are counted in image-steps (one forward and one backward pass to the input of one
image, weights frozen): a PGD step is one. A training step's passes per normal image come from
`pgray.config.passes.step_passes` (24 at PGD-10: 2 x 10 attack passes, 4 update passes; 6 at
N-FGSM); an update pass also computes the weights' gradient and costs 1.5 image-steps, a
forward-only pass 0.5, so a PGD-10 training step costs 26 image-steps per normal image. A
training also runs the held-out proxy at its proxy epochs (`proxy_image_steps`). A sweep's
plan adds the final evaluation's clean twins (final_eval.clean_baseline) and the best
configs trained again with the other seeds (`seeds`), each with its evaluation jobs.

Image-steps become seconds through `pgray.pipelines.plan_speed`: on a GPU, the peak of the
precision that runs x the utilisation at the piece's batch size (measured by gpu_check.sh,
else assumed and labelled so); on the CPU, a rate measured on this machine just before.
The wall time adds the fixed costs of a run (FIXED_COSTS: starting Ray, each training's
process, each job, the report), read off a demo run on a 2-core machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pgray.pipelines.plan_costs import (  # noqa: F401 - the plan's arithmetic, re-exported
    epoch_images,
    gflop_per_image_step,
    held_out,
    proxy_epochs,
    proxy_image_steps,
    proxy_image_steps_per_pair,
    step_image_steps,
    training_image_steps,
)
from pgray.pipelines.plan_data import (  # noqa: F401 - ASSUMED_*: the plan's assumptions
    ASSUMED_TEST,
    ASSUMED_TRAIN,
    count_images,
    entry_root,
    plan_targets,
)
from pgray.pipelines.plan_speed import VITS_GFLOP_PER_IMAGE_STEP  # noqa: F401 (benchmarks use it)

PLAN_FOLDER = Path("runs/plan")  # stands in for checkpoint folders nothing writes


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


@dataclass
class Cluster:
    cpus: float
    gpus: float
    source: str  # "connected Ray cluster", "described (--gpus 8)", "this machine"

    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus}


def describe_cluster(gpus: float | None, cpus: float | None, address: str | None) -> Cluster:
    """--gpus/--cpus describe a cluster; else the one at --address / RAY_ADDRESS; else this
    machine (nothing is started)."""
    if gpus is not None:
        cpus = cpus if cpus is not None else max(16.0 * gpus, 1.0)
        return Cluster(cpus, gpus, f"described (--gpus {gpus:g} --cpus {cpus:g})")
    if address or os.environ.get("RAY_ADDRESS"):
        from pgray.distributed.cluster import cluster_resources, connect

        connect(address)
        have = cluster_resources()
        return Cluster(have.get("CPU", 0.0), have.get("GPU", 0.0), "connected Ray cluster")
    import torch

    return Cluster(float(os.cpu_count() or 1), float(torch.cuda.device_count()), "this machine")


def make_speed(cluster: Cluster, model_cfg, *, gpu: str, gpu_profile: str | None,
               gpu_utilization: float | None):
    """The rates the plan uses: the GPU's (cluster with GPUs), else this machine's CPU's."""
    from pgray.pipelines.plan_speed import CpuSpeed, gpu_speed

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
    precision: str = "fp32"  # the PEAK_TFLOPS column on a GPU (plan_speed.gpu_precision)
    epochs: int = 0  # a training's: each costs FixedCosts.epoch_s beside its image-steps
    checkpoints: int = 0  # a training's: each costs FixedCosts.checkpoint_s
    jobs: int = 1  # an evaluation's: jobs it stands for (each costs FixedCosts.job_s)


def training_piece(what: str, exp_cfg, n_train: int, per_trial: dict[str, float],
                   workers: int, note: str, on_gpu: bool) -> Piece:
    """One training: its steps and its proxies, at the per-worker batch and its precision."""
    from pgray.core.training_data import per_worker_batch
    from pgray.pipelines.plan_speed import gpu_precision

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


def summarize_resources(res, gpus: float) -> dict[str, float]:
    per = res.per_trial()
    return {"CPU": per["CPU"], "GPU": res.workers_per_trial * gpus}


def _eval_pieces(cfg, target: str, n_test: int, gpus: float, on_gpu: bool) -> list[Piece]:
    from pgray.config.base import to_dict
    from pgray.pipelines.benchmark_jobs import CHECK, SUITE, BenchJob, job_grid
    from pgray.pipelines.plan_speed import gpu_precision

    pieces = []
    for kind, eps, attacks, threat in job_grid(cfg):
        job = BenchJob(dataset="", root="", category=target, checkpoint="", checkpoint_sha256="",
                       kind=kind, attacks=tuple(to_dict(a) for a in attacks),
                       suite=to_dict(cfg.suite) if kind in (SUITE, CHECK) else None, eps=eps,
                       mask_resize=cfg.mask_resize, batch_size=cfg.batch_size, n_panels=0,
                       n_test=n_test, threat=threat if kind in (SUITE, CHECK) else "linf")
        precision = gpu_precision(cfg.attack.precision, training=False) if on_gpu else "fp32"
        pieces.append(Piece("evaluation", f"{target} {job.setting}", job.cost, cfg.actors.cpus,
                            gpus, batch=cfg.batch_size, precision=precision))
    return pieces


def rank_piece(space, target: str, n_test: int, gpus: float, on_gpu: bool) -> Piece:
    """The rank agreement's test evaluations of a target: N models (max_trials, else every
    trial; the recipe too where trained) x one short-suite job each."""
    from pgray.pipelines.final_eval import benchmark_config
    from pgray.pipelines.plan_speed import gpu_precision
    from pgray.pipelines.rank_eval import rank_models, short_job

    n, job = rank_models(space), short_job(space, target, n_test)
    bench = benchmark_config(space, [], PLAN_FOLDER, 1, gpus)
    return Piece("evaluation", f"{target} rank agreement: {n} models x {job.setting}"
                 f" (clean + {job.cost / n_test - 1:g} attack steps per image)", n * job.cost,
                 bench.actors.cpus, bench.actors.gpus, batch=bench.batch_size, jobs=n,
                 precision=gpu_precision(bench.attack.precision, training=False)
                 if on_gpu else "fp32")


def _worker_gpus(res, cluster: Cluster) -> float:
    if res.gpus_per_worker is None:
        return 1.0 if cluster.gpus > 0 else 0.0
    return float(res.gpus_per_worker)


def benchmark_plan(cfg, cluster: Cluster, *, gpu: str = "h100", gpu_profile: str | None = None,
                   gpu_utilization: float | None = None) -> str:
    """The plan of `python -m pgray.benchmark --config FILE`."""
    from pgray.config import ExperimentConfig

    pieces, concurrent, actors = benchmark_pieces(cfg, cluster)
    speed = make_speed(cluster, ExperimentConfig.from_dict(cfg.train).model, gpu=gpu,
                       gpu_profile=gpu_profile, gpu_utilization=gpu_utilization)
    return render(f"benchmark {cfg.name}", pieces, cluster, speed, concurrent, actors)


def benchmark_pieces(cfg, cluster: Cluster) -> tuple[list[Piece], int, int]:
    """A benchmark's pieces, how many trainings run at once, and how many actors."""
    import dataclasses

    from pgray.config import ExperimentConfig, merge
    from pgray.distributed.actors import pool_size
    from pgray.distributed.tune import derive_max_concurrent
    from pgray.pipelines.benchmark_jobs import checkpoint_path

    gpus = _worker_gpus(cfg.train_resources, cluster)
    on_gpu = cluster.gpus > 0
    per_trial = summarize_resources(cfg.train_resources, gpus)
    workers = cfg.train_resources.workers_per_trial
    pieces = []
    for entry, category in plan_targets(cfg.entries()):
        key = f"{entry.dataset}/{category}" + ("" if entry.seed is None else f"@seed{entry.seed}")
        n_train, n_test, counted = count_images(entry.dataset, entry_root(entry), category,
                                                dict(entry.options))
        note = "" if counted else f"no data here: {n_train} train / {n_test} test assumed"
        if not checkpoint_path(entry, category).is_file():
            if not cfg.train_missing:
                note = "no checkpoint and train_missing is off: would stop here"
            exp = ExperimentConfig.from_dict(merge(cfg.train, {"data": {
                "dataset": entry.dataset, "category": category}}))
            pieces.append(training_piece(key, exp, n_train, per_trial, workers, note, on_gpu))
        pieces += _eval_pieces(cfg, key, n_test, cfg.actors.gpus, on_gpu)
    n_train = sum(p.kind == "training" for p in pieces)
    res = dataclasses.replace(cfg.train_resources, gpus_per_worker=gpus)
    concurrent = derive_max_concurrent(res, cluster.resources(), max(n_train, 1))
    actors = pool_size(cfg.actors.count, cfg.actors.cpus, cfg.actors.gpus, cluster.resources())
    return pieces, concurrent, actors


def sweep_plan(space, cluster: Cluster, *, gpu: str = "h100", gpu_profile: str | None = None,
               gpu_utilization: float | None = None) -> str:
    """The plan of `python -m pgray.sweep --config FILE` (`sweep_pieces`)."""
    pieces, concurrent, actors = sweep_pieces(space, cluster)
    speed = make_speed(cluster, space.fixed_config().model, gpu=gpu, gpu_profile=gpu_profile,
                       gpu_utilization=gpu_utilization)
    return render(f"sweep {space.name}", pieces, cluster, speed, concurrent, actors)


def sweep_pieces(space, cluster: Cluster) -> tuple[list[Piece], int, int]:
    """The pieces of `python -m pgray.sweep --config FILE`: every trial at its full budget (ASHA
    can only shorten them); then per target of the final evaluation the clean twin
    (final_eval.clean_baseline) and the best config again with each other seed (`seeds`);
    the evaluation of the best `top_n`, the twin and the seeds."""
    import dataclasses

    from pgray.config.search_sections import Target
    from pgray.distributed.actors import pool_size
    from pgray.distributed.tune import derive_max_concurrent
    from pgray.pipelines.final_eval import (
        benchmark_config,
        clean_twin_space,
        recipe_space,
        seeds_space,
    )

    gpus = _worker_gpus(space.resources, cluster)
    on_gpu = cluster.gpus > 0
    per_trial = summarize_resources(space.resources, gpus)
    workers = space.resources.workers_per_trial
    fe, wanted = space.final_eval, space.final_eval.categories
    pieces, targets = [], []
    for entry, category in plan_targets(space.target_entries()):
        target = Target(entry.dataset, entry_root(entry), category,
                        tuple(sorted(dict(entry.options).items())))
        targets.append(target)
        n_train, n_test, counted = count_images(entry.dataset, target.root, category,
                                                dict(entry.options))
        note = "" if counted else f"no data here: {n_train} train / {n_test} test assumed"
        exp = space.trial_config(target, {})
        for i in range(space.budget.trials):
            pieces.append(training_piece(f"{target.key} trial {i + 1}", exp, n_train,
                                         per_trial, workers, note, on_gpu))
        if fe.rank_agreement.enabled:
            pieces.append(rank_piece(space, target.key, n_test, gpus, on_gpu))
        if not fe.enabled or (wanted and target.key not in wanted
                              and category not in wanted):
            continue
        bench = benchmark_config(space, [target], PLAN_FOLDER, 1, gpus)

        def evals(label: str, bench=bench, n_test=n_test, key=target.key) -> list[Piece]:
            return [dataclasses.replace(p, what=f"{label} {p.what}")
                    for p in _eval_pieces(bench, key, n_test, bench.actors.gpus, on_gpu)]

        for rank in range(1, fe.top_n + 1):
            pieces += evals(f"top{rank}")
        if fe.recipe_baseline:
            recipe = recipe_space(space).trial_config(target, {})
            pieces.append(training_piece(f"{target.key} recipe", recipe, n_train, per_trial,
                                         workers, note, on_gpu))
            pieces += evals("recipe")
        if fe.clean_baseline:
            twin = clean_twin_space(space).trial_config(target, {})
            pieces.append(training_piece(f"{target.key} clean twin", twin, n_train, per_trial,
                                         workers, note, on_gpu))
            pieces += evals("clean twin")
        for seed in space.extra_seeds():
            again = seeds_space(space).trial_config(dataclasses.replace(target, seed=seed), {})
            pieces.append(training_piece(f"{target.key} seed {seed}", again, n_train,
                                         per_trial, workers, note, on_gpu))
            pieces += evals(f"seed {seed}")
    res = dataclasses.replace(space.resources, gpus_per_worker=gpus)
    n = sum(p.kind == "training" for p in pieces)
    concurrent = derive_max_concurrent(res, cluster.resources(), max(n, 1))
    bench = benchmark_config(space, targets, PLAN_FOLDER, 1, gpus)
    actors = pool_size(bench.actors.count, bench.actors.cpus, bench.actors.gpus,
                       cluster.resources())
    return pieces, concurrent, actors
