"""Robustness cards from hand-written rows, written atomically, and the leaderboard over them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgray.data.samples import Sample, split_fingerprint
from pgray.tracking.cards import SCHEMA, SCHEMA_VERSION, build_cards, git_commit, write_cards
from pgray.tracking.leaderboard import (
    LeaderboardError,
    find_cards,
    html_page,
    markdown,
    write_leaderboard,
)

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
                             "checkpoint_epoch": 12, "seed": 3}
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
    assert at8["worst_case"]["pixel_auroc"] == {"value": 0.5, "ci_low": None, "ci_high": None}
    assert at8["forward_passes"] == 8400 and card["forward_passes"] == 16800
    assert card["flags"] == [] and card["unreliable"] is False
    assert card["reported"] is None and card["git_commit"] == "c" * 40
    assert card["pgray_version"] == "0.1.0"
    json.dumps(card, allow_nan=False)  # strict JSON: no NaN anywhere


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


def _board_cards() -> list[dict]:
    return build_cards(_rows("patchguard", worst=0.4) + _rows("padim", worst=0.6)
                       + _rows("stfpm", worst=0.5, flags=["blackbox_stronger"]))


def test_leaderboard_orders_by_worst_ad_and_marks_flags():
    text = markdown(_board_cards())
    table = [ln for ln in text.splitlines() if ln.startswith("| synthetic")]
    assert len(table) == 6  # 3 cards x 2 budgets
    at8 = [[c.strip() for c in ln.split("|")[1:-1]] for ln in table if "| 8 |" in ln]
    assert [row[5].split(" ")[0] for row in at8] == ["padim", "stfpm", "patchguard"]
    assert [row[4] for row in at8] == ["1", "2", "3"]
    assert at8[0][9] == "52.0" and at8[0][7] == "95.0 [90.0, 99.0]"
    assert at8[1][-1] == "**UNRELIABLE: blackbox_stronger**" and at8[0][-1] == "ok"
    assert at8[0][13] == "8,400"  # forward passes of that budget
    budgets = [ln.split("|")[4].strip() for ln in table]
    assert budgets == ["2"] * 3 + ["8"] * 3


def test_leaderboard_html_escapes_and_marks(tmp_path):
    cards = _board_cards()
    cards[0]["detector"] = "<script>alert(1)</script>"
    page = html_page(cards)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http" not in page and "<link" not in page  # self-contained
    assert page.count('<tr class="unreliable">') == 2
    assert '<td class="flag">UNRELIABLE: blackbox_stronger</td>' in page
    md = markdown(cards)
    assert "<script>" not in md
    md_path, html_path = write_leaderboard(cards, tmp_path / "board.md")
    assert md_path.name == "board.md" and html_path.name == "board.html"
    assert html_path.read_text() == page


def test_leaderboard_errors_and_command(tmp_path):
    write_cards(_board_cards(), tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text('{"results": []}')  # not a card: skipped
    (tmp_path / "empty").mkdir()
    assert len(find_cards([tmp_path / "run"])) == 3
    with pytest.raises(LeaderboardError, match="no such folder"):
        find_cards([tmp_path / "run", tmp_path / "missing"])
    with pytest.raises(LeaderboardError, match="no robustness card"):
        find_cards([tmp_path / "empty"])
    cmd = [sys.executable, "-m", "pgray.leaderboard"]
    proc = subprocess.run([*cmd, str(tmp_path / "empty")], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 2 and "no robustness card" in proc.stderr
    proc = subprocess.run([*cmd, str(tmp_path / "run"), "--out", str(tmp_path / "lb")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lb.md").read_text() == markdown(find_cards([tmp_path / "run"]))
    assert (tmp_path / "lb.html").is_file()


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
