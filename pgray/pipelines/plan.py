"""`--plan`: what a benchmark or a sweep would run, what each piece asks of the cluster, how
many run at once, and an estimate of GPU-hours and wall time, without running anything.

Costs are counted in image-steps (one forward and one backward pass to the input of one
image, weights frozen): a PGD step is one. A training step's passes per normal image come from
`pgray.core.step.step_passes` (24 at PGD-10: 2 x 10 attack passes, 4 update passes); an update
pass also computes the weights' gradient and costs 1.5 image-steps, a forward-only pass 0.5,
so a PGD-10 training step costs 26 image-steps per normal image. They become seconds
through a throughput per device, scaled by the model's FLOPs per image-step (counted here on
the config's model) against the model the throughput was measured on:
- CPU: measured by benchmarks/attack_step.py on one core of a 2-core Xeon (2026-11-29):
  ViT-S/14 at 224, fp32, 3.05 image-steps/s per core;
- GPU: not measured yet (no GPU run so far): arithmetic from 24.3 GFLOP per ViT-S/14
  image-step at `gpu_tflops` (default 989, H100/H200 dense bf16) x `gpu_utilization` (default
  0.4). The plan prints which figures it used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VITS_GFLOP_PER_IMAGE_STEP = 24.3  # FlopCounterMode, forward + input gradient, frozen weights
CPU_IMAGE_STEPS_PER_CORE = 3.05  # ViT-S/14 at 224, fp32, one thread (benchmarks/README.md)
# MVTec AD's 3,629 train and 1,725 test images over 15 categories: the assumption when a
# category's data is not on this machine (the plan says so).
ASSUMED_TRAIN, ASSUMED_TEST = 242, 115
PLAN_FOLDER = Path("runs/plan")  # stands in for checkpoint folders nothing writes


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


@dataclass
class Throughput:
    image_steps_per_s: float  # per GPU, or per CPU core
    device: str
    source: str


def throughput(cluster: Cluster, gflop_per_step: float, gpu_tflops: float,
               gpu_utilization: float) -> Throughput:
    scale = VITS_GFLOP_PER_IMAGE_STEP / max(gflop_per_step, 1e-9)
    if cluster.gpus > 0:
        rate = gpu_tflops * 1e3 * gpu_utilization / max(gflop_per_step, 1e-9)
        return Throughput(rate, "GPU", f"arithmetic, not measured: {gpu_tflops:g} TFLOP/s x"
                          f" {gpu_utilization:g} utilization / {gflop_per_step:.2f} GFLOP per"
                          " image-step")
    return Throughput(CPU_IMAGE_STEPS_PER_CORE * scale, "CPU core",
                      f"measured on one CPU core for ViT-S/14 at 224 ({CPU_IMAGE_STEPS_PER_CORE}"
                      f" image-steps/s), scaled by FLOPs ({gflop_per_step:.2f} GFLOP per"
                      " image-step here)")


def gflop_per_image_step(model_cfg) -> float:
    """FLOPs of one forward + input gradient of the config's model on one image."""
    import dataclasses

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pgray.core.model import PatchGuard

    model = PatchGuard(dataclasses.replace(model_cfg, pretrained=False, weights=None)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 3, model_cfg.img_size, model_cfg.img_size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 1e9


# image-steps of one pass: forward + backward through the weights too; forward alone
UPDATE_PASS_COST, FORWARD_PASS_COST = 1.5, 0.5


def step_image_steps(exp_cfg) -> float:
    """Image-steps of one training step per normal image, from the step's own pass count."""
    from pgray.core.step import step_passes_of

    p = step_passes_of(exp_cfg)
    return p.attack + FORWARD_PASS_COST * p.judge + UPDATE_PASS_COST * p.update


def training_image_steps(exp_cfg, n_train: int) -> float:
    """Image-steps of one whole training (all epochs, held-out images excluded)."""
    kept = n_train * (1 - exp_cfg.train.holdout_fraction)
    if exp_cfg.train.max_steps_per_epoch is not None:
        kept = min(kept, exp_cfg.train.max_steps_per_epoch * exp_cfg.train.batch_size)
    return exp_cfg.train.epochs * kept * step_image_steps(exp_cfg)


@dataclass
class Piece:
    kind: str  # training | evaluation
    what: str
    image_steps: float
    cpus: float
    gpus: float
    note: str = ""


def render(title: str, pieces: list[Piece], cluster: Cluster, rate: Throughput,
           concurrent_trainings: int, concurrent_actors: int) -> str:
    """The plan as text: the pieces, their resources, how many at once, GPU-hours, wall."""
    trainings = [p for p in pieces if p.kind == "training"]
    evals = [p for p in pieces if p.kind == "evaluation"]

    def device_s(p: Piece) -> float:  # seconds of the resource that bounds it
        units = p.gpus if rate.device == "GPU" else max(p.cpus, 1.0)
        return p.image_steps / (rate.image_steps_per_s * max(units, 1e-9))

    lines = [f"# Plan: {title}", "",
             f"cluster: {cluster.source}: {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs",
             f"throughput: {rate.image_steps_per_s:,.1f} image-steps/s per {rate.device}"
             f" ({rate.source})", ""]
    lines += [f"## {len(trainings)} trainings ({concurrent_trainings} at once)", "",
              "| training | image-steps | CPUs | GPUs | hours each | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {p.what} | {p.image_steps:,.0f} | {p.cpus:g} | {p.gpus:g} |"
              f" {device_s(p) / 3600:.2f} | {p.note} |" for p in trainings]
    lines += ["", f"## {len(evals)} evaluation jobs (up to {concurrent_actors} actors at once,"
              " created as checkpoints appear)", "",
              "| job | image-steps | CPUs | GPUs | hours each |", "|---|---|---|---|---|"]
    lines += [f"| {p.what} | {p.image_steps:,.0f} | {p.cpus:g} | {p.gpus:g} |"
              f" {device_s(p) / 3600:.3f} |" for p in evals]
    unit = "GPU" if rate.device == "GPU" else "CPU"
    held = {p.what: device_s(p) * (p.gpus if unit == "GPU" else max(p.cpus, 1.0))
            for p in pieces}
    total_h = sum(held.values()) / 3600
    capacity = cluster.gpus if unit == "GPU" else cluster.cpus
    waves = math.ceil(len(trainings) / max(concurrent_trainings, 1)) if trainings else 0
    longest = max((device_s(p) for p in trainings), default=0.0)
    wall_h = max(total_h / max(capacity, 1e-9), waves * longest / 3600)
    lines += ["", f"## Estimate: {total_h:,.1f} {unit}-hours in all; wall time about"
              f" {wall_h:,.1f} h on {capacity:g} {unit}s (the larger of {unit}-hours / {unit}s"
              f" and {waves} wave(s) of the longest training)"]
    return "\n".join(lines)


def summarize_resources(res, gpus: float) -> dict[str, float]:
    per = res.per_trial()
    return {"CPU": per["CPU"], "GPU": res.workers_per_trial * gpus}


def count_images(dataset: str, root: str, category: str, options: dict[str, Any]
                 ) -> tuple[int, int, bool]:
    """(train, test) image counts of a category, and whether they were read from disk."""
    from pgray.data.registry import get_layout
    from pgray.errors import DatasetError

    layout = get_layout(dataset)
    try:
        return (len(layout.discover(root, category, "train", options)),
                len(layout.discover(root, category, "test", options)), True)
    except DatasetError:
        return ASSUMED_TRAIN, ASSUMED_TEST, False


def _targets(entries) -> list[tuple[Any, str]]:
    """(entry, category) for every category an entry asks for: those under the root, or for
    `all` with nothing there, the layout's known categories (their sizes are then assumed)."""
    from pgray.data.registry import get_layout
    from pgray.errors import DatasetError

    out = []
    for entry in entries:
        layout = get_layout(entry.dataset)
        try:
            cats = layout.select_categories(_root(entry), entry.categories)
            out += [(entry, c) for c in cats]
        except DatasetError:
            cats = list(layout.categories) if entry.categories == "all" else list(entry.categories)
            out += [(entry, c) for c in cats]
    return out


def _root(entry) -> str:
    from pgray.config import DataConfig
    from pgray.data.dataset import resolve_root
    from pgray.errors import DatasetError

    try:
        return str(resolve_root(DataConfig(dataset=entry.dataset, root=entry.root,
                                           options=dict(entry.options))))
    except DatasetError:
        return entry.root


def _eval_pieces(cfg, target: str, n_test: int, gpus: float) -> list[Piece]:
    from pgray.config.base import to_dict
    from pgray.pipelines.benchmark_jobs import CHECK, SUITE, BenchJob, job_grid

    pieces = []
    for kind, eps, attacks, threat in job_grid(cfg):
        job = BenchJob(dataset="", root="", category=target, checkpoint="", checkpoint_sha256="",
                       kind=kind, attacks=tuple(to_dict(a) for a in attacks),
                       suite=to_dict(cfg.suite) if kind in (SUITE, CHECK) else None, eps=eps,
                       mask_resize=cfg.mask_resize, batch_size=cfg.batch_size, n_panels=0,
                       n_test=n_test, threat=threat if kind == SUITE else "linf")
        pieces.append(Piece("evaluation", f"{target} {job.setting}", job.cost, cfg.actors.cpus,
                            gpus))
    return pieces


def _worker_gpus(res, cluster: Cluster) -> float:
    if res.gpus_per_worker is None:
        return 1.0 if cluster.gpus > 0 else 0.0
    return float(res.gpus_per_worker)


def benchmark_plan(cfg, cluster: Cluster, *, gpu_tflops: float = 989.0,
                   gpu_utilization: float = 0.4) -> str:
    """The plan of `python -m pgray.benchmark --config FILE`."""
    import dataclasses

    from pgray.config import ExperimentConfig, merge
    from pgray.distributed.actors import pool_size
    from pgray.distributed.tune import derive_max_concurrent
    from pgray.pipelines.benchmark_jobs import checkpoint_path

    base = ExperimentConfig.from_dict(cfg.train)
    gpus = _worker_gpus(cfg.train_resources, cluster)
    per_trial = summarize_resources(cfg.train_resources, gpus)
    pieces = []
    for entry, category in _targets(cfg.entries()):
        key = f"{entry.dataset}/{category}" + ("" if entry.seed is None else f"@seed{entry.seed}")
        n_train, n_test, counted = count_images(entry.dataset, _root(entry), category,
                                                dict(entry.options))
        note = "" if counted else f"no data here: {n_train} train / {n_test} test assumed"
        if not checkpoint_path(entry, category).is_file():
            if not cfg.train_missing:
                note = "no checkpoint and train_missing is off: would stop here"
            exp = ExperimentConfig.from_dict(merge(cfg.train, {"data": {
                "dataset": entry.dataset, "category": category}}))
            pieces.append(Piece("training", key, training_image_steps(exp, n_train),
                                per_trial["CPU"], per_trial["GPU"], note))
        pieces += _eval_pieces(cfg, key, n_test, cfg.actors.gpus)
    n_train = sum(p.kind == "training" for p in pieces)
    res = dataclasses.replace(cfg.train_resources, gpus_per_worker=gpus)
    concurrent = derive_max_concurrent(res, cluster.resources(), max(n_train, 1))
    actors = pool_size(cfg.actors.count, cfg.actors.cpus, cfg.actors.gpus, cluster.resources())
    rate = throughput(cluster, gflop_per_image_step(base.model), gpu_tflops, gpu_utilization)
    return render(f"benchmark {cfg.name}", pieces, cluster, rate, concurrent, actors)


def sweep_plan(space, cluster: Cluster, *, gpu_tflops: float = 989.0,
               gpu_utilization: float = 0.4) -> str:
    """The plan of `python -m pgray.sweep --config FILE`: every trial at its full budget (ASHA
    can only shorten them), then the final evaluation of the best `top_n` per target."""
    import dataclasses

    from pgray.config.search_sections import Target
    from pgray.distributed.actors import pool_size
    from pgray.distributed.tune import derive_max_concurrent
    from pgray.pipelines.final_eval import benchmark_config

    gpus = _worker_gpus(space.resources, cluster)
    per_trial = summarize_resources(space.resources, gpus)
    pieces, targets = [], []
    for entry, category in _targets(space.target_entries()):
        target = Target(entry.dataset, _root(entry), category,
                        tuple(sorted(dict(entry.options).items())))
        targets.append(target)
        n_train, n_test, counted = count_images(entry.dataset, target.root, category,
                                                dict(entry.options))
        note = "" if counted else f"no data here: {n_train} train / {n_test} test assumed"
        exp = space.trial_config(target, {})
        for i in range(space.budget.trials):
            pieces.append(Piece("training", f"{target.key} trial {i + 1}",
                                training_image_steps(exp, n_train), per_trial["CPU"],
                                per_trial["GPU"], note))
        if space.final_eval.enabled:
            bench = benchmark_config(space, [target], PLAN_FOLDER, 1, gpus)
            for rank in range(1, space.final_eval.top_n + 1):
                pieces += [dataclasses.replace(p, what=f"top{rank} {p.what}")
                           for p in _eval_pieces(bench, target.key, n_test, bench.actors.gpus)]
    res = dataclasses.replace(space.resources, gpus_per_worker=gpus)
    n = sum(p.kind == "training" for p in pieces)
    concurrent = derive_max_concurrent(res, cluster.resources(), max(n, 1))
    bench = benchmark_config(space, targets, PLAN_FOLDER, 1, gpus)
    actors = pool_size(bench.actors.count, bench.actors.cpus, bench.actors.gpus,
                       cluster.resources())
    rate = throughput(cluster, gflop_per_image_step(space.fixed_config().model), gpu_tflops,
                      gpu_utilization)
    return render(f"sweep {space.name}", pieces, cluster, rate, concurrent, actors)
