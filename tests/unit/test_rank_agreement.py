"""Rank agreement of proxy and test (pgray.tracking.rank_agreement), the trials it evaluates,
its short suite on a real model, and its config section."""

from __future__ import annotations

import math

import pytest

from pgray.config.base import from_dict
from pgray.config.search_sections import FinalEval
from pgray.errors import ConfigError
from pgray.tracking.rank_agreement import (
    RANK_METRICS,
    agreement,
    rank_agreement,
    values_on_test,
)
from pgray.tracking.trials import TrialSummary

PROXY = {"clean_image_auroc": "proxy_clean_image_auroc",
         "worst_image_auroc": "proxy_worst_image_auroc",
         "clean_pixel_auroc": "proxy_clean_pixel_auroc",
         "worst_pixel_auroc": "proxy_worst_pixel_auroc"}


def _trial(tid: str, target: str, values: dict[str, float], selected: bool = True,
           state: str = "completed", score: float | None = None) -> TrialSummary:
    """A trial whose last result carries `values` as its proxy at the selected epoch (or, not
    `selected`, at its last epoch)."""
    prefix = "selected_" if selected else ""
    metrics = {prefix + PROXY[m]: v for m, v in values.items()}
    if selected:  # the last epoch's own proxy differs: it must not be read
        metrics |= {"selected_epoch": 2.0} | {PROXY[m]: 0.5 for m in values}
    return TrialSummary(trial_id=tid, target=target, params={}, metrics=metrics, epochs=3,
                        state=state, checkpoint=f"/ckpt/{tid}",
                        scores={} if score is None else {"proxy_score": score})


def _sweep(values: list[float], targets=("synthetic/disc", "synthetic/weave"),
           test_of=lambda v: v, selected: bool = True):
    """Trials of each target with proxy values `values` (every metric), and their test
    values `test_of(value)`."""
    trials, tests = [], {}
    for target in targets:
        for i, v in enumerate(values):
            tid = f"{target.split('/')[1]}{i}"
            # a per-target shift: the targets differ, each ranks its own trials
            value = v / 2 + 0.1 * len(target)
            trials.append(_trial(tid, target, dict.fromkeys(RANK_METRICS, value), selected))
            tests[tid] = dict.fromkeys(RANK_METRICS, test_of(value))
    return trials, tests


def test_a_sweep_whose_proxy_equals_its_test_metric_agrees_exactly():
    """The issue's test: proxy = test on every trial gives Spearman and Kendall 1, per target
    and across targets, intervals [1, 1]."""
    trials, tests = _sweep([0.1, 0.9, 0.4, 0.7, 0.3])
    out = rank_agreement(trials, tests, bootstrap=200, seed=0)
    for metric in RANK_METRICS:
        entry = out[metric]
        assert entry["n"] == 10 and set(entry["targets"]) == {"synthetic/disc",
                                                              "synthetic/weave"}
        for method in ("spearman", "kendall"):
            assert entry[method] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
            for per in entry["targets"].values():
                assert per[method] == {"value": 1.0, "lo": 1.0, "hi": 1.0} and per["n"] == 5
    assert out["proxy_source"] == {"selected": 10}
    # the pairs the scatter draws: (proxy, test) per trial
    assert out["clean_image_auroc"]["pairs"]["synthetic/disc"]["disc1"] == [
        pytest.approx(0.9 / 2 + 1.4), pytest.approx(0.9 / 2 + 1.4)]


def test_a_proxy_that_ranks_in_reverse_gives_minus_one():
    trials, tests = _sweep([0.1, 0.9, 0.4, 0.7], test_of=lambda v: 5 - v)
    entry = rank_agreement(trials, tests, bootstrap=100)["worst_image_auroc"]
    for method in ("spearman", "kendall"):
        assert entry[method]["value"] == pytest.approx(-1.0)
        assert entry[method]["hi"] == pytest.approx(-1.0)


def test_a_partial_agreement_has_an_interval_around_its_value():
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    y = [0.2, 0.1, 0.4, 0.3, 0.6, 0.5, 0.8, 0.7]  # neighbours swapped
    entry = agreement({"t": list(zip(x, y))}, bootstrap=500, seed=1)
    rho = entry["spearman"]
    assert rho["value"] == pytest.approx(1 - 6 * 8 / (8 * 63))  # four swaps of 1: sum d^2 = 8
    assert -1 <= rho["lo"] < rho["value"] < rho["hi"] <= 1
    assert entry["kendall"]["value"] == pytest.approx((24 - 4) / 28)  # 4 discordant of 28
    # seeded: the same call gives the same interval
    assert agreement({"t": list(zip(x, y))}, bootstrap=500, seed=1) == entry


def test_too_few_trials_or_constant_values_give_nan_with_a_reason():
    few = agreement({"t": [(0.1, 0.2), (0.3, 0.4)]}, bootstrap=50)
    assert math.isnan(few["spearman"]["value"]) and math.isnan(few["kendall"]["lo"])
    assert "2 trial(s) paired" in few["targets"]["t"]["reason"]
    assert "no target has a defined coefficient" in few["reason"]
    tied = agreement({"t": [(0.5, 0.2), (0.5, 0.4), (0.5, 0.1)]}, bootstrap=50)
    assert math.isnan(tied["spearman"]["value"])
    assert tied["targets"]["t"]["reason"] == "the proxy is constant over the 3 trials (0.5000)"
    flat = agreement({"t": [(0.1, 0.0), (0.2, 0.0), (0.3, 0.0)]}, bootstrap=50)
    assert "the test is constant" in flat["targets"]["t"]["reason"]
    # one target defined, one not: the mean is the defined one's, the other says why
    mixed = agreement({"a": [(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)], "b": [(0.1, 0.2)]},
                      bootstrap=50)
    assert mixed["spearman"]["value"] == 1.0 and "reason" not in mixed
    assert "reason" in mixed["targets"]["b"] and mixed["n"] == 4


def test_without_a_selection_the_last_epoch_proxy_is_paired_and_said():
    trials, tests = _sweep([0.1, 0.9, 0.4], targets=("synthetic/disc",), selected=False)
    out = rank_agreement(trials, tests, bootstrap=20)
    assert out["proxy_source"] == {"last": 3}
    assert out["clean_image_auroc"]["spearman"]["value"] == 1.0
    # a trial never evaluated on the test split is left out, not paired with nothing
    del tests["disc0"]
    assert rank_agreement(trials, tests, bootstrap=0)["clean_image_auroc"]["n"] == 2


def test_test_values_come_from_the_clean_row_and_the_worst_case_pick():
    rows = [{"attack": "clean", "image_auroc": 0.9, "pixel_auroc": 0.8},
            {"attack": "robust", "image_auroc": 0.3, "pixel_auroc": 0.1},
            {"attack": "worst_case", "image_auroc": 0.2, "pixel_auroc": 0.1,
             "pixel_auroc_pick": 0.4}]
    assert values_on_test(rows) == {"clean_image_auroc": 0.9, "clean_pixel_auroc": 0.8,
                                    "worst_image_auroc": 0.2, "worst_pixel_auroc": 0.4}


def _space(**final_eval):
    from pgray.config.search_space import space_from_dict

    return space_from_dict({
        "name": "t", "fixed": {"data": {"dataset": "synthetic", "category": "disc"},
                               "train": {"attack": {"eps": 4.0}}},
        "search": {"loss.attention_lambda": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "objectives": [{"metric": "proxy_score", "mode": "max"}],
        "budget": {"trials": 5, "epochs": 3}, "scheduler": {"type": "none"},
        "final_eval": {"eps": [8.0]} | final_eval})


def test_a_cap_keeps_trials_spread_over_the_proxy_ranking():
    from pgray.pipelines.components.selection import chosen_trials

    scores = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.7, "e": 0.3}
    trials = [_trial(t, "synthetic/disc", {}, score=s) for t, s in scores.items()]
    trials += [_trial("f", "synthetic/disc", {}, state="error", score=1.0),
               _trial("g", "synthetic/disc", {}, state="stopped_early", score=0.2)]
    trials[-1].checkpoint = None  # stopped before its first checkpoint: nothing to evaluate
    every = chosen_trials(trials, _space())["synthetic/disc"]
    assert [t.trial_id for t in every] == ["a", "d", "c", "e", "b"]
    capped = chosen_trials(trials, _space(rank_agreement={"max_trials": 3}))
    assert [t.trial_id for t in capped["synthetic/disc"]] == ["a", "c", "b"]


def test_the_config_section_is_validated_with_its_key():
    fe = from_dict(FinalEval, {"eps": [2.0, 8.0]}, "final_eval")
    assert fe.rank_agreement.enabled and fe.rank_agreement.max_trials is None
    assert fe.rank_eps == 2.0 and not fe.recipe_baseline
    assert from_dict(FinalEval, {"rank_agreement": {"eps": 4}}).rank_eps == 4.0
    for section, key in [({"max_trials": 1}, "max_trials"), ({"steps": 0}, "steps"),
                         ({"eps": 300.0}, "eps"), ({"eps": 0.0}, "eps"),
                         ({"bootstrap": -1}, "bootstrap"), ({"stpes": 3}, "stpes")]:
        with pytest.raises(ConfigError, match=rf"final_eval\.rank_agreement\.{key}"):
            from_dict(FinalEval, {"rank_agreement": section}, "final_eval")
    with pytest.raises(ConfigError, match=r"final_eval\.recipe_baseline"):
        from_dict(FinalEval, {"recipe_baseline": "yes"}, "final_eval")


def test_the_short_suite_is_the_proxys_two_attacks_on_the_test_split(tmp_path):
    """One job per model: clean, the protocol's mask attack and det_topk at the
    rank-agreement steps and eps, their worst case; run by the evaluation actors' code."""
    import dataclasses

    from test_benchmark_grid import _checkpoint_and_roots

    from pgray.config.benchmark import DatasetEntry
    from pgray.pipelines.components.job_worker import JobEvaluator
    from pgray.pipelines.components.jobs import SHORT, jobs_for
    from pgray.pipelines.components.specs import benchmark_config, short_grid

    space = _space(rank_agreement={"steps": 3, "eps": 6.0}, batch_size=4)
    grid, members = short_grid(space)
    assert members == (("robust", "both"), ("detect", "detection"))
    (kind, eps, attacks, _), = grid
    assert kind == SHORT and eps == 6.0
    assert [(a.objective, a.steps, a.eps) for a in attacks] == [("mask", 3, 6.0),
                                                                ("image_score", 3, 6.0)]
    ckpt, (root,) = _checkpoint_and_roots(tmp_path, (4,))
    entry = DatasetEntry(dataset="synthetic", root=str(root), categories=["disc"],
                         checkpoint=str(ckpt))
    cfg = benchmark_config(space, [], tmp_path, 1)
    job, = [dataclasses.replace(j, members=members)
            for j in jobs_for(cfg, entry, "disc", grid=grid)]
    assert job.setting == "short_suite_eps6" and job.cost > job.n_test * 6
    rows = JobEvaluator().run(job)["rows"]
    assert [r["attack"] for r in rows] == ["clean", "robust", "detect", "worst_case"]
    assert all(r["job_key"] == job.key for r in rows) and len({r["row_key"] for r in rows}) == 4
    values = values_on_test(rows)
    assert set(values) == set(RANK_METRICS)
    assert all(0.0 <= v <= 1.0 for v in values.values())
    # the worst case is no better than clean on either side
    assert values["worst_image_auroc"] <= values["clean_image_auroc"]


def test_few_trials_get_a_coefficient_and_a_note_that_the_interval_understates():
    """Three concordant trials: every bootstrap resample is concordant, so the interval
    collapses to [1, 1]; the table says that it cannot be read as certainty."""
    from pgray.tracking.rank_agreement import MIN_INTERVAL_TRIALS, agreement, agreement_rows

    few = agreement({"s/a": [(0.1, 0.2), (0.2, 0.3), (0.3, 0.5)]}, bootstrap=200)
    assert few["spearman"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert few["targets"]["s/a"]["note"].startswith("3 trials: the bootstrap interval")
    assert few["note"] == few["targets"]["s/a"]["note"]
    rows = agreement_rows({"clean_image_auroc": few})
    assert rows[0][-1].startswith("3 trials: the bootstrap interval understates")
    enough = agreement({"s/a": [(i / 10, i / 9) for i in range(MIN_INTERVAL_TRIALS)]},
                       bootstrap=200)
    assert "note" not in enough and "note" not in enough["targets"]["s/a"]
