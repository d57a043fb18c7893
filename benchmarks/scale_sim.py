"""pgray's scheduler on a simulated cluster of N logical GPUs (benchmarks/README.md, "Scale").

    python benchmarks/scale_sim.py --gpus 64 --workload paper
    python benchmarks/scale_sim.py --gpus 512 --workload search --trials 56
    python benchmarks/scale_sim.py --gpus 64 --workload paper --lose-nodes 0.25

Trainings and evaluation jobs sleep for what `--plan`'s cost model gives them (H100 rates),
scaled down so the run takes about --host-minutes; Tune, Optuna, ASHA, the evaluation pool,
checkpoint files, MLflow (MLFLOW_TRACKING_URI, else SQLite in OUT) and retries are real
(pgray.pipelines.simulate). Prints the makespan against its lower bound, GPU idle time (and
OUT/idle.png over time), the longest wait of work while GPUs it needed stood idle, driver CPU
and event latency, MLflow writes per second and those lost, object-store bytes, and the
plan's wall time beside the simulated one; OUT/summary.json holds the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEARCH_SPACE = ROOT / "pgray" / "config" / "search_spaces" / "robust.yaml"
PAPER = ROOT / "benchmarks" / "paper.yaml"


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--workload", choices=("paper", "search"), required=True)
    ap.add_argument("--nodes", type=int, default=None,
                    help="logical worker nodes (default: one per 64 GPUs, at least 2)")
    ap.add_argument("--host-minutes", type=float, default=4.0,
                    help="host time the lower bound is scaled to (sets the scale)")
    ap.add_argument("--datasets", default=None,
                    help="paper: only these datasets (comma-separated)")
    ap.add_argument("--trials", type=int, default=56, help="search: trials per target")
    ap.add_argument("--max-concurrent", type=int, default=None,
                    help="search: trials at once at most (resources.max_concurrent; each"
                         " trial process holds about 160 MB, mostly ray.tune's imports)")
    ap.add_argument("--actors", type=int, default=None,
                    help="evaluation actors at most (default: the config's)")
    ap.add_argument("--lose-nodes", type=float, default=0.0,
                    help="fraction of the worker nodes removed mid-run")
    ap.add_argument("--lose-at", type=float, default=0.3,
                    help="when, as a fraction of the lower bound")
    ap.add_argument("--mlflow-server", action="store_true",
                    help="log through an MLflow server (its store: SQLite in OUT), as a"
                         " cluster does, instead of every process opening the SQLite file")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args(argv)


def load_workload(args, cluster, folder: Path):
    import dataclasses

    from pgray.config.base import from_dict, load_yaml
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.config.search_space import SearchSpace
    from pgray.pipelines.simulate import paper_workload, search_workload

    if args.workload == "paper":
        cfg = BenchmarkConfig.from_yaml(PAPER)
        if args.datasets:
            keep = args.datasets.split(",")
            cfg = dataclasses.replace(cfg, datasets=[d for d in cfg.datasets
                                                     if d.dataset in keep])
        if args.actors:
            cfg = dataclasses.replace(cfg, actors=dataclasses.replace(cfg.actors,
                                                                      count=args.actors))
        return paper_workload(cfg, cluster, folder)
    data = load_yaml(SEARCH_SPACE)
    data["budget"] = data["budget"] | {"trials": args.trials}
    if args.max_concurrent:
        data["resources"] = data["resources"] | {"max_concurrent": args.max_concurrent}
    if args.actors:
        data.setdefault("final_eval", {})["actors"] = {"count": args.actors}
    return search_workload(from_dict(SearchSpace, data), cluster, folder)


def mlflow_counts(uri: str) -> dict[str, int]:
    """Rows MLflow's SQLite store holds (metrics, params, tags), and the trials' loss points."""
    if not uri.startswith("sqlite:///"):
        return {}
    db = sqlite3.connect(uri.removeprefix("sqlite:///"))
    try:
        rows = {t: db.execute(f"select count(*) from {t}").fetchone()[0]  # noqa: S608
                for t in ("metrics", "params", "tags")}
        rows["loss_points"] = db.execute(
            "select count(*) from metrics where key = 'loss'").fetchone()[0]
    finally:
        db.close()
    return rows


def start_mlflow_server(db: Path) -> tuple[str, subprocess.Popen]:
    """`mlflow server` on a free local port over the SQLite file `db`; its URI and process."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2", "--backend-store-uri", f"sqlite:///{db}",
         "--default-artifact-root", str(db.parent / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=open(db.with_suffix(".server.log"), "w"))  # noqa: SIM115
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return uri, server
        except OSError:
            time.sleep(1)
    server.kill()
    raise RuntimeError(f"mlflow server did not answer at {uri}")


def lose_nodes(cluster, fraction: float, after_s: float, record: dict) -> threading.Thread:
    """After `after_s` host seconds, remove that fraction of the worker nodes."""
    def run() -> None:
        time.sleep(after_s)
        workers = list(cluster.worker_nodes)
        gone = workers[:max(1, round(fraction * len(workers)))]
        for node in gone:
            cluster.remove_node(node)
        record.update(at=time.time(), nodes=len(gone))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv=None) -> dict:
    args = parse(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray's files (and its note of the running cluster, which a plain ray.init() elsewhere on
    # this host would join) in a folder of this run's own; short, for Ray's socket paths
    import tempfile

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="pgsim-", dir="/tmp")
    from pgray.distributed.simulation import Simulation, start_logical_cluster
    from pgray.pipelines.plan.cluster import Cluster
    from pgray.pipelines.plan.estimate import FIXED_COSTS
    from pgray.pipelines.simulate import run_simulated
    from pgray.tracking.timeline import (
        TRIALS_LOG,
        build_timeline,
        latencies,
        lower_bound,
        plot_idle,
        read_lines,
    )

    out = (args.out or ROOT / "runs" / f"scale_sim-{args.workload}-{args.gpus}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.jsonl"):
        stale.unlink()
    server = None
    if args.mlflow_server:
        (out / "mlflow.db").unlink(missing_ok=True)
        uri, server = start_mlflow_server(out / "mlflow.db")
    else:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out}/mlflow.db"
    nodes = args.nodes or max(2, args.gpus // 64)
    cpus_per_gpu = 4.0
    described = Cluster(args.gpus * cpus_per_gpu, float(args.gpus), f"simulated {args.gpus}")
    work = load_workload(args, described, out)
    planned = _planned_bound(work, args.gpus)
    scale = args.host_minutes * 60 / planned
    sim = Simulation(scale=scale, log_dir=str(out), epoch_s=work.epoch_s,
                     start_s=FIXED_COSTS.training_s, report_every=work.report_every)
    print(f"{args.workload} on {args.gpus} logical GPUs ({nodes} nodes): planned lower bound"
          f" {planned / 3600:.2f} h, scale {scale:.2e} host s per simulated s", flush=True)
    cluster = start_logical_cluster(args.gpus, nodes, cpus_per_gpu)
    faults: dict = {}
    try:
        if args.lose_nodes:
            lose_nodes(cluster, args.lose_nodes, args.lose_at * planned * scale, faults)
        outcome = run_simulated(work, sim, out, uri)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    trials = read_lines(out / TRIALS_LOG)
    timeline = build_timeline(out, outcome, scale=scale, gpus=args.gpus,
                              training_gpus=work.gpus_per_training, job_gpus=work.actors.gpus)
    bound = lower_bound(work, trials, args.gpus, FIXED_COSTS.training_s)
    host_s = outcome.ended - outcome.began
    rows = mlflow_counts(f"sqlite:///{out}/mlflow.db" if server else uri)
    summary = {
        "workload": args.workload, "gpus": args.gpus, "nodes": nodes, "scale": scale,
        "mlflow": "server" if server else uri.split(":")[0],
        "trials": len({t["trial"] for t in trials}), "jobs": len(outcome.enqueued),
        "makespan_h": timeline.makespan / 3600, "bound_work_h": bound["work"] / 3600,
        "bound_chain_h": bound["chain"] / 3600, "ratio": timeline.makespan / bound["bound"],
        "idle_pct": 100 * timeline.idle_fraction(),
        "longest_idle_wait_s": timeline.idle_while_waiting(),
        "plan_wall_h": work.plan_wall_s / 3600, "host_s": host_s,
        "driver_cpu_pct": 100 * outcome.cpu_s / host_s,
        "latency_host_s": latencies(out, outcome),
        "mlflow_rows": rows,
        "mlflow_rows_per_host_s": sum(rows.get(t, 0) for t in ("metrics", "params", "tags"))
        / host_s,
        "mlflow_loss_points_missing": _missing_points(trials, work, rows),
        "actors_peak": outcome.peak_actors, "actor_starts": outcome.actor_starts,
        "store_bytes_put": outcome.store_bytes_put,
        "store_peak_bytes": outcome.store_peak_bytes,
        "store_peak_checkpoints": outcome.store_peak_files,
        "jobs_failed": len(outcome.failures),
        "jobs_not_delivered": sum(k not in outcome.delivered for k in outcome.enqueued),
        "jobs_delivered_twice": sum(len(v) > 1 for v in outcome.delivered.values()),
        "faults": _faults(faults, outcome, scale) | _redone(trials, work, scale),
    }
    plot_idle(timeline, out / "idle.png",
              f"{args.workload}, {args.gpus} GPUs: GPUs idle over the run")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _print(summary, out)
    return summary


def _planned_bound(work, gpus: int) -> float:
    """The lower bound before the run, every trial at full length (simulated seconds)."""
    from pgray.pipelines.plan.estimate import FIXED_COSTS

    n = work.trials_per_target
    train = {k: FIXED_COSTS.training_s + work.epochs[k] * s for k, s in work.epoch_s.items()}
    jobs = {k: [j.seconds for j in js] for k, js in work.jobs.items()}
    total = sum(n * t * work.gpus_per_training for t in train.values()) + work.actors.gpus * (
        sum(sum(v) for v in jobs.values()) + n * sum(work.rank_job_s.values()))
    chain = max(train[k] + max(jobs.get(k, [0.0]) + [work.rank_job_s.get(k, 0.0)])
                for k in train)
    return max(total / gpus, chain)


def _missing_points(trials, work, rows) -> int | None:
    """Loss points the trials reported that MLflow does not hold (its failures)."""
    if "loss_points" not in rows:
        return None
    reached: dict[str, tuple[str, int]] = {}
    for t in trials:
        reached[t["trial"]] = (t["target"], max(t["to_epoch"],
                                                reached.get(t["trial"], ("", 0))[1]))
    expected = sum(-(-n // work.report_every[k]) for k, n in reached.values())
    return max(0, expected - rows["loss_points"])


def _redone(trials, work, scale: float) -> dict:
    """Trial attempts that resumed from a checkpoint (a node lost under them; the attempt
    that died logs nothing) and the simulated GPU-hours of training done twice that the logs
    show (attempts that both logged the same epochs)."""
    by_trial: dict[str, list] = {}
    for t in trials:
        by_trial.setdefault(t["trial"], []).append(t)
    redone, resumed = 0.0, 0
    for runs in by_trial.values():
        resumed += sum(r["from_epoch"] > 0 for r in runs)
        done = sum(r["to_epoch"] - r["from_epoch"] for r in runs)
        last = max(r["to_epoch"] for r in runs)
        redone += (done - last) * work.epoch_s[runs[0]["target"]]
    return {"trials_resumed": resumed, "training_redone_gpu_h": redone / 3600}


def _faults(record: dict, outcome, scale: float) -> dict:
    """When (simulated hours into the run) and how many nodes were lost."""
    if not record:
        return {}
    return {"nodes_lost": record["nodes"], "lost_at_h": (record["at"] - outcome.began) / scale
            / 3600}


def _print(s: dict, out: Path) -> None:
    w = s["longest_idle_wait_s"]
    lat = s["latency_host_s"]
    print(f"\n{s['workload']} on {s['gpus']} GPUs: {s['trials']} trainings, {s['jobs']} jobs")
    bound = max(s["bound_work_h"], s["bound_chain_h"])
    print(f"makespan {s['makespan_h']:.2f} h; lower bound {bound:.2f} h (work / GPUs {s['bound_work_h']:.2f} h, longest chain"
          f" {s['bound_chain_h']:.2f} h); ratio {s['ratio']:.2f}")
    print(f"plan's wall time {s['plan_wall_h']:.2f} h against simulated {s['makespan_h']:.2f} h")
    print(f"GPUs idle {s['idle_pct']:.1f} % of the run (over time: {out / 'idle.png'});"
          " longest a piece of work waited while its GPUs stood idle: "
          + ", ".join(f"{k} {v / 60:.1f} min" for k, v in w.items()))
    print(f"driver CPU {s['driver_cpu_pct']:.0f} % of one core over {s['host_s']:.0f} host s"
          " (skewed on a shared 2-core host); driver heard of a job's end after"
          f" {lat['job_p50']:.2f} s (p95 {lat['job_p95']:.2f}, max {lat['job_max']:.2f}),"
          f" a trial's after {lat['trial_p50']:.2f} s (p95 {lat['trial_p95']:.2f})")
    print(f"MLflow {s['mlflow_rows_per_host_s']:.1f} rows/s ({s['mlflow_rows']}),"
          f" loss points missing: {s['mlflow_loss_points_missing']}")
    print(f"evaluation actors: {s['actors_peak']} at most, {s['actor_starts']} started;"
          f" object store: {s['store_bytes_put']:,} checkpoint bytes put,"
          f" {s['store_peak_bytes']:,} held at most ({s['store_peak_checkpoints']} checkpoints)")
    print(f"jobs failed {s['jobs_failed']}, not delivered {s['jobs_not_delivered']}, delivered"
          f" twice {s['jobs_delivered_twice']}; faults: {s['faults']}")


if __name__ == "__main__":
    main()
