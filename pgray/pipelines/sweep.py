"""The sweep: a Tune + Optuna search of one study per category, then a benchmark of the best
trial(s) of each. `python -m pgray.sweep` parses its flags and calls `run_sweep`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.errors import PgrayError
from pgray.io import write_text
from pgray.tracking.sweep_report import (
    attack_text,
    results_text,
    trials_table,
    write_best_configs,
    write_summary,
)


@dataclass
class SweepRequest:
    space: SearchSpace
    out: Path
    resume: bool = False
    storage: str | None = None
    address: str | None = None
    mlflow_uri: str | None = None
    final_eval: bool = True
    progress: bool = True


@dataclass
class TrialSummary:
    trial_id: str
    target: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    epochs: int
    state: str  # completed | stopped_early | error
    checkpoint: str | None = None
    error: str | None = None


@dataclass
class SweepResult:
    out: Path
    parent_run_id: str
    experiment_path: str
    trials: list[TrialSummary]
    best: dict[str, list[TrialSummary]]
    best_configs: dict[str, list[Path]]
    benchmarks: list[Any] = field(default_factory=list)  # pgray.pipelines.benchmark.BenchmarkResult
    table_text: str = ""
    mlflow_hint: str = ""
    max_concurrent: int = 0
    resumed: bool = False
    wall_s: float = 0.0


# --- targets -------------------------------------------------------------------------------
def resolve_targets(space: SearchSpace) -> list[Target]:
    """Every (dataset, category) of the space with an absolute root; `generated` creates the
    synthetic dataset in the cache on first use."""
    from pgray.config import DataConfig
    from pgray.config.search_sections import GENERATED_ROOT
    from pgray.data.dataset import resolve_root
    from pgray.data.registry import get_layout

    targets = []
    for entry in space.target_entries():
        root_value = "" if entry.root == GENERATED_ROOT else entry.root
        data = DataConfig(dataset=entry.dataset, root=root_value, options=dict(entry.options))
        root = str(Path(resolve_root(data)).expanduser().resolve())
        for category in get_layout(entry.dataset).select_categories(root, entry.categories):
            targets.append(Target(entry.dataset, root, category,
                                  tuple(sorted(dict(entry.options).items()))))
    return targets


def check_targets(space: SearchSpace, targets: list[Target]) -> None:
    """Fail on a missing dataset or category before Ray or MLflow start anything."""
    from pgray.pipelines.train import validate_inputs

    for target in targets:
        validate_inputs(space.trial_config(target, {}))


# --- results -------------------------------------------------------------------------------
def summarise(results, space: SearchSpace) -> list[TrialSummary]:
    """One row per trial of a Tune ResultGrid: decoded params, last metrics and state."""
    rows = []
    for r in results:
        metrics = dict(r.metrics or {})
        config = dict(r.config or {})
        epochs = int(metrics.get("epoch", 0) or 0)
        if r.error is not None:
            state = "error"
        else:
            state = "completed" if epochs >= space.epochs() else "stopped_early"
        rows.append(TrialSummary(
            trial_id=str(metrics.get("trial_id") or Path(r.path).name),
            target=str(config.get("target", "")),
            params=space.decode({k: v for k, v in config.items() if k in space.search}),
            metrics={k: v for k, v in metrics.items() if k != "config"},
            epochs=epochs, state=state, checkpoint=_last_checkpoint(r),
            error=None if r.error is None else f"{type(r.error).__name__}: {r.error}"[:500],
        ))
    return sorted(rows, key=lambda t: (t.target, t.trial_id))


def _last_checkpoint(result) -> str | None:
    """The newest Train checkpoint a trial reported (every epoch, or every checkpoint_every)."""
    df = result.metrics_dataframe
    if df is not None and "checkpoint_path" in df:
        paths = [p for p in df["checkpoint_path"].tolist() if isinstance(p, str) and p]
        if paths:
            return paths[-1]
    value = (result.metrics or {}).get("checkpoint_path")
    return value if isinstance(value, str) and value else None


def _objective_values(trial: TrialSummary, space: SearchSpace) -> list[float] | None:
    values = []
    for o in space.objectives:
        v = trial.metrics.get(o.metric)
        if not isinstance(v, int | float) or v != v:
            return None
        values.append(float(v) if o.mode == "max" else -float(v))  # larger is better
    return values


def pareto_front(points: list[list[float]]) -> list[int]:
    """Indices of the points no other point dominates (larger is better everywhere)."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
            for j, q in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def select_best(trials: list[TrialSummary], space: SearchSpace) -> dict[str, list[TrialSummary]]:
    """Per target: the top_n trials by the objective, or the Pareto front (best first by the
    first objective) when there are several objectives. Trials with a checkpoint only; trials
    that trained the whole budget rank before those ASHA stopped (a stopped trial lost at its
    rung, even if its last proxy value happens to be higher)."""
    best: dict[str, list[TrialSummary]] = {}
    for target in sorted({t.target for t in trials}):
        scored = [(t, v) for t in trials if t.target == target and t.state != "error"
                  and t.checkpoint and (v := _objective_values(t, space)) is not None]
        if space.multi_objective:
            keep = pareto_front([v for _, v in scored])
            scored = [scored[i] for i in keep]
        scored.sort(key=lambda tv: (tv[0].state == "completed", tv[1]), reverse=True)
        best[target] = [t for t, _ in scored[: space.final_eval.top_n]]
    return best


# --- the sweep -----------------------------------------------------------------------------
def run_sweep(req: SweepRequest) -> SweepResult:
    from pgray.distributed.cluster import connect, resolve_storage
    from pgray.tracking.mlflow_runs import (
        check_tracking_uri,
        ensure_experiment,
        resolve_tracking_uri,
        runs_url,
    )

    started = time.perf_counter()
    space = req.space
    targets = resolve_targets(space)
    check_targets(space, targets)
    out = req.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(req.mlflow_uri)
    check_tracking_uri(uri)
    storage = resolve_storage(req.storage, out / "ray")
    parent = _open_parent(space, uri, out)
    _say(req, f"sweep {space.name}: {len(targets)} target(s) x {space.budget.trials} trial(s)"
              f" of {space.epochs()} epoch(s); {connect(req.address)}")
    from pgray.distributed.tune import SweepContext, run_search

    ctx = SweepContext(space=space, targets={t.key: t for t in targets}, mlflow_uri=uri,
                       parent_run_id=parent.run_id,
                       train_storage=f"{storage.rstrip('/')}/{space.name}-train",
                       progress=False)
    search = run_search(ctx, storage, resume=req.resume, verbose=1 if req.progress else 0)
    trials = summarise(search.results, space)
    _require_some_success(trials, search.experiment_path)
    best = select_best(trials, space)
    configs = write_best_configs(space, best, {t.key: t for t in targets}, out)
    _log_search(parent, space, trials, best, configs, out)
    result = SweepResult(out=out, parent_run_id=parent.run_id,
                         experiment_path=search.experiment_path, trials=trials, best=best,
                         best_configs=configs, max_concurrent=search.max_concurrent,
                         resumed=search.resumed)
    if req.final_eval and space.final_eval.enabled:
        result.benchmarks = final_evaluation(req, space, best, {t.key: t for t in targets},
                                             out, uri, parent.run_id)
    result.table_text = results_text(space, result)
    write_text(out / "results.md", result.table_text + "\n")
    parent.log_artifact(out / "results.md")
    result.mlflow_hint = runs_url(uri, ensure_experiment(uri))
    result.wall_s = time.perf_counter() - started
    write_summary(result)
    parent.log_artifact(out / "sweep_summary.json")
    parent.log_metrics({"wall_s": result.wall_s}, step=0)
    parent.set_tags({"pgray.state": "finished"})
    parent.finish()
    return result


def _say(req: SweepRequest, text: str) -> None:
    if req.progress:
        print(text, flush=True)


def _open_parent(space: SearchSpace, uri: str, out: Path):
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


def _require_some_success(trials: list[TrialSummary], path: str) -> None:
    failed = [t for t in trials if t.state == "error"]
    if trials and len(failed) == len(trials):
        raise PgrayError(f"every trial failed; first error ({failed[0].trial_id}):"
                         f" {failed[0].error} (trial logs under {path})")


def _log_search(parent, space: SearchSpace, trials: list[TrialSummary],
                best: dict[str, list[TrialSummary]], configs: dict[str, list[Path]],
                out: Path) -> None:
    trials_md = out / "trials.md"
    write_text(trials_md, trials_table(space, trials) + "\n")
    parent.log_artifact(trials_md)
    for paths in configs.values():
        for path in paths:
            parent.log_artifact(path, "best")
    metrics = {}
    for key, ranked in best.items():
        if ranked:
            for o in space.objectives:
                value = ranked[0].metrics.get(o.metric)
                if isinstance(value, int | float):
                    metrics[f"best/{key}/{o.metric}"] = float(value)
    parent.log_metrics(metrics, step=0)
    counts = {s: sum(t.state == s for t in trials) for s in ("completed", "stopped_early",
                                                              "error")}
    parent.set_tags({f"pgray.trials_{k}": v for k, v in counts.items()}
                    | {"pgray.best_trials": ", ".join(t.trial_id for r in best.values()
                                                      for t in r)})


# --- final evaluation ------------------------------------------------------------------------
def final_evaluation(req: SweepRequest, space: SearchSpace, best: dict[str, list[TrialSummary]],
                     targets: dict[str, Target], out: Path, uri: str, parent_id: str) -> list:
    """Benchmark the best trial(s) of each target (top-1, then top-2, ...), linked to the
    sweep's MLflow run."""
    from pgray.pipelines.benchmark import run_benchmark

    chosen = _eval_targets(space, best)
    results = []
    for rank in range(1, space.final_eval.top_n + 1):
        ranked = {k: v[rank - 1] for k, v in chosen.items() if len(v) >= rank}
        if not ranked:
            break
        folder = out / "best" / f"top{rank}"
        proxies = {}
        for key, trial in ranked.items():
            t = targets[key]
            ckpt = fetch_checkpoint(trial.checkpoint,
                                    folder / t.dataset / t.category / "checkpoint.pt")
            proxies[key] = json.loads(ckpt.with_name(PROXY_FILE).read_text())
        cfg = benchmark_config(space, [targets[k] for k in ranked], folder, rank)
        _say(req, f"final evaluation {cfg.name}: {attack_text(space)} on"
                  f" {', '.join(ranked)}")
        bench = run_benchmark(cfg, out / "final" / f"top{rank}", mlflow_uri=uri,
                              parent_run_id=parent_id, progress=req.progress,
                              address=req.address)
        bench.proxies = proxies
        results.append(bench)
    return results


def _eval_targets(space: SearchSpace, best: dict[str, list[TrialSummary]]
                  ) -> dict[str, list[TrialSummary]]:
    wanted = space.final_eval.categories
    if not wanted:
        return best
    return {k: v for k, v in best.items() if k in wanted or k.split("/", 1)[1] in wanted}


PROXY_FILE = "proxy.json"  # beside a fetched checkpoint: its held-out proxy metrics


def fetch_checkpoint(path: str, dest: Path) -> Path:
    """A trial's Train checkpoint (local or s3:// / gs://) as a plain .pt file: the
    proxy-selected weights when the trial ran with train.select_metric, else the last ones.
    The held-out proxy metrics of that epoch go beside it (proxy.json), for the gap between
    the proxy and the test split."""
    import tempfile

    from pgray.core.checkpoint import read_checkpoint, write_selected
    from pgray.distributed.train import fetch_train_checkpoint
    from pgray.io import copy_atomic, write_json

    with tempfile.TemporaryDirectory() as tmp:
        source = fetch_train_checkpoint(path, Path(tmp) / "checkpoint.pt")
        selected = write_selected(source, dest)
        if selected is None:
            copy_atomic(source, dest)
        extra = read_checkpoint(source)["extra"]
    epoch = (extra.get("selected") or {}).get("epoch") or extra.get("epochs_done")
    metrics = next((m for e, m in extra.get("history", []) if e + 1 == epoch), {})
    write_json(dest.with_name(PROXY_FILE), {"epoch": epoch} | {
        k: v for k, v in metrics.items() if k.startswith("proxy_")})
    return dest


def benchmark_config(space: SearchSpace, targets: list[Target], folder: Path, rank: int):
    import dataclasses
    import math

    from pgray.config.benchmark import ActorConfig, BenchmarkConfig, DatasetEntry
    from pgray.distributed.cluster import cluster_resources

    fe, fixed = space.final_eval, space.fixed_config()
    template = str(folder / "{dataset}" / "{category}" / "checkpoint.pt")
    entries = [DatasetEntry(dataset=t.dataset, root=t.root, categories=[t.category],
                            checkpoint=template, options=dict(t.options)) for t in targets]
    fits = math.floor(cluster_resources().get("CPU", 1.0) / fe.cpus_per_actor + 1e-9)
    gpus = fe.gpus_per_actor if fe.gpus_per_actor is not None else (
        space.resources.gpus_per_worker)
    return BenchmarkConfig(
        name=f"{space.name}-final" + ("" if rank == 1 else f"-top{rank}"), datasets=entries,
        attack=dataclasses.replace(fixed.eval.attack, steps=fe.steps, restarts=fe.restarts),
        eps=list(fe.eps), steps=[fe.steps], restarts=[fe.restarts], suite=fe.suite,
        mask_resize=fixed.data.mask_resize, batch_size=fe.batch_size, n_panels=fe.n_panels,
        actors=ActorConfig(count=fe.actors or max(1, min(len(targets), fits)),
                           cpus=fe.cpus_per_actor, gpus=gpus,
                           threads=max(1, int(fe.cpus_per_actor))),
    )
