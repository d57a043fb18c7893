"""The sweep's final evaluation: the best trial(s) of each target benchmarked as soon as the
target's last trial ends, and the best configs trained again (without attacks: the clean twin;
with the other seeds) and the fixed config (the recipe baseline), evaluated beside them. Each
rank's benchmark has its own results side and one `enqueue`; every producer here hands it
targets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.config.benchmark import BenchmarkConfig, DatasetEntry, DetectorEntry
from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.core.checkpoint import CHECKPOINT_FILE
from pgray.distributed.sweep_context import SweepContext
from pgray.pipelines.components.checkpoint_files import fetch_trial_checkpoint, read_proxy
from pgray.pipelines.components.selection import select_best
from pgray.pipelines.components.specs import (
    benchmark_config,
    clean_twin_params,
    clean_twin_space,
    recipe_space,
    seeds_space,
)
from pgray.pipelines.components.sweep_request import SweepRequest, say_progress
from pgray.pipelines.components.targets import JobTarget, checkpoint_path
from pgray.pipelines.runners.evaluations import Evaluations
from pgray.pipelines.runners.queue import JobQueue
from pgray.pipelines.runners.trainings import train_each_target
from pgray.tracking.benchmark_run import BenchmarkRun
from pgray.tracking.records import BenchmarkResult
from pgray.tracking.sweep_report import attack_text
from pgray.tracking.trials import TrialSummary


@dataclass
class RankBenchmark:
    """One rank's benchmark (top1, top2, ...): its config, results side and queue."""

    cfg: BenchmarkConfig
    run: BenchmarkRun
    queue: JobQueue
    proxies: dict[str, dict[str, Any]]  # target key -> the evaluated epoch's proxy metrics

    def entry(self, target: Target, seed: int | None = None) -> DatasetEntry:
        """The benchmark entry of `target` (of that training seed)."""
        return next(e for e in self.cfg.entries() if e.dataset == target.dataset
                    and e.categories == [target.category] and e.patchguard and e.seed == seed)


class FinalStage:
    """The sweep's final evaluation, fed target by target: once a target's last trial has
    ended, its best trial(s) are fetched and their evaluation jobs join the pool, while other
    targets still train. One benchmark run (folder, MLflow run, table) per rank: top1,
    top2, ... ."""

    def __init__(self, req: SweepRequest, space: SearchSpace, targets: dict[str, Target],
                 out: Path, uri: str, parent_id: str, evaluations: Evaluations) -> None:
        self.req, self.space, self.out, self.uri, self.parent_id = req, space, out, uri, parent_id
        wanted = space.final_eval.categories
        self.targets = {k: t for k, t in targets.items()
                        if not wanted or k in wanted or t.category in wanted}
        self.evaluations = evaluations
        self.ranks: dict[int, RankBenchmark] = {}
        self.handled: set[str] = set()
        self.best: dict[str, TrialSummary] = {}

    def _rank(self, rank: int) -> RankBenchmark:
        if rank not in self.ranks:
            folder = self.out / "best" / f"top{rank}"
            cfg = benchmark_config(self.space, list(self.targets.values()), folder, rank)
            say_progress(self.req, f"final evaluation {cfg.name}: {attack_text(self.space)}")
            run = BenchmarkRun(cfg.name, self.out / "final" / f"top{rank}", mlflow_uri=self.uri,
                               parent_run_id=self.parent_id, force=False)
            queue = JobQueue(cfg, run, self.evaluations, progress=self.req.progress)
            self.ranks[rank] = RankBenchmark(cfg, run, queue, {})
        return self.ranks[rank]

    def on_trial(self, trial: TrialSummary, target_trials: list[TrialSummary]) -> None:
        """A trial ended: was it the last of its target?"""
        if len(target_trials) < self.space.budget.trials or any(
                t.state == "running" for t in target_trials):
            return
        best = select_best(target_trials, self.space)
        self.target_done(trial.target, best.get(trial.target, []))

    def target_done(self, key: str, ranked: list[TrialSummary]) -> None:
        if key in self.handled or key not in self.targets:
            return
        self.handled.add(key)
        if ranked:
            self.best[key] = ranked[0]
        target = self.targets[key]
        for rank, trial in enumerate(ranked[: self.space.final_eval.top_n], start=1):
            bench = self._rank(rank)
            entry = bench.entry(target, self.trial_seed if bench.cfg.seeds else None)
            dest = fetch_trial_checkpoint(trial.checkpoint,
                                          checkpoint_path(entry, target.category))
            bench.proxies[key] = read_proxy(dest.parent) | {"seed": entry.seed}
            bench.queue.enqueue(JobTarget(entry, target.category))

    @property
    def trial_seed(self) -> int:
        return self.space.fixed_config().train.seed

    def other_seeds(self, ctx: SweepContext, storage: str) -> None:
        """Train each target's best config again with every other seed, all at once as one
        Tune experiment (`<sweep>-seeds`), and queue each one's evaluation beside the best
        trial's (the top1 benchmark: its tables show the mean across seeds)."""
        if not self.best:
            return
        bench = self._rank(1)
        seeded = {t.key: t for key in self.best for s in self.space.extra_seeds()
                  for t in [dataclasses.replace(self.targets[key], seed=s)]}
        params = {k: self.best[dataclasses.replace(t, seed=None).key].params
                  for k, t in seeded.items()}

        def target(key: str) -> JobTarget:
            return JobTarget(bench.entry(seeded[key], seeded[key].seed), seeded[key].category)

        say_progress(self.req, f"the best configs again with seeds {self.space.extra_seeds()}:"
                     f" {', '.join(sorted(seeded))}")
        self._train(ctx, storage, seeds_space(self.space), seeded, params,
                    dest=lambda key: checkpoint_path(*target(key)),
                    on_ready=lambda key: bench.queue.enqueue(target(key)))

    def clean_twins(self, ctx: SweepContext, storage: str) -> None:
        """Train each target's best config again without the adversarial terms, all at once
        as one Tune experiment (`<sweep>-clean`, the trials' resources), and queue each twin's
        evaluation beside its best trial's the moment it lands."""
        from pgray.detectors.registry import CLEAN_TWIN

        self._baselines(ctx, storage, clean_twin_space(self.space), CLEAN_TWIN, "clean",
                        {k: clean_twin_params(t.params) for k, t in self.best.items()},
                        "clean-trained twins of the best trials")

    def recipe_baselines(self, ctx: SweepContext, storage: str,
                         on_ready: Callable[[str, Path], None] | None = None) -> None:
        """Train each target's fixed config (the recipe: nothing searched) for the trials'
        epochs, as one Tune experiment (`<sweep>-recipe`), and queue its evaluation beside
        the best trial's; `on_ready(target, checkpoint)` hears of each (the rank stage)."""
        from pgray.detectors.registry import RECIPE

        self._baselines(ctx, storage, recipe_space(self.space), RECIPE, "recipe",
                        {k: {} for k in self.best}, "the recipe (fixed config, nothing"
                        " searched) beside the best trials", on_ready)

    def _baselines(self, ctx: SweepContext, storage: str, space: SearchSpace, detector: str,
                   folder_name: str, params: dict[str, dict[str, Any]], what: str,
                   on_ready: Callable[[str, Path], None] | None = None) -> None:
        """One training of `space` per target with a best trial, each evaluated as
        `detector` in the top1 benchmark the moment it lands."""
        if not self.best:
            return
        bench = self._rank(1)

        def checkpoint(key: str) -> Path:
            target = self.targets[key]
            return (self.out / "best" / folder_name / target.dataset / target.category
                    / CHECKPOINT_FILE)

        def queue(key: str) -> None:
            target = self.targets[key]
            entry = next(e for e in bench.cfg.entries()
                         if e.dataset == target.dataset and e.categories == [target.category])
            baseline = DetectorEntry(name=detector, checkpoint=str(checkpoint(key)))
            bench.queue.enqueue(JobTarget(entry, target.category, baseline))
            if on_ready is not None:
                on_ready(key, checkpoint(key))

        say_progress(self.req, f"{what}: {', '.join(sorted(self.best))}")
        self._train(ctx, storage, space, {k: ctx.targets[k] for k in self.best}, params,
                    dest=checkpoint, on_ready=queue)

    def _train(self, ctx: SweepContext, storage: str, space: SearchSpace,
               targets: dict[str, Target], params: dict[str, dict[str, Any]], *,
               dest: Callable[[str], Path], on_ready: Callable[[str], None]) -> None:
        """One fixed training of `space` per target, with the trials' resources."""
        from pgray.distributed.sweep_context import sweep_context
        from pgray.distributed.tune_console import tune_verbosity

        retrain = sweep_context(space, targets, mlflow_uri=self.uri,
                                parent_run_id=self.parent_id, storage=storage,
                                resources=ctx.resources, target_params=params)
        train_each_target(retrain, storage, resume=self.req.resume,
                          verbose=tune_verbosity(self.req.progress, self.req.verbose),
                          console=self.req.progress and not self.req.verbose,
                          dest=dest, on_ready=on_ready, evaluations=self.evaluations)

    def finish(self) -> list[BenchmarkResult]:
        from pgray.tracking.benchmark_finish import finish_benchmark

        self.evaluations.finish()
        results = []
        for rank in sorted(self.ranks):  # marked incomplete where jobs failed; raised below
            bench = self.ranks[rank]
            result = finish_benchmark(bench.run, bench.cfg, bench.queue.keys,
                                      self.evaluations.failures)
            result.proxies = bench.proxies
            results.append(result)
        self.evaluations.check_failures()
        return results
