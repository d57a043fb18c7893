"""Bootstrap intervals (pgray.core.intervals): the fast resampled metrics against the exact
ones of pgray.core.metrics, and the intervals' behaviour (coverage of the point, width,
seeding, paired differences)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pgray.core import intervals as iv
from pgray.core.metrics import aupro, image_auroc, pixel_auroc
from pgray.core.scoring import EvalOutputs


def split(n: int, size: int = 32, separation: float = 0.5, seed: int = 0,
          levels: int | None = None) -> EvalOutputs:
    """A third of the images anomalous with 1-3 rectangles; smooth noise maps raised by
    `separation` on the defects; `levels` quantises the maps (ties across images)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(np.int64)
    masks = np.zeros((n, size, size), np.uint8)
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - size // 4, 2)
            h, w = rng.integers(2, size // 4, 2)
            masks[i, y:y + h, x:x + w] = 1
    maps = 4 * ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 2, 2))
    maps = maps + separation * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    scores = maps.reshape(n, -1).max(1) + separation * labels
    return EvalOutputs(scores=scores.astype(np.float32), labels=labels,
                       maps=maps.astype(np.float32), masks=masks)


def exact(out: EvalOutputs) -> dict[str, float]:
    return {"image_auroc": image_auroc(out.scores, out.labels),
            "pixel_auroc": pixel_auroc(out.maps, out.masks), "aupro": aupro(out.maps, out.masks)}


# largest differences measured on such splits (seeds 0-5, 30-60 images at 32 and 64 px, maps
# with and without ties): image AUROC 1e-16 (exact), pixel AUROC 7e-6, AUPRO 5e-5
TOLERANCE = {"image_auroc": 1e-12, "pixel_auroc": 1e-4, "aupro": 1e-3}


@pytest.mark.parametrize("seed,levels", [(0, None), (1, None), (2, 8)])
def test_all_ones_resample_matches_the_exact_metrics(seed, levels):
    out = split(60, seed=seed, levels=levels)
    ones = np.ones((1, 60), dtype=np.int64)
    fast = iv.replicates(out, ones)
    for metric, value in exact(out).items():
        assert abs(fast[metric][0] - value) < TOLERANCE[metric], metric


def test_a_resample_with_repeats_matches_the_exact_metric_of_the_repeated_split():
    """Weights are image multiplicities: the fast metric of counts c equals the exact metric of
    the split with image i repeated c_i times (regions and normal pixels counted again)."""
    out = split(30, seed=4)
    counts = iv.resample_counts(out.labels, 1, seed=7)
    take = np.repeat(np.arange(30), counts[0])
    repeated = EvalOutputs(scores=out.scores[take], labels=out.labels[take],
                           maps=out.maps[take], masks=out.masks[take])
    fast = iv.replicates(out, counts)
    for metric, value in exact(repeated).items():
        assert abs(fast[metric][0] - value) < TOLERANCE[metric], metric


def test_resamples_keep_each_label_count_and_are_seeded():
    labels = np.array([0] * 7 + [1] * 3)
    counts = iv.resample_counts(labels, 200, seed=5)
    assert counts.shape == (200, 10)
    assert (counts[:, :7].sum(1) == 7).all() and (counts[:, 7:].sum(1) == 3).all()
    assert np.array_equal(counts, iv.resample_counts(labels, 200, seed=5))
    assert not np.array_equal(counts, iv.resample_counts(labels, 200, seed=6))


def test_interval_contains_the_point_and_is_reproducible():
    out = split(60, seed=1)
    points = exact(out)
    first = out.intervals(points)
    for m, value in points.items():
        assert first[f"{m}_ci_low"] <= value <= first[f"{m}_ci_high"], m
        assert first[f"{m}_ci_high"] - first[f"{m}_ci_low"] > 0.005, m
    assert out.intervals(points) == first
    other = iv.interval_columns(iv.bootstrap(out, points, seed=1))
    assert other != first


def test_interval_narrows_as_the_split_grows():
    small, large = split(30, seed=3), split(240, seed=3)
    width = {}
    for name, out in (("small", small), ("large", large)):
        cols = iv.interval_columns(iv.bootstrap(out, exact(out), n_resamples=400))
        width[name] = {m: cols[f"{m}_ci_high"] - cols[f"{m}_ci_low"] for m in iv.METRICS}
    for m in iv.METRICS:  # 8 x the images: about 1 / sqrt(8) of the width
        assert width["large"][m] < 0.6 * width["small"][m], m


def test_undefined_metrics_give_nan_intervals():
    out = split(12, seed=0)
    normal_only = EvalOutputs(scores=out.scores[1:3], labels=out.labels[1:3],
                              maps=out.maps[1:3], masks=out.masks[1:3])
    nan = float("nan")
    cols = normal_only.intervals({"image_auroc": nan, "pixel_auroc": nan, "aupro": nan})
    assert set(cols) == {f"{m}_ci_{e}" for m in iv.METRICS for e in ("low", "high")}
    assert all(v != v for v in cols.values())


def test_the_lowest_of_candidates_is_taken_per_resample():
    a = {"aupro": np.array([0.2, 0.5, 0.9])}
    b = {"aupro": np.array([0.3, 0.4, 0.95])}
    assert np.array_equal(iv.lowest([a, b], "aupro"), [0.2, 0.4, 0.9])
    assert iv.lowest([a, b], "pixel_auroc") is None


def test_identical_detectors_never_differ_significantly():
    out = split(45, seed=2)
    for metric in iv.METRICS:
        d = iv.paired_difference(out, out, metric, n_resamples=300)
        assert d.diff == 0 and d.low == 0 and d.high == 0 and not d.significant


def test_clearly_separated_detectors_differ_significantly_and_noise_does_not():
    good, poor = split(60, separation=3.0, seed=5), split(60, separation=0.2, seed=5)
    for metric in iv.METRICS:
        d = iv.paired_difference(good, poor, metric, n_resamples=300)
        assert d.diff > 0 and d.low > 0 and d.significant, metric
    twin = split(60, separation=0.2, seed=6)  # the same kind of detector, other noise
    assert not iv.paired_difference(poor, twin, "image_auroc", n_resamples=300).significant
    with pytest.raises(ValueError, match="same test images"):
        iv.paired_difference(good, split(61), "image_auroc")


def test_unpaired_rows_are_apart_only_when_intervals_do_not_overlap():
    row = {"image_auroc_ci_low": 0.6, "image_auroc_ci_high": 0.7}
    assert iv.intervals_apart(row, {"image_auroc_ci_low": 0.75, "image_auroc_ci_high": 0.9},
                              "image_auroc")
    assert not iv.intervals_apart(row, {"image_auroc_ci_low": 0.65, "image_auroc_ci_high": 0.9},
                                  "image_auroc")
    assert not iv.intervals_apart(row, {}, "image_auroc")


def test_paired_rows_reads_the_replicates_kept_by_scoring():
    good, poor = split(60, separation=3.0, seed=5), split(60, separation=0.2, seed=5)
    rows = []
    for out in (good, poor):
        points = exact(out)
        rows.append(points | out.intervals(points))
    d = iv.paired_rows(rows[0], good, rows[1], poor, "aupro")
    ref = iv.paired_difference(good, poor, "aupro")
    assert d == ref and d.significant
    assert iv.paired_rows(rows[0], good, rows[0], good, "aupro").significant is False


# Across seeds: every seed is scored on the same test split (issue 28, item 6)

def _seed_rows(values, half=0.07, detector="patchguard", **extra) -> list[dict]:
    """One worst-case row per seed, each with a test-set interval of +-`half` (None: none)."""
    nan = float("nan")
    return [{"dataset": "synthetic", "category": "weave", "detector": detector,
             "attack": "worst_case", "setting": "worst_case_eps8", "eps": 8.0, "seed": seed,
             "image_auroc": v, "pixel_auroc": 0.7, "aupro": nan, "flags": [],
             "image_auroc_ci_low": nan if half is None else v - half,
             "image_auroc_ci_high": nan if half is None else v + half} | extra
            for seed, v in enumerate(values)]


def test_seed_interval_is_at_least_the_test_set_interval():
    # the numbers: three seeds 0.870/0.872/0.871, one model's test interval +-0.07;
    # a t-interval over the seeds alone claimed +-0.0025
    s = iv.across_seeds([0.870, 0.872, 0.871], [0.80, 0.802, 0.801], [0.94, 0.942, 0.941])
    assert s.n_seeds == 3 and s.mean == pytest.approx(0.871)
    seeds_only = 4.302653 * 0.001 / 3 ** 0.5  # t(0.975, 2) x sd / sqrt(3)
    half = (0.07 ** 2 + seeds_only ** 2) ** 0.5
    assert (s.low, s.high) == pytest.approx((0.871 - half, 0.871 + half))
    assert s.high - s.mean >= 0.07 and s.mean - s.low >= 0.07
    # asymmetric test intervals stay asymmetric, one side each
    s = iv.across_seeds([0.97, 0.97], [0.90, 0.90], [0.99, 0.99])
    assert (s.low, s.high) == pytest.approx((0.90, 0.99))


def test_seed_interval_is_clipped_and_drops_nan_seeds():
    # two seeds 0.80/0.90 (each +-0.05 on the test set): t(1) makes it wide, but an AUROC
    # stays in [0, 1] (the old interval was [21.5, 148.5] %)
    s = iv.across_seeds([0.80, 0.90], [0.75, 0.85], [0.85, 0.95])
    assert s.mean == pytest.approx(0.85) and s.high == 1.0 and 0.0 <= s.low < 0.3
    s = iv.across_seeds([0.80, float("nan"), None, 0.90], [0.75, 0.1, 0.1, 0.85],
                        [0.85, 0.2, 0.2, 0.95])
    assert s.n_seeds == 2 and s.mean == pytest.approx(0.85)
    assert iv.across_seeds([float("nan")]).n_seeds == 0
    # one seed: its own test-set interval; no test-set interval at all: none
    assert iv.across_seeds([0.8], [0.7], [0.85]) == iv.SeedSummary(0.8, 0.7, 0.85, 1)
    unknown = iv.across_seeds([0.870, 0.872, 0.871])
    assert unknown.mean == pytest.approx(0.871) and unknown.low != unknown.low


def test_seed_interval_from_replicates_is_the_bootstrap_of_the_mean():
    """Seeds scored on the same images, resampled alike: their mean's bootstrap is at most
    as wide as the mean of their intervals (the bound used without replicates)."""
    outs = [split(60, separation=s, seed=k) for k, s in ((3, 0.8), (4, 1.2))]
    outs = [EvalOutputs(o.scores, outs[0].labels, o.maps, o.masks) for o in outs]
    points = [image_auroc(o.scores, o.labels) for o in outs]
    reps = [iv.bootstrap(o, {"image_auroc": p}, n_resamples=400)["image_auroc"]
            for o, p in zip(outs, points)]
    lows, highs = zip(*(iv.percentile_interval(r) for r in reps))
    paired = iv.across_seeds(points, lows, highs, replicates=reps)
    bound = iv.across_seeds(points, lows, highs)
    seeds = 12.7062 * abs(points[0] - points[1]) / 2  # t(0.975, 1) x sd / sqrt(2)
    mean_low, mean_high = iv.percentile_interval(np.mean(reps, axis=0))
    mean = float(np.mean(points))
    assert paired.low == pytest.approx(max(0.0, mean - np.hypot(mean - mean_low, seeds)))
    assert paired.high == pytest.approx(min(1.0, mean + np.hypot(mean_high - mean, seeds)))
    assert bound.low <= paired.low + 1e-9 and paired.high <= bound.high + 1e-9
    # identical seeds: the replicates' interval is each seed's own
    same = iv.across_seeds(points[:1] * 2, lows[:1] * 2, highs[:1] * 2,
                           replicates=reps[:1] * 2)
    assert (same.low, same.high) == pytest.approx((lows[0], highs[0]))


def test_tables_merge_seeds_with_test_and_seed_variation():
    from pgray.tracking.tables import across_seeds

    (merged,) = across_seeds(_seed_rows([0.870, 0.872, 0.871]))
    assert merged["image_auroc"] == pytest.approx(0.871)
    assert merged["image_auroc_ci_high"] - merged["image_auroc"] >= 0.07
    assert merged["image_auroc"] - merged["image_auroc_ci_low"] >= 0.07


def test_tables_seed_interval_is_clipped():
    from pgray.tracking.tables import across_seeds

    (wide,) = across_seeds(_seed_rows([0.80, 0.90], half=0.05))
    assert 0.0 <= wide["image_auroc_ci_low"] and wide["image_auroc_ci_high"] == 1.0


def test_tables_do_not_count_a_failed_seed():
    from pgray.tracking.tables import across_seeds

    (failed,) = across_seeds(_seed_rows([0.80, float("nan"), 0.90], half=0.05))
    assert failed["n_seeds"] == 2 and failed["seeds"] == [0, 2]
    assert failed["seeds_without_value"] == [1]
    assert failed["image_auroc"] == pytest.approx(0.85)


def test_tables_average_operating_points_over_seeds():
    from pgray.tracking.tables import across_seeds

    (points,) = across_seeds([r | {"tpr_at_fpr1": t} for r, t in
                              zip(_seed_rows([0.8, 0.9]), (0.2, 0.4))])
    assert points["tpr_at_fpr1"] == pytest.approx(0.3)  # not seed 0's 0.2


def test_comparison_stars_only_intervals_over_test_images_and_seeds():
    """Two detectors 1 point apart on every seed, each seed +-7 on the test set: no star (a
    t-interval over the seeds alone called it significant); 30 points apart: a star."""
    from pgray.tracking.tables import across_seeds, comparison_table

    def table(gap: float) -> str:
        rows = []
        for det, base in (("patchguard", 0.870), ("padim", 0.870 + gap)):
            worst = _seed_rows([base, base + 0.002, base + 0.001], detector=det)
            rows += worst + [r | {"attack": "clean", "setting": "clean", "eps": 0.0}
                             for r in worst]
        return "\n".join(comparison_table("synthetic", across_seeds(rows),
                                          ["patchguard", "padim"], 8.0))

    assert "*" not in table(0.01).replace("**mean**", "")
    assert "* [" in table(-0.3)
