"""The benchmark's job grid (no Ray): threats beyond linf, their budgets, and job keys that
stay what they were for linf jobs."""

from __future__ import annotations

import dataclasses

import pytest

from pgray.config import AttackConfig, SuiteConfig
from pgray.config.base import from_dict, to_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.errors import ConfigError, PgrayError
from pgray.pipelines.components.jobs import CHECK, SUITE, BenchJob, job_grid

ENTRY = [{"dataset": "synthetic"}]


def _job(kind, eps, attacks, threat, suite=SuiteConfig()) -> BenchJob:
    return BenchJob(dataset="synthetic", root="", category="disc", checkpoint="c",
                    checkpoint_sha256="abc", kind=kind,
                    attacks=tuple(to_dict(a) for a in attacks),
                    suite=to_dict(suite) if kind in (SUITE, CHECK) else None, eps=eps,
                    mask_resize="nearest", batch_size=8, n_panels=0, n_test=10,
                    threat=threat if kind in (SUITE, CHECK) else "linf")


def test_a_grid_with_several_threats_has_a_suite_job_per_budget_of_each():
    cfg = from_dict(BenchmarkConfig, {
        "datasets": ENTRY, "eps": [8.0], "steps": [10],
        "threats": [{"threat": "l2", "eps": [0.5, 1.0]}, {"threat": "patch", "eps": [0.02]}],
        "extra_attacks": [{"threat": "l2", "method": "apgd", "library": "torchattacks"}]})
    grid = job_grid(cfg)
    suites = [(threat, eps) for kind, eps, _, threat in grid if kind == SUITE]
    assert suites == [("linf", 8.0), ("l2", 0.5), ("l2", 1.0), ("patch", 0.02)]
    extras = [(a[0].threat, eps) for kind, eps, a, _ in grid if kind == "attack"]
    assert extras == [("l2", 0.5), ("l2", 1.0)]  # at the budgets of its own threat
    jobs = [_job(*cell) for cell in grid]
    assert len({j.key for j in jobs}) == len({j.setting for j in jobs}) == len(jobs)
    by_setting = {j.setting: j for j in jobs}
    assert {"adaptive_suite_eps8", "adaptive_suite_l2_eps0.5",
            "adaptive_suite_patch_eps0.02"} <= set(by_setting)
    patch = [m.name for m in by_setting["adaptive_suite_patch_eps0.02"].suite_members()]
    assert patch == ["patch_det", "patch_loc", "patch_random_det"]
    l2 = by_setting["adaptive_suite_l2_eps1"].suite_members()
    assert [m.name for m in l2] == ["pgd_det", "pgd_loc", "apgd_det", "apgd_loc", "square_det"]
    assert {m.cfg.threat for m in l2} == {"l2"} and {m.cfg.eps for m in l2} == {1.0}
    linf = by_setting["adaptive_suite_eps8"].suite_members()
    assert linf[0].name == "protocol" and {m.cfg.threat for m in linf} == {"linf"}


def test_a_job_key_holds_the_eval_version_and_the_data():
    """Keys decide what a re-run skips: a row of older evaluation code, of another test split
    or of another dataset root answers another job."""
    from pgray.core.eval_version import EVAL_VERSION

    job = dataclasses.replace(_job(SUITE, 8.0, [AttackConfig(steps=1000, eps=8.0)], "linf"),
                              data_fingerprint="f00d")
    assert job.eval_version == EVAL_VERSION >= 2
    others = [dataclasses.replace(job, **change) for change in (
        {"eval_version": 1}, {"data_fingerprint": "beef"}, {"root": "/elsewhere"},
        {"seed": 3}, {"threat": "l2"})]
    assert len({job.key, *(o.key for o in others)}) == 1 + len(others)
    # what does not change a row's number does not change its key
    same = dataclasses.replace(job, batch_size=64, n_panels=3, git_commit="a" * 40)
    assert same.key == job.key


def _checkpoint_and_roots(tmp_path, sizes=(0,)) -> tuple:
    """A tiny PatchGuard file and one generated dataset root per entry of `sizes` (extra
    test images: another split)."""
    import torch

    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.core.checkpoint import save_checkpoint
    from pgray.core.model import PatchGuard
    from pgray.data.synthetic import generate

    config = ExperimentConfig(model=tiny_model_config(depth=2))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", PatchGuard(config.model), config)
    roots = [generate(tmp_path / f"data{i}", seed=0, size=16, n_train=2, n_test=2 + extra,
                      categories=("disc",)) for i, extra in enumerate(sizes)]
    return ckpt, roots


def _bench(ckpt, roots) -> BenchmarkConfig:
    return from_dict(BenchmarkConfig, {
        "name": "t", "eps": [8.0], "steps": [2], "suite": "protocol",
        "datasets": [{"dataset": "synthetic", "root": str(r), "categories": ["disc"],
                      "checkpoint": str(ckpt)} for r in roots]})


def test_entries_that_share_a_checkpoint_but_not_their_data_are_separate_jobs(tmp_path):
    """Two entries of one dataset, category and checkpoint on two roots (two copies of the
    data, one of them changed) used to collapse into one job: one copy went unevaluated."""
    from pgray.pipelines.components.jobs import expand_jobs

    jobs = expand_jobs(_bench(*_checkpoint_and_roots(tmp_path, (0, 1))))
    assert len(jobs) == 4  # clean and the suite at eps 8, per root
    assert len({j.key for j in jobs}) == 4
    assert len({j.data_fingerprint for j in jobs}) == 2


def _row(job, attack: str = "clean", **extra) -> dict:
    return {"job_key": job.key, "row_key": f"{job.key}:{attack}", "attack": attack,
            "setting": attack, "dataset": job.dataset, "category": job.category,
            "detector": job.detector, "threat": "none", "eps": job.eps, "steps": 0,
            "image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.5, "flags": [],
            "flag_notes": []} | extra


def test_rows_of_older_code_or_other_data_are_recomputed_not_reused(tmp_path, mlflow_uri):
    """An OUT folder filled by an older evaluation version, or on a test split that has
    changed since, is evaluated again on a re-run without --force."""
    from pgray.config.benchmark import ActorConfig
    from pgray.pipelines.components.jobs import jobs_for
    from pgray.pipelines.components.targets import JobTarget
    from pgray.pipelines.runners.evaluations import Evaluations
    from pgray.pipelines.runners.queue import JobQueue
    from pgray.tracking.benchmark_run import BenchmarkRun
    from pgray.tracking.tables import append_rows, read_rows

    ckpt, roots = _checkpoint_and_roots(tmp_path)
    cfg, out = _bench(ckpt, roots), tmp_path / "out"
    entry = cfg.entries()[0]
    clean, suite = jobs_for(cfg, entry, "disc")
    # the suite job's rows from an older version and from an earlier test split; the clean
    # job's row from this version on this split
    append_rows(out, [_row(dataclasses.replace(suite, eval_version=1), "worst_case"),
                      _row(dataclasses.replace(suite, data_fingerprint="0123456789abcdef"),
                           "protocol"), _row(clean)])
    run = BenchmarkRun(cfg.name, out, mlflow_uri=mlflow_uri, parent_run_id=None, force=False)
    evaluations = Evaluations(ActorConfig(), sequential=True, progress=False)
    queue = JobQueue(cfg, run, evaluations)
    # every job of the target is the run's (its tables show both); only the suite runs again
    assert queue.enqueue(JobTarget(entry, "disc")) == [clean, suite]
    evaluations.finish()
    assert run.ran == 1
    assert {r["job_key"] for r in read_rows(out)} >= {clean.key, suite.key}


def test_a_failed_run_leaves_results_marked_incomplete_and_no_cards(tmp_path, mlflow_uri):
    """A job failed: results.md and report.html say first that they are incomplete, no card
    is written and an earlier run's cards are gone; the finished rows stay for the re-run."""
    from pgray.pipelines.components.jobs import jobs_for
    from pgray.tracking.benchmark_finish import finish_benchmark
    from pgray.tracking.benchmark_run import BenchmarkRun
    from pgray.tracking.tables import append_rows, read_rows

    ckpt, roots = _checkpoint_and_roots(tmp_path)
    cfg, out = _bench(ckpt, roots), tmp_path / "out"
    (out / "cards").mkdir(parents=True)
    (out / "cards" / "patchguard__synthetic__disc__linf.json").write_text("{}")
    run = BenchmarkRun(cfg.name, out, mlflow_uri=mlflow_uri, parent_run_id=None, force=False)
    clean, suite = jobs_for(cfg, cfg.entries()[0], "disc")
    append_rows(out, [_row(clean)])
    result = finish_benchmark(run, cfg, {clean.key, suite.key}, [(suite, "RuntimeError: boom")])
    text = (out / "results.md").read_text()
    assert text.startswith("# Benchmark t\n\n**Incomplete: 1 of 2 evaluation jobs failed"
                           " (synthetic/disc protocol_suite_eps8: RuntimeError: boom)")
    assert "Incomplete: 1 of 2" in (out / "report.html").read_text()
    assert result.incomplete and result.cards == [] and not list((out / "cards").iterdir())
    assert [r["attack"] for r in read_rows(out)] == ["clean"]


@pytest.mark.parametrize("threats, key", [
    ([{"threat": "patch", "eps": [0.02, 1.5]}], r"threats\[0\]\.eps\[1\]: must be in \(0, 1\)"),
    ([{"threat": "l2", "eps": [-1.0]}], r"threats\[0\]\.eps\[0\]: must be > 0"),
    ([{"threat": "l2", "eps": [1.0]}, {"threat": "l2", "eps": [2.0]}],
     r"threats\[1\]\.threat: l2 is listed twice"),
])
def test_threat_budgets_are_refused_with_their_key(threats, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(BenchmarkConfig, {"datasets": ENTRY, "threats": threats})


def test_an_extra_attack_of_a_threat_without_budgets_is_refused():
    with pytest.raises(ConfigError, match=r"extra_attacks\[0\]\.threat: patch has no budgets"):
        from_dict(BenchmarkConfig, {"datasets": ENTRY, "extra_attacks": [
            {"threat": "patch", "eps": 0.02}]})


def test_a_job_failing_in_this_process_is_reported_and_the_others_go_on(tmp_path):
    """Sequential evaluations fail as the actors do: the failed job is named, the others'
    results land (before, the first error ended the run before results were written)."""
    from pgray.config.benchmark import ActorConfig
    from pgray.pipelines.components.jobs import jobs_for
    from pgray.pipelines.runners.evaluations import Evaluations

    ckpt, roots = _checkpoint_and_roots(tmp_path)
    cfg = _bench(ckpt, roots)
    clean, suite = jobs_for(cfg, cfg.entries()[0], "disc")
    broken = dataclasses.replace(suite, checkpoint=str(tmp_path / "gone.pt"),
                                 checkpoint_sha256="0" * 16)
    landed = []
    evaluations = Evaluations(ActorConfig(), sequential=True, progress=False)
    evaluations.add([clean, broken], lambda job, result: landed.append(job.key))
    with pytest.warns(UserWarning, match="failed"):
        evaluations.finish()
    assert landed == [clean.key]
    assert [(job.key, why.split(":")[0]) for job, why in evaluations.failures] == [
        (broken.key, "CheckpointError")]
    with pytest.raises(PgrayError, match="1 evaluation job"):
        evaluations.check_failures()
