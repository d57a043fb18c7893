"""Run a benchmark: evaluate every category's checkpoint with the job grid on Ray actors,
training the missing checkpoints first, all at once as far as the cluster allows, and each
category's evaluation starting as soon as its checkpoint exists (`pgray.pipelines.train_eval`).
Writes Parquet, Markdown, plots and MLflow runs. Finished jobs are skipped on re-runs; a
benchmark killed while training continues with `resume`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.config.benchmark import BenchmarkConfig, DatasetEntry
from pgray.errors import CheckpointError, ClusterError
from pgray.pipelines.benchmark_jobs import (
    BenchJob,
    categories_of,
    checkpoint_path,
    entry_root,
    jobs_for,
)

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro")
# each metric's bootstrap 95 % interval (pgray.core.intervals), logged beside it
INTERVAL_KEYS = tuple(f"{m}_ci_{end}" for m in METRIC_KEYS for end in ("low", "high"))


@dataclass
class BenchmarkResult:
    rows: list[dict[str, Any]]
    parquet: Path
    markdown: Path
    table_text: str
    skipped: int
    ran: int
    mlflow_run_id: str | None = None
    # target key -> the held-out proxy metrics of the evaluated epoch (the sweep's final
    # evaluation fills it in, for the proxy-to-test gap)
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained: int = 0  # checkpoints this run trained
    cards: list[Path] = field(default_factory=list)  # OUT/cards/*.json (pgray.tracking.cards)
    peak_actors: int = 0
    incomplete: str = ""  # why the tables are not the whole benchmark (failed jobs); "": whole


class BenchmarkRun:
    """The results side of one benchmark: its folder, its MLflow run, the jobs it owns and
    skips, and the tables it leaves."""

    def __init__(self, cfg: BenchmarkConfig, out: Path, *, mlflow_uri: str | None,
                 parent_run_id: str | None, force: bool, progress: bool,
                 verbose: bool = False) -> None:
        from pgray.io import ensure_dir
        from pgray.tracking.mlflow_runs import open_run, retry
        from pgray.tracking.mlflow_store import resolve_tracking_uri
        from pgray.tracking.row_store import read_rows

        self.cfg, self.out, self.progress = cfg, ensure_dir(out), progress
        self.verbose = verbose  # Ray's and Tune's own output too
        self.uri = resolve_tracking_uri(mlflow_uri)  # checked by the caller, at its start
        # opened mid-sweep too (the final evaluation): an outage is waited out here
        self.parent = retry(lambda: open_run(
            self.uri, f"benchmark:{cfg.name}", run_name=f"benchmark {cfg.name}",
            parent_run_id=parent_run_id, tags={"pgray.kind": "benchmark"}),
            f"run benchmark:{cfg.name}")
        if self.parent is None:
            raise ClusterError(f"MLflow tracking store {self.uri} did not answer; the"
                               f" benchmark {cfg.name} could not open its run")
        self.done = set() if force else {r["job_key"] for r in read_rows(self.out)}
        self.jobs: list[BenchJob] = []
        self.ran = 0

    def jobs_of(self, entry: DatasetEntry, category: str, detector=None) -> list[BenchJob]:
        """A detector's jobs on the category (PatchGuard's on its evaluated checkpoint); those
        done earlier are skipped."""
        jobs = jobs_for(self.cfg, entry, category, detector)
        self.jobs += jobs
        todo = [j for j in jobs if j.key not in self.done]
        if self.progress and (self.verbose or len(todo) < len(jobs)):
            print(f"{entry.dataset}/{category} {jobs[0].detector}: {len(jobs)} evaluation jobs"
                  f" on {Path(jobs[0].checkpoint).name}, {len(jobs) - len(todo)} already done",
                  flush=True)
        return todo

    def on_result(self, job: BenchJob, result: dict[str, Any]) -> None:
        from pgray.tracking.row_store import append_rows

        # Each finished job is in the table before the next one is awaited: an interrupted
        # benchmark loses nothing it finished.
        append_rows(self.out, result["rows"])
        _log_job(self.uri, self.parent.run_id, job, result)
        self._keep_panels(job, result.get("panels") or {})
        self.ran += 1

    def _keep_panels(self, job: BenchJob, panels: dict[str, bytes]) -> None:
        """OUT/panels/<job>/panel_NN.png: what the report shows (MLflow has them too)."""
        import re

        from pgray.io import atomic_write
        from pgray.tracking.report import PANELS_DIR

        folder = self.out / PANELS_DIR / re.sub(r"[^A-Za-z0-9_.-]+", "-", job.label())
        for name, data in panels.items():
            atomic_write(folder / Path(name).name, lambda f, d=data: f.write(d))

    def finalize(self, failed: list[tuple[BenchJob, str]] = ()) -> BenchmarkResult:
        """The tables, figures, cards and report of this run's jobs. Where some of its jobs
        `failed`, results.md and report.html say first that they are incomplete and no card
        is written (the leaderboard ranks cards; those of an earlier run are removed, since
        they no longer match the tables); the finished rows stay in results.parquet for the
        re-run. The caller raises on the failures after this."""
        from pgray.attacks.checks import reliability_flags
        from pgray.core.eval_version import git_commit
        from pgray.io import write_text
        from pgray.tracking import cards as robustness
        from pgray.tracking import tables
        from pgray.tracking.mlflow_runs import flush_all
        from pgray.tracking.plots import robustness_curves
        from pgray.tracking.report import benchmark_report_data, write_report

        flush_all()  # what the jobs' runs still hold
        keys = {j.key for j in self.jobs}
        rows = reliability_flags([r for r in tables.read_rows(self.out) if r["job_key"] in keys])
        tables.append_rows(self.out, rows)
        _tag_flags(self.uri, self.parent, rows)
        incomplete = tables.incomplete_note(
            [f"{job.label()}: {why}" for job, why in failed if job.key in keys], len(keys))
        table = tables.markdown_table(rows)
        md = write_text(self.out / "results.md", f"# Benchmark {self.cfg.name}\n\n"
                        + (f"**{incomplete}**\n\n" if incomplete else "") + f"{table}\n")
        for path in [self.out / tables.RESULTS_FILE, md, *robustness_curves(rows, self.out)]:
            self.parent.log_artifact(path)
        cards = [] if incomplete else robustness.write_cards(robustness.build_cards(
            rows, git_commit=git_commit(),
            reported=robustness.paper_numbers(self.cfg.datasets)), self.out)
        if incomplete:
            for stale in sorted((self.out / robustness.CARDS_DIR).glob("*.json")):
                stale.unlink()
            self.parent.set_tags({"pgray.state": "incomplete"})
        for path in cards:
            self.parent.log_artifact(path, robustness.CARDS_DIR)
        report = benchmark_report_data(self.cfg, self.out, rows)
        report.incomplete = incomplete
        self.parent.log_artifact(write_report(report, self.out))
        self.parent.finish()
        return BenchmarkResult(rows, self.out / tables.RESULTS_FILE, md, table,
                               skipped=len(keys) - self.ran, ran=self.ran,
                               mlflow_run_id=self.parent.run_id, cards=cards,
                               incomplete=incomplete)


def run_benchmark(
    cfg: BenchmarkConfig,
    out: Path,
    *,
    mlflow_uri: str | None = None,
    parent_run_id: str | None = None,
    force: bool = False,
    progress: bool = True,
    sequential: bool = False,
    address: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    verbose: bool = False,
) -> BenchmarkResult:
    from pgray.distributed.cluster import resolve_storage
    from pgray.pipelines.benchmark_jobs import detectors_of
    from pgray.pipelines.train_eval import Evaluations, check_targets, resolve_targets
    from pgray.tracking.mlflow_store import check_tracking_uri, resolve_tracking_uri

    entries = cfg.entries()  # seeds applied
    targets = [(e, c, d) for e in entries for c in categories_of(e) for d in detectors_of(e)]
    missing = [t for t in targets if not checkpoint_path(*t).is_file()]
    _check_missing(cfg, missing)
    to_train = [(e, c) for e, c, d in missing if d is None]
    to_fit = [t for t in missing if t[2] is not None]
    space = training_space(cfg, to_train) if to_train else None
    if space is not None:  # on the driver, before anything is submitted
        check_targets(space, resolve_targets(space))
    store = resolve_storage(storage, out.resolve() / "ray") if to_train else None
    uri = resolve_tracking_uri(mlflow_uri)
    check_tracking_uri(uri)
    if to_train or not sequential:  # every check passes before the benchmark's run opens
        _connect(address, uri, store, [entry_root(e) for e in entries], verbose)
    run = BenchmarkRun(cfg, out, mlflow_uri=uri, parent_run_id=parent_run_id,
                       force=force, progress=progress, verbose=verbose)
    evaluations = Evaluations(cfg.actors, sequential=sequential, progress=progress)
    for target in targets:
        if target not in missing:
            evaluations.add(run.jobs_of(*target), run.on_result)
    from pgray.pipelines.fit_detector import BaselineFits

    fits = BaselineFits(cfg, run, evaluations, to_fit, sequential=sequential)
    trained = 0
    if space is not None:
        trained = train_missing(cfg, run, space, to_train, evaluations, storage=store,
                                resume=resume)
    evaluations.finish()  # and the fits: one wait for everything still to come
    result = run.finalize(evaluations.failures)  # marked incomplete where jobs failed
    result.trained, result.peak_actors = trained + fits.done, evaluations.peak_actors
    evaluations.check_failures()
    return result


def _check_missing(cfg: BenchmarkConfig, missing: list) -> None:
    for entry, category, detector in missing:
        name = "patchguard" if detector is None else detector.name
        where = f"{entry.dataset}/{category} ({name}) at {checkpoint_path(entry, category, detector)}"
        if detector is not None and not get_spec(detector.name).fitted:
            raise CheckpointError(f"no checkpoint for {where}: a {name} file cannot be trained"
                                  " here; give its path")
        if not cfg.train_missing:
            raise CheckpointError(f"no checkpoint for {where}; train or fit one, or set"
                                  " train_missing: true")
    _check_fits([d for _, _, d in missing if d is not None])


def fit_config(detector):
    """The DetectorConfig a benchmark entry's baseline is fitted with."""
    from pgray.config.base import from_dict
    from pgray.config.detector import DetectorConfig

    return from_dict(DetectorConfig, {"name": detector.name} | detector.fit, "fit")


def _check_fits(detectors: list) -> None:
    """Build each distinct baseline config once before anything is fitted, so a bad option of
    the last detector fails the benchmark at once, not after the others have been fitted."""
    import json

    from pgray.detectors.registry import build
    from pgray.errors import ConfigError

    seen: set[str] = set()
    for detector in detectors:
        key = json.dumps([detector.name, detector.fit], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            build(fit_config(detector))
        except ConfigError as err:
            raise ConfigError(f"detectors ({detector.name}) fit: {err}") from err


def get_spec(name: str):
    from pgray.detectors.registry import get

    return get(name)


def _connect(address: str | None, uri: str, storage: str | None, roots: list[str],
             verbose: bool = True) -> None:
    """Join Ray; refuse a tracking store, a storage or a dataset root some node cannot use."""
    from pgray.distributed.cluster import check_tracking_reachable, connect
    from pgray.distributed.preflight import check_nodes

    connect(address, worker_logs=verbose)
    check_tracking_reachable(uri)
    check_nodes(storage, [r for r in roots if r])


def training_space(cfg: BenchmarkConfig, missing: list[tuple[DatasetEntry, str]]):
    """The benchmark's trainings as a search space with nothing searched: one trial per
    missing category (and seed), the fixed config `cfg.train`, no early stopping."""
    from pgray.config.search_sections import DatasetTargets, Resources
    from pgray.config.search_space import space_from_dict
    from pgray.pipelines.benchmark_jobs import entry_root

    by_entry: dict[int, list[str]] = defaultdict(list)
    order = []
    for entry, category in missing:
        if id(entry) not in by_entry:
            order.append(entry)
        by_entry[id(entry)].append(category)
    datasets = [DatasetTargets(dataset=e.dataset, root=entry_root(e), categories=by_entry[id(e)],
                               options=dict(e.options), seed=e.seed) for e in order]
    from pgray.config.base import to_dict

    return space_from_dict({
        "name": f"{cfg.name}-train", "fixed": cfg.train, "datasets": to_dict(datasets),
        "objectives": [{"metric": "loss", "mode": "min"}], "budget": {"trials": 1},
        "scheduler": {"type": "none"}, "resources": to_dict(cfg.train_resources or Resources()),
        "final_eval": {"enabled": False},
    })


def train_missing(cfg: BenchmarkConfig, run: BenchmarkRun, space, missing, evaluations, *,
                  storage: str, resume: bool) -> int:
    """Train the missing checkpoints (`space`: training_space of them) as one Tune
    experiment; each category's evaluation jobs join the pool the moment its training ends.
    Returns how many were trained."""
    import dataclasses

    from pgray.config.search_sections import target_key
    from pgray.distributed.cluster import resolve_worker_gpus
    from pgray.distributed.tune import SweepContext
    from pgray.distributed.tune_console import tune_verbosity
    from pgray.pipelines.train_eval import resolve_targets, train_each_target

    where = {target_key(e.dataset, c, e.seed): (e, c) for e, c in missing}
    res = space.resources
    res = dataclasses.replace(res, gpus_per_worker=resolve_worker_gpus(
        res.gpus_per_worker, allow_cpu=res.allow_cpu, where="train_resources.gpus_per_worker"))
    ctx = SweepContext(space=space, targets={t.key: t for t in resolve_targets(space)},
                       mlflow_uri=run.uri, parent_run_id=run.parent.run_id,
                       train_storage=f"{storage.rstrip('/')}/{space.name}-runs",
                       resources=res)
    return train_each_target(
        ctx, storage, resume=resume, verbose=tune_verbosity(run.progress, run.verbose),
        console=run.progress and not run.verbose,
        dest=lambda key: checkpoint_path(*where[key]),
        on_ready=lambda key: evaluations.add(run.jobs_of(*where[key]), run.on_result),
        evaluations=evaluations)


def _log_job(uri: str, parent_id: str, job: BenchJob, result: dict[str, Any]) -> None:
    """One MLflow child run per job: its parameters, and each row's metrics under its attack
    name (`worst_case/image_auroc`, `protocol/pixel_auroc`, ...), with their intervals
    (`worst_case/image_auroc_ci_low`, ...)."""
    import tempfile

    from pgray.tracking.mlflow_runs import open_run_later

    rows = result["rows"]
    child = open_run_later(uri, f"bench-job:{job.key}", run_name=job.label(),
                             parent_run_id=parent_id,
                             tags={"pgray.kind": "benchmark-job", "dataset": job.dataset,
                                   "category": job.category, "setting": job.setting,
                                   "threat": job.threat, "eps": job.eps})
    child.log_params({f"{r['attack']}.{k}": v for r in rows for k, v in r.items()
                      if k not in (*METRIC_KEYS, *INTERVAL_KEYS, "wall_s", "time_s", "flags",
                                   "flag_notes")})
    metrics = {f"{r['attack']}/{k}": r[k] for r in rows for k in (*METRIC_KEYS, *INTERVAL_KEYS)
               if k in r}
    child.log_metrics(metrics | {"wall_s": rows[0]["wall_s"]}, step=0)
    if result["panels"]:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in result["panels"].items():
                path = Path(tmp) / name
                path.write_bytes(data)
                child.log_artifact(path, "panels")
    child.finish(wait=False)  # an outage is waited out once, when the benchmark ends


def _tag_flags(uri: str, parent, rows: list[dict[str, Any]]) -> None:
    """Reliability flags as MLflow tags: on each job's run and, per category and eps, on the
    benchmark's run (`pgray.flags.<dataset>.<category>.eps<e>`), with their numbers."""
    from pgray.tracking.mlflow_runs import open_run_later

    by_job: dict[str, list[str]] = defaultdict(list)
    summary: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        notes = [f"{r['attack']} {note}" for note in r.get("flag_notes") or []]
        by_job[r["job_key"]] += notes
        if notes:
            summary[f"pgray.flags.{r['dataset']}.{r['category']}.{_budget(r)}"] += notes
    for job_key, notes in by_job.items():
        if notes:
            open_run_later(uri, f"bench-job:{job_key}").set_tags(
                {"pgray.flags": "; ".join(sorted(set(notes)))[:5000]})
    parent.set_tags({k: "; ".join(sorted(set(v)))[:5000] for k, v in summary.items()})


def _budget(row: dict[str, Any]) -> str:
    """`eps8` for linf (and clean) rows, `<threat>_eps<e>` for the others."""
    threat = row.get("threat") or "linf"
    return (f"eps{row['eps']:g}" if threat in ("linf", "none")
            else f"{threat}_eps{row['eps']:g}")
