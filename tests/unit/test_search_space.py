"""Search-space schema: every bad input is refused with the key named; shipped spaces load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pgray.config import ExperimentConfig
from pgray.config.keys import apply_params
from pgray.config.param_spec import ParamSpec
from pgray.config.search_sections import Target
from pgray.config.search_space import load_search_space, space_from_dict
from pgray.errors import ConfigError

SPACES = Path(__file__).resolve().parents[2] / "pgray" / "config" / "search_spaces"

BASE = {
    "name": "t",
    "fixed": {
        "data": {"dataset": "synthetic", "root": "generated", "category": "disc"},
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        "train": {"epochs": 3, "holdout_fraction": 0.25},
    },
    "search": {
        "loss.attention_lambda": {"type": "loguniform", "low": 0.001, "high": 100.0},
        "loss.reduction": {"type": "categorical", "values": ["mean", "row"]},
    },
    "budget": {"trials": 2},
}


def _with(path: str, value) -> dict:
    """BASE with one entry replaced: `path` is keys joined by '/', e.g.
    'search/loss.attention_lambda/low' (search keys contain dots, so '/' separates)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split("/")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


LAMBDA = "search/loss.attention_lambda"
BAD = [
    # (where to change, new value, text the error must contain)
    ("nmae", "x", "unknown key nmae; allowed keys:"),
    (f"{LAMBDA}/hgh", 3.0, "unknown key search.loss.attention_lambda.hgh"),
    (f"{LAMBDA}/low", "small", "search.loss.attention_lambda.low: expected a number"),
    (f"{LAMBDA}/type", "gauss", "search.loss.attention_lambda.type: 'gauss' is not one of"
     " ['uniform', 'loguniform', 'int', 'categorical']"),
    (f"{LAMBDA}/high", 0.001, "search.loss.attention_lambda.high: empty range [0.001, 0.001]"),
    (f"{LAMBDA}/high", 0.0001, "search.loss.attention_lambda.low: low > high (0.001 > 0.0001)"),
    (f"{LAMBDA}/low", 0.0, "search.loss.attention_lambda.low: a log range must be > 0"),
    ("search/loss.atention_lambda", {"type": "uniform", "low": 0, "high": 1},
     "search.loss.atention_lambda: no config key 'loss.atention_lambda': loss has"
     " attention_layers, attention_weights, attention_lambda, attention_ratio, reduction"),
    ("search/model.depth", {"type": "int", "low": 1, "high": 4},
     "search.model.depth: no config key 'model.depth'"),
    ("search/loss.reduction", {"type": "categorical", "values": ["mean", "bogus"]},
     "search.loss.reduction: loss.reduction='bogus' makes an invalid config:"
     " loss.reduction: 'bogus' is not one of ['mean', 'row']"),
    ("search/loss.reduction", {"type": "categorical", "values": []},
     "search.loss.reduction.values: needs at least one value"),
    ("search/loss.attention_weights[2]", {"type": "uniform", "low": 0, "high": 1},
     "loss.attention_weights has 2 entries in the fixed config, so [2] is out of range"),
    ("search/pseudo.min_size", {"type": "int", "low": 6.5, "high": 9},
     "search.pseudo.min_size.low: must be an integer for type int"),
    ("search/data.category", {"type": "categorical", "values": ["disc", "weave"]},
     "search.data.category: data.* is set per target"),
    ("search/train.epochs", {"type": "int", "low": 1, "high": 9},
     "search.train.epochs: data.* is set per target (datasets/categories), train.epochs by"
     " budget.epochs"),
    ("search/train.proxy_pseudo.min_size", {"type": "int", "low": 6, "high": 14},
     "make the study's fixed held-out test; they cannot be searched"),
    ("search/train.proxy_eps", {"type": "categorical", "values": [2.0, 8.0]},
     "search.train.proxy_eps: data.* is set per target"),
    ("search/train.holdout_fraction", {"type": "uniform", "low": 0.1, "high": 0.3},
     "train.proxy_* and train.holdout_fraction make the study's fixed held-out test"),
    # a proxy at each trial's own training eps would test small-eps trials more gently
    ("search/train.attack.eps", {"type": "categorical", "values": [2.0, 8.0]},
     "search.train.attack.eps: the held-out proxy attacks at the training eps unless"
     " train.proxy_eps is fixed"),
    ("fixed/train/proxy_eps", 0, "train.proxy_eps: must be > 0"),
    ("objectives", [{"metric": "image_auroc", "mode": "max"}],
     "objectives[0].metric: 'image_auroc' is not a per-epoch proxy metric (test-split metrics"
     " are never tuned on); allowed: proxy_clean_image_auroc"),
    ("objectives", [{"metric": "proxy_score", "mode": "up"}],
     "objectives[0].mode: 'up' is not one of ['max', 'min']"),
    ("objectives", [{"metric": "proxy_clean_image_auroc"}, {"metric": "proxy_robust_image_auroc"}],
     "scheduler.weights: asha with 2 objectives stops trials on their weighted sum: give one"
     " weight (> 0) per objective, in their order, got None"),
    ("scheduler/weights", [1.0], "scheduler.weights: are for several objectives"),
    ("budget/trials", 0, "budget.trials: must be >= 1, got 0"),
    ("budget/trials", "many", "budget.trials: expected an integer, got 'many'"),
    ("scheduler/grace_period", 3, "scheduler.grace_period: must be < the epochs of a trial (3)"),
    ("scheduler/type", "hyperband", "scheduler.type: 'hyperband' is not one of ['asha', 'none']"),
    ("resources/cpus_per_worker", 0, "resources.cpus_per_worker: must be > 0"),
    ("final_eval/steps", 0, "final_eval.steps: must be >= 1, got 0"),
    ("final_eval/eps", [8, 300], "final_eval.eps[1]: must be in [0, 255]"),
    ("fixed/train/epochs", 0, "fixed.train.epochs: must be >= 1, got 0"),
    ("fixed/train/holdout_fraction", 0.0, "fixed.train.holdout_fraction: must be > 0"),
    ("fixed/train/proxy_every", 2, "fixed.train.proxy_every: 2 does not divide every ASHA rung"
     " (scheduler.grace_period 1"),
    ("fixed/loss/attention_layers", [1, 2, 3], "fixed.loss.attention_weights: needs one weight"
     " per layer"),
    ("search/loss", {"type": "uniform", "low": 0, "high": 1},
     "search.loss: loss is a config section"),
    ("start_points", [{"loss.attention_lambda": 1.0}],
     "start_points[0]: misses ['loss.reduction']"),
    ("start_points", [{"loss.attention_lambda": 1e4, "loss.reduction": "row"}],
     "start_points[0].loss.attention_lambda: 10000.0 is outside [0.001, 100]"),
    ("start_points", [{"loss.attention_lambda": 1.0, "loss.reduction": "max"}],
     "start_points[0].loss.reduction: 'max' is not one of ['mean', 'row']"),
    ("name", "bad name!", "name: must be letters, digits"),
    ("seeds", [0, 0], "seeds: lists a seed twice"),
    ("seeds", [-1], "seeds: must be non-negative integers"),
]


TWO = [{"metric": "proxy_clean_image_auroc"}, {"metric": "proxy_worst_image_margin"}]
BAD_WEIGHTS = [
    # (scheduler, objectives, text the error must contain)
    ({"weights": [1.0]}, TWO, "scheduler.weights: asha with 2 objectives stops trials on their"
     " weighted sum: give one weight (> 0) per objective, in their order, got [1.0]"),
    ({"weights": [0.5, 0.0]}, TWO, "scheduler.weights: must each be > 0, got [0.5, 0.0]"),
    ({"weights": [0.5, -1.0]}, TWO, "scheduler.weights: must each be > 0"),
    ({"type": "none", "weights": [0.5, 0.5]}, TWO,
     "scheduler.weights: state ASHA's scalarisation; scheduler type none stops nothing"),
]


@pytest.mark.parametrize("scheduler,objectives,message", BAD_WEIGHTS)
def test_asha_on_several_objectives_needs_one_weight_each(scheduler, objectives, message):
    with pytest.raises(ConfigError) as err:
        space_from_dict(BASE | {"objectives": objectives, "scheduler": scheduler})
    assert message in str(err.value)


def test_asha_stops_several_objectives_on_their_stated_weighted_sum():
    from pgray.config.search_space import objective_scalar, scalarisation_text

    space = space_from_dict(BASE | {"objectives": TWO + [{"metric": "loss", "mode": "min"}],
                                    "scheduler": {"weights": [0.5, 0.5, 2]}})
    terms = space.scalar_terms()
    assert terms == [(0.5, "proxy_clean_image_auroc", "max"),
                     (0.5, "proxy_worst_image_margin", "max"), (2.0, "loss", "min")]
    assert space.asha_objective() == ("objective_scalar", "max")
    assert scalarisation_text(terms) == ("0.5 x proxy_clean_image_auroc + 0.5 x"
                                         " proxy_worst_image_margin - 2 x loss")
    result = {"proxy_clean_image_auroc": 0.9, "proxy_worst_image_margin": -1.5, "loss": 0.25}
    assert objective_scalar(result, terms) == pytest.approx(0.45 - 0.75 - 0.5, abs=1e-12)
    # between proxy epochs (NaN or absent) there is nothing to stop on
    for unmeasured in ({**result, "proxy_worst_image_margin": float("nan")},
                       {"loss": 0.25, "proxy_clean_image_auroc": 0.9}):
        assert objective_scalar(unmeasured, terms) != objective_scalar(unmeasured, terms)
    single = space_from_dict(BASE)
    assert single.scalar_terms() is None and single.asha_objective() == ("proxy_score", "max")


@pytest.mark.parametrize("where,value,message", BAD,
                         ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_bad_search_space_is_refused_naming_the_key(where, value, message):
    with pytest.raises(ConfigError) as err:
        space_from_dict(_with(where, value))
    assert message in str(err.value)


def test_proxy_every_epochs_must_hold_every_asha_rung():
    def space(every: int, grace: int, factor: float):
        data = _with("fixed/train/proxy_every", every)
        return space_from_dict(data | {"budget": {"trials": 2, "epochs": 16},
                                       "scheduler": {"type": "asha", "grace_period": grace,
                                                     "reduction_factor": factor}})

    assert space(4, 4, 2).fixed_config().train.proxy_every == 4  # rungs 4, 8: proxy epochs
    assert space(2, 4, 3).scheduler.grace_period == 4  # rungs 4, 12
    for every, grace, factor in ((4, 2, 2), (3, 4, 2), (2, 4, 1.5)):  # rung 2; 4; 6 after 4
        with pytest.raises(ConfigError, match="fixed.train.proxy_every"):
            space(every, grace, factor)


def test_unset_proxy_every_becomes_a_divisor_of_the_asha_grace_period():
    """Left unset, the proxy runs about every 9 epochs at the reference costs (holdout 0.25
    here: about every 30); with ASHA every trial gets one value that every rung falls on."""
    def space(grace: int, factor: float, proxy_steps: int = 10):
        data = _with("fixed/train/proxy_steps", proxy_steps)
        return space_from_dict(data | {
            "budget": {"trials": 2, "epochs": 100},
            "scheduler": {"type": "asha", "grace_period": grace, "reduction_factor": factor}})

    assert space(10, 3).fixed_config().train.proxy_every == 10
    # a one-step proxy costs 0.56 epochs: every 6 epochs, which divides a grace period of 12
    assert space(12, 2, proxy_steps=1).fixed_config().train.proxy_every == 6
    assert space(10, 1.5).fixed_config().train.proxy_every == 1
    no_asha = space_from_dict(BASE | {"scheduler": {"type": "none"}})
    assert no_asha.fixed_config().train.proxy_every is None  # each run decides for itself


def test_datasets_and_categories_together_are_refused():
    data = copy.deepcopy(BASE) | {"categories": ["disc"],
                                  "datasets": [{"dataset": "synthetic", "root": "generated"}]}
    with pytest.raises(ConfigError, match="categories: give either datasets or categories"):
        space_from_dict(data)


def test_generated_root_only_for_synthetic():
    data = copy.deepcopy(BASE) | {"datasets": [{"dataset": "mvtec", "root": "generated"}]}
    with pytest.raises(ConfigError, match=r"datasets\[0\].root: 'generated' is only for"):
        space_from_dict(data)


def test_jointly_invalid_combination_is_found_on_load():
    # each value alone fits the fixed weights only for [1, 2]; one layer needs one weight
    data = copy.deepcopy(BASE)
    data["search"]["loss.attention_layers"] = {"type": "categorical", "values": [[1, 2], [2]]}
    with pytest.raises(ConfigError, match="loss.attention_layers=\\[2\\] makes an invalid"
                       " config: loss.attention_weights: needs one weight per layer"):
        space_from_dict(data)


def test_section_bundle_and_list_index_apply_to_the_config():
    data = copy.deepcopy(BASE)
    data["search"] = {
        "loss": {"type": "categorical", "labels": ["last", "both"], "values": [
            {"attention_layers": [2], "attention_weights": [0.05]},
            {"attention_layers": [1, 2], "attention_weights": [0.02, 0.02]}]},
        "pseudo.severity_probs": {"type": "categorical",
                                  "values": [[0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]},
        "train.attack.steps": {"type": "int", "low": 1, "high": 3, "log": True},
    }
    space = space_from_dict(data)
    assert space.search["loss"].choices() == ["last", "both"]
    assert space.search["pseudo.severity_probs"].choices() == ["[0.2, 0.2, 0.6]",
                                                               "[0.1, 0.1, 0.8]"]
    params = space.decode({"loss": "last", "pseudo.severity_probs": "[0.1, 0.1, 0.8]",
                           "train.attack.steps": 2, "target": "ignored"})
    target = Target("synthetic", "/data/syn", "weave")
    cfg = space.trial_config(target, params)
    assert cfg.loss.attention_layers == [2] and cfg.loss.attention_weights == [0.05]
    assert cfg.pseudo.severity_probs == [0.1, 0.1, 0.8]
    assert cfg.train.attack.steps == 2 and cfg.train.epochs == 3
    assert (cfg.data.root, cfg.data.category) == ("/data/syn", "weave")


def test_apply_params_sets_one_list_entry_and_keeps_defaults():
    out = apply_params({"loss": {"attention_layers": [6, 9, 12]}},
                       {"loss.attention_weights[1]": 0.5, "train.lr": 1e-3})
    cfg = ExperimentConfig.from_dict(out)
    assert cfg.loss.attention_weights == [0.005, 0.5, 0.05]
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 1000


def test_param_spec_representatives_cover_the_range():
    assert ParamSpec("loguniform", 0.01, 100.0).representatives() == [0.01, 1.0, 100.0]
    assert ParamSpec("int", 2, 9).representatives() == [2, 9]
    assert ParamSpec("uniform", 0.0, 1.0).decode(0.25) == 0.25
    assert ParamSpec("int", 2, 9).decode(3.0) == 3


@pytest.mark.parametrize("name", ["demo", "attention", "pseudo", "paper", "robust",
                                  "robust_demo"])
def test_shipped_search_spaces_are_valid(name):
    space = load_search_space(SPACES / f"{name}.yaml")
    assert space.name == name
    fixed = space.fixed_config()
    if name == "demo":
        # small enough for a 2-core CPU, large enough to learn (README: what the demo shows)
        assert space.budget.trials * 2 <= 8 and space.epochs() <= 24
        assert fixed.model.img_size == 48 and fixed.train.attack.eps < 8.0
        assert space.final_eval.steps < 1000 and space.final_eval.clean_baseline
        assert space.final_eval.eps == [fixed.train.attack.eps]
        assert [e.categories for e in space.target_entries()] == [["weave", "grain"]]
    if name == "paper":
        assert not space.search and space.epochs() == 1000
        assert space.final_eval.steps == 1000 and space.final_eval.eps == [8.0, 4.0]
        assert len(space.target_entries()) == 8
    if name == "attention":
        assert space.search["loss.attention_lambda"].high / space.search[
            "loss.attention_lambda"].low >= 1e4
        assert space.start_point_choices()[0]["loss.attention_layers"] == "reference"
    if name == "pseudo":
        assert space.multi_objective and space.scheduler.type == "none"


def test_the_real_photo_search_is_the_demo_search_on_other_data():
    real = load_search_space(SPACES.parents[2] / "benchmarks" / "robust_real.yaml")
    demo = load_search_space(SPACES / "robust_demo.yaml")
    assert real.search == demo.search and real.objectives == demo.objectives
    assert real.fixed_config().data.dataset == "mvtec" and real.categories == ["brick", "gravel"]
    assert real.final_eval.rank_agreement.enabled and real.final_eval.recipe_baseline


def test_missing_file_and_non_mapping_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_search_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  loss.attention_lambda: {type: loguniform, low: 0, high: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: search.loss.attention_lambda.low: a log"
                       " range must be > 0"):
        load_search_space(bad)


def test_clean_twin_is_the_sweeps_config_trained_clean_with_one_proxy():
    from pgray.pipelines.components.specs import clean_twin_space

    space = load_search_space(SPACES / "demo.yaml")
    twin = clean_twin_space(space)
    ours, theirs = space.fixed_config(), twin.fixed_config()
    assert ours.train.adversarial and not theirs.train.adversarial
    assert theirs.train.proxy_every == space.epochs() == twin.epochs()
    assert (theirs.model, theirs.loss, theirs.pseudo) == (ours.model, ours.loss, ours.pseudo)
    assert twin.name == f"{space.name}-clean" and not twin.search
    assert twin.budget.trials == 1 and twin.scheduler.type == "none"
    assert not twin.final_eval.enabled


def test_clean_twin_drops_the_keys_of_the_adversarial_terms():
    """A robust search's best trial mixes objectives and weighs a TRADES term; its twin
    trains clean, where those keys mean nothing (and would not validate)."""
    from pgray.config.search_sections import Target
    from pgray.pipelines.components.specs import clean_twin_params, clean_twin_space

    space = load_search_space(SPACES / "robust_demo.yaml")
    params = {"train.image_score_share": 0.55, "train.attack.eps": 2.0,
              "train.trades_beta": 2.5, "loss.attention_ratio": 0.3}
    target = Target("synthetic", "generated", "weave")
    best = space.trial_config(target, params)
    assert best.train.image_score_share == 0.55 and best.train.trades_beta == 2.5
    twin = clean_twin_space(space)
    with pytest.raises(ConfigError, match="image_score_share: .*needs train.adversarial true"):
        twin.trial_config(target, params)
    clean = twin.trial_config(target, clean_twin_params(params))
    assert not clean.train.adversarial
    assert clean.train.image_score_share is None and clean.train.trades_beta == 0
    assert clean.loss.attention_ratio == 0.3  # the detector's own keys stay


def test_seeds_retrain_the_best_config_with_each_other_seed():
    from pgray.config.search_sections import Target
    from pgray.pipelines.components.specs import benchmark_config, seeds_space

    space = space_from_dict(_with("seeds", [2, 0, 1]))
    assert space.fixed_config().train.seed == 0 and space.extra_seeds() == [2, 1]
    target = Target("synthetic", "", "disc", seed=2)
    assert target.key == "synthetic/disc@seed2"
    assert space.trial_config(target, {}).train.seed == 2
    assert space.trial_config(Target("synthetic", "", "disc"), {}).train.seed == 0
    again = seeds_space(space)
    assert not again.seeds and not again.search and again.budget.trials == 1
    assert again.fixed_config().train == space.fixed_config().train
    top1 = benchmark_config(space, [Target("synthetic", "", "disc")], Path("/f"), 1)
    assert top1.seeds == [0, 2, 1]  # the trials' seed first
    assert [str(e.seed) for e in top1.entries()] == ["0", "2", "1"]
    assert not benchmark_config(space, [Target("synthetic", "", "disc")], Path("/f"), 2).seeds
    with pytest.raises(ConfigError, match="seeds: are trained for the final evaluation"):
        space_from_dict(_with("final_eval/enabled", False) | {"seeds": [0, 1]})
