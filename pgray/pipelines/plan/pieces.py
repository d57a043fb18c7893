"""What a benchmark or a sweep would run, piece by piece: each training at its full budget and
each evaluation job of the grid, how many trainings run at once and how many actors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pgray.config.passes import FORWARD_PASS_COST
from pgray.pipelines.plan.cluster import Cluster, summarize_resources, worker_gpus
from pgray.pipelines.plan.data import count_images, here_root, plan_targets
from pgray.pipelines.plan.estimate import Piece, training_piece

PLAN_FOLDER = Path("runs/plan")  # stands in for checkpoint folders nothing writes


def _eval_pieces(cfg, target: str, n_test: int, gpus: float, on_gpu: bool) -> list[Piece]:
    from pgray.pipelines.components.jobs import CERTIFY, BenchJob, job_fields, job_grid
    from pgray.pipelines.plan.speed import gpu_precision

    pieces = []
    for kind, eps, attacks, threat in job_grid(cfg):
        job = BenchJob(dataset="", root="", category=target, checkpoint="", checkpoint_sha256="",
                       kind=kind, eps=eps, mask_resize=cfg.mask_resize,
                       batch_size=cfg.batch_size, n_panels=0, n_test=n_test,
                       **job_fields(cfg, kind, attacks, threat))
        precision = gpu_precision(cfg.attack.precision, training=False) if on_gpu else "fp32"
        what = f"{target} {job.setting}"
        if kind == CERTIFY:
            what += f" ({certify_text(job)})"
        pieces.append(Piece("evaluation", what, job.cost, cfg.actors.cpus,
                            gpus, batch=cfg.batch_size, precision=precision))
    return pieces


def certify_text(job) -> str:
    """What a certify job's image-steps are made of, in passes."""
    cfg, work = job.certify_config(), job.certify_work()
    return (f"{cfg.samples:,} samples x {job.n_test:,} images = {work.certify_forwards:,}"
            f" forwards to certify; {work.judge_forwards:,} forwards judging the l2 suite's"
            f" candidates by the smoothed score; {work.attack_image_steps:,} attack steps"
            f" (the suite's steps x {cfg.eot_samples} EOT samples)"
            + (f" + {work.query_forwards:,} queries" if work.query_forwards else "")
            + f", {len(cfg.radii)} radii; a forward counted as {FORWARD_PASS_COST:g}"
            " image-step")


def rank_piece(space, target: str, n_test: int, gpus: float, on_gpu: bool) -> Piece:
    """The rank agreement's test evaluations of a target: N models (max_trials, else every
    trial; the recipe too where trained) x one short-suite job each."""
    from pgray.pipelines.components.specs import benchmark_config, rank_models, short_job
    from pgray.pipelines.plan.speed import gpu_precision

    n, job = rank_models(space), short_job(space, target, n_test)
    bench = benchmark_config(space, [], PLAN_FOLDER, 1, gpus)
    return Piece("evaluation", f"{target} rank agreement: {n} models x {job.setting}"
                 f" (clean + {job.cost / n_test - 1:g} attack steps per image)", n * job.cost,
                 bench.actors.cpus, bench.actors.gpus, batch=bench.batch_size, jobs=n,
                 precision=gpu_precision(bench.attack.precision, training=False)
                 if on_gpu else "fp32")


def benchmark_pieces(cfg, cluster: Cluster) -> tuple[list[Piece], int, int]:
    """A benchmark's pieces, how many trainings run at once, and how many actors."""
    from pgray.config import ExperimentConfig, merge
    from pgray.distributed.actors import pool_size
    from pgray.distributed.tune import derive_max_concurrent
    from pgray.pipelines.components.targets import checkpoint_path

    gpus = worker_gpus(cfg.train_resources, cluster)
    on_gpu = cluster.gpus > 0
    per_trial = summarize_resources(cfg.train_resources, gpus)
    workers = cfg.train_resources.workers_per_trial
    pieces = []
    for entry, category in plan_targets(cfg.entries()):
        key = f"{entry.dataset}/{category}" + ("" if entry.seed is None else f"@seed{entry.seed}")
        n_train, n_test, counted = count_images(entry.dataset, here_root(entry), category,
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


def sweep_pieces(space, cluster: Cluster) -> tuple[list[Piece], int, int]:
    """The pieces of `python -m pgray.sweep --config FILE`: every trial at its full budget (ASHA
    can only shorten them); then per target of the final evaluation the clean twin
    (final_eval.clean_baseline) and the best config again with each other seed (`seeds`);
    the evaluation of the best `top_n`, the twin and the seeds."""
    from pgray.config.search_sections import Target
    from pgray.distributed.actors import pool_size
    from pgray.distributed.tune import derive_max_concurrent
    from pgray.pipelines.components.specs import (
        benchmark_config,
        clean_twin_space,
        recipe_space,
        seeds_space,
    )

    gpus = worker_gpus(space.resources, cluster)
    on_gpu = cluster.gpus > 0
    per_trial = summarize_resources(space.resources, gpus)
    workers = space.resources.workers_per_trial
    fe, wanted = space.final_eval, space.final_eval.categories
    pieces, targets = [], []
    for entry, category in plan_targets(space.target_entries()):
        target = Target(entry.dataset, here_root(entry), category,
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
