"""Bootstrap 95 % intervals for image AUROC, pixel AUROC and AUPRO, paired differences, and
the interval of a mean over training seeds (`across_seeds`: test images and seeds together)
(docs/method.md, "Uncertainty").

Test images are resampled with replacement within each image label (normals from normals,
anomalous from anomalous), `N_RESAMPLES` times from `numpy.random.default_rng(seed)`. A
resample is a row of draw counts, so the whole bootstrap is an (R, N) count matrix, fixed by
the labels, R and the seed: two detectors scored on the same split get the same resamples,
which is what makes their difference a paired bootstrap.

Exact recomputation 1,000 times is far too slow for millions of pixels, so each metric is
computed from per-image summaries once, and a resample is a weighted sum of them (a matrix
product with the count matrix):
- image AUROC: exact; the pairwise comparison matrix of anomalous against normal scores
  (1 above, 1/2 tied), weighted by the counts of both images.
- pixel AUROC: per-image histograms of normal and anomalous pixel scores on a common grid of
  quantile bins of all pixel scores; scores in one bin count as tied (half).
- AUPRO (as `pgray.core.metrics.aupro`: 8-connected regions per image, FPR over every normal
  pixel, PRO the mean region overlap, the curve clipped at the FPR limit, area / limit): on a
  grid of quantiles of the normal pixels' scores that covers FPR 0 to 2.5 x the limit finely
  (the rest of the scores is one bin), per-image sums of region overlap, region counts and
  normal-pixel counts per bin.
Each binned curve passes through a subset of the exact curve's vertices (the bin edges are
thresholds), so the weights-all-ones value differs from the exact metric only by the chords
within bins (tests/unit/test_intervals.py measures it). The replicates are shifted by that
difference, so the interval sits around the exact point estimate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

N_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
METRICS = ("image_auroc", "pixel_auroc", "aupro")
AUROC_BINS = 4000
AUPRO_BINS = 1000
# Threshold grids are cut from at most this many pixels (a strided subsample): quantiles of a
# million values place the bins as well as those of twenty million, at a tenth of the cost.
_GRID_SAMPLE = 1_000_000
_CHUNK = 1000  # resamples per matrix product: bounds memory at (1000, bins) float64 arrays
# Small splits get fewer bins: a bin of under ~8 pixels (AUROC) or ~32 normal pixels (AUPRO)
# refines nothing the interval's width could show, and the tests score many tiny splits.
_PIXELS_PER_AUROC_BIN = 8
_NORMALS_PER_AUPRO_BIN = 32


def resample_counts(labels: Any, n_resamples: int = N_RESAMPLES, seed: int = SEED
                    ) -> np.ndarray:
    """(R, N) int: how often each image is drawn in each resample, within its label."""
    labels = np.asarray(labels).reshape(-1) > 0.5
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, labels.size), dtype=np.int64)
    for group in (np.flatnonzero(~labels), np.flatnonzero(labels)):
        if group.size:
            counts[:, group] = rng.multinomial(group.size, np.full(group.size, 1 / group.size),
                                               size=n_resamples)
    return counts


def _chunks(counts: np.ndarray):
    for start in range(0, counts.shape[0], _CHUNK):
        yield counts[start:start + _CHUNK].astype(np.float64)


def image_auroc_replicates(scores: Any, labels: Any, counts: np.ndarray) -> np.ndarray:
    """(R,) exact image AUROC of each resample (NaN where a class is missing)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1) > 0.5
    pos, neg = scores[labels], scores[~labels]
    above = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    wp, wn = counts[:, labels].astype(np.float64), counts[:, ~labels].astype(np.float64)
    pairs = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum((wp @ above) * wn, axis=1) / pairs


def _grid(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Bin edges: distinct quantiles of (a strided subsample of) `values`."""
    step = max(1, values.size // _GRID_SAMPLE)
    sample = np.sort(values[::step])
    picks = np.clip((levels * (sample.size - 1)).round().astype(np.int64), 0, sample.size - 1)
    return np.unique(sample[picks])


def _per_image_bins(maps: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Each pixel's bin (higher bin, higher score; a value equal to an edge goes above it),
    offset by image so that one bincount gives per-image histograms."""
    n_bins = edges.size + 1
    bins = np.searchsorted(edges, maps.reshape(maps.shape[0], -1), side="right")
    return bins + (np.arange(maps.shape[0]) * n_bins)[:, None], n_bins


def _histograms(flat_bins: np.ndarray, select: np.ndarray, n_images: int, n_bins: int,
                weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(flat_bins[select], None if weights is None else weights,
                       minlength=n_images * n_bins).reshape(n_images, n_bins).astype(np.float64)


def _from_top(hist: np.ndarray) -> np.ndarray:
    """Per image, the count at or above each bin's lower edge, highest bin first."""
    return np.cumsum(hist[:, ::-1], axis=1)


def pixel_auroc_replicates(maps: np.ndarray, masks: np.ndarray, counts: np.ndarray,
                           bins: int = AUROC_BINS) -> np.ndarray:
    """(R,) pixel AUROC of each resample from per-image histograms (NaN: one class)."""
    maps = maps.reshape(maps.shape[0], -1)
    positive = masks.reshape(maps.shape) > 0.5
    bins = int(np.clip(maps.size // _PIXELS_PER_AUROC_BIN, 2, bins))
    edges = _grid(maps.reshape(-1), np.linspace(0, 1, bins + 1)[1:-1])
    flat, n_bins = _per_image_bins(maps, edges)
    flat, positive = flat.reshape(-1), positive.reshape(-1)
    n = maps.shape[0]
    neg = _histograms(flat, ~positive, n, n_bins)
    pos = _histograms(flat, positive, n, n_bins)
    # a negative in bin b is ranked below every positive of a higher bin, tied with its own;
    # pairs[i, j]: correctly ranked (normal pixel of image i, anomalous pixel of image j)
    # pairs, so a resample's count is the quadratic form w^T pairs w
    above_or_tied = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1] - 0.5 * pos
    pairs = neg @ above_or_tied.T
    w = counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum((w @ pairs) * w, axis=1) / ((w @ neg.sum(1)) * (w @ pos.sum(1)))


def _clipped_areas(fpr: np.ndarray, pro: np.ndarray, limit: float) -> np.ndarray:
    """Row-wise trapezoid area under non-decreasing curves from x = 0 up to x = limit, the
    segment that crosses it cut by linear interpolation (as `metrics._clipped_area`)."""
    inside = fpr[:, 1:] <= limit  # segments wholly at or below the limit (x is sorted)
    area = np.sum(np.where(inside, np.diff(fpr, axis=1) * (pro[:, :-1] + pro[:, 1:]), 0.0),
                  axis=1) / 2
    start = inside.sum(axis=1)  # the crossing segment, where there is one
    crossing = start < fpr.shape[1] - 1
    rows, k = np.arange(fpr.shape[0]), np.minimum(start, fpr.shape[1] - 2)
    x0, x1, y0, y1 = fpr[rows, k], fpr[rows, k + 1], pro[rows, k], pro[rows, k + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        y_at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
    return area + np.where(crossing, (limit - x0) * (y0 + y_at_limit) / 2, 0.0)


def _fpr_levels(fpr_limit: float, bins: int, n_normal: int) -> np.ndarray:
    """False-positive rates at which the AUPRO grid puts thresholds: evenly up to 2.5 x the
    limit (the area needs no more), and geometrically below the first even step, where a
    good detector's PRO rises steeply (one chord over that step loses up to step / 2 of
    area), down to FPR 0 (the highest normal score)."""
    reach = min(1.0, 2.5 * fpr_limit)
    even = np.linspace(0, reach, bins + 1)[1:]
    smallest = min(1.0 / max(n_normal, 1), even[0] / 2)
    steep = np.geomspace(smallest, even[0], max(bins // 10, 2))
    return np.unique(np.concatenate([[0.0], steep, even]))


def aupro_replicates(maps: np.ndarray, masks: np.ndarray, counts: np.ndarray,
                     fpr_limit: float = 0.3, bins: int = AUPRO_BINS) -> np.ndarray:
    """(R,) AUPRO of each resample from per-image region-overlap and false-positive sums
    (NaN where a resample has no region or no normal pixel)."""
    from scipy import ndimage

    from pgray.core.metrics import _PER_IMAGE_8_CONNECTED

    n = maps.shape[0]
    regions, n_regions = ndimage.label(masks.reshape(maps.shape) > 0.5,
                                       structure=_PER_IMAGE_8_CONNECTED)
    regions, maps = regions.reshape(n, -1), maps.reshape(n, -1)
    normal = regions == 0
    n_normal = int(normal.sum())
    bins = int(np.clip(n_normal // _NORMALS_PER_AUPRO_BIN, 20, bins))
    edges = _grid(maps[normal], 1 - _fpr_levels(fpr_limit, bins, n_normal))
    flat, n_bins = _per_image_bins(maps, edges)
    flat, normal = flat.reshape(-1), normal.reshape(-1)
    areas = np.bincount(regions.reshape(-1), minlength=n_regions + 1).astype(np.float64)
    areas[0] = np.inf  # normal pixels add no overlap
    overlap = _from_top(_histograms(flat, ~normal, n, n_bins,
                                    1.0 / areas[regions.reshape(-1)[~normal]]))
    false_pos = _from_top(_histograms(flat, normal, n, n_bins))
    names, firsts = np.unique(regions.reshape(-1), return_index=True)  # one pixel a region
    per_image_regions = np.bincount(firsts[names > 0] // maps.shape[1],
                                    minlength=n).astype(np.float64)
    # the curve starts at (0, 0): a zero column ahead of the first threshold
    false_pos, overlap = (np.pad(a, ((0, 0), (1, 0))) for a in (false_pos, overlap))
    normal_counts = false_pos[:, -1]
    out = []
    for w in _chunks(counts):
        with np.errstate(invalid="ignore", divide="ignore"):
            fpr = (w @ false_pos) / (w @ normal_counts)[:, None]
            # thresholds past the first one where every resample's FPR exceeds the limit
            # add no area
            past = np.flatnonzero(np.nanmin(fpr, axis=0) > fpr_limit)
            end = past[0] + 1 if past.size else fpr.shape[1]
            pro = (w @ overlap[:, :end]) / (w @ per_image_regions)[:, None]
        area = _clipped_areas(fpr[:, :end], pro, fpr_limit)
        bad = ~np.isfinite(fpr[:, -1]) | ~np.isfinite(pro[:, -1])
        out.append(np.where(bad, np.nan, area / fpr_limit))
    return np.concatenate(out)


def replicates(outputs, counts: np.ndarray, metrics: tuple[str, ...] = METRICS
               ) -> dict[str, np.ndarray]:
    """Each metric's (R + 1,) resampled values; the last is the all-ones resample (the whole
    split once), the binned estimate of the point. `outputs`: an `EvalOutputs` (scores,
    labels, maps, masks)."""
    counts = np.vstack([counts, np.ones((1, counts.shape[1]), dtype=counts.dtype)])
    maps = np.asarray(outputs.maps, dtype=np.float64)
    out = {}
    if "image_auroc" in metrics:
        out["image_auroc"] = image_auroc_replicates(outputs.scores, outputs.labels, counts)
    if "pixel_auroc" in metrics:
        out["pixel_auroc"] = pixel_auroc_replicates(maps, outputs.masks, counts)
    if "aupro" in metrics:
        out["aupro"] = aupro_replicates(maps, outputs.masks, counts)
    return out


def centred(values: np.ndarray, point: float) -> np.ndarray:
    """The replicates (without the all-ones one) shifted by the binning's error at the point,
    so that they scatter around the exact estimate; kept in [0, 1] like the metrics."""
    return np.clip(values[:-1] + (point - values[-1]), 0.0, 1.0)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 percentiles; NaN when most samples are NaN
    (the metric is undefined in most resamples)."""
    finite = samples[np.isfinite(samples)]
    if finite.size < samples.size / 2 or finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(outputs, points: dict[str, float], *, n_resamples: int = N_RESAMPLES,
              seed: int = SEED) -> dict[str, np.ndarray]:
    """Centred replicates of each metric that has a point value (NaN ones are skipped)."""
    wanted = tuple(m for m in METRICS if m in points and points[m] == points[m])
    if not wanted:
        return {}
    counts = resample_counts(outputs.labels, n_resamples, seed)
    raw = replicates(outputs, counts, wanted)
    return {m: centred(raw[m], points[m]) for m in wanted}


def interval_columns(samples: dict[str, np.ndarray], level: float = LEVEL
                     ) -> dict[str, float]:
    """`<metric>_ci_low` and `<metric>_ci_high` for every metric (NaN where absent)."""
    out = {}
    for m in METRICS:
        low, high = percentile_interval(samples[m], level) if m in samples else (np.nan,) * 2
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = float(low), float(high)
    return out


def lowest(candidates: list[dict[str, np.ndarray]], metric: str) -> np.ndarray | None:
    """Replicates of the lowest of several numbers on the same images (a worst case taken
    over candidates): the element-wise minimum, resample by resample."""
    found = [c[metric] for c in candidates if metric in c]
    return np.min(np.vstack(found), axis=0) if found else None


@dataclasses.dataclass(frozen=True)
class Difference:
    """a - b on the same images: the point difference, its interval and whether it is
    significant (the interval excludes 0)."""

    metric: str
    diff: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def paired_difference(a, b, metric: str, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                      level: float = LEVEL) -> Difference:
    """The paired bootstrap of metric(a) - metric(b): `a`, `b` are `EvalOutputs` of two
    detectors (or attacks) on the same test images, both resampled with the same image
    indices."""
    from pgray.core.metrics import aupro, image_auroc, pixel_auroc

    if not np.array_equal(np.asarray(a.labels), np.asarray(b.labels)):
        raise ValueError("a paired difference needs the same test images: the labels differ")
    exact = {"image_auroc": lambda o: image_auroc(o.scores, o.labels),
             "pixel_auroc": lambda o: pixel_auroc(o.maps, o.masks),
             "aupro": lambda o: aupro(o.maps, o.masks)}[metric]
    point_a, point_b = exact(a), exact(b)
    sa = bootstrap(a, {metric: point_a}, n_resamples=n_resamples, seed=seed)[metric]
    sb = bootstrap(b, {metric: point_b}, n_resamples=n_resamples, seed=seed)[metric]
    return difference_of(metric, point_a - point_b, sa - sb, level)


def paired_rows(row_a: dict[str, Any], out_a, row_b: dict[str, Any], out_b, metric: str,
                level: float = LEVEL) -> Difference | None:
    """row_a[metric] - row_b[metric] from the replicates their scoring kept
    (`EvalOutputs.replicates`, drawn from the same labels, resamples and seed): the paired
    bootstrap without recomputing anything. None where either lacks the metric."""
    if not np.array_equal(np.asarray(out_a.labels), np.asarray(out_b.labels)):
        raise ValueError("a paired difference needs the same test images: the labels differ")
    sa, sb = out_a.replicates.get(metric), out_b.replicates.get(metric)
    if sa is None or sb is None or sa.shape != sb.shape:
        return None
    return difference_of(metric, row_a[metric] - row_b[metric], sa - sb, level)


def difference_of(metric: str, point: float, samples: np.ndarray, level: float = LEVEL
                  ) -> Difference:
    low, high = percentile_interval(samples, level)
    return Difference(metric, float(point), low, high)


def intervals_apart(row_a: dict[str, Any], row_b: dict[str, Any], metric: str) -> bool:
    """Unpaired rows: True when their intervals of `metric` do not overlap (a conservative
    mark: overlapping intervals can still differ significantly)."""
    la, ha = row_a.get(f"{metric}_ci_low"), row_a.get(f"{metric}_ci_high")
    lb, hb = row_b.get(f"{metric}_ci_low"), row_b.get(f"{metric}_ci_high")
    if any(v is None or v != v for v in (la, ha, lb, hb)):
        return False
    return bool(la > hb or lb > ha)


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    """A metric over training seeds scored on one test split: the mean over the seeds that
    have a value, its 95 % interval (`across_seeds`) and how many seeds count."""

    mean: float
    low: float
    high: float
    n_seeds: int


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def across_seeds(values: list, lows: list | None = None, highs: list | None = None, *,
                 replicates: list | None = None, level: float = LEVEL) -> SeedSummary:
    """The mean of a metric over training seeds and an interval that accounts for both the
    test images and the seeds, clipped to [0, 1]. Seeds without a finite value are dropped and
    not counted; `lows`, `highs` (each seed's test-set bootstrap interval) and `replicates`
    (each seed's bootstrap replicates, or None) are aligned with `values`.

    Two independent sources of error, so their variances add (the half-widths combine in
    quadrature), on each side of the mean separately (bootstrap intervals are asymmetric near
    1):
    - the test images: every seed is scored on the same split, so the seeds' test-set errors
      move together and averaging the seeds does not shrink them. With replicates of every
      seed (drawn, as `bootstrap` draws them, from the same resamples), the mean's own
      bootstrap is exact: average the seeds resample by resample. From intervals alone, the
      mean of the seeds' half-widths: the half-width of an average of positively correlated
      errors is at most the average half-width, so this errs wide, and is exact when the
      seeds err alike.
    - the seeds: the t half-width of the mean over n seeds, t(n - 1) x sd / sqrt(n) (none
      with one seed: one training run says nothing about another's spread).
    Three seeds at 0.870, 0.872 and 0.871, each +-0.07 on the test set, give about +-0.07 (a
    t-interval over the seeds alone claimed +-0.0025). No seed with a test-set interval: NaN,
    as the seeds' spread alone would claim a precision the split does not have."""
    kept = [i for i, v in enumerate(values) if _finite(v)]
    nan = float("nan")
    if not kept:
        return SeedSummary(nan, nan, nan, 0)
    points = np.array([float(values[i]) for i in kept])
    mean = float(points.mean())
    below, above = _test_half_widths(points, *([(given or [None] * len(values))[i] for i in kept]
                                               for given in (lows, highs, replicates)), level)
    seeds = _seed_half_width(points, level)
    low = mean - float(np.hypot(below, seeds))
    high = mean + float(np.hypot(above, seeds))
    if not (np.isfinite(low) and np.isfinite(high)):
        return SeedSummary(mean, nan, nan, len(kept))
    return SeedSummary(mean, max(0.0, low), min(1.0, high), len(kept))


def _test_half_widths(points: np.ndarray, lows: list, highs: list, replicates: list,
                      level: float) -> tuple[float, float]:
    """The test-set half-widths of the seeds' mean below and above it (NaN: unknown)."""
    if all(r is not None for r in replicates) and len({np.shape(r) for r in replicates}) == 1:
        low, high = percentile_interval(np.mean(np.vstack(replicates), axis=0), level)
        mean = float(points.mean())
        return mean - low, high - mean
    pairs = [(p - lo, hi - p) for p, lo, hi in zip(points, lows, highs)
             if _finite(lo) and _finite(hi)]
    if not pairs:
        return float("nan"), float("nan")
    below, above = np.clip(np.array(pairs), 0.0, None).mean(axis=0)
    return float(below), float(above)


def _seed_half_width(points: np.ndarray, level: float) -> float:
    if points.size < 2:
        return 0.0
    from scipy import stats

    t = float(stats.t.ppf((1 + level) / 2, points.size - 1))
    return t * float(points.std(ddof=1)) / float(np.sqrt(points.size))
