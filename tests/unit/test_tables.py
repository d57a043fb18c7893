"""results.md: the detectors' comparison layout."""

from __future__ import annotations

import pytest

from pgray.tracking.tables import markdown_table


def _rows() -> list[dict]:
    rows = []
    for i, det in enumerate(("stfpm", "patchguard", "padim", "patchguard_clean")):
        rows.append({"dataset": "synthetic", "category": "weave", "detector": det,
                     "attack": "clean", "eps": 0.0, "image_auroc": 0.9 - i / 100,
                     "pixel_auroc": 0.8, "aupro": 0.5, "flags": [],
                     "backbone_weights": "trained" if det.startswith("patchguard") else "random"})
        for eps in (2.0, 8.0):
            rows.append(rows[-1] | {"attack": "worst_case", "eps": eps,
                                    "image_auroc": eps / 100 + i / 1000})
    return rows


def test_one_comparison_per_eps_with_patchguard_first():
    text = markdown_table(_rows())
    heads = [line for line in text.splitlines() if "detectors compared" in line]
    assert heads == ["### synthetic: detectors compared (eps 2/255; worst case of the adaptive"
                     " suite)", "### synthetic: detectors compared (eps 8/255; worst case of"
                     " the adaptive suite)"]
    header = next(line for line in text.splitlines() if line.startswith("| category | "))
    groups = list(dict.fromkeys(c.strip().split(" ")[0] for c in header.split("|")[2:-1]))
    assert groups == ["patchguard", "patchguard_clean", "padim", "stfpm"]
    tables = text.split("detectors compared")
    # eps 8 table: patchguard (i=1) worst AD 8.1, stfpm (i=0) worst AD 8.0
    weave8 = next(line for line in tables[2].splitlines() if line.startswith("| weave"))
    cells = [c.strip() for c in weave8.split("|")[2:-1]]
    assert cells[0:2] == ["89.0", "8.1"] and cells[12:14] == ["90.0", "8.0"]
    assert "Random-init backbones (no pretrained weights): padim, stfpm" in text


def test_rows_of_several_seeds_show_their_mean_and_interval_across_seeds():
    from scipy import stats

    from pgray.tracking.tables import across_seeds

    base = {"dataset": "synthetic", "category": "weave", "detector": "patchguard",
            "attack": "worst_case", "setting": "worst_case_eps8", "eps": 8.0,
            "pixel_auroc": 0.7, "aupro": float("nan")}
    values = {0: 0.60, 1: 0.70, 2: 0.80}
    rows = [base | {"seed": s, "image_auroc": v, "flags": ["f"] if s == 2 else [],
                    "image_auroc_ci_low": v - 0.05, "image_auroc_ci_high": v + 0.05}
            for s, v in values.items()]
    rows.append(base | {"detector": "padim", "seed": None, "image_auroc": 0.5})
    merged = {r["detector"]: r for r in across_seeds(rows)}
    assert len(merged) == 2 and merged["padim"]["image_auroc"] == 0.5  # unseeded: unchanged
    mine = merged["patchguard"]
    # the seeds' test-set half-width (0.05) and the t half-width over 3 seeds (sd 0.1) in
    # quadrature
    half = (0.05 ** 2 + (stats.t.ppf(0.975, 2) * 0.1 / 3 ** 0.5) ** 2) ** 0.5
    assert mine["image_auroc"] == pytest.approx(0.7)
    assert (mine["image_auroc_ci_low"], mine["image_auroc_ci_high"]) == pytest.approx(
        (0.7 - half, 0.7 + half))
    assert mine["n_seeds"] == 3 and mine["seeds"] == [0, 1, 2] and mine["flags"] == ["f"]
    assert mine["pixel_auroc"] == pytest.approx(0.7) and mine["aupro"] != mine["aupro"]
    text = markdown_table([r | {"attack": a} for r in rows[:3] for a in ("worst_case",)])
    assert text.startswith("Mean over training seeds 0, 1, 2")
    assert ("the mean over 3 training seeds; brackets: its 95 % interval over both the test"
            " images and the seeds") in text
    line = next(x for x in text.splitlines() if x.startswith("| weave"))
    assert "70.0" in line


def test_each_seed_has_its_own_checkpoint_and_job():
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.components.targets import checkpoint_path

    cfg = from_dict(BenchmarkConfig, {"seeds": [3, 4], "datasets": [
        {"dataset": "synthetic", "checkpoint": "/c/{category}/checkpoint.pt",
         "detectors": [{"name": "padim", "checkpoint": "/c/{category}/padim.pt"}]},
        {"dataset": "synthetic", "checkpoint": "/d/{category}/s{seed}.pt"}]})
    entries = cfg.entries()
    assert [(e.seed, e.patchguard, len(e.detectors)) for e in entries] == [
        (3, True, 0), (4, True, 0), (None, False, 1), (3, True, 0), (4, True, 0)]
    paths = [str(checkpoint_path(e, "disc")) for e in entries if e.patchguard]
    assert paths == ["/c/disc/seed3/checkpoint.pt", "/c/disc/seed4/checkpoint.pt",
                     "/d/disc/s3.pt", "/d/disc/s4.pt"]
    assert str(checkpoint_path(entries[2], "disc", entries[2].detectors[0])) == "/c/disc/padim.pt"


def test_each_threat_has_its_own_tables_even_at_the_same_eps():
    base = {"dataset": "synthetic", "category": "weave", "detector": "patchguard",
            "pixel_auroc": 0.8, "aupro": 0.5, "flags": []}
    rows = [base | {"attack": "clean", "threat": "none", "eps": 0.0, "image_auroc": 0.9},
            base | {"attack": "protocol", "threat": "linf", "eps": 1.0, "steps": 10,
                    "image_auroc": 0.7},
            base | {"attack": "worst_case", "threat": "linf", "eps": 1.0, "image_auroc": 0.5},
            base | {"attack": "worst_case", "threat": "l2", "eps": 1.0, "image_auroc": 0.3,
                    "flags": ["zero_gradients"]},
            base | {"attack": "worst_case", "threat": "patch", "eps": 0.02, "image_auroc": 0.6}]
    text = markdown_table(rows)
    heads = [line for line in text.splitlines() if line.startswith("### ")]
    assert heads == ["### synthetic (eps 1/255, protocol PGD-10; worst case = the robust number)",
                     "### synthetic (L2 eps 1; worst case = the robust number)",
                     "### synthetic (patch 2 % of the image; worst case = the robust number)"]
    weave = [line for line in text.splitlines() if line.startswith("| weave")]
    cells = [[c.strip() for c in line.split("|")[2:-1]] for line in weave]
    assert cells[0][:3] == ["90.0", "70.0", "50.0"] and cells[0][-1] == ""
    assert cells[1][:3] == ["90.0", "–", "30.0"] and cells[1][-1] == "zero_gradients"
    assert cells[2][:3] == ["90.0", "–", "60.0"]


def test_cells_carry_intervals_and_marks_differences_beyond_them():
    rows = _rows()
    for r in rows:  # patchguard's clean AD 0.89 [0.86, 0.92]; stfpm's 0.90 [0.80, 0.95]
        r |= {"image_auroc_ci_low": r["image_auroc"] - 0.03,
              "image_auroc_ci_high": r["image_auroc"] + 0.03}
        if r["detector"] == "stfpm":
            r["image_auroc_ci_low"] = r["image_auroc"] - 0.1
        if r["detector"] == "padim" and r["attack"] == "clean":  # 0.88 moved to 0.70
            r |= {"image_auroc": 0.70, "image_auroc_ci_low": 0.65, "image_auroc_ci_high": 0.75}
    text = markdown_table(rows)
    weave8 = next(line for line in text.split("detectors compared")[2].splitlines()
                  if line.startswith("| weave"))
    cells = [c.strip() for c in weave8.split("|")[2:-1]]
    assert cells[0] == "89.0 [86.0, 92.0]" and cells[2] == "80.0"  # AL: no interval given
    assert cells[8] == "70.0* [65.0, 75.0]"  # padim: apart from patchguard's interval
    assert cells[12] == "90.0 [80.0, 93.0]"  # stfpm: overlapping, no mark
    assert "`*`: its 95 % interval and patchguard's do not overlap." in text


def test_console_lines_show_intervals():
    from pgray.tracking.tables import rows_text

    row = {"attack": "clean", "setting": "clean", "image_auroc": 0.872,
           "image_auroc_ci_low": 0.841, "image_auroc_ci_high": 0.9, "pixel_auroc": 0.5,
           "aupro": float("nan"), "aupro_ci_low": float("nan"), "aupro_ci_high": float("nan"),
           "n_images": 10}
    assert "image_auroc 0.8720 [0.8410, 0.9000]  pixel_auroc 0.5000  aupro nan" in rows_text([row])


def _category(cat: str, detector: str = "patchguard", worst: bool = True, **extra) -> list:
    base = {"dataset": "synthetic", "category": cat, "detector": detector, "pixel_auroc": 0.8,
            "aupro": 0.5, "flags": []} | extra
    rows = [base | {"attack": "clean", "threat": "none", "eps": 0.0, "image_auroc": 0.9}]
    if worst:
        rows += [base | {"attack": "protocol", "threat": "linf", "eps": 8.0, "steps": 10,
                         "image_auroc": 0.6},
                 base | {"attack": "worst_case", "threat": "linf", "eps": 8.0,
                         "image_auroc": 0.4}]
    return rows


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("|")[2:-1]]


def test_a_mean_row_averages_the_same_categories_in_every_column():
    """weave's suite job failed: it has a clean row and no worst case. Its clean 50.0 must
    not pull the clean mean down while the worst-case mean is disc's alone."""
    from pgray.tracking.tables import budget_table

    rows = _category("disc") + [r | {"image_auroc": 0.5} for r in _category("weave",
                                                                            worst=False)]
    cols, body = budget_table(rows, 8.0, "linf")
    label, *means = body[-1][:-1]
    assert label == "mean of 1/2 (left out: weave)"
    assert means[:3] == ["90.0", "60.0", "40.0"]  # disc's clean, protocol, worst
    text = markdown_table(rows)
    mean = next(line for line in text.splitlines() if line.startswith("| **mean"))
    assert mean.startswith("| **mean of 1/2 (left out: weave)** | 90.0 | 60.0 | 40.0 |")
    # complete categories: the plain mean
    both = _category("disc") + _category("weave")
    assert budget_table(both, 8.0, "linf")[1][-1][:4] == ["mean", "90.0", "60.0", "40.0"]


def test_a_comparison_mean_averages_the_same_categories_for_every_detector():
    rows = (_category("disc") + _category("weave")
            + _category("disc", "padim") + [r | {"image_auroc": 0.5}
                                            for r in _category("weave", "padim", worst=False)])
    text = markdown_table(rows)
    compared = text.split("detectors compared")[1]
    mean = next(line for line in compared.splitlines() if line.startswith("| **mean"))
    cells = _cells(mean)
    assert mean.startswith("| **mean of 1/2 (left out: weave)** |")
    # patchguard AD clean/worst, AL clean/worst, then padim's: disc's alone in every column
    assert cells == ["90.0", "40.0", "80.0", "80.0", "90.0", "40.0", "80.0", "80.0"]


def _l2(detector: str, size: int, eps: float = 1.0) -> list:
    per_pixel = eps / (3 * size * size) ** 0.5
    base = {"dataset": "synthetic", "category": "disc", "detector": detector,
            "pixel_auroc": 0.8, "aupro": 0.5, "flags": [], "input_size": size}
    return [base | {"attack": "clean", "threat": "none", "eps": 0.0, "image_auroc": 0.9},
            base | {"attack": "worst_case", "threat": "l2", "eps": eps, "image_auroc": 0.4,
                    "l2_per_pixel": per_pixel},
            base | {"attack": "worst_case", "threat": "patch", "eps": 0.02, "image_auroc": 0.5,
                    "patch_area": round((0.02 * size * size) ** 0.5) ** 2 / size ** 2}]


def test_a_comparison_says_when_one_eps_is_not_one_budget_per_pixel():
    """PatchGuard at 224 px and PaDiM at 256 px under L2 eps 1: PaDiM's per-pixel change is
    12.5 % smaller; the table says so instead of showing one budget."""
    text = markdown_table(_l2("patchguard", 224) + _l2("padim", 256))
    heads = [line for line in text.splitlines() if "detectors compared" in line]
    assert heads[0] == ("### synthetic: detectors compared (L2 eps 1; not the same budget per"
                        " pixel for every detector; worst case of the adaptive suite)")
    assert ("Not one budget: the same L2 eps spreads over more pixels at a larger input. Per"
            " detector: patchguard: 0.657/255 RMS per pixel value at 224 px; padim: 0.575/255"
            " RMS per pixel value at 256 px.") in text
    # the patch: its real area at each input size (the side is rounded to whole pixels)
    assert ("detectors compared (patch 2 % of the image; not the same patch area for every"
            " detector;") in text
    assert ("Per detector: patchguard: real area 2.04 % at 224 px; padim: real area 1.98 % at"
            " 256 px.") in text
    # one detector's own tables say its budget as its input saw it
    assert "### synthetic, padim (L2 eps 1; 0.575/255 RMS per pixel value at 256 px;" in text
    same = markdown_table(_l2("patchguard", 224) + _l2("patchguard_clean", 224))
    assert ("detectors compared (L2 eps 1; 0.657/255 RMS per pixel value at 224 px; worst"
            in same) and "Not one budget" not in same.split("patch 2 %")[0]


def test_operating_points_are_shown_clean_and_worst_and_missing_ones_tolerated():
    rows = _category("disc") + _category("weave")
    assert "operating points" not in markdown_table(rows)  # rows from before the columns
    for r in rows:
        if r["category"] == "disc":
            r |= {"tpr_at_fpr1": 0.5 if r["attack"] == "clean" else 0.1,
                  "tpr_at_fpr5": 0.7 if r["attack"] == "clean" else 0.2}
        if r["category"] == "disc" and r["attack"] == "worst_case":
            r |= {"image_auroc_attack_normal": 0.6, "image_auroc_attack_anomalous": 0.55}
    text = markdown_table(rows)
    table = text.split("#### synthetic (eps 8/255): operating points")[1]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert _cells(lines[0]) == ["TPR@1%FPR clean", "TPR@1%FPR worst", "TPR@5%FPR clean",
                                "TPR@5%FPR worst", "AD worst, normal attacked",
                                "AD worst, anomalous attacked"]
    assert _cells(lines[1]) == ["50.0", "10.0", "70.0", "20.0", "60.0", "55.0"]
    assert _cells(lines[2]) == ["–"] * 6  # weave's rows lack the columns
    assert lines[3].startswith("| **mean of 1/2 (left out: weave)** | 50.0 | 10.0 |")


def test_operating_points_of_several_seeds_are_their_mean():
    rows = [r | {"seed": s, "tpr_at_fpr1": v, "setting": r["attack"]}
            for s, v in ((0, 0.2), (1, 0.4)) for r in _category("disc")]
    text = markdown_table(rows)
    table = text.split("operating points")[1]
    disc = next(line for line in table.splitlines() if line.startswith("| disc"))
    assert _cells(disc)[:2] == ["30.0", "30.0"]
