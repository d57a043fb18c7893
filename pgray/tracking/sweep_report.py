"""What a sweep leaves for people: trial and result tables, best configs, the summary file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgray.config.search_space import (
    OBJECTIVE_SCALAR,
    SearchSpace,
    Target,
    scalarisation_text,
)
from pgray.io import write_json, write_text
from pgray.tracking.records import SweepResult
from pgray.tracking.trials import TrialSummary

PAPER_STEPS = 1000  # the paper's evaluation attack length


def write_best_configs(space: SearchSpace, best: dict[str, list[TrialSummary]],
                       targets: dict[str, Target], out: Path) -> dict[str, list[Path]]:
    """best/<dataset>-<category>.yaml (and -top2, ...): full ExperimentConfigs, ready for
    `python -m pgray.train --config`."""
    import yaml

    folder = out / "best"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for key, trials in best.items():
        target = targets[key]
        for rank, trial in enumerate(trials, start=1):
            cfg = space.trial_config(target, trial.params)
            suffix = "" if rank == 1 else f"-top{rank}"
            path = folder / f"{target.dataset}-{target.category}{suffix}.yaml"
            header = (f"# best trial {trial.trial_id} of sweep {space.name} ({key}):"
                      f" {_objective_text(space, trial)}\n"
                      f"# reuse: python -m pgray.train --config {path}\n")
            write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            written.setdefault(key, []).append(path)
    return written


def _objective_text(space: SearchSpace, trial: TrialSummary) -> str:
    values = ", ".join(f"{o.metric}={_fmt(trial.scores.get(o.metric))}"
                       for o in space.objectives)
    return f"{values} at {score_epoch_text(trial)}"


def score_epoch_text(trial: TrialSummary) -> str:
    """Which epoch a trial's scores come from: the one whose weights are evaluated."""
    if trial.score_epoch is None:
        return "–"
    what = "selected, best.pt" if trial.score_source == "selected" else "last"
    return f"epoch {trial.score_epoch} ({what})"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("–" if value is None else str(value))


def attack_text(space: SearchSpace) -> str:
    fe = space.final_eval
    eps = ", ".join(f"{e:g}" for e in fe.eps)
    if fe.suite.name == "adaptive":
        text = (f"the adaptive suite (members at {fe.suite.steps} steps x {fe.suite.restarts}"
                f" restarts) beside the protocol PGD-{fe.steps}, eps {eps}/255")
    else:
        text = f"the protocol PGD-{fe.steps} alone, eps {eps}/255"
    if fe.steps < PAPER_STEPS:
        text += f" (short attacks; the paper protocol is PGD-{PAPER_STEPS})"
    return text


def trials_rows(space: SearchSpace, trials: list[TrialSummary], best: set[str] = frozenset()
                ) -> tuple[list[str], list[list[str]]]:
    """The trials table as data: its heading and one row of cells per trial (the state of
    those in `best` says so)."""
    names = [o.metric for o in space.objectives]
    # the objectives are those of the evaluated epoch (the scored-at column), as ranked
    head = ["target", "trial", "state", "epochs", "scored at", *names, *space.search]
    rows = [[t.target, t.trial_id, t.state + (", best" if t.trial_id in best else ""),
             str(t.epochs), score_epoch_text(t),
             *(_fmt(t.scores.get(n)) for n in names),
             *(_fmt(t.params.get(k)) for k in space.search)] for t in trials]
    return head, rows


def trials_table(space: SearchSpace, trials: list[TrialSummary],
                 best: set[str] = frozenset()) -> str:
    """The trials table, after the line saying what ASHA stopped trials on."""
    stated = asha_text(space)
    return (f"{stated}\n\n" if stated else "") + markdown(*trials_rows(space, trials, best))


def asha_text(space: SearchSpace) -> str:
    """What ASHA compared trials by: the objective, or the stated weighted sum of several
    (`objective_scalar`); "" without ASHA."""
    if space.scheduler.type == "none":
        return ""
    terms = space.scalar_terms()
    if terms is None:
        objective = space.objectives[0]
        return f"ASHA stopped trials on {objective.metric} ({objective.mode})"
    return f"ASHA stopped trials on {scalarisation_text(terms)} ({OBJECTIVE_SCALAR}, max)"


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def results_text(space: SearchSpace, result: SweepResult, brief: bool = False) -> str:
    """The sweep's results as Markdown (results.md). `brief`, for the console: only the
    searched detector's own tables beside the comparison, no MLflow links."""
    stopped = sum(t.state == "stopped_early" for t in result.trials)
    best = {t.trial_id for ranked in result.best.values() for t in ranked}
    parts = [f"## Sweep {space.name}: {len(result.trials)} trials ({stopped} stopped early"
             f" by ASHA), up to {result.max_concurrent} at once", "",
             trials_table(space, result.trials, best if brief else frozenset())]
    if not brief:
        parts += ["", "## Best per category", ""]
    for key, ranked in result.best.items() if not brief else ():
        for rank, t in enumerate(ranked, start=1):
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()) or "(fixed)"
            parts.append(f"- {key} top{rank}: trial {t.trial_id}, {_objective_text(space, t)};"
                         f" {params}")
        if not ranked:
            parts.append(f"- {key}: no trial finished with a checkpoint")
    for bench in result.benchmarks:
        from pgray.tracking.tables import markdown_table

        text = markdown_table(bench.rows, detailed=1) if brief else bench.table_text
        if bench.incomplete:
            text = f"**{bench.incomplete}**\n\n{text}"
        parts += ["", f"## Final evaluation: {attack_text(space)}", "", text.rstrip("\n")]
        if bench.proxies:
            parts += ["", proxy_gap_table(bench.proxies, bench.rows)]
    if result.rank_agreement:
        parts += ["", rank_agreement_text(space, result.rank_agreement)]
    if result.compare_links and not brief:
        parts += ["", "## Compare the trials in MLflow", ""]
        parts += [f"- {key}: {link}" for key, link in sorted(result.compare_links.items())]
    return "\n".join(parts)


def rank_agreement_text(space: SearchSpace, summary: dict[str, Any]) -> str:
    """results.md's (and the console's) section: proxy vs test over the trials."""
    from pgray.tracking.rank_agreement import (
        AGREEMENT_HEAD,
        AGREEMENT_NOTE,
        agreement_rows,
        source_text,
    )

    fe = space.final_eval
    return "\n".join([
        "## Rank agreement: proxy vs test", "",
        f"Test: clean, and the proxy's two attacks at {fe.rank_agreement.steps} steps, eps"
        f" {fe.rank_eps:g}/255. {AGREEMENT_NOTE} {source_text(summary)}.", "",
        markdown(AGREEMENT_HEAD, agreement_rows(summary))])


PROXY_GAP_TITLE = ("Proxy vs test (image AUROC; proxy: held-out pseudo-anomalies, short"
                   " linf attacks at train.proxy_eps, else the training eps; test: real"
                   " defects, the suite's linf worst case at the largest eps)")
PROXY_GAP_HEAD = ["target", "epoch", "proxy clean", "test clean", "gap", "proxy worst",
                  "test worst", "gap"]
PROXY_THREAT = "linf"  # training attacks are linf (pgray.config.experiment), so is the proxy


def proxy_gap_rows(proxies: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                   rank: str = "") -> tuple[list[str], list[list[str]]]:
    """The held-out proxy (pseudo-anomalies, short attacks at train.proxy_eps) beside the
    test split, for each evaluated trial: how far the sweep's objective is from the truth.
    The test side is the trial's own model (not its clean twin, nor a baseline) under the
    proxy's threat; `rank` (top1, top2, ...) labels the trial where a page shows several."""
    from pgray.detectors.registry import PATCHGUARD

    out = []
    for key, proxy in sorted(proxies.items()):
        dataset, category = key.split("/", 1)
        # the evaluated trial's own rows (its seed, where the best config was retrained)
        mine = [r for r in rows if r["dataset"] == dataset and r["category"] == category
                and r.get("seed") == proxy.get("seed")
                and (r.get("detector") or PATCHGUARD) == PATCHGUARD]
        clean = next((r["image_auroc"] for r in mine if r.get("attack") == "clean"), None)
        worst = max((r for r in mine if r.get("attack") == "worst_case"
                     and (r.get("threat") or PROXY_THREAT) == PROXY_THREAT),
                    key=lambda r: r["eps"], default={}).get("image_auroc")
        pc, pw = proxy.get("proxy_clean_image_auroc"), proxy.get("proxy_worst_image_auroc")
        out.append([f"{key} {rank}".rstrip(), str(proxy.get("epoch")), _fmt(pc), _fmt(clean),
                    _gap(pc, clean), _fmt(pw), _fmt(worst), _gap(pw, worst)])
    return PROXY_GAP_HEAD, out


def proxy_gap_table(proxies: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    return f"### {PROXY_GAP_TITLE}\n\n" + markdown(*proxy_gap_rows(proxies, rows))


def _gap(proxy: Any, test: Any) -> str:
    if not isinstance(proxy, float) or not isinstance(test, float):
        return "–"
    return f"{proxy - test:+.3f}"


def write_summary(result: SweepResult) -> None:
    import dataclasses

    data = {
        "out": str(result.out), "parent_run_id": result.parent_run_id,
        "experiment_path": result.experiment_path, "wall_s": result.wall_s,
        "max_concurrent": result.max_concurrent, "resumed": result.resumed,
        "trials": [dataclasses.asdict(t) for t in result.trials],
        "best": {k: [t.trial_id for t in v] for k, v in result.best.items()},
        "best_configs": {k: [str(p) for p in v] for k, v in result.best_configs.items()},
        "benchmarks": [{"parquet": str(b.parquet), "markdown": str(b.markdown),
                        "cards": [str(p) for p in b.cards],
                        # logged model id -> its key figures (pgray.tracking.models)
                        "models": _nan_to_none(b.models)} for b in result.benchmarks],
        "registered": result.registered,
        # NaN (no coefficient: its `reason` says why) written as null
        "rank_agreement": _nan_to_none(result.rank_agreement),
        "front": _nan_to_none(result.front),
    }
    write_json(result.out / "sweep_summary.json", data)


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: null in its place."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value
