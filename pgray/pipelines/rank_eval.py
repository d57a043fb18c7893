"""The sweep's trials on the test split, after the pick: each chosen trial's evaluated weights
(best.pt where it selected, else its last checkpoint) scored clean and under a short suite
(the proxy's own two attacks, `pgray.core.proxy.proxy_members`, at
final_eval.rank_agreement's steps and eps, and their per-image worst case), as jobs of the
final stage's evaluation pool. What it gives: the rank agreement of proxy and test
(`pgray.tracking.rank_agreement`) and each trial's place on the clean/robust front.

Rows land in OUT/rank_agreement/results.parquet; a re-run skips the jobs done there."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pgray.config.benchmark import DatasetEntry
from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.core.checkpoint import CHECKPOINT_FILE
from pgray.pipelines.components.checkpoint_files import fetch_trial_checkpoint
from pgray.pipelines.components.jobs import BenchJob, jobs_for
from pgray.pipelines.components.selection import chosen_trials
from pgray.pipelines.components.specs import benchmark_config, short_grid
from pgray.pipelines.components.targets import JobTarget
from pgray.pipelines.runners.evaluations import Evaluations
from pgray.pipelines.runners.queue import JobQueue
from pgray.tracking.row_store import RowFolder
from pgray.tracking.trials import TrialSummary

RANK_DIR = "rank_agreement"
RECIPE_ID = "recipe"  # the subject id of a target's recipe baseline (`recipe_id`)


def recipe_id(key: str) -> str:
    return f"{RECIPE_ID}:{key}"


class RankStage:
    """The test evaluations of the chosen trials (and of each target's recipe baseline),
    queued on the final stage's pool the moment their checkpoints are here."""

    def __init__(self, space: SearchSpace, targets: dict[str, Target], out: Path,
                 evaluations: Evaluations, progress: bool) -> None:
        self.space, self.targets, self.evaluations = space, targets, evaluations
        self.folder = out / RANK_DIR
        self.progress = progress
        self.grid, self.members = short_grid(space)
        # the jobs' fields that come from a benchmark: no panels, the final evaluation's batch
        self._cfg = dataclasses.replace(
            benchmark_config(space, list(targets.values()), self.folder, 1), n_panels=0)
        self._queue = JobQueue(self._cfg, RowFolder(self.folder), evaluations,
                               jobs_of=self._jobs_of)
        self.subjects: dict[str, tuple[str, list[str]]] = {}  # id -> (target, job keys)

    def add_trials(self, trials: list[TrialSummary]) -> int:
        """Fetch and queue the chosen trials of every target; how many."""
        chosen = chosen_trials(trials, self.space)
        count = 0
        for key, mine in chosen.items():
            if key not in self.targets:
                continue
            target = self.targets[key]
            for trial in mine:
                dest = (self.folder / "checkpoints" / target.dataset / target.category
                        / trial.trial_id / CHECKPOINT_FILE)
                fetch_trial_checkpoint(trial.checkpoint, dest)
                self.add(trial.trial_id, key, dest)
                count += 1
        if self.progress and count:
            fe = self.space.final_eval
            print(f"rank agreement: {count} trial(s) on the test split, clean and the proxy's"
                  f" two attacks at {fe.rank_agreement.steps} steps, eps {fe.rank_eps:g}/255",
                  flush=True)
        return count

    def add(self, subject: str, key: str, checkpoint: Path) -> None:
        """Queue one model's jobs (`subject`: a trial id, or `recipe_id(key)`)."""
        target = self.targets[key]
        entry = DatasetEntry(dataset=target.dataset, root=target.root,
                             categories=[target.category], checkpoint=str(checkpoint),
                             options=dict(target.options))
        jobs = self._queue.enqueue(JobTarget(entry, target.category))
        self.subjects[subject] = (key, [j.key for j in jobs])

    def _jobs_of(self, target: JobTarget) -> list[BenchJob]:
        """A model's one short-suite job (its clean scores too)."""
        return [dataclasses.replace(j, members=self.members) for j in
                jobs_for(self._cfg, target.entry, target.category, grid=self.grid)]

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Each subject's rows (after the pool finished)."""
        from pgray.tracking.row_store import read_rows

        by_job: dict[str, list[dict[str, Any]]] = {}
        for row in read_rows(self.folder):
            by_job.setdefault(row["job_key"], []).append(row)
        return {s: [r for k in keys for r in by_job.get(k, [])]
                for s, (_, keys) in self.subjects.items()}

    def add_recipe(self, key: str, checkpoint: Path) -> None:
        """Queue a target's recipe baseline (final_eval.recipe_baseline) as a trial is."""
        self.add(recipe_id(key), key, checkpoint)

    def results(self, trials: list[TrialSummary], best: dict[str, list[TrialSummary]]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The rank agreement of the evaluated trials, and per target the front's data: each
        trial's (and the recipe's) test numbers and the picked trial."""
        from pgray.tracking.rank_agreement import rank_agreement, values_on_test

        ra = self.space.final_eval.rank_agreement
        rows = self.rows()
        tests = {s: values_on_test(r) for s, r in rows.items()}
        summary = rank_agreement(trials, tests, bootstrap=ra.bootstrap, seed=ra.seed)
        front: dict[str, Any] = {}
        for subject, (key, _) in sorted(self.subjects.items()):
            values = front_values(rows[subject])
            if not values:
                continue
            entry = front.setdefault(key, {"trials": {}, "recipe": None, "picked": None})
            if subject == recipe_id(key):
                entry["recipe"] = values
            else:
                entry["trials"][subject] = values
        for key, entry in front.items():
            ranked = best.get(key) or []
            entry["picked"] = ranked[0].trial_id if ranked else None
        return summary, front


FRONT_METRICS = ("clean_image_auroc", "worst_image_auroc", "worst_pixel_auroc")


def front_values(rows: list[dict[str, Any]]) -> dict[str, float]:
    """A model's test numbers on the front: clean and worst-case image AUROC (AD), and the
    worst-case pixel AUROC (AL) as the benchmark reports it (the lower of the per-image pick
    and each member)."""
    clean = next((r for r in rows if r.get("attack") == "clean"), None)
    worst = next((r for r in rows if r.get("attack") == "worst_case"), None)
    if clean is None or worst is None:
        return {}
    return {"clean_image_auroc": clean["image_auroc"], "worst_image_auroc": worst["image_auroc"],
            "worst_pixel_auroc": worst["pixel_auroc"]}
