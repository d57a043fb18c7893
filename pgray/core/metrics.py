"""Detection and localization metrics: image AUROC, pixel AUROC and AUPRO (docs/method.md,
"Evaluation"), the TPR of image scores at a fixed FPR (an operating point), and the image
score margin (the held-out proxy's continuous companion of the image AUROC).

Each metric sorts the scores once and accumulates counts with cumsum, so every distinct score
is a threshold and tied scores form a single threshold (the ROC's diagonal segment over a tie,
the same convention as sklearn). A test split's millions of pixels take seconds; there is no
Python loop over thresholds. Counts accumulate in int64, fractions in float64.

Inputs may be numpy arrays or torch tensors (any device and float dtype). Labels and masks are
binary: a value > 0.5 is anomalous (covers bool, {0, 1} and {0, 255}).

Undefined metrics raise ValueError instead of returning nan: with a single class there is no
ranking to score, and an error cannot slip into a results table unnoticed the way nan can.
Callers that may meet such splits check class presence first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

# Connected components within one image, 8-connectivity (diagonal neighbours join a region, as
# in the MVTec AD evaluation code); the zero outer planes keep images of a batch apart.
_PER_IMAGE_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_PER_IMAGE_8_CONNECTED[1] = True


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()  # numpy has no bfloat16
        return values.cpu().numpy()
    return np.asarray(values)


def _scores(values: Any, name: str) -> np.ndarray:
    arr = _to_numpy(values)
    if arr.dtype == np.float16 or not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contain NaN: cannot rank them")
    return arr


def _binary(values: Any) -> np.ndarray:
    return _to_numpy(values) > 0.5


def _images(values: Any, name: str, as_scores: bool) -> np.ndarray:
    """(B, H, W) from (B, 1, H, W), (B, H, W) or a single (H, W)."""
    arr = _scores(values, name) if as_scores else _binary(values)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (B, H, W) or (B, 1, H, W), got shape {arr.shape}")
    return arr


def _threshold_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending order of `scores` and the last sorted index of each group of equal scores.

    Cumulative sums read at those indices give the counts at threshold `score >= value`.
    """
    order = np.argsort(scores, kind="stable")[::-1]
    ranked = scores[order]
    ends = np.flatnonzero(ranked[1:] != ranked[:-1])
    return order, np.append(ends, ranked.size - 1)


def _roc_counts(scores: np.ndarray, positive: np.ndarray, what: str = "AUROC"
                ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(true positives, false positives) at every distinct threshold `score >= value`, from
    the highest, and the numbers of positives and negatives."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        kind = "normal" if n_pos == 0 else "anomalous"
        raise ValueError(f"{what} is undefined: all {positive.size} labels are {kind}")
    order, ends = _threshold_groups(scores)
    tp = np.cumsum(positive[order], dtype=np.int64)[ends]
    return tp, ends + 1 - tp, n_pos, n_neg


def _roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    tp, fp, n_pos, n_neg = _roc_counts(scores, positive)
    tpr = np.concatenate([[0.0], tp / n_pos])
    fpr = np.concatenate([[0.0], fp / n_neg])
    return float(np.trapezoid(tpr, fpr))


def _image_arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _scores(scores, "scores").reshape(-1)
    y = _binary(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    return s, y


def image_auroc(scores: Any, labels: Any) -> float:
    """AUROC of image scores (N,) against image labels (N,), 1 = anomalous."""
    return _roc_auc(*_image_arrays(scores, labels))


# A spread this small against the scores' magnitude is rounding, not a ranking to measure in.
_SPREAD_RTOL = 1e-9


def image_margin(scores: Any, labels: Any, reference: Any) -> float:
    """(mean score of the anomalous images - mean score of the normal ones) / the standard
    deviation of the `reference` image scores (for the held-out proxy: the clean scores of
    the whole set, so an attacked part is measured in the clean spread).

    Scale-free: the same for a*s + b as for s (a > 0, applied to scores and reference alike),
    so a detector's score scale cancels. Continuous where the AUROC sits on its grid of
    1 / (normals x anomalies) or ties at 0 or 1: an attack that beats a detector badly reads
    more negative than one that beats it barely. Positive when anomalies score higher on
    average, negative when an attack has pushed them below the normals. Raises ValueError
    when a class is missing or the reference scores do not spread (all equal)."""
    s, y = _image_arrays(scores, labels)
    ref = _scores(reference, "reference scores").astype(np.float64).reshape(-1)
    if y.all() or not y.any():
        kind = "anomalous" if y.all() else "normal"
        raise ValueError(f"the image margin is undefined: all {y.size} labels are {kind}")
    spread = float(np.std(ref))
    if not spread > _SPREAD_RTOL * float(np.abs(ref).max(initial=0.0)):
        raise ValueError("the image margin is undefined: the reference scores are all equal")
    s = s.astype(np.float64)
    return float((s[y].mean() - s[~y].mean()) / spread)


def tpr_at_fpr(scores: Any, labels: Any, max_fpr: float) -> float:
    """The true-positive rate of image scores at a false-positive rate of at most `max_fpr`:
    the highest TPR of any threshold (an image is flagged when its score >= the threshold)
    whose FPR does not exceed `max_fpr`. No interpolation between thresholds: it is the
    operating point a user can set with one threshold (tied scores are one threshold, so a
    tie straddling the limit is left out whole). 0.0 when even the highest score's threshold
    passes the limit (e.g. 1 % FPR with fewer than 100 normal images and a normal image at
    the top)."""
    if not 0 <= max_fpr <= 1:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    tp, fp, n_pos, n_neg = _roc_counts(*_image_arrays(scores, labels), what="TPR at FPR")
    allowed = fp <= max_fpr * n_neg * (1 + 1e-12)  # counts, so 1 of 100 is at 1 % exactly
    return float(tp[allowed].max() / n_pos) if allowed.any() else 0.0


def pixel_auroc(maps: Any, masks: Any) -> float:
    """AUROC over all pixels of all images ranked together (not a mean of per-image AUROCs)."""
    m = _images(maps, "maps", as_scores=True)
    g = _images(masks, "masks", as_scores=False)
    if m.shape != g.shape:
        raise ValueError(f"maps {m.shape} and masks {g.shape} differ in shape")
    return _roc_auc(m.reshape(-1), g.reshape(-1))


def _pro_curve(maps: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct threshold, from (0, 0) to (1, 1).

    PRO(t) = mean over ground-truth regions of the fraction of the region at score >= t, which
    is a cumulative sum of per-pixel weights 1 / (region area * number of regions).
    """
    regions, n_regions = ndimage.label(gt, structure=_PER_IMAGE_8_CONNECTED)
    n_normal = int((regions == 0).sum())
    if n_regions == 0 or n_normal == 0:
        missing = "anomalous regions" if n_regions == 0 else "normal pixels"
        raise ValueError(f"AUPRO is undefined: the masks contain no {missing}")
    areas = np.bincount(regions.reshape(-1), minlength=n_regions + 1).astype(np.float64)
    weights = np.zeros(n_regions + 1)
    weights[1:] = 1.0 / (areas[1:] * n_regions)  # region 0 (normal) adds nothing to PRO
    order, ends = _threshold_groups(maps.reshape(-1))
    ranked_regions = regions.reshape(-1)[order]
    del order
    pro = np.cumsum(weights[ranked_regions])[ends]
    false_pos = np.cumsum(ranked_regions == 0, dtype=np.int64)[ends]
    fpr = np.concatenate([[0.0], false_pos / n_normal])
    return fpr, np.concatenate([[0.0], pro])


def _clipped_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a non-decreasing-x curve up to x = limit (interpolated there)."""
    inside = int(np.searchsorted(x, limit, side="right"))  # x[:inside] <= limit < x[inside]
    xs, ys = x[:inside], y[:inside]
    if inside < x.size:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.append(xs, limit)
        ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs))


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by `fpr_limit`.

    Regions are the 8-connected components of each ground-truth mask; the FPR counts all normal
    pixels of all images. A perfect detector scores 1.0.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    m = _images(maps, "maps", as_scores=True)
    g = _images(masks, "masks", as_scores=False)
    if m.shape != g.shape:
        raise ValueError(f"maps {m.shape} and masks {g.shape} differ in shape")
    fpr, pro = _pro_curve(m, g)
    return _clipped_area(fpr, pro, fpr_limit) / fpr_limit
