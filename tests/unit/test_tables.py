"""results.md: the detectors' comparison layout."""

from __future__ import annotations

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
