"""The sweep's trials on the test split, after the pick: each chosen trial's evaluated weights
(best.pt where it selected, else its last checkpoint) scored clean and under a short suite
(the proxy's own two attacks, `pgray.core.proxy.proxy_members`, at
final_eval.rank_agreement's steps and eps, and their per-image worst case), as jobs of the
final stage's evaluation pool. What it gives: the rank agreement of proxy and test
(`pgray.pipelines.rank_agreement`) and each trial's place on the clean/robust front.

Rows land in OUT/rank_agreement/results.parquet; a re-run skips the jobs done there."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.pipelines.trials import TrialSummary

RANK_DIR = "rank_agreement"
RECIPE_ID = "recipe"  # the subject id of a target's recipe baseline (`recipe_id`)
EVALUATED_STATES = ("completed", "stopped_early")


def recipe_id(key: str) -> str:
    return f"{RECIPE_ID}:{key}"


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
    from pgray.pipelines.benchmark_jobs import SHORT

    members = short_members(space)
    grid = [(SHORT, space.final_eval.rank_eps, [m.cfg for m in members], "linf")]
    return grid, tuple((m.name, m.aims_at) for m in members)


def short_job(space: SearchSpace, category: str, n_test: int):
    """One model's job on a test split of `n_test` images, as the plan prices it."""
    from pgray.config.base import to_dict
    from pgray.pipelines.benchmark_jobs import BenchJob

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


def chosen_trials(trials: list[TrialSummary], space: SearchSpace
                  ) -> dict[str, list[TrialSummary]]:
    """Per target, the trials evaluated: every completed or early-stopped one with a
    checkpoint, or, with max_trials, that many spread evenly over the ranking by the first
    objective at the evaluated epoch (its best and its worst included)."""
    cap = space.final_eval.rank_agreement.max_trials
    objective = space.objectives[0]
    sign = 1.0 if objective.mode == "max" else -1.0
    out: dict[str, list[TrialSummary]] = {}
    for target in sorted({t.target for t in trials}):
        mine = [t for t in trials if t.target == target and t.state in EVALUATED_STATES
                and t.checkpoint]

        def rank_key(t: TrialSummary) -> tuple:
            value = t.scores.get(objective.metric)
            known = value is not None and value == value
            return (not known, -sign * value if known else 0.0, t.trial_id)

        mine.sort(key=rank_key)
        if cap is not None and len(mine) > cap:
            picks = sorted({round(i * (len(mine) - 1) / (cap - 1)) for i in range(cap)})
            mine = [mine[i] for i in picks]
        out[target] = mine
    return out


class RankStage:
    """The test evaluations of the chosen trials (and of each target's recipe baseline),
    queued on the final stage's pool the moment their checkpoints are here."""

    def __init__(self, space: SearchSpace, targets: dict[str, Target], out: Path,
                 evaluations, progress: bool) -> None:
        from pgray.tracking.row_store import read_rows

        self.space, self.targets, self.evaluations = space, targets, evaluations
        self.folder = out / RANK_DIR
        self.progress = progress
        self.done = {r["job_key"] for r in read_rows(self.folder)}
        self.grid, self.members = short_grid(space)
        self.subjects: dict[str, tuple[str, list[str]]] = {}  # id -> (target, job keys)

    def add_trials(self, trials: list[TrialSummary]) -> int:
        """Fetch and queue the chosen trials of every target; how many."""
        from pgray.pipelines.train_eval import CHECKPOINT_FILE, fetch_trial_checkpoint

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
        from pgray.config.benchmark import DatasetEntry
        from pgray.pipelines.benchmark_jobs import jobs_for
        from pgray.pipelines.final_eval import benchmark_config

        target = self.targets[key]
        cfg = dataclasses.replace(benchmark_config(self.space, [target], self.folder, 1),
                                  n_panels=0)
        entry = DatasetEntry(dataset=target.dataset, root=target.root,
                             categories=[target.category], checkpoint=str(checkpoint),
                             options=dict(target.options))
        jobs = [dataclasses.replace(j, members=self.members)
                for j in jobs_for(cfg, entry, target.category, grid=self.grid)]
        self.subjects[subject] = (key, [j.key for j in jobs])
        self.evaluations.add([j for j in jobs if j.key not in self.done], self._on_result)

    def _on_result(self, job, result: dict[str, Any]) -> None:
        from pgray.tracking.row_store import append_rows

        append_rows(self.folder, result["rows"])

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
        from pgray.pipelines.rank_agreement import rank_agreement, values_on_test

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
