"""Every layout finds the right samples: counts, labels, defect types, masks, foregrounds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from datatrees import (
    FOLDER_OPTIONS,
    MVTEC_DEFECTS,
    N_GOOD,
    N_PER_DEFECT,
    N_TRAIN,
    VISA_ANOMALIES,
    VISA_NORMALS,
    VISA_WITH_FOREGROUND,
    write_tree,
)

from pgray.data.registry import get_layout, list_datasets
from pgray.data.samples import Sample
from pgray.errors import DatasetError

MVTEC_LIKE = {  # layout -> (category, folder of normals, defect folders, has foreground masks)
    "mvtec": ("bottle", "good", tuple(MVTEC_DEFECTS["bottle"]), True),
    "mpdd": ("bracket_black", "good", ("hole",), True),
    "wfdd": ("grey_cloth", "good", ("stain",), False),
    "dtd_synthetic": ("Woven_001", "good", ("bad",), False),
    "btad": ("01", "ok", ("ko",), True),
    "headct": ("", "good", ("hemorrhage",), True),
    "brats2021": ("", "normal", ("tumor",), True),
}


def defects(samples: list[Sample]) -> Counter[str]:
    return Counter(s.defect_type for s in samples)


def assert_pairs_by_stem(samples: list[Sample]) -> None:
    for s in samples:
        if s.label == 0:
            assert s.mask_path is None and s.defect_type == "good"
            continue
        assert s.mask_path is not None and s.mask_path.is_file()
        stem = s.mask_path.stem.removesuffix("_mask").replace("seg", "flair")
        assert stem == s.image_path.stem


def test_all_ten_layouts_are_registered():
    assert list_datasets() == sorted(
        [
            "mvtec",
            "visa",
            "mpdd",
            "btad",
            "wfdd",
            "dtd_synthetic",
            "brats2021",
            "headct",
            "folder",
            "synthetic",
        ]
    )
    assert len(get_layout("mvtec").categories) == 15
    assert len(get_layout("visa").categories) == 12
    assert len(get_layout("dtd_synthetic").categories) == 12
    assert get_layout("btad").categories == ("01", "02", "03")


@pytest.mark.parametrize("name", sorted(MVTEC_LIKE))
def test_mvtec_like_layouts(name, tmp_path):
    category, normal, defect_dirs, has_fg = MVTEC_LIKE[name]
    root = write_tree(name, tmp_path / name)
    layout = get_layout(name)
    train = layout.discover(root, category, "train", {"visa_split": "1cls"})
    test = layout.discover(root, category, "test", {"visa_split": "1cls"})

    assert len(train) == N_TRAIN and all(s.label == 0 for s in train)
    assert all(s.image_path.parent.name == normal for s in train)
    assert defects(test) == Counter({"good": N_GOOD, **{d: N_PER_DEFECT for d in defect_dirs}})
    assert sum(s.label for s in test) == N_PER_DEFECT * len(defect_dirs)
    assert_pairs_by_stem(test)
    # Foreground masks belong to train images only, same stem, in train/foreground_mask/.
    for s in train:
        if has_fg:
            assert (
                s.foreground_path
                == s.image_path.parents[1] / "foreground_mask" / f"{s.image_path.stem}.png"
            )
        else:
            assert s.foreground_path is None
    assert all(s.foreground_path is None for s in test)


def test_mvtec_texture_category_has_no_foreground(tmp_path):
    root = write_tree("mvtec", tmp_path)
    train = get_layout("mvtec").discover(root, "carpet", "train")
    assert len(train) == N_TRAIN and all(s.foreground_path is None for s in train)
    assert get_layout("mvtec").available_categories(root) == ["bottle", "carpet"]


def test_btad_pairs_bmp_images_with_png_masks(tmp_path):
    root = write_tree("btad", tmp_path)
    test = get_layout("btad").discover(root, "01", "test")
    anomalous = [s for s in test if s.label]
    assert {s.image_path.suffix for s in test} == {".bmp"}
    assert [s.mask_path.name for s in anomalous] == ["000.png", "001.png"]


def test_single_category_layouts_accept_empty_or_own_name(tmp_path):
    root = write_tree("headct", tmp_path)
    layout = get_layout("headct")
    assert layout.discover(root, "", "train") == layout.discover(root, "headct", "train")
    with pytest.raises(DatasetError, match="one category"):
        layout.discover(root, "brain", "train")


def test_brats_masks_found_by_flair_to_seg(tmp_path):
    root = write_tree("brats2021", tmp_path)
    test = get_layout("brats2021").discover(root, "", "test")
    tumours = sorted((s for s in test if s.label), key=lambda s: s.image_path)
    assert [s.mask_path.name for s in tumours] == [
        "BraTS_200_seg_80.png",
        "BraTS_201_seg_80.png",
    ]


def test_visa_official_split(tmp_path):
    root = write_tree("visa", tmp_path)
    layout = get_layout("visa")
    train = layout.discover(root, "candle", "train", {"visa_split": "1cls"})
    test = layout.discover(root, "candle", "test", {"visa_split": "1cls"})
    assert [s.image_path.name for s in train] == ["0000.JPG", "0001.JPG", "0002.JPG"]
    assert all(s.label == 0 and s.foreground_path is not None for s in train)
    assert len(test) == VISA_NORMALS - 3 + VISA_ANOMALIES
    # Defect types come from image_anno.csv; masks from the csv, paired by stem.
    assert defects(test) == Counter({"good": 2, "wax_stain": 2, "weird_wick": 1})
    assert_pairs_by_stem(test)


def test_visa_reference_split_trains_on_normals_with_foreground(tmp_path):
    root = write_tree("visa", tmp_path)
    layout = get_layout("visa")
    train = layout.discover(root, "candle", "train", {"visa_split": "reference"})
    test = layout.discover(root, "candle", "test", {"visa_split": "reference"})
    assert len(train) == VISA_WITH_FOREGROUND
    assert all(s.foreground_path.name == f"{s.image_path.stem}.png" for s in train)
    assert Counter(s.label for s in test) == Counter(
        {0: VISA_NORMALS - VISA_WITH_FOREGROUND, 1: VISA_ANOMALIES}
    )
    assert not {s.image_path for s in train} & {s.image_path for s in test}


def test_visa_without_split_csv_names_the_file(tmp_path):
    root = write_tree("visa", tmp_path)
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DatasetError, match=r"split_csv/1cls.csv.*visa_split: reference"):
        get_layout("visa").discover(root, "candle", "train", {"visa_split": "1cls"})


def test_visa_rejects_unknown_split_mode(tmp_path):
    root = write_tree("visa", tmp_path)
    with pytest.raises(DatasetError, match="visa_split"):
        get_layout("visa").discover(root, "candle", "train", {"visa_split": "2cls"})


def test_folder_layout_holds_out_every_nth_normal(tmp_path):
    root = write_tree("folder", tmp_path)
    layout = get_layout("folder")
    train = layout.discover(root, "", "train", FOLDER_OPTIONS)
    test = layout.discover(root, "", "test", FOLDER_OPTIONS)
    # test_fraction 0.4 of 5 sorted normals: indices 2 and 4 are held out.
    assert [s.image_path.name for s in train] == ["n0.png", "n1.png", "n3.png"]
    assert [s.image_path.name for s in test if s.label == 0] == ["n2.png", "n4.png"]
    assert defects(test) == Counter({"good": 2, "abnormal": 2, "dent": 2})
    assert_pairs_by_stem(test)


def test_folder_layout_options(tmp_path):
    root = write_tree("folder", tmp_path)
    layout = get_layout("folder")
    no_masks = layout.discover(root, "", "test", {"normal_dir": "ok", "abnormal_dir": "bad"})
    assert {s.mask_path for s in no_masks if s.label} == {None}
    with pytest.raises(DatasetError, match="data.options.normal_dir: required"):
        layout.discover(root, "", "train", {})
    with pytest.raises(
        DatasetError, match="data.options.colour: unknown option for dataset folder"
    ):
        layout.discover(root, "", "train", {"normal_dir": "ok", "colour": "red"})
    with pytest.raises(DatasetError, match=r"nope.*data.options.abnormal_dir"):
        layout.discover(root, "", "test", {"normal_dir": "ok", "abnormal_dir": "nope"})


def test_synthetic_layout_reads_generated_tree(synthetic_root: Path):
    layout = get_layout("synthetic")
    train = layout.discover(synthetic_root, "disc", "train")
    test = layout.discover(synthetic_root, "disc", "test")
    assert len(train) == 12 and all(s.foreground_path is not None for s in train)
    assert defects(test) == Counter(
        {"good": 4, "scratch": 1, "stain": 1, "missing_piece": 1, "contamination": 1}
    )
    assert_pairs_by_stem(test)
    weave = layout.discover(synthetic_root, "weave", "train")
    assert all(s.foreground_path is None for s in weave)


def test_category_required_for_multi_category_layouts(synthetic_root: Path):
    with pytest.raises(DatasetError, match="needs a category; available under .*: disc, weave"):
        get_layout("synthetic").discover(synthetic_root, "", "train")


def test_all_categories_means_those_present_under_the_root(tmp_path):
    """One rule for the sweep and the benchmark: "all" is every category present, in the
    layout's order, with a warning naming the known ones that are missing."""
    from pgray.data.registry import get_layout
    from pgray.errors import DatasetError

    layout = get_layout("mvtec")
    with pytest.raises(DatasetError, match="no mvtec categories found"):
        layout.select_categories(tmp_path, "all")
    for name in ("zipper", "bottle"):
        (tmp_path / name / "train").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"13 known categories are not under .*cable"):
        assert layout.select_categories(tmp_path, "all") == ["bottle", "zipper"]
    assert layout.select_categories(tmp_path, ["zipper"]) == ["zipper"]
