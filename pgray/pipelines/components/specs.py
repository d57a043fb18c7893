"""The spaces and benchmarks a run derives from its config: a space that searches nothing (one
fixed training per target: a benchmark's missing checkpoints, a sweep's clean twins, recipe
baselines and best configs again with other seeds), the final evaluation's benchmark of each
rank, and the rank agreement's short suite."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

from pgray.config.benchmark import BenchmarkConfig, DatasetEntry
from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.core.checkpoint import CHECKPOINT_FILE
from pgray.pipelines.components.jobs import SHORT, BenchJob
from pgray.pipelines.components.targets import entry_root

# What makes a space search nothing: no searched keys or start points, one trial per target,
# no early stopping, no objective worth a name and no final evaluation of its own.
NOTHING_SEARCHED = {"search": {}, "start_points": [], "seeds": [], "scheduler": {"type": "none"},
                    "objectives": [{"metric": "loss", "mode": "min"}],
                    "final_eval": {"enabled": False}}


def unsearched_space(data: dict[str, Any]) -> SearchSpace:
    """`data` (a search space's dict) as a space that searches nothing: one fixed training per
    target."""
    from pgray.config.search_space import space_from_dict

    return space_from_dict(data | NOTHING_SEARCHED
                           | {"budget": dict(data.get("budget") or {}) | {"trials": 1}})


def training_space(cfg: BenchmarkConfig, missing: list[tuple[DatasetEntry, str]]) -> SearchSpace:
    """The benchmark's trainings: one per missing category (and seed), the fixed config
    `cfg.train`."""
    from pgray.config.base import to_dict
    from pgray.config.search_sections import DatasetTargets, Resources

    by_entry: dict[int, list[str]] = defaultdict(list)
    order = []
    for entry, category in missing:
        if id(entry) not in by_entry:
            order.append(entry)
        by_entry[id(entry)].append(category)
    datasets = [DatasetTargets(dataset=e.dataset, root=entry_root(e), categories=by_entry[id(e)],
                               options=dict(e.options), seed=e.seed) for e in order]
    return unsearched_space({
        "name": f"{cfg.name}-train", "fixed": cfg.train, "datasets": to_dict(datasets),
        "resources": to_dict(cfg.train_resources or Resources())})


def retrain_space(space: SearchSpace, suffix: str, train: dict[str, Any]) -> SearchSpace:
    """The sweep's fixed settings (with `train` on top), once per target; each target's best
    parameters come per target."""
    from pgray.config.base import to_dict

    data = to_dict(space)
    fixed_train = data["fixed"].setdefault("train", {})
    # the proxy epochs of the trials (a sweep with ASHA fixes them when unset)
    fixed_train.setdefault("proxy_every", space.fixed_config().train.proxy_every)
    fixed_train.update(train)
    return unsearched_space(data | {"name": f"{space.name}-{suffix}"})


def clean_twin_space(space: SearchSpace) -> SearchSpace:
    """The sweep's fixed settings with the adversarial terms off, once per target; its proxy
    runs at the last epoch only: nothing is selected or stopped on it, and on small trials
    the attacked proxy costs as much as the clean epochs."""
    return retrain_space(space, "clean", {"adversarial": False,
                                          "proxy_every": space.epochs()})


def clean_twin_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters for its clean twin: those of the adversarial terms dropped."""
    from pgray.config.experiment import ADVERSARIAL_ONLY_KEYS

    return {k: v for k, v in params.items() if k not in ADVERSARIAL_ONLY_KEYS}


def recipe_space(space: SearchSpace) -> SearchSpace:
    """The sweep's fixed settings as they are (the paper recipe the space fixes), once per
    target, for the trials' epochs: the point the searched front must beat."""
    return retrain_space(space, "recipe", {})


def seeds_space(space: SearchSpace) -> SearchSpace:
    """The sweep's fixed settings, once per (target, other seed): the best configs again."""
    return retrain_space(space, "seeds", {})


def benchmark_config(space: SearchSpace, targets: list[Target], folder: Path, rank: int,
                     worker_gpus: float = 0.0) -> BenchmarkConfig:
    """The benchmark of rank `rank` (top1, top2...) of the final evaluation; actors ask for
    `final_eval.gpus_per_actor`, else the trials' (resolved) GPUs per worker."""
    from pgray.config.benchmark import ActorConfig

    fe, fixed = space.final_eval, space.fixed_config()
    template = str(folder / "{dataset}" / "{category}" / CHECKPOINT_FILE)
    entries = [DatasetEntry(dataset=t.dataset, root=t.root, categories=[t.category],
                            checkpoint=template, options=dict(t.options)) for t in targets]
    gpus = fe.gpus_per_actor if fe.gpus_per_actor is not None else worker_gpus
    trained = fixed.train.seed  # the trials' seed, then the others (top1 only)
    seeds = [trained, *space.extra_seeds()] if space.seeds and rank == 1 else []
    return BenchmarkConfig(
        name=f"{space.name}-final" + ("" if rank == 1 else f"-top{rank}"), datasets=entries,
        attack=dataclasses.replace(fixed.eval.attack, steps=fe.steps, restarts=fe.restarts),
        eps=list(fe.eps), steps=[fe.steps], restarts=[fe.restarts], suite=fe.suite,
        threats=list(fixed.eval.threats),  # the experiment's `eval.threats`, if any
        certify=fixed.eval.certify,  # and its `eval.certify`
        mask_resize=fixed.data.mask_resize, batch_size=fe.batch_size, n_panels=fe.n_panels,
        # at most one actor per target; the pool holds fewer when the cluster does
        actors=ActorConfig(count=fe.actors or max(1, len(targets)), cpus=fe.cpus_per_actor,
                           gpus=gpus, threads=max(1, int(fe.cpus_per_actor))),
        seeds=seeds,
    )


def short_members(space: SearchSpace) -> list:
    """The proxy's two attacks (the protocol's mask attack, the suite's det_topk detection
    attack) at the rank-agreement steps and eps: the same suite for every trial, whatever
    training attack it searched."""
    from pgray.core.proxy import proxy_members

    fixed, fe = space.fixed_config(), space.final_eval
    attack = dataclasses.replace(fixed.eval.attack, eps=fe.rank_eps)
    train = dataclasses.replace(fixed.train, attack=attack,
                                proxy_steps=fe.rank_agreement.steps)
    return proxy_members(dataclasses.replace(fixed, train=train), fixed.eval.attack.precision)


def short_grid(space: SearchSpace) -> tuple[list, tuple[tuple[str, str], ...]]:
    """The job of one model (its clean scores and the short suite) and the suite's (name,
    aims_at) per attack."""
    members = short_members(space)
    grid = [(SHORT, space.final_eval.rank_eps, [m.cfg for m in members], "linf")]
    return grid, tuple((m.name, m.aims_at) for m in members)


def short_job(space: SearchSpace, category: str, n_test: int) -> BenchJob:
    """One model's job on a test split of `n_test` images, as the plan prices it."""
    from pgray.config.base import to_dict

    (kind, eps, attacks, threat), = (grid := short_grid(space))[0]
    fe = space.final_eval
    return BenchJob(dataset="", root="", category=category, checkpoint="",
                    checkpoint_sha256="", kind=kind, attacks=tuple(to_dict(a) for a in attacks),
                    suite=None, eps=eps, mask_resize=space.fixed_config().data.mask_resize,
                    batch_size=fe.batch_size, n_panels=0, n_test=n_test, threat=threat,
                    members=grid[1])


def rank_models(space: SearchSpace) -> int:
    """Models per target the rank stage evaluates at most: the trials (max_trials of them
    where capped) and the recipe baseline where one is trained."""
    fe = space.final_eval
    cap = fe.rank_agreement.max_trials or space.budget.trials
    return min(space.budget.trials, cap) + int(fe.recipe_baseline and fe.enabled)
