"""The sweep's final evaluation: the best trial(s) of each target benchmarked as soon as the
target's last trial ends, and the best configs trained again (without attacks: the clean twin;
with the other seeds) and the fixed config (the recipe baseline), evaluated beside them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.pipelines.sweep import SweepRequest, say_progress
from pgray.pipelines.train_eval import CHECKPOINT_FILE
from pgray.pipelines.trials import TrialSummary, select_best, summary_of_trial
from pgray.tracking.sweep_report import attack_text


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


def retrain_space(space: SearchSpace, suffix: str, train: dict[str, Any]) -> SearchSpace:
    """The sweep's fixed settings (with `train` on top), nothing searched, one trial per
    target and no early stopping; each target's best parameters come per target."""
    from pgray.config.base import to_dict
    from pgray.config.search_space import space_from_dict

    data = to_dict(space)
    fixed_train = data["fixed"].setdefault("train", {})
    # the proxy epochs of the trials (a sweep with ASHA fixes them when unset)
    fixed_train.setdefault("proxy_every", space.fixed_config().train.proxy_every)
    fixed_train.update(train)
    return space_from_dict(data | {
        "name": f"{space.name}-{suffix}", "search": {}, "start_points": [], "seeds": [],
        "budget": data["budget"] | {"trials": 1}, "scheduler": {"type": "none"},
        "objectives": [{"metric": "loss", "mode": "min"}], "final_eval": {"enabled": False}})



class FinalStage:
    """The sweep's final evaluation, fed target by target: once a target's last trial has
    ended, its best trial(s) are fetched and their evaluation jobs join the pool, while other
    targets still train. One benchmark run (folder, MLflow run, table) per rank: top1,
    top2, ... ."""

    def __init__(self, req: SweepRequest, space: SearchSpace, targets: dict[str, Target],
                 out: Path, uri: str, parent_id: str, evaluations) -> None:
        self.req, self.space, self.out, self.uri, self.parent_id = req, space, out, uri, parent_id
        wanted = space.final_eval.categories
        self.targets = {k: t for k, t in targets.items()
                        if not wanted or k in wanted or t.category in wanted}
        self.evaluations = evaluations
        self.runs: dict[int, Any] = {}
        self.proxies: dict[int, dict[str, dict[str, Any]]] = {}
        self.handled: set[str] = set()
        self.best: dict[str, TrialSummary] = {}

    def _run(self, rank: int):
        from pgray.pipelines.benchmark import BenchmarkRun

        if rank not in self.runs:
            folder = self.out / "best" / f"top{rank}"
            cfg = benchmark_config(self.space, list(self.targets.values()), folder, rank)
            say_progress(self.req, f"final evaluation {cfg.name}: {attack_text(self.space)}")
            self.runs[rank] = BenchmarkRun(cfg, self.out / "final" / f"top{rank}",
                                           mlflow_uri=self.uri, parent_run_id=self.parent_id,
                                           force=False, progress=self.req.progress)
            self.proxies[rank] = {}
        return self.runs[rank]

    def target_done(self, key: str, ranked: list[TrialSummary]) -> None:
        from pgray.pipelines.benchmark_jobs import checkpoint_path
        from pgray.pipelines.train_eval import fetch_trial_checkpoint, read_proxy

        if key in self.handled or key not in self.targets:
            return
        self.handled.add(key)
        if ranked:
            self.best[key] = ranked[0]
        target = self.targets[key]
        for rank, trial in enumerate(ranked[: self.space.final_eval.top_n], start=1):
            run = self._run(rank)
            entry = self._entry(run, target, self.trial_seed if run.cfg.seeds else None)
            dest = fetch_trial_checkpoint(trial.checkpoint,
                                          checkpoint_path(entry, target.category))
            self.proxies[rank][key] = read_proxy(dest.parent) | {"seed": entry.seed}
            self.evaluations.add(run.jobs_of(entry, target.category), run.on_result)

    @property
    def trial_seed(self) -> int:
        return self.space.fixed_config().train.seed

    @staticmethod
    def _entry(run, target: Target, seed: int | None = None):
        """The benchmark entry of `target` (of that training seed)."""
        return next(e for e in run.cfg.entries() if e.dataset == target.dataset
                    and e.categories == [target.category] and e.patchguard and e.seed == seed)

    def other_seeds(self, ctx, storage: str) -> None:
        """Train each target's best config again with every other seed, all at once as one
        Tune experiment (`<sweep>-seeds`), and queue each one's evaluation beside the best
        trial's (the top1 benchmark: its tables show the mean across seeds)."""
        import dataclasses

        from pgray.distributed.tune import SweepContext
        from pgray.distributed.tune_console import tune_verbosity
        from pgray.pipelines.benchmark_jobs import checkpoint_path
        from pgray.pipelines.train_eval import train_each_target

        if not self.best:
            return
        run = self._run(1)
        seeded = {t.key: t for key in self.best for s in self.space.extra_seeds()
                  for t in [dataclasses.replace(self.targets[key], seed=s)]}
        params = {k: self.best[dataclasses.replace(t, seed=None).key].params
                  for k, t in seeded.items()}
        space = seeds_space(self.space)
        retrain = SweepContext(space=space, targets=seeded, mlflow_uri=self.uri,
                               parent_run_id=self.parent_id,
                               train_storage=f"{storage.rstrip('/')}/{space.name}-runs",
                               resources=ctx.resources, target_params=params)

        def entry(key: str):
            return self._entry(run, seeded[key], seeded[key].seed)

        def queue(key: str) -> None:
            self.evaluations.add(run.jobs_of(entry(key), seeded[key].category), run.on_result)

        say_progress(self.req, f"the best configs again with seeds {self.space.extra_seeds()}:"
                       f" {', '.join(sorted(seeded))}")
        train_each_target(retrain, storage, resume=self.req.resume,
                          verbose=tune_verbosity(self.req.progress, self.req.verbose),
                          console=self.req.progress and not self.req.verbose,
                          dest=lambda key: checkpoint_path(entry(key), seeded[key].category),
                          on_ready=queue, evaluations=self.evaluations)

    def on_trial(self, trial, trials) -> None:
        """Tune callback: is this trial the last of its target?"""
        from pgray.distributed.tune_targets import TARGET_KEY

        key = trial.config.get(TARGET_KEY)
        mine = [t for t in trials if t.config.get(TARGET_KEY) == key]
        if len(mine) < self.space.budget.trials or any(
                t.status not in ("TERMINATED", "ERROR") for t in mine):
            return
        best = select_best([summary_of_trial(t, self.space) for t in mine], self.space)
        self.target_done(key, best.get(key, []))

    def clean_twins(self, ctx, storage: str) -> None:
        """Train each target's best config again without the adversarial terms, all at once
        as one Tune experiment (`<sweep>-clean`, the trials' resources), and queue each twin's
        evaluation beside its best trial's the moment it lands."""
        from pgray.detectors.registry import CLEAN_TWIN

        self._baselines(ctx, storage, clean_twin_space(self.space), CLEAN_TWIN, "clean",
                        {k: clean_twin_params(t.params) for k, t in self.best.items()},
                        "clean-trained twins of the best trials")

    def recipe_baselines(self, ctx, storage: str,
                         on_ready: Callable[[str, Path], None] | None = None) -> None:
        """Train each target's fixed config (the recipe: nothing searched) for the trials'
        epochs, as one Tune experiment (`<sweep>-recipe`), and queue its evaluation beside
        the best trial's; `on_ready(target, checkpoint)` hears of each (the rank stage)."""
        from pgray.detectors.registry import RECIPE

        self._baselines(ctx, storage, recipe_space(self.space), RECIPE, "recipe",
                        {k: {} for k in self.best}, "the recipe (fixed config, nothing"
                        " searched) beside the best trials", on_ready)

    def _baselines(self, ctx, storage: str, space: SearchSpace, detector: str, folder_name: str,
                   params: dict[str, dict[str, Any]], what: str,
                   on_ready: Callable[[str, Path], None] | None = None) -> None:
        """One training of `space` per target with a best trial, each evaluated as
        `detector` in the top1 benchmark the moment it lands."""
        from pgray.config.benchmark import DetectorEntry
        from pgray.distributed.tune import SweepContext
        from pgray.distributed.tune_console import tune_verbosity
        from pgray.pipelines.train_eval import train_each_target

        if not self.best:
            return
        retrain = SweepContext(space=space, targets={k: ctx.targets[k] for k in self.best},
                               mlflow_uri=self.uri, parent_run_id=self.parent_id,
                               train_storage=f"{storage.rstrip('/')}/{space.name}-runs",
                               resources=ctx.resources, target_params=params)
        run = self._run(1)

        def checkpoint(key: str) -> Path:
            target = self.targets[key]
            return (self.out / "best" / folder_name / target.dataset / target.category
                    / CHECKPOINT_FILE)

        def queue(key: str) -> None:
            target = self.targets[key]
            entry = next(e for e in run.cfg.entries()
                         if e.dataset == target.dataset and e.categories == [target.category])
            baseline = DetectorEntry(name=detector, checkpoint=str(checkpoint(key)))
            self.evaluations.add(run.jobs_of(entry, target.category, baseline), run.on_result)
            if on_ready is not None:
                on_ready(key, checkpoint(key))

        say_progress(self.req, f"{what}: {', '.join(sorted(self.best))}")
        train_each_target(retrain, storage, resume=self.req.resume,
                          verbose=tune_verbosity(self.req.progress, self.req.verbose),
                          console=self.req.progress and not self.req.verbose,
                          dest=checkpoint, on_ready=queue, evaluations=self.evaluations)

    def finish(self) -> list:
        self.evaluations.finish()
        results = []
        for rank in sorted(self.runs):  # marked incomplete where jobs failed; raised below
            result = self.runs[rank].finalize(self.evaluations.failures)
            result.proxies = self.proxies[rank]
            results.append(result)
        self.evaluations.check_failures()
        return results


def benchmark_config(space: SearchSpace, targets: list[Target], folder: Path, rank: int,
                     worker_gpus: float = 0.0):
    """The benchmark of rank `rank` (top1, top2...) of the final evaluation; actors ask for
    `final_eval.gpus_per_actor`, else the trials' (resolved) GPUs per worker."""
    import dataclasses

    from pgray.config.benchmark import ActorConfig, BenchmarkConfig, DatasetEntry

    fe, fixed = space.final_eval, space.fixed_config()
    template = str(folder / "{dataset}" / "{category}" / "checkpoint.pt")
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
        mask_resize=fixed.data.mask_resize, batch_size=fe.batch_size, n_panels=fe.n_panels,
        # at most one actor per target; the pool holds fewer when the cluster does
        actors=ActorConfig(count=fe.actors or max(1, len(targets)), cpus=fe.cpus_per_actor,
                           gpus=gpus, threads=max(1, int(fe.cpus_per_actor))),
        seeds=seeds,
    )
