"""The leaderboard over robustness cards: like with like (suite, precision), reliable lines
first, one line per model over its seeds with an interval over test images and seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SUITE_MEMBERS as MEMBERS

from pgray.tracking.cards import build_cards, write_cards
from pgray.tracking.leaderboard import (
    LeaderboardError,
    find_cards,
    html_page,
    markdown,
    write_leaderboard,
)

NAN = float("nan")


def _rows(detector: str = "patchguard", worst: float = 0.4, *, seed: int | None = 0,
          sha: str | None = None, flags=(), half: float | None = 0.07, suite="adaptive",
          named: bool = True, train_eps: float = 4.0, **worst_extra) -> list[dict]:
    """One model's clean row and, at eps 8, its protocol run and the suite's worst case
    (`named` False: rows written before rows named their suite; `half`: the test-set
    interval's half-width of the worst-case AD)."""
    base = {"detector": detector, "dataset": "synthetic", "category": "weave", "seed": seed,
            "checkpoint_sha256": sha or f"{detector}{seed}".ljust(16, "0"),
            "backbone": "vit_tiny", "backbone_source": "hub:vit_tiny",
            "train_method": "adversarial", "train_attack": "nfgsm", "train_eps": train_eps,
            "train_steps": 1, "split": "official", "data_fingerprint": "f00d",
            "git_commit": "a" * 40}
    worst_row = base | {"attack": "worst_case", "eps": 8.0, "image_auroc": worst,
                        "pixel_auroc": 0.5, "aupro": 0.3, "flags": list(flags),
                        "image_steps": 1600 if suite == "protocol" else 8000,
                        "queries": 0 if suite == "protocol" else 400}
    if half is not None and worst == worst:
        worst_row |= {"image_auroc_ci_low": worst - half, "image_auroc_ci_high": worst + half}
    if named:
        worst_row |= {"suite": suite, "precision": "fp32", "precision_reason": "fp32 asked",
                      "suite_members": json.dumps(MEMBERS[:1] if suite == "protocol"
                                                  else MEMBERS)}
    return [base | {"attack": "clean", "eps": 0.0, "image_auroc": 0.95, "pixel_auroc": 0.9,
                    "aupro": 0.6, "flags": [], "image_auroc_ci_low": 0.9,
                    "image_auroc_ci_high": 0.99},
            base | {"attack": "protocol", "eps": 8.0, "steps": 1000, "restarts": 1,
                    "image_auroc": max(worst, 0.6), "pixel_auroc": 0.8, "aupro": 0.5,
                    "flags": []},
            worst_row | worst_extra]


def table(text: str) -> list[dict[str, str]]:
    """The Markdown table's lines as {column: cell}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].split("|")[1:-1]]
    return [dict(zip(head, (c.strip() for c in ln.split("|")[1:-1]))) for ln in lines[1:]]


def board(*rows: list[dict]) -> list[dict[str, str]]:
    return [ln for ln in table(markdown(build_cards([r for rs in rows for r in rs])))
            if ln["budget"] == "8"]


def test_a_protocol_only_card_never_ranks_as_a_worst_case():
    """Issue 28's measurement: one model under `--suite protocol` (worst AD 13.9) and under
    `--suite adaptive` (2.1) ranked the protocol first, both ok."""
    lines = board(_rows(worst=0.139, suite="protocol"), _rows(worst=0.021, sha="b" * 16))
    adaptive = next(ln for ln in lines if ln["worst AD"].startswith("2.1"))
    protocol = next(ln for ln in lines if ln["worst AD"].startswith("13.9"))
    assert adaptive["rank"] == "1" and adaptive["suite"] == "adaptive"
    assert protocol["suite"] == "protocol" and lines.index(adaptive) < lines.index(protocol)
    # rows written before rows named their suite: the protocol run is still told apart
    lines = board(_rows(worst=0.139, suite="protocol", named=False),
                  _rows(worst=0.021, sha="b" * 16, named=False))
    by_ad = {ln["worst AD"].split(" ")[0]: ln for ln in lines}
    assert by_ad["2.1"]["rank"] == "1" and by_ad["2.1"]["suite"] == "unknown"
    assert by_ad["13.9"]["suite"] == "protocol"


def test_unreliable_lines_rank_after_the_reliable_ones():
    lines = board(_rows("patchguard", 0.4), _rows("padim", 0.6),
                  _rows("stfpm", 0.9, flags=["blackbox_stronger"]))
    assert [ln["model"].split(" ")[0] for ln in lines] == ["padim", "patchguard", "stfpm"]
    assert [ln["rank"] for ln in lines] == ["1", "2", "3"]
    assert lines[2]["reliability"] == "**UNRELIABLE: blackbox_stronger**"
    assert lines[0]["reliability"] == "ok"


def test_one_line_per_model_over_its_seeds():
    seeds = [_rows(worst=v, seed=s, half=0.07) for s, v in enumerate((0.870, 0.872, 0.871))]
    lines = board(*seeds, _rows("padim", 0.5, seed=None))
    assert len(lines) == 2
    mine = next(ln for ln in lines if ln["model"].startswith("patchguard"))
    assert mine["seeds"] == "3 (0, 1, 2)" and mine["rank"] == "1"
    # +-7 on the test set and the t half-width over 3 seeds (0.25 points) in quadrature
    assert mine["worst AD"] == "87.1 [80.1, 94.1]"
    assert "patchguard0" not in mine["model"]  # no single checkpoint names three
    padim = next(ln for ln in lines if ln["model"].startswith("padim"))
    assert padim["seeds"] == "1 (?)" and "padimNon" in padim["model"]


def test_seed_intervals_are_clipped_and_failed_seeds_not_counted():
    (two,) = board(_rows(worst=0.80, seed=0, half=0.05), _rows(worst=0.90, seed=1, half=0.05))
    assert two["seeds"] == "2 (0, 1)"
    assert two["worst AD"].startswith("85.0 [") and two["worst AD"].endswith(", 100.0]")
    (failed,) = board(_rows(worst=0.80, seed=0), _rows(worst=NAN, seed=1),
                      _rows(worst=0.90, seed=2))
    assert failed["seeds"] == "2 (0, 2), 1 without a worst case"
    assert failed["worst AD"].startswith("85.0")


def test_only_cards_of_one_model_merge():
    """Another training (eps 8), or a seed met twice (two trainings the cards cannot tell
    apart): lines of their own."""
    other = _rows(seed=0, sha="e" * 16, train_eps=8.0)
    lines = board(_rows(seed=0), _rows(seed=1), other)
    assert sorted(ln["seeds"] for ln in lines) == ["1 (0)", "2 (0, 1)"]
    lines = board(_rows(seed=0), _rows(seed=1), other, _rows(seed=0, sha="c" * 16))
    assert sorted(ln["seeds"] for ln in lines) == ["1 (0)", "1 (0)", "1 (0)", "1 (1)"]


def test_precision_and_suite_settings_split_groups():
    fewer = [dict(m, steps=10) if m["steps"] == 100 else m for m in MEMBERS]
    lines = board(_rows("patchguard", 0.3), _rows("padim", 0.2, precision="bf16"),
                  _rows("stfpm", 0.1, suite_members=json.dumps(fewer)))
    assert [ln["rank"] for ln in lines] == ["1", "1", "1"]
    by_model = {ln["model"].split(" ")[0]: (ln["suite"], ln["precision"]) for ln in lines}
    assert by_model["padim"] == (by_model["patchguard"][0], "bf16")
    assert by_model["patchguard"][1] == "fp32"
    assert by_model["stfpm"][0] != by_model["patchguard"][0]
    assert {by_model["stfpm"][0], by_model["patchguard"][0]} == {"adaptive A", "adaptive B"}
    text = markdown(build_cards(_rows("stfpm", 0.1, suite_members=json.dumps(fewer))
                                + _rows("patchguard", 0.3)))
    assert ("- adaptive A: protocol 1000 steps x 1 restarts; det_topk 10 steps x 2 restarts;"
            " square_det 1,000 queries") in text


def test_operating_points_real_budget_and_commit_columns():
    extra = {"tpr_at_fpr1": 0.01, "tpr_at_fpr5": 0.04, "image_auroc_attack_normal": 0.6,
             "image_auroc_attack_anomalous": 0.5}
    (line,) = board(_rows(**extra))
    assert (line["worst TPR@1%FPR"], line["worst TPR@5%FPR"]) == ("1.0", "4.0")
    assert line["worst AD normals attacked"] == "60.0"
    assert line["worst AD anomalous attacked"] == "50.0"
    assert line["commit"] == "aaaaaaaa" and line["precision"] == "fp32"
    assert line["real budget"] == "–" and line["clean AD"] == "95.0 [90.0, 99.0]"
    patch = [r | {"threat": "patch", "eps": 0.02, "patch_area": 0.0204}
             for r in _rows() if r["attack"] != "clean"]
    (p,) = [ln for ln in table(markdown(build_cards(patch))) if ln["threat"] == "patch"]
    assert p["real budget"] == "2.04 % area"


def test_version_1_cards_read_as_unknown_suite_and_commit():
    (card,) = build_cards(_rows(worst=0.3))
    old = {k: v for k, v in card.items() if k not in ("suite", "precision", "git_commits",
                                                      "eval_version", "written_by_commit")}
    old |= {"schema_version": 1, "git_commit": "c" * 40,
            "robust": [{"eps": 8.0, "protocol": b["protocol"],
                        "worst_case": b["worst_case"] | {"steps": 1000, "restarts": 1},
                        "forward_passes": 8400, "flags": []} for b in card["robust"]]}
    lines = table(markdown([old, *build_cards(_rows(worst=0.1, sha="b" * 16))]))
    by_suite = {ln["suite"]: ln for ln in lines}
    assert by_suite["unknown"]["commit"] == "?" and by_suite["unknown"]["precision"] == "?"
    assert by_suite["unknown"]["rank"] == by_suite["adaptive"]["rank"] == "1"


def _board_cards() -> list[dict]:
    return build_cards(_rows("patchguard", worst=0.4) + _rows("padim", worst=0.6)
                       + _rows("stfpm", worst=0.5, flags=["blackbox_stronger"]))


def test_leaderboard_html_escapes_and_marks(tmp_path):
    cards = _board_cards()
    cards[0]["detector"] = "<script>alert(1)</script>"
    page = html_page(cards)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http" not in page and "<link" not in page  # self-contained
    assert page.count('<tr class="unreliable">') == 1
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
