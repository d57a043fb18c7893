"""Robustness cards from hand-written rows, written atomically (the leaderboard over them:
test_leaderboard.py)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import SUITE_MEMBERS as MEMBERS

from pgray.core.eval_version import git_commit
from pgray.data.samples import Sample, split_fingerprint
from pgray.tracking.cards import SCHEMA, SCHEMA_VERSION, build_cards, write_cards

NAN = float("nan")
MODEL = {"dataset": "synthetic", "category": "weave", "checkpoint_sha256": "abcdef0123456789",
         "checkpoint_file": "best.pt", "checkpoint_epoch": 12, "split": "official",
         "mask_resize": "nearest", "data_fingerprint": "f00d", "pgray_version": "0.1.0",
         "backbone": "vit_tiny", "backbone_source": "hub:vit_tiny", "train_method":
         "adversarial", "train_attack": "nfgsm", "train_eps": 4.0, "train_steps": 1, "seed": 3}


def _rows(detector: str = "patchguard", worst: float = 0.4, flags=(), **extra) -> list[dict]:
    """A model's clean row and, at eps 2 and 8, two protocol runs (PGD-10 and PGD-100) and the
    suite's worst case; rows carry no `threat` column (as before that column existed)."""
    base = MODEL | {"detector": detector} | extra
    rows = [base | {"attack": "clean", "eps": 0.0, "steps": 0, "restarts": 0,
                    "image_auroc": 0.95, "pixel_auroc": 0.9, "aupro": NAN, "n_images": 40,
                    "n_anomalous": 20, "flags": [],
                    "image_auroc_ci_low": 0.9, "image_auroc_ci_high": 0.99}]
    for eps in (2.0, 8.0):
        for steps, auroc in ((10, 0.7), (100, 0.6)):
            rows.append(base | {"attack": "protocol", "eps": eps, "steps": steps, "restarts": 1,
                                "image_auroc": auroc, "pixel_auroc": 0.8, "aupro": 0.5,
                                "n_images": 40, "flags": list(flags)})
        rows.append(base | {"attack": "worst_case", "eps": eps, "steps": 100, "restarts": 2,
                            "image_auroc": worst - eps / 100, "pixel_auroc": 0.5, "aupro": 0.3,
                            "image_steps": 8000, "queries": 400, "n_images": 40,
                            "flags": list(flags),
                            "flag_notes": [f"{f}: numbers" for f in flags]})
    rows.append(base | {"attack": "check_large_eps", "eps": 64.0, "image_auroc": 0.0,
                        "flags": []})
    return rows


def test_card_fields_intervals_and_threat_default():
    (card,) = build_cards(_rows(), git_commit="c" * 40)
    assert card["schema"] == SCHEMA and card["schema_version"] == SCHEMA_VERSION
    assert card["name"] == "patchguard/synthetic/weave/linf" and card["threat"] == "linf"
    assert card["model"] == {"backbone": "vit_tiny", "backbone_weights": "hub:vit_tiny",
                             "checkpoint_file": "best.pt", "checkpoint_sha256": "abcdef0123456789",
                             "checkpoint_epoch": 12, "seed": 3, "model_id": None}
    assert card["training"] == {"method": "adversarial", "attack": "nfgsm", "eps": 4.0,
                                "steps": 1}
    assert card["data"] == {"dataset": "synthetic", "category": "weave", "split": "official",
                            "mask_resize": "nearest", "fingerprint": "f00d", "n_images": 40,
                            "n_anomalous": 20}
    assert card["budgets"] == [2.0, 8.0] and card["eps_unit"].startswith("1/255")
    # intervals carried where the rows have them, null where not; NaN is null
    assert card["clean"]["image_auroc"] == {"value": 0.95, "ci_low": 0.9, "ci_high": 0.99}
    assert card["clean"]["aupro"] == {"value": None, "ci_low": None, "ci_high": None}
    at8 = card["robust"][1]
    assert at8["eps"] == 8.0
    assert at8["protocol"]["image_auroc"]["value"] == 0.6  # the strongest protocol run
    assert at8["protocol"]["steps"] == 100
    assert at8["worst_case"]["image_auroc"]["value"] == pytest.approx(0.32)
    assert "steps" not in at8["worst_case"]  # the suite block says what ran
    assert at8["worst_case"]["pixel_auroc"] == {"value": 0.5, "ci_low": None, "ci_high": None}
    assert at8["forward_passes"] == 8400 and card["forward_passes"] == 16800
    assert card["flags"] == [] and card["unreliable"] is False
    assert card["reported"] is None and card["written_by_commit"] == "c" * 40
    assert card["git_commit"] is None  # the rows did not say which commit made them
    assert card["pgray_version"] == "0.1.0"
    json.dumps(card, allow_nan=False)  # strict JSON: no NaN anywhere


REASON = "bf16 probe gap 0.004 <= 0.01 (linf eps 8, pgd)"


def _contract_rows(commit: str = "a" * 40) -> list[dict]:
    """Rows with the columns issue 28 added: suite, members, precision and why, commit,
    evaluation version, real budgets, operating points."""
    rows = []
    for r in _rows():
        r = r | {"git_commit": commit, "eval_version": 3}
        if r["attack"] == "clean":
            r |= {"tpr_at_fpr1": 0.5, "tpr_at_fpr5": 0.7}
        elif r["attack"] == "worst_case":
            r |= {"suite": "adaptive", "suite_members": json.dumps(MEMBERS),
                  "precision": "bf16", "precision_reason": REASON, "input_size": 224,
                  "tpr_at_fpr1": 0.01, "tpr_at_fpr5": 0.04,
                  "image_auroc_attack_normal": 0.6, "image_auroc_attack_anomalous": 0.5,
                  "image_auroc_attack_normal_ci_low": 0.55}
        rows.append(r)
    patch = [r | {"threat": "patch", "eps": 0.02, "patch_area": 0.0204} for r in rows
             if r["attack"] == "worst_case" and r["eps"] == 8.0]
    l2 = [r | {"threat": "l2", "eps": 1.0, "l2_per_pixel": 1 / (3 * 224 * 224) ** 0.5}
          for r in rows if r["attack"] == "worst_case" and r["eps"] == 8.0]
    return rows + patch + l2


def test_card_says_which_suite_precision_commit_and_real_budget_made_it():
    cards = {c["threat"]: c for c in build_cards(_contract_rows(), git_commit="c" * 40)}
    card = cards["linf"]
    at8 = card["robust"][1]
    assert at8["suite"] == {"name": "adaptive", "inferred": False, "members": MEMBERS}
    assert card["suite"] == at8["suite"]  # every budget ran the same suite
    assert "steps" not in at8["worst_case"] and "restarts" not in at8["worst_case"]
    assert (at8["precision"], at8["precision_reason"]) == ("bf16", REASON)
    assert card["precision"] == "bf16"
    # the rows' commit, not the writer's; the writer's kept apart
    assert card["git_commit"] == at8["git_commit"] == "a" * 40
    assert card["written_by_commit"] == "c" * 40 and card["eval_version"] == 3
    assert at8["input_size"] == 224 and at8["patch_area"] is None
    assert cards["patch"]["robust"][0]["patch_area"] == 0.0204
    assert cards["l2"]["robust"][0]["l2_per_pixel"] == pytest.approx(0.002577, abs=1e-6)
    # operating points: clean and worst case, the worst case split by the side attacked
    assert card["clean"]["tpr_at_fpr1"] == {"value": 0.5, "ci_low": None, "ci_high": None}
    assert card["clean"]["tpr_at_fpr5"]["value"] == 0.7
    worst = at8["worst_case"]
    assert (worst["tpr_at_fpr1"]["value"], worst["tpr_at_fpr5"]["value"]) == (0.01, 0.04)
    assert worst["image_auroc_attack_normal"] == {"value": 0.6, "ci_low": 0.55,
                                                  "ci_high": None}
    assert worst["image_auroc_attack_anomalous"]["value"] == 0.5
    json.dumps(card, allow_nan=False)


def test_rows_of_two_commits_give_no_single_commit():
    rows = _contract_rows()
    rows[0] = rows[0] | {"git_commit": "b" * 40}  # the clean row came from another commit
    (card, *_) = build_cards(rows)
    assert card["git_commit"] is None and card["git_commits"] == ["a" * 40, "b" * 40]
    (old,) = build_cards(_rows())
    assert old["git_commit"] is None and old["git_commits"] == [None]


def test_rows_without_suite_columns_say_protocol_only_when_nothing_else_ran():
    """`--suite protocol` rows (clean, the protocol, a worst case of it alone) written before
    rows named their suite read as the protocol; an adaptive run's (other members, black-box
    queries) as unknown, never as the protocol and never presumed adaptive."""
    base = MODEL | {"detector": "patchguard"}
    protocol = [base | {"attack": "clean", "image_auroc": 0.95},
                base | {"attack": "protocol", "eps": 8.0, "steps": 1000, "restarts": 1,
                        "image_auroc": 0.139},
                base | {"attack": "worst_case", "eps": 8.0, "steps": 1000, "restarts": 1,
                        "image_auroc": 0.139, "image_steps": 240, "queries": 0}]
    (card,) = build_cards(protocol)
    suite = card["robust"][0]["suite"]
    assert suite["name"] == "protocol" and suite["inferred"] is True
    assert [(m["name"], m["steps"], m["restarts"], m["queries"]) for m in suite["members"]] == [
        ("protocol", 1000, 1, 0)]
    adaptive = protocol + [base | {"attack": "det_topk", "eps": 8.0, "steps": 100,
                                   "image_auroc": 0.05}]
    assert build_cards(adaptive)[0]["robust"][0]["suite"]["name"] == "unknown"
    queried = protocol[:2] + [protocol[2] | {"queries": 400}]  # Square ran: not the protocol
    assert build_cards(queried)[0]["robust"][0]["suite"]["name"] == "unknown"


def test_flag_makes_card_unreliable_and_threats_split():
    rows = _rows(flags=["zero_gradients"])
    l2 = [r | {"threat": "l2", "eps": r["eps"] / 10} for r in _rows()
          if r["attack"] in ("protocol", "worst_case")]
    cards = {c["threat"]: c for c in build_cards(rows + l2)}
    assert set(cards) == {"linf", "l2"}
    assert cards["linf"]["unreliable"] is True and cards["linf"]["flags"] == ["zero_gradients"]
    assert cards["linf"]["flag_notes"] == ["worst_case eps 2: zero_gradients: numbers",
                                           "worst_case eps 8: zero_gradients: numbers"]
    assert cards["linf"]["robust"][0]["flags"] == ["zero_gradients"]
    # the clean row serves every threat's card; the L2 card has its own budgets and flags
    assert cards["l2"]["clean"] == cards["linf"]["clean"]
    assert cards["l2"]["budgets"] == [0.2, 0.8] and cards["l2"]["unreliable"] is False
    assert cards["l2"]["eps_unit"].startswith("L2 norm")


def test_reported_numbers_and_missing_columns():
    bare = [{"dataset": "d", "category": "c", "attack": "clean", "image_auroc": 0.8},
            {"dataset": "d", "category": "c", "attack": "worst_case", "eps": 8.0,
             "image_auroc": 0.1}]
    (card,) = build_cards(bare, reported={("d", "c"): {"image_auroc": 0.85, "eps": 8.0}})
    assert card["detector"] == "patchguard" and card["reported"] == {"image_auroc": 0.85,
                                                                      "eps": 8.0}
    assert card["training"]["method"] is None and card["data"]["fingerprint"] is None
    assert card["robust"][0]["protocol"] is None and card["forward_passes"] is None
    assert card["git_commit"] is None and card["flags"] == []
    assert card["robust"][0]["suite"] == {"name": "unknown", "members": None, "inferred": True}
    # another detector on the same category gets no paper number
    (other,) = build_cards([r | {"detector": "padim"} for r in bare],
                           reported={("d", "c"): {"image_auroc": 0.85}})
    assert other["reported"] is None


def test_cards_written_atomically_one_file_each(tmp_path):
    cards = build_cards(_rows() + _rows("padim", worst=0.2))
    paths = write_cards(cards, tmp_path)
    assert [p.name for p in paths] == ["padim__synthetic__weave__linf.json",
                                       "patchguard__synthetic__weave__linf.json"]
    assert sorted(os.listdir(tmp_path / "cards")) == [p.name for p in paths]  # no temp left
    assert json.loads(paths[1].read_text()) == cards[1]
    # the same detector with two checkpoints: two cards, told apart by digest
    twice = build_cards(_rows() + _rows(checkpoint_sha256="99887766aabbccdd"))
    names = [p.name for p in write_cards(twice, tmp_path / "two")]
    assert names == ["patchguard__synthetic__weave__linf__99887766.json",
                     "patchguard__synthetic__weave__linf__abcdef01.json"]


def test_git_commit_of_this_checkout():
    commit = git_commit()
    assert commit is None or len(commit) == 40


def test_split_fingerprint_is_relative_and_sees_changes(tmp_path):
    def fingerprint(root: str, label: int = 1) -> str:
        return split_fingerprint([Sample(tmp_path / root / "test/x.png", label, "cut")],
                                 tmp_path / root)

    for root in ("a", "b"):
        (tmp_path / root / "test").mkdir(parents=True)
        (tmp_path / root / "test/x.png").write_bytes(b"12345")
    a = fingerprint("a")
    assert fingerprint("b") == a and len(a) == 16  # the same files under another root
    assert fingerprint("a", label=0) != a
    (tmp_path / "b/test/x.png").write_bytes(b"123456")
    assert fingerprint("b") != a


def test_model_columns_say_how_each_kind_was_trained():
    from pgray.config import ExperimentConfig, ModelConfig
    from pgray.config.detector import DetectorConfig
    from pgray.detectors.loading import Loaded

    exp = ExperimentConfig.from_dict({"model": {"backbone": "vit_tiny_patch16_224",
                                                "pretrained": True},
                                      "train": {"attack_method": "nfgsm", "attack": {"eps": 4}}})
    assert Loaded(None, "patchguard", None, "trained", exp).describe() == {
        "backbone": "vit_tiny_patch16_224", "backbone_source": "hub:vit_tiny_patch16_224",
        "train_method": "adversarial", "train_attack": "nfgsm", "train_eps": 4.0,
        "train_steps": 1}
    clean = ExperimentConfig.from_dict({"model": {"weights": "/w/dino.pth"},
                                        "train": {"adversarial": False}})
    info = Loaded(None, "patchguard_clean", None, "trained", clean).describe()
    assert info["train_method"] == "clean" and info["train_attack"] is None
    assert info["backbone_source"] == "file:/w/dino.pth"
    padim = Loaded(None, "padim", None, "random", DetectorConfig(name="padim")).describe()
    assert padim["backbone"] == "padim default" and padim["backbone_source"] == "random init"
    assert padim["train_method"] == "clean"
    ref = Loaded(None, "patchguard_reference", None, "trained", ModelConfig()).describe()
    assert ref["train_method"] == "reference"


def test_benchmark_config_names_a_bad_reported_key():
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.errors import ConfigError

    entry = {"dataset": "synthetic", "reported": {"weave": {"image_auroc": 0.9, "eps": 8}}}
    cfg = from_dict(BenchmarkConfig, {"datasets": [entry]})
    assert cfg.datasets[0].reported == {"weave": {"image_auroc": 0.9, "eps": 8.0}}
    with pytest.raises(ConfigError, match=r"datasets\[0\].reported.weave.image_aurok: unknown"):
        from_dict(BenchmarkConfig, {"datasets": [entry | {"reported": {
            "weave": {"image_aurok": 0.9}}}]})
