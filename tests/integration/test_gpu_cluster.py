"""GPU accounting on a cluster whose nodes declare logical GPUs (`num_gpus=1` each): Ray then
schedules by GPU exactly as on a GPU cluster, without one. Workers handed a logical GPU on a
machine without CUDA train on the CPU over gloo, so these tests check scheduling, not CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray.cloudpickle
from helpers import tiny_experiment

from pgray.errors import ClusterError, ConfigError

pytestmark = pytest.mark.slow
# The worker and job classes below travel to Ray's actors by value: workers cannot import
# this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def gpu_cluster():
    """A head without resources and two nodes with 2 CPUs and 1 logical GPU each."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


class GpuReport:
    """A trivial evaluation worker: says which GPUs Ray gave its actor and which device it
    would use."""

    def __init__(self, assigned_gpus=None, node="local"):
        from pgray.core.device import pick_device

        self.gpus = list(assigned_gpus or [])
        self.device = str(pick_device(assigned_gpus=assigned_gpus))

    def run(self, job):
        import time

        time.sleep(0.5)
        return {"gpus": self.gpus, "device": self.device}


class Job:
    def __init__(self, i: int):
        self.key, self.cost = f"job{i}", float(i)

    def label(self) -> str:
        return self.key


def test_more_gpu_actors_than_gpus_do_not_deadlock(gpu_cluster):
    """Four one-GPU actors asked for on two GPUs: the pool holds two, and all four jobs end
    (the old pool sized itself from CPUs and waited forever on actors never scheduled)."""
    from pgray.distributed.actors import EvalPool

    results = {}
    pool = EvalPool(GpuReport, cpus=0.5, gpus=1.0, max_actors=4, max_retries=0,
                    on_result=lambda job, r: results.setdefault(job.key, r), progress=False)
    assert pool.limit == 2
    pool.add([Job(i) for i in range(4)])
    pool.drain()
    assert sorted(results) == ["job0", "job1", "job2", "job3"]
    assert pool.peak_actors == 2 and not pool.busy
    # each actor saw the GPU Ray gave it, and no CUDA here means the CPU
    assert all(len(r["gpus"]) == 1 and r["device"] == "cpu" for r in results.values())
    cpu_only = {}
    pool = EvalPool(GpuReport, cpus=0.5, gpus=0.0, max_actors=1, max_retries=0,
                    on_result=lambda job, r: cpu_only.setdefault(job.key, r), progress=False)
    pool.add([Job(9)])
    pool.drain()
    assert cpu_only["job9"]["gpus"] == []  # an actor Ray gave no GPU never picks one


class ActorReport(GpuReport):
    """Says which actor ran the job."""

    def run(self, job):
        import ray

        return super().run(job) | {"actor": ray.get_runtime_context().get_actor_id()}


class GpuHolder:
    """Holds a logical GPU until killed."""

    def ready(self) -> bool:
        return True


def test_a_job_never_waits_behind_an_actor_that_cannot_start(gpu_cluster):
    """One of the two GPUs held elsewhere: the second actor cannot start. Every job runs on the
    actor that is up, while the GPU is still held (the old pool bound a job to the actor
    still waiting for a GPU, where it waited until the other actor, idle, was ended and gave
    its GPU up)."""
    import time

    import ray

    from pgray.distributed.actors import EvalPool

    holder = ray.remote(num_cpus=0, num_gpus=1)(GpuHolder).remote()
    ray.get(holder.ready.remote())
    results = {}
    pool = EvalPool(ActorReport, cpus=0.5, gpus=1.0, max_actors=2, max_retries=0,
                    on_result=lambda job, r: results.setdefault(job.key, r), progress=False)
    assert pool.limit == 2
    pool.add([Job(i) for i in range(3)])
    give_up = time.monotonic() + 120  # a guard for the old pool, which never finishes here
    while pool.busy and time.monotonic() < give_up:
        pool.poll(timeout=0.5)
    done_while_held = sorted(results)
    ray.kill(holder)
    pool.drain()
    assert done_while_held == ["job0", "job1", "job2"]
    assert len({r["actor"] for r in results.values()}) == 1  # the one actor up ran them all


def test_train_takes_the_clusters_gpus_and_refuses_none(gpu_cluster, synthetic_root, tmp_path,
                                                        monkeypatch):
    from pgray.distributed.cluster import SHARED_TRACKING_ENV
    from pgray.pipelines.train import TrainRequest, train_category

    monkeypatch.setenv(SHARED_TRACKING_ENV, "1")  # one machine: the SQLite file is shared
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = tiny_experiment(synthetic_root, train={"epochs": 1})

    def request(name, **kw):
        return TrainRequest(config=cfg, out=tmp_path / name, name=name, workers=2,
                            use_ray=True, cpus_per_worker=0.5, progress=False, **kw)

    result = train_category(request("auto"))  # no --gpus-per-worker: one GPU per worker
    assert result.history[-1]["worker_gpus"] == 1.0
    assert result.history[-1]["param_spread"] == 0.0  # DDP (gloo) kept both ranks equal
    with pytest.raises(ClusterError, match="would train on CPUs"):
        train_category(request("zero", gpus_per_worker=0.0))
    with pytest.raises(ConfigError, match="cannot share GPUs"):
        train_category(request("half", gpus_per_worker=0.5))
    # asked for explicitly, CPUs on a GPU cluster are allowed (the rule the run above applies;
    # a CPU worker's training is what every CPU test runs)
    from pgray.distributed.cluster import resolve_worker_gpus

    assert resolve_worker_gpus(0.0, allow_cpu=True, where="train") == 0.0
    assert resolve_worker_gpus(None, allow_cpu=False, where="train") == 1.0


def test_local_tracking_file_is_refused_on_several_nodes(gpu_cluster, synthetic_root, tmp_path,
                                                         monkeypatch):
    from pgray.distributed.cluster import SHARED_TRACKING_ENV
    from pgray.pipelines.train import TrainRequest, train_category

    monkeypatch.delenv(SHARED_TRACKING_ENV, raising=False)
    cfg = tiny_experiment(synthetic_root, train={"epochs": 1})
    req = TrainRequest(config=cfg, out=tmp_path / "t", name="t", use_ray=True,
                       mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", progress=False)
    with pytest.raises(ClusterError, match="Run an MLflow server"):
        train_category(req)
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was logged


def test_benchmark_trains_at_once_and_evaluates_as_checkpoints_appear(
        gpu_cluster, synthetic_root, tmp_path, monkeypatch):
    """Two categories with two training seeds each, four missing checkpoints, each training
    asks for one GPU: two train at the same time (two GPUs), and the first evaluation starts
    before the last training ends. Each seed is its own checkpoint, trained with that seed;
    the table shows the mean across seeds. A second run trains and evaluates nothing again."""
    from mlflow.tracking import MlflowClient

    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.distributed.cluster import SHARED_TRACKING_ENV
    from pgray.pipelines.benchmark import run_benchmark
    from pgray.tracking.tables import read_rows

    monkeypatch.setenv(SHARED_TRACKING_ENV, "1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = synthetic_root
    train = tiny_experiment(root).to_dict()
    # long enough that the second wave of trainings (each 0.3 to 0.7 s an epoch in a reused
    # trial process) outlasts an evaluation actor's start many times over: at 8 epochs a
    # loaded 2-core host once started the first evaluation 0.3 s after the last training
    # ended (the actor took 6.5 s to start); at 30 both scale with the host alike
    train["train"] |= {"epochs": 30, "select_metric": "proxy_score"}
    cfg = from_dict(BenchmarkConfig, {
        "name": "gpus", "eps": [8.0], "steps": [2], "suite": "protocol", "n_panels": 0,
        "batch_size": 8, "train_missing": True, "seeds": [0, 1],
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": "all",
                      "checkpoint": str(tmp_path / "ckpt" / "{category}" / "checkpoint.pt")}],
        "train": {k: train[k] for k in ("model", "loss", "train")},
        "train_resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5, "trial_cpus": 0.25},
        "actors": {"count": 2, "cpus": 0.5},
    })
    result = run_benchmark(cfg, tmp_path / "out", mlflow_uri=uri, progress=False)
    assert result.trained == 4 and result.ran == 8
    rows = read_rows(tmp_path / "out")
    assert sorted((r["category"], r["seed"]) for r in rows if r["attack"] == "clean") == [
        ("disc", 0), ("disc", 1), ("weave", 0), ("weave", 1)]
    for category in ("disc", "weave"):  # two seeds, two models
        clean = [r for r in rows if r["category"] == category and r["attack"] == "clean"]
        assert len({r["checkpoint_sha256"] for r in clean}) == 2
        assert {Path(r["checkpoint"]).parent.name for r in clean} == {"seed0", "seed1"}
    table = result.table_text
    assert table.startswith("Mean over training seeds 0, 1")
    disc = sorted(r["image_auroc"] for r in rows if r["category"] == "disc"
                  and r["attack"] == "clean")
    line = next(x for x in table.splitlines() if x.startswith("| disc"))
    assert line.split("|")[2].strip().startswith(f"{100 * sum(disc) / 2:.1f}")
    # the selected weights were evaluated, and every row says so
    assert {r["checkpoint_file"] for r in rows} == {"best.pt"}
    assert all(isinstance(r["checkpoint_epoch"], int) for r in rows)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pgray").experiment_id
    trials = client.search_runs([exp], filter_string="tags.`pgray.kind` = 'trial'")
    spans = sorted((t.info.start_time / 1e3, t.info.end_time / 1e3) for t in trials)
    assert len(spans) == 4
    seeds = sorted((t.data.tags["category"], t.data.params["train.seed"]) for t in trials)
    assert seeds == [("disc", "0"), ("disc", "1"), ("weave", "0"), ("weave", "1")]
    assert spans[1][0] < spans[0][1], spans  # two trainings ran at the same time
    first_eval = min(r["finished_at"] - r["wall_s"] for r in rows)
    last_training_end = max(end for _, end in spans)
    assert first_eval < last_training_end, (first_eval, spans)

    again = run_benchmark(cfg, tmp_path / "out", mlflow_uri=uri, progress=False, resume=True)
    assert again.trained == 0 and again.ran == 0 and again.skipped == 8
