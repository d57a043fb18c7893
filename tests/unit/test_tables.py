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
