"""Where certified rows are shown, from hand-written rows: the benchmark's grid and its
certify job (and its cost), the cards' `certified` block (never an l2 budget), results.md's
certified table, the leaderboard's certified column, the bracket plot, `--plan`'s line and
the sweep's final benchmark honouring `fixed.eval.certify`."""

from __future__ import annotations

import pytest

from pgray.config import CertifyConfig
from pgray.config.base import from_dict, to_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.core.certify import METRICS, SIDES
from pgray.errors import ConfigError
from pgray.pipelines.components.jobs import CERTIFY, CHECK, SUITE, BenchJob, job_fields, job_grid

NAN = float("nan")
SUITE_CFG = {"steps": 3, "restarts": 1, "square_queries": 7, "square_images": 4,
             "check_steps": 2}
CERTIFY_CFG = {"radii": [0.1, 0.25], "samples": 20, "eot_samples": 2}
MODEL = {"dataset": "synthetic", "category": "weave", "detector": "patchguard",
         "checkpoint_sha256": "abcdef0123456789", "seed": None, "flags": [], "flag_notes": [],
         "backbone": "vit_tiny", "backbone_source": "random"}


def _bench(**extra) -> BenchmarkConfig:
    return from_dict(BenchmarkConfig, {
        "datasets": [{"dataset": "synthetic"}], "eps": [8.0], "steps": [2],
        "suite": SUITE_CFG, "certify": CERTIFY_CFG} | extra)


def _job(cfg: BenchmarkConfig, cell, n_test: int = 10) -> BenchJob:
    kind, eps, attacks, threat = cell
    return BenchJob(dataset="synthetic", root="", category="weave", checkpoint="c",
                    checkpoint_sha256="abc", kind=kind, eps=eps, mask_resize="nearest",
                    batch_size=8, n_panels=0, n_test=n_test,
                    **job_fields(cfg, kind, attacks, threat))


def test_certify_adds_one_job_and_the_l2_suite_at_every_radius():
    cfg = _bench(threats=[{"threat": "l2", "eps": [0.25, 1.0]}])
    grid = job_grid(cfg)
    suites = [(threat, eps) for kind, eps, _, threat in grid if kind == SUITE]
    # the radius already listed runs once; the base detector's attacked number at each radius
    assert suites == [("linf", 8.0), ("l2", 0.1), ("l2", 0.25), ("l2", 1.0)]
    assert [t for kind, _, _, t in grid if kind == CHECK] == ["linf", "l2"]
    (certify,) = [_job(cfg, cell) for cell in grid if cell[0] == CERTIFY]
    assert certify.setting == "certified_l2_r0.1_0.25" and certify.threat == "l2"
    assert certify.certify_config().samples == 20 and certify.suite["steps"] == 3
    # without l2 threats the l2 suite and its check still run, for the radii alone
    alone = job_grid(_bench())
    assert [(t, e) for k, e, _, t in alone if k == SUITE] == [("linf", 8.0), ("l2", 0.1),
                                                               ("l2", 0.25)]
    assert [t for k, _, _, t in alone if k == CHECK] == ["linf", "l2"]
    # what the job computes is in its key
    other = _job(_bench(certify=CERTIFY_CFG | {"samples": 40}), alone[-1])
    assert other.key != _job(_bench(), alone[-1]).key
    assert CERTIFY not in {kind for kind, *_ in job_grid(_bench(certify=None))}


def test_certify_needs_the_adaptive_suite_named_by_its_key():
    with pytest.raises(ConfigError, match="certify: needs suite adaptive"):
        _bench(suite="protocol")
    with pytest.raises(ConfigError, match=r"certify\.radii\[0\]: must be > 0"):
        _bench(certify={"radii": [0.0]})


def test_a_certify_job_costs_its_samples_its_judging_and_its_eot_attack_steps():
    job = _job(_bench(), job_grid(_bench())[-1], n_test=10)
    work = job.certify_work()
    # 10 images x 20 samples once; per radius the 5 l2 members' candidates and the clean
    # image, each judged on 20 noisy copies; 4 gradient members x 10 images x 3 steps and
    # 4 subset images x 7 queries, each step on 2 noise draws
    assert work.certify_forwards == 10 * 20
    assert work.judge_forwards == 2 * 6 * 10 * 20
    assert work.attack_image_steps == 2 * 4 * 10 * 3 * 2
    assert work.query_forwards == 2 * 4 * 7 * 2
    assert job.cost == work.attack_image_steps + 0.5 * (200 + 2400 + 112)


def test_the_plan_has_a_line_for_the_certify_job_with_its_passes(tmp_path):
    from pgray.pipelines.plan.cluster import Cluster
    from pgray.pipelines.plan.pieces import benchmark_pieces

    cfg = _bench(name="c", datasets=[{"dataset": "synthetic", "categories": ["disc"],
                                      "checkpoint": str(tmp_path / "none.pt")}],
                 train_missing=True)
    pieces, _, _ = benchmark_pieces(cfg, Cluster(cpus=32, gpus=2, source="described"))
    evals = [p for p in pieces if p.kind == "evaluation"]
    (line,) = [p for p in evals if "certified_l2_r0.1_0.25" in p.what]
    n_test = int(line.what.split(" samples x ")[1].split(" images")[0])
    job = _job(cfg, job_grid(cfg)[-1], n_test=n_test)
    assert line.image_steps == job.cost
    assert f"20 samples x {n_test} images = {20 * n_test:,} forwards to certify" in line.what
    assert "(the suite's steps x 2 EOT samples)" in line.what
    plain, _, _ = benchmark_pieces(_bench(name="c", certify=None, datasets=cfg.datasets,
                                          train_missing=True),
                                   Cluster(cpus=32, gpus=2, source="described"))
    assert len([p for p in plain if p.kind == "evaluation"]) == len(evals) - 4  # l2 x 2,
    # its check and the certify job


def test_the_sweeps_final_benchmark_certifies_what_fixed_eval_certify_asks(tmp_path):
    from pgray.config.search_space import space_from_dict
    from pgray.pipelines.components.specs import benchmark_config

    data = {"name": "t", "fixed": {"data": {"dataset": "synthetic", "category": "disc"},
                                   "eval": {"certify": CERTIFY_CFG}},
            "search": {"loss.attention_lambda": {"type": "uniform", "low": 0.0, "high": 1.0}},
            "objectives": [{"metric": "proxy_score", "mode": "max"}],
            "budget": {"trials": 2, "epochs": 3}, "scheduler": {"type": "none"},
            "final_eval": {"eps": [8.0], "suite": SUITE_CFG}}
    bench = benchmark_config(space_from_dict(data), [], tmp_path, 1)
    assert to_dict(bench.certify) == to_dict(from_dict(CertifyConfig, CERTIFY_CFG))
    assert CERTIFY in {kind for kind, *_ in job_grid(bench)}
    with pytest.raises(ConfigError, match="final_eval.suite: fixed.eval.certify needs the"
                                          " adaptive suite"):
        space_from_dict(data | {"final_eval": {"eps": [8.0], "suite": "protocol"}})


def _side(side: str, value: float) -> dict:
    return {f"{side}_{m}{tail}": (value if not tail else value + (-0.05 if tail == "_ci_low"
                                                                  else 0.05))
            for m in METRICS for tail in ("", "_ci_low", "_ci_high")}


def _rows(flag_radius: float | None = 0.25) -> list[dict]:
    """A model's clean row, its linf worst case at 8 and l2 worst cases at 0.1 and 0.25, and
    its certified rows at 0.1 and 0.25 (the one at `flag_radius` flagged)."""
    rows = [MODEL | {"attack": "clean", "threat": "none", "eps": 0.0, "image_auroc": 0.95,
                     "pixel_auroc": 0.9, "aupro": 0.8, "n_images": 40}]
    rows.append(MODEL | {"attack": "worst_case", "threat": "linf", "eps": 8.0,
                         "image_auroc": 0.3, "pixel_auroc": 0.4, "aupro": 0.2,
                         "suite": "adaptive"})
    for radius, worst in ((0.1, 0.7), (0.25, 0.5)):
        rows.append(MODEL | {"attack": "worst_case", "threat": "l2", "eps": radius,
                             "image_auroc": worst, "pixel_auroc": 0.6, "aupro": 0.4,
                             "suite": "adaptive", "l2_per_pixel": radius / 55})
        flags = ["certified_above_attacked"] if radius == flag_radius else []
        rows.append(MODEL | {
            "attack": "certified", "threat": "l2", "eps": radius, "radius": radius,
            "setting": f"certified_l2_r{radius:g}", "sigma": 0.25, "samples": 1000,
            "confidence": 0.999, "percentile": 0.5, "eot_samples": 8,
            "l2_per_pixel": radius / 55, "flags": flags,
            "flag_notes": [f"{f}: image_auroc certified 0.9 > attacked 0.8" for f in flags]}
            | _side("certified", 0.6 - radius) | _side("attacked", 0.8 - radius)
            | _side("smoothed", 0.85) | _side("base", 0.95) | _side("base_attacked", worst))
    return rows


def test_every_card_of_a_certifying_model_has_its_certified_block_and_no_l2_budget_is_one():
    from pgray.tracking.cards import build_cards

    cards = {c["threat"]: c for c in build_cards(_rows())}
    assert set(cards) == {"linf", "l2"}
    l2 = cards["l2"]
    # the certified rows are no budget of the l2 card, and their flag is not its flag
    assert l2["budgets"] == [0.1, 0.25] and [b["suite"]["name"] for b in l2["robust"]] == [
        "adaptive", "adaptive"]
    assert l2["flags"] == [] and not l2["unreliable"]
    for card in cards.values():
        block = card["certified"]
        assert [e["radius"] for e in block] == [0.1, 0.25]
        first = block[0]
        assert (first["sigma"], first["samples"], first["confidence"]) == (0.25, 1000, 0.999)
        assert first["certified"]["image_auroc"] == {"value": 0.5, "ci_low": 0.45,
                                                     "ci_high": 0.55}
        assert first["attacked"]["pixel_auroc"]["value"] == pytest.approx(0.7)
        assert first["smoothed"]["aupro"]["value"] == 0.85
        assert [e["flags"] for e in block] == [[], ["certified_above_attacked"]]
    plain = build_cards([r for r in _rows() if r["attack"] != "certified"])
    assert {c["certified"] for c in plain} == {None}


def test_results_md_has_a_certified_table_and_its_flags_stay_out_of_the_l2_table():
    from pgray.tracking.tables import markdown_table

    text = markdown_table(_rows())
    l2 = text.split("### synthetic (L2 eps 0.25")[1].split("###")[0]
    assert "certified_above_attacked" not in l2  # the base detector's table
    table = text.split("### synthetic: certified AD by randomized smoothing, bracketed")[1]
    lines = [ln for ln in table.splitlines() if ln.startswith("| patchguard")]
    assert lines[0] == ("| patchguard | weave | 0.1 | 0.25 | 95.0 [90.0, 100.0] |"
                        " 85.0 [80.0, 90.0] | 50.0 [45.0, 55.0] | 70.0 [65.0, 75.0] |"
                        " 70.0 [65.0, 75.0] |  |")
    assert lines[1].endswith("| certified_above_attacked |")
    assert "### synthetic: certified AL by randomized smoothing" in text
    assert "Smoothing: sigma 0.25, 1,000 samples per image, confidence 0.999" in text


def test_seeds_merge_into_one_certified_line_with_their_mean():
    from pgray.tracking.tables import across_seeds

    rows = [r | {"seed": s, "checkpoint_sha256": f"s{s}"} | (
        {"certified_image_auroc": 0.6 - r["radius"] + s / 10} if r["attack"] == "certified"
        else {}) for s in (0, 1) for r in _rows(None)]
    merged = [r for r in across_seeds(rows) if r["attack"] == "certified"]
    assert [(r["radius"], r["n_seeds"]) for r in merged] == [(0.1, 2), (0.25, 2)]
    assert merged[0]["certified_image_auroc"] == pytest.approx(0.55)


def test_the_leaderboard_shows_the_certified_ad_beside_the_worst_case_where_certified():
    from pgray.tracking.cards import build_cards
    from pgray.tracking.leaderboard import COLUMNS, ranked

    rows, _ = ranked(build_cards(_rows()))
    lines = [dict(zip(COLUMNS, r)) for r in rows]
    assert COLUMNS.index("certified AD") == COLUMNS.index("worst AD") + 1
    by_budget = {(ln["threat"], ln["budget"]): ln for ln in lines}
    assert by_budget[("l2", "0.1")]["certified AD"] == "50.0 [45.0, 55.0]"
    assert by_budget[("l2", "0.25")]["certified AD"] == "35.0 [30.0, 40.0]"
    assert by_budget[("linf", "8")]["certified AD"] == "–"  # no L2 radius there


def test_the_bracket_plot_has_both_bounds_and_the_smoothed_clean_level(tmp_path):
    from PIL import Image

    from pgray.tracking.plots import certified_curves, certified_series

    series = certified_series(_rows())
    assert series == {"synthetic": {"weave patchguard": {
        "radius": [0.1, 0.25], "certified": [0.5, pytest.approx(0.35)],
        "attacked": [pytest.approx(0.7), pytest.approx(0.55)], "smoothed": [0.85, 0.85]}}}
    (path,) = certified_curves(_rows(), tmp_path)
    assert path.name == "certified_vs_radius_synthetic.png"
    assert Image.open(path).size[0] > 300
    assert certified_curves([r for r in _rows() if r["attack"] != "certified"], tmp_path) == []


def test_certified_rows_keep_their_flags_and_get_their_base_sides_when_flagged():
    from pgray.tracking.certified import flag_rows

    rows = [r | {f"{s}_{m}": NAN for s in ("base", "base_attacked") for m in METRICS}
            if r["attack"] == "certified" else r for r in _rows()]
    flagged = flag_rows(rows)
    certified = [r for r in flagged if r["attack"] == "certified"]
    assert [r["flags"] for r in certified] == [[], ["certified_above_attacked"]]
    assert [r["base_attacked_image_auroc"] for r in certified] == [0.7, 0.5]
    assert {r["base_aupro"] for r in certified} == {0.8}
    # the attacked rows do not inherit the certified row's flag as another threat's
    assert all(r["flags"] == [] for r in flagged if r["attack"] != "certified")
    assert all(f"{side}_image_auroc" in certified[0] for side in SIDES)
