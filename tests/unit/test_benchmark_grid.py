"""The benchmark's job grid (no Ray): threats beyond linf, their budgets, and job keys that
stay what they were for linf jobs."""

from __future__ import annotations

import pytest

from pgray.config import AttackConfig, SuiteConfig
from pgray.config.base import from_dict, to_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.errors import ConfigError
from pgray.pipelines.benchmark_jobs import CHECK, SUITE, BenchJob, job_grid

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


def test_a_linf_job_keeps_the_key_it_had_before_threats():
    """Keys decide what a resumed benchmark skips: the threat fields at their defaults leave
    them unchanged (the value below is the key this job had before threats existed)."""
    job = _job(SUITE, 8.0, [AttackConfig(steps=1000, eps=8.0)], "linf")
    assert job.key == "f07dfe2b27f677aa" and job.setting == "adaptive_suite_eps8"


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
