"""AUROC and AUPRO against independent computations: sklearn and a slow per-threshold loop."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pgray.core.metrics import aupro, image_auroc, image_margin, pixel_auroc

# --- an obviously-correct AUPRO, one threshold at a time -----------------------------------


def regions_8_connected(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Flood fill: lists of pixels of each 8-connected component of a 2-D boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    h, w = mask.shape
    for i, j in zip(*np.nonzero(mask)):
        if seen[i, j]:
            continue
        region, queue = [], deque([(i, j)])
        seen[i, j] = True
        while queue:
            a, b = queue.popleft()
            region.append((a, b))
            for da in (-1, 0, 1):
                for db in (-1, 0, 1):
                    u, v = a + da, b + db
                    if 0 <= u < h and 0 <= v < w and mask[u, v] and not seen[u, v]:
                        seen[u, v] = True
                        queue.append((u, v))
        regions.append(region)
    return regions


def slow_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    masks = masks > 0.5
    regions = [
        (k, region) for k in range(len(masks)) for region in regions_8_connected(masks[k])
    ]
    normal = maps[~masks]
    curve = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:  # every distinct score is a threshold, highest first
        overlaps = [np.mean([maps[k][p] >= t for p in region]) for k, region in regions]
        curve.append((float(np.mean(normal >= t)), float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # cut the segment at the limit, linearly
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def random_blobs(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Masks with a few rectangles and stray pixels (diagonal contacts included)."""
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for k in range(n):
        for _ in range(rng.integers(0, 3)):
            r, c = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            masks[k, r : r + h, c : c + w] = 1
        masks[k][rng.random((size, size)) < 0.02] = 1
    masks[0, 0, 0] = 1  # at least one region
    return masks


# --- AUROC --------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [None, 4])
def test_image_auroc_matches_sklearn(levels: int | None) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 50)
        labels[:2] = [0, 1]
        scores = rng.normal(size=50) + 0.7 * labels
        if levels is not None:
            scores = np.round(scores * levels / 3) / levels  # many ties, across classes too
        assert abs(image_auroc(scores, labels) - roc_auc_score(labels, scores)) < 1e-12


def test_pixel_auroc_ranks_all_pixels_together_like_sklearn() -> None:
    rng = np.random.default_rng(1)
    masks = random_blobs(rng, 5, 24)
    maps = rng.random((5, 24, 24)) + masks * rng.random((5, 24, 24))
    maps = np.round(maps, 2).astype(np.float32)  # ties
    expected = roc_auc_score(masks.reshape(-1), maps.reshape(-1))
    assert abs(pixel_auroc(maps, masks) - expected) < 1e-12
    # torch tensors with a channel axis, on any float dtype, give the same number
    as_torch = pixel_auroc(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None])
    assert as_torch == pixel_auroc(maps, masks)


def test_auroc_of_perfect_inverted_and_constant_scores() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    assert image_auroc([0.1, 0.2, 0.3, 0.4, 0.5], labels) == 1.0
    assert image_auroc([0.5, 0.4, 0.3, 0.2, 0.1], labels) == 0.0
    assert image_auroc(np.zeros(5), labels) == 0.5
    assert image_auroc(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.bfloat16), labels) == 1.0


def test_auroc_with_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="undefined: all 3 labels are normal"):
        image_auroc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="anomalous"):
        pixel_auroc(np.random.rand(2, 4, 4), np.ones((2, 4, 4)))


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        aupro(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)))


# --- AUPRO --------------------------------------------------------------------------------


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_the_slow_reference(quantize: bool, fpr_limit: float) -> None:
    rng = np.random.default_rng(2)
    masks = random_blobs(rng, 4, 20)
    maps = rng.random((4, 20, 20)) + 0.8 * masks * rng.random((4, 20, 20))
    if quantize:
        maps = np.round(maps * 8) / 8  # ties between normal and anomalous pixels
    expected = slow_aupro(maps, masks, fpr_limit)
    assert abs(aupro(maps, masks, fpr_limit) - expected) < 1e-9


def test_aupro_perfect_inverted_and_tied_detectors() -> None:
    rng = np.random.default_rng(3)
    masks = random_blobs(rng, 3, 16)
    perfect = masks + 0.5 * rng.random(masks.shape)  # every anomalous pixel above every normal
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(-perfect, masks) == pytest.approx(0.0, abs=1e-12)
    # All scores tied: one threshold, the curve is the diagonal, area 0.3^2 / 2 / 0.3
    assert aupro(np.zeros(masks.shape), masks) == pytest.approx(0.15, abs=1e-12)


def test_aupro_regions_are_8_connected_and_weighted_equally() -> None:
    mask = np.zeros((1, 4, 4))
    mask[0, 0, 0] = mask[0, 1, 1] = 1  # diagonal neighbours: one region of two pixels
    mask[0, 3, 3] = 1  # a second region
    scores = np.full((1, 4, 4), 0.5)
    scores[0, 0, 0], scores[0, 1, 1], scores[0, 3, 3] = 1.0, 0.0, 1.0
    # At t = 1: overlaps 1/2 and 1, PRO 0.75 at FPR 0, flat up to FPR 1 (4-connectivity: 2/3)
    assert aupro(scores, mask) == pytest.approx(0.75, abs=1e-12)


def test_aupro_interpolates_at_the_fpr_limit() -> None:
    # One region of one pixel scored 0.5; normals at 0.9 .. 0.0: PRO jumps from 0 to 1 at
    # FPR 0.5 (five normals score above it, five at or below), no interpolation needed below
    mask = np.zeros((1, 1, 11))
    mask[0, 0, 10] = 1
    scores = np.concatenate([np.linspace(0.9, 0.0, 10), [0.45]])[None, None]
    assert aupro(scores, mask, fpr_limit=0.3) == 0.0
    assert aupro(scores, mask, fpr_limit=0.8) == pytest.approx(0.3 / 0.8, abs=1e-12)
    # A tie between the anomalous pixel and one normal makes a sloped segment of 0.1 in FPR;
    # the limit 0.55 cuts it halfway: area = (0.05 * 0.5) / 2
    scores[0, 0, 10] = scores[0, 0, 5]  # tied with the sixth normal (FPR 0.5 -> 0.6)
    assert aupro(scores, mask, fpr_limit=0.55) == pytest.approx(0.0125 / 0.55, abs=1e-12)


def test_aupro_one_class_and_limit_errors() -> None:
    with pytest.raises(ValueError, match="no anomalous regions"):
        aupro(np.random.rand(2, 4, 4), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="no normal pixels"):
        aupro(np.random.rand(2, 4, 4), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.random.rand(2, 4, 4), np.ones((2, 4, 4)), fpr_limit=0.0)


def test_aupro_torch_input_and_speed_on_two_million_pixels() -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((32, 256, 256), dtype=np.uint8)
    masks[:, 100:140, 60:90] = 1
    masks[::2, 10:20, 10:200] = 1
    maps = torch.from_numpy(rng.random(masks.shape, dtype=np.float32) + 0.3 * masks)
    started = time.perf_counter()
    value = aupro(maps[:, None], torch.from_numpy(masks)[:, None])
    elapsed = time.perf_counter() - started
    assert value == aupro(maps.numpy(), masks)
    assert 0.0 < value < 1.0
    assert elapsed < 10.0  # about 0.5 s here; a loop over thresholds would take hours


# --- the image score margin (the held-out proxy's continuous companion of the AUROC) ----------
def test_image_margin_is_the_mean_gap_in_units_of_the_reference_spread() -> None:
    labels = np.array([0, 0, 1, 1])
    clean = np.array([0.0, 1.0, 2.0, 3.0])  # gap 2, spread sqrt(1.25)
    assert image_margin(clean, labels, clean) == pytest.approx(2 / np.sqrt(1.25), abs=1e-12)
    # an attacked part in the clean spread: anomalies pushed below the normals read negative
    attacked = np.array([1.0, 2.0, 0.5, 0.5])
    assert image_margin(attacked, labels, clean) == pytest.approx(-1 / np.sqrt(1.25), abs=1e-12)
    # torch tensors of any float dtype, as the other metrics take them
    assert image_margin(torch.tensor(attacked, dtype=torch.float32), torch.tensor(labels),
                        torch.tensor(clean)) == pytest.approx(-1 / np.sqrt(1.25), rel=1e-6)


def test_image_margin_ignores_the_score_scale_and_offset() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4 == 0
    clean = rng.normal(size=40) + labels
    attacked = clean - 1.5 * labels
    for part in (clean, attacked):
        base = image_margin(part, labels, clean)
        for a, b in ((1e-3, 5.0), (250.0, -40.0)):
            assert image_margin(a * part + b, labels, a * clean + b) == pytest.approx(
                base, rel=1e-9)


def test_image_margin_separates_what_the_auroc_ties() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    normals = np.array([0.0, 0.1, 0.2])
    barely, widely = np.append(normals, [0.21, 0.22, 0.23]), np.append(normals, [2.0, 2.1, 2.2])
    # both rank every anomaly above every normal: the AUROC cannot tell them apart
    assert image_auroc(barely, labels) == image_auroc(widely, labels) == 1.0
    reference = np.append(normals, [0.5, 0.6, 0.7])
    assert 0 < image_margin(barely, labels, reference) < image_margin(widely, labels, reference)
    # two attacks that both win outright (AUROC 0): the one that wins by more reads lower
    beaten_barely = np.append(normals, [-0.01, -0.02, -0.03])
    beaten_badly = np.append(normals, [-2.0, -2.1, -2.2])
    assert image_auroc(beaten_barely, labels) == image_auroc(beaten_badly, labels) == 0.0
    assert (image_margin(beaten_badly, labels, reference)
            < image_margin(beaten_barely, labels, reference) < 0)


def test_image_margin_is_undefined_without_both_classes_or_a_spread() -> None:
    with pytest.raises(ValueError, match="all 3 labels are normal"):
        image_margin([0.1, 0.2, 0.3], [0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="reference scores are all equal"):
        image_margin([0.1, 0.2, 0.3], [0, 1, 1], [0.7, 0.7, 0.7])
    with pytest.raises(ValueError, match="reference scores are all equal"):
        image_margin([0.1, 0.2, 0.3], [0, 1, 1], [0.0, 0.0, 0.0])
