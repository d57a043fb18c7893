"""A sweep's MLflow run: opened once (found again by its key on resume), the search's tables,
best configs and scores logged on it, the rank agreement's coefficients and figures, and at
the end the results page, summary and report, after which it is closed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.io import write_text
from pgray.tracking.records import SweepResult
from pgray.tracking.sweep_report import (
    results_text,
    score_epoch_text,
    trials_table,
    write_summary,
)
from pgray.tracking.trials import TrialSummary


def compare_links(uri: str, experiment: str, parent_id: str, sweep: str,
                  targets: list[Target]) -> dict[str, str]:
    """Per target, the MLflow compare view of this sweep's trials (not its clean twins, nor
    the trials of an earlier sweep of the same name)."""
    from pgray.tracking.mlflow_links import compare_url
    from pgray.tracking.mlflow_runs import find_runs

    links = {}
    for t in targets:
        ids = find_runs(uri, experiment, {"pgray.kind": "trial", "pgray.sweep": sweep,
                                          "mlflow.parentRunId": parent_id,
                                          "dataset": t.dataset, "category": t.category})
        if ids:
            links[t.key] = compare_url(uri, experiment, ids)
    return links


def open_sweep_run(space: SearchSpace, uri: str, out: Path):
    """The sweep's MLflow run, found again by its key on resume (never a second one)."""
    import yaml

    from pgray.config.base import to_dict
    from pgray.tracking.mlflow_runs import open_run

    parent = open_run(uri, f"sweep:{space.name}", run_name=f"sweep {space.name}",
                      tags={"pgray.kind": "sweep", "pgray.sweep": space.name,
                            "pgray.state": "running"})
    spec = to_dict(space)
    parent.log_params({"search": spec["search"], "objectives": spec["objectives"],
                       "budget": spec["budget"], "scheduler": spec["scheduler"],
                       "resources": spec["resources"], "seed": space.seed,
                       "sampler": space.sampler})
    copy = out / "search_space.yaml"
    write_text(copy, yaml.safe_dump(spec, sort_keys=False))
    parent.log_artifact(copy)
    return parent


def close_lost_trials(parent, space: SearchSpace, trials: list[TrialSummary]) -> None:
    from pgray.tracking.mlflow_runs import close_lost_runs

    lost = close_lost_runs(parent.uri, parent.experiment_id,
                           {"mlflow.parentRunId": parent.run_id, "pgray.kind": "trial",
                            "pgray.sweep": space.name},
                           {t.trial_id for t in trials}, "pgray.trial_id")
    if lost:
        print(f"note: {len(lost)} trial run(s) in MLflow were started by the interrupted"
              " driver after Tune last saved the experiment: tagged lost (ended as KILLED"
              " where still running)", file=sys.stderr, flush=True)


def log_search(parent, space: SearchSpace, trials: list[TrialSummary],
               best: dict[str, list[TrialSummary]], configs: dict[str, list[Path]],
               out: Path) -> None:
    trials_md = out / "trials.md"
    write_text(trials_md, trials_table(space, trials) + "\n")
    parent.log_artifact(trials_md)
    for paths in configs.values():
        for path in paths:
            parent.log_artifact(path, "best")
    metrics, tags = {}, {}
    for key, ranked in best.items():
        if ranked:
            # the best trial's score is that of the epoch evaluated, as it was ranked by
            for o in space.objectives:
                value = ranked[0].scores.get(o.metric)
                if value is not None:
                    metrics[f"best/{key}/{o.metric}"] = value
            if ranked[0].score_epoch is not None:
                metrics[f"best/{key}/score_epoch"] = float(ranked[0].score_epoch)
            tags[f"pgray.best_score_epoch.{key}"] = score_epoch_text(ranked[0])
    parent.log_metrics(metrics, step=0)
    counts = {s: sum(t.state == s for t in trials) for s in ("completed", "stopped_early",
                                                              "error")}
    parent.set_tags({f"pgray.trials_{k}": v for k, v in counts.items()}
                    | {"pgray.best_trials": ", ".join(t.trial_id for r in best.values()
                                                      for t in r)} | tags)


def log_rank_agreement(parent, result: SweepResult, out: Path) -> None:
    """The coefficients on the sweep's run (rank/<metric>/<method>, and per target), and the
    front's figure."""
    from pgray.tracking.plots import front_plots, rank_scatters
    from pgray.tracking.rank_agreement import METHODS, RANK_METRICS

    metrics = {}
    for metric in RANK_METRICS:
        entry = result.rank_agreement.get(metric) or {}
        for method in METHODS:
            for end in ("value", "lo", "hi"):
                value = (entry.get(method) or {}).get(end)
                suffix = "" if end == "value" else f"_{end}"
                if value is not None and value == value:
                    metrics[f"rank/{metric}/{method}{suffix}"] = value
            for target, per in (entry.get("targets") or {}).items():
                value = per[method]["value"]
                if value == value:  # MLflow keys take no "@" (a target's own seed)
                    metrics[f"rank/{target.replace('@', '_')}/{metric}/{method}"] = value
    parent.log_metrics(metrics, step=0)
    for image in [*rank_scatters(result, out), *front_plots(result, out)]:
        parent.log_artifact(image)


# MLflow keeps a run's description up to 8,000 characters and cuts what is longer, warning
DESCRIPTION_LIMIT = 8000


def run_description(space: SearchSpace, result: SweepResult, uri: str, experiment: str,
                    limit: int = DESCRIPTION_LIMIT) -> str:
    """The sweep's run description: where the full results are (results.md and report.html,
    this run's artifacts), then per category the pick with its final numbers and logged
    model, what --register did, and the trials' compare views, as many lines as fit in
    `limit` characters (a paper-scale sweep's 54 categories say how many more results.md
    holds)."""
    from pgray.tracking.mlflow_links import ui_base
    from pgray.tracking.registry import sweep_picks

    stopped = sum(t.state == "stopped_early" for t in result.trials)
    artifacts = (f"{ui_base(uri)}/#/experiments/{experiment}/runs/{result.parent_run_id}"
                 "/artifacts")
    head = [f"## Sweep {space.name}: {len(result.trials)} trials ({stopped} stopped early by"
            f" ASHA), up to {result.max_concurrent} at once", "",
            f"Every table: **results.md**; figures, panels and flags: **report.html** (this"
            f" run's artifacts: {artifacts}).", ""]
    picked = {}
    if result.benchmarks:
        trial_seed = space.fixed_config().train.seed
        for pick in sweep_picks(result.benchmarks[0].models, trial_seed):
            f = pick.figures
            picked[f"{f['dataset']}/{f['category']}"] = (pick.model_id, f)
    lines = ["| category | pick | clean AD | protocol AD | worst-case AD | threat, budget |"
             " logged model |", "|---|---|---|---|---|---|---|"]
    for key, ranked in sorted(result.best.items()):
        trial = ranked[0].trial_id if ranked else "none"
        model_id, f = picked.get(key, ("", {}))
        lines.append(f"| {key} | {trial} | {_ad(f.get('clean_ad'))} |"
                     f" {_ad(f.get('protocol_ad'))} | {_ad(f.get('worst_case_ad'))} |"
                     f" {f.get('threat', '')} {f.get('eps', '')} | {model_id} |")
    lines += ["", *[f"- registered: {line}" for line in result.registered]]
    if result.compare_links:
        lines += ["", "Compare the trials in MLflow:", ""]
        lines += [f"- {key}: {link}" for key, link in sorted(result.compare_links.items())]
    return _fit("\n".join(head), lines, limit)


def _ad(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _fit(head: str, lines: list[str], limit: int) -> str:
    """`head` and as many of `lines` as fit in `limit` characters, then how many more."""
    text, kept = head, 0
    for line in lines:
        more = f"\n\n... {len(lines) - kept} more lines in results.md"
        if len(text) + 1 + len(line) + len(more) > limit:
            return text + more
        text += "\n" + line
        kept += 1
    return text


def finish_sweep_run(parent, space: SearchSpace, result: SweepResult, targets: list[Target],
                     out: Path, started: float) -> None:
    """The sweep's end: MLflow compare links, results.md (also the run's description),
    sweep_summary.json and the report, logged on the sweep's run, which is then closed."""
    from pgray.tracking.mlflow_links import runs_url
    from pgray.tracking.mlflow_store import ensure_experiment
    from pgray.tracking.report import sweep_report_data, write_report

    uri = parent.uri
    experiment = ensure_experiment(uri)
    result.compare_links = compare_links(uri, experiment, parent.run_id, space.name, targets)
    result.table_text = results_text(space, result)
    write_text(out / "results.md", result.table_text + "\n")
    parent.log_artifact(out / "results.md")
    result.mlflow_hint = runs_url(uri, experiment)
    result.wall_s = time.perf_counter() - started
    write_summary(result)
    parent.log_artifact(out / "sweep_summary.json")
    parent.log_artifact(write_report(sweep_report_data(space, result, out), out))
    # the run's description in the MLflow UI: a summary that fits, linking the full tables
    parent.set_tags({"mlflow.note.content": run_description(space, result, uri, experiment)})
    parent.log_metrics({"wall_s": result.wall_s}, step=0)
    parent.set_tags({"pgray.state": "finished"})
    parent.finish()
