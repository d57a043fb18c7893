"""The foreground-aware pseudo-anomaly generator: placement, ops, labels, config."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch

from pgray.config.base import from_dict, to_dict
from pgray.config.pseudo import LEVELS, OPS, PseudoConfig
from pgray.errors import ConfigError
from pgray.pseudo.generator import PseudoAnomalyGenerator, dilate, patch_labels, rotate_expand
from pgray.pseudo.ops import OPS as OP_FUNCTIONS
from pgray.pseudo.ops import apply_op


def textured_image(size: int, seed: int = 0) -> torch.Tensor:
    """Smooth colourful texture plus noise: every crop differs from every other crop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(7 * xx + 3 * yy), np.cos(5 * yy - 2 * xx), np.sin(4 * (xx + yy))])
    img = 0.5 + 0.3 * base + 0.15 * rng.standard_normal((3, size, size))
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))


def disc_foreground(size: int, radius_frac: float = 0.3) -> torch.Tensor:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    r = np.hypot(yy - size / 2, xx - size / 2)
    return torch.from_numpy((r < radius_frac * size).astype(np.float32))


def l_shape_foreground(size: int) -> torch.Tensor:
    """Non-convex: rectangles that start inside can leave the foreground."""
    fg = torch.zeros(size, size)
    fg[size // 8 : size // 2, size // 8 : 7 * size // 8] = 1
    fg[size // 8 : 7 * size // 8, size // 8 : 3 * size // 8] = 1
    return fg


@pytest.fixture(scope="module")
def gen224() -> PseudoAnomalyGenerator:
    return PseudoAnomalyGenerator(PseudoConfig(), img_size=224, patch_size=14)


# ----------------------------------------------------------------------------- outputs


def test_outputs_have_contract_shapes_dtypes_and_ranges(gen224):
    img = textured_image(224)
    out, mask, labels = gen224(img, disc_foreground(224), np.random.default_rng(0))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert mask.shape == (224, 224) and mask.dtype == torch.float32
    assert labels.shape == (256,) and labels.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert set(labels.unique().tolist()) == {0.0, 1.0}
    assert not img.equal(out)


def test_same_seed_same_output_and_different_seeds_differ(gen224):
    img, fg = textured_image(224), disc_foreground(224)
    a = gen224(img, fg, np.random.default_rng(123))
    b = gen224(img, fg, np.random.default_rng(123))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    masks = {gen224(img, fg, np.random.default_rng(s))[1].numpy().tobytes() for s in range(8)}
    assert len(masks) == 8


def test_generator_pickles_and_gives_identical_results(gen224):
    img, fg = textured_image(224), disc_foreground(224)
    clone = pickle.loads(pickle.dumps(gen224))
    a = gen224(img, fg, np.random.default_rng(7))
    b = clone(img, fg, np.random.default_rng(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("shape", ["disc", "l_shape"])
def test_anomaly_and_source_lie_inside_dilated_foreground(gen224, shape):
    fg = disc_foreground(224, 0.2) if shape == "disc" else l_shape_foreground(224)
    dilated = dilate(fg.numpy() > 0.5, gen224.cfg.dilation_iterations)
    # the dilation really grew the foreground (10 iterations of 3 x 3: 10 px each side)
    assert dilated.sum() > fg.sum().item() + 100
    img = textured_image(224)
    for seed in range(25):
        s = gen224.sample(img, fg, np.random.default_rng(seed))
        p = s.placement
        assert not p.fallback
        mask = s.pixel_mask.numpy() > 0
        assert mask.any()
        assert not (mask & ~dilated).any()
        assert dilated[p.src[0] : p.src[0] + p.h, p.src[1] : p.src[1] + p.w].all()
        assert dilated[p.dst[0] : p.dst[0] + p.h, p.dst[1] : p.dst[1] + p.w].all()


def test_pixels_outside_mask_untouched_and_inside_changed(gen224):
    img, fg = textured_image(224), disc_foreground(224)
    before = img.numpy()
    changed_in_mask = total_in_mask = 0
    for seed in range(20):
        out, mask, _ = gen224(img, fg, np.random.default_rng(seed))
        m = mask.numpy() > 0
        changed = (out.numpy() != before).any(axis=0)
        assert not (changed & ~m).any()  # bit-exact outside: no uint8 round trip there
        changed_in_mask += int((changed & m).sum())
        total_in_mask += int(m.sum())
    assert changed_in_mask / total_in_mask > 0.9


def test_exactly_one_anomaly_inside_its_rectangle(gen224):
    img, fg = textured_image(224), disc_foreground(224)
    for seed in range(20):
        s = gen224.sample(img, fg, np.random.default_rng(seed))
        mask = s.pixel_mask.numpy().astype(np.uint8)
        n_labels, _ = cv2.connectedComponents(mask, connectivity=8)
        assert n_labels == 2  # background + one blob
        ys, xs = np.nonzero(mask)
        p = s.placement
        assert ys.min() >= p.dst[0] and ys.max() < p.dst[0] + p.h
        assert xs.min() >= p.dst[1] and xs.max() < p.dst[1] + p.w


def test_no_rotation_pastes_the_full_rectangle():
    gen = PseudoAnomalyGenerator(PseudoConfig(rotation=0.0), 224, 14)
    for seed in range(5):
        s = gen.sample(textured_image(224), disc_foreground(224), np.random.default_rng(seed))
        assert s.pixel_mask.sum().item() == s.placement.h * s.placement.w


def test_rotate_expand_keeps_size_and_rotates_shape():
    crop = np.full((20, 40, 3), 100, np.uint8)
    rotated, alpha = rotate_expand(crop, 45.0)
    assert rotated.shape == crop.shape and rotated.dtype == np.uint8
    assert alpha.shape == (20, 40)
    # a rotated rectangle fills its expanded bounding box only partly; corners stay out
    assert 0.3 < alpha.mean() < 0.8
    assert not alpha[0, 0] and not alpha[-1, -1] and alpha[10, 20]
    _, alpha0 = rotate_expand(crop, 0.0)
    assert alpha0.all()


# ----------------------------------------------------------------------------- labels


def slow_patch_labels(mask: np.ndarray, ps: int, rule: str, fraction: float) -> np.ndarray:
    out = []
    for gy in range(mask.shape[0] // ps):
        for gx in range(mask.shape[1] // ps):
            cell = mask[gy * ps : (gy + 1) * ps, gx * ps : (gx + 1) * ps]
            out.append(cell.any() if rule == "any" else cell.mean() > fraction)
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize(
    "rule,fraction,size,ps",
    [("any", 0.0, 224, 14), ("fraction", 0.25, 224, 14), ("fraction", 0.5, 64, 8)],
)
def test_patch_labels_match_a_per_patch_loop(rule, fraction, size, ps):
    cfg = PseudoConfig(patch_label_rule=rule, patch_label_fraction=fraction)
    gen = PseudoAnomalyGenerator(cfg, size, ps)
    img, fg = textured_image(size), disc_foreground(size)
    partial = 0
    for seed in range(15):
        _, mask, labels = gen(img, fg, np.random.default_rng(seed))
        m = mask.numpy()
        expected = slow_patch_labels(m, ps, rule, fraction)
        np.testing.assert_array_equal(labels.numpy(), expected)
        partial += int((slow_patch_labels(m, ps, "any", 0.0) != expected).sum())
    if rule == "fraction":  # the rule really dropped partly covered patches
        assert partial > 0


def test_patch_labels_fraction_threshold_is_strict():
    mask = np.zeros((8, 8), np.uint8)
    mask[:2, :] = 1  # a quarter of the single 8 x 8 patch
    assert patch_labels(mask, 8, "fraction", 0.25).tolist() == [0.0]
    assert patch_labels(mask, 8, "fraction", 0.24).tolist() == [1.0]
    assert patch_labels(mask, 8, "any", 0.9).tolist() == [1.0]


# ----------------------------------------------------------------------------- sizes


def test_size_bounds_scale_with_image_size():
    assert PseudoAnomalyGenerator(PseudoConfig(min_size=10), 224, 14).min_side == 10
    assert PseudoAnomalyGenerator(PseudoConfig(min_size=10), 112, 14).min_side == 5
    assert PseudoAnomalyGenerator(PseudoConfig(min_size=10), 32, 8).min_side == 2  # floor 2 px
    g = PseudoAnomalyGenerator(PseudoConfig(min_size=6, max_size=14), 448, 14)
    assert (g.min_side, g.max_side) == (12, 28)
    assert PseudoAnomalyGenerator(PseudoConfig(), 224, 14).max_side is None


@pytest.mark.parametrize("min_size,max_size", [(10, None), (14, 20), (6, 6)])
def test_rectangles_respect_size_bounds(min_size, max_size):
    gen = PseudoAnomalyGenerator(PseudoConfig(min_size=min_size, max_size=max_size), 224, 14)
    img, fg = textured_image(224), torch.ones(224, 224)
    sides = []
    for seed in range(30):
        p = gen.sample(img, fg, np.random.default_rng(seed)).placement
        assert not p.fallback
        sides += [p.h, p.w]
    assert min(sides) >= min_size
    if max_size is not None:
        assert max(sides) <= max_size
    else:  # uniform up to the run length: on a full foreground, sides reach far beyond 50 px
        assert max(sides) > 50


def test_fallback_square_when_nothing_fits():
    # a 3 x 3 foreground without dilation cannot hold a 10 px rectangle
    gen = PseudoAnomalyGenerator(PseudoConfig(dilation_iterations=0, max_attempts=5), 224, 14)
    fg = torch.zeros(224, 224)
    fg[100:103, 100:103] = 1
    s = gen.sample(textured_image(224), fg, np.random.default_rng(0))
    p = s.placement
    assert p.fallback and (p.h, p.w) == (10, 10)
    assert fg[p.src[0], p.src[1]] == 1 and fg[p.dst[0], p.dst[1]] == 1  # corners on the foreground
    assert s.pixel_mask.sum() > 0


def test_empty_foreground_counts_as_whole_image(gen224):
    s = gen224.sample(textured_image(224), torch.zeros(224, 224), np.random.default_rng(0))
    assert not s.placement.fallback and s.pixel_mask.sum() > 0


def test_foreground_formats_agree(gen224):
    img = textured_image(224)
    fg = disc_foreground(224)
    ref = gen224(img, fg, np.random.default_rng(3))
    for variant in (fg.bool(), fg[None], (fg * 255).to(torch.uint8)):
        out = gen224(img, variant, np.random.default_rng(3))
        assert all(torch.equal(x, y) for x, y in zip(ref, out))


def test_bad_inputs_raise(gen224):
    with pytest.raises(ValueError, match="image must be"):
        gen224(torch.rand(3, 64, 64), torch.ones(64, 64), np.random.default_rng(0))
    with pytest.raises(ValueError, match="foreground"):
        gen224(torch.rand(3, 224, 224), torch.ones(2, 224, 224), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="^patch_size"):
        PseudoAnomalyGenerator(PseudoConfig(), 224, 15)


# ----------------------------------------------------------------------------- severity / ops


def test_severity_levels_follow_probabilities(gen224):
    rng = np.random.default_rng(0)
    draws = np.bincount([gen224._draw_level(rng) for _ in range(3000)], minlength=3) / 3000
    np.testing.assert_allclose(draws, [0.2, 0.2, 0.6], atol=0.03)


@pytest.mark.parametrize("level", range(3))
def test_ops_drawn_from_the_level_list_with_colour_jitter(gen224, level):
    cfg = gen224.cfg
    rng = np.random.default_rng(level)
    counts = set()
    for _ in range(200):
        ops = gen224._draw_ops(level, rng)
        assert ops.count("color_jitter") == 1
        rest = [op for op in ops if op != "color_jitter"]
        assert len(set(rest)) == len(rest) and set(rest) <= set(cfg.level_ops[level])
        counts.add(len(rest))
    assert counts == set(range(cfg.max_ops[level] + 1))


def test_forced_level_and_recorded_ops(gen224):
    s = gen224.sample(
        textured_image(224), disc_foreground(224), np.random.default_rng(0), level="light"
    )
    assert s.level == "light" and "color_jitter" in s.ops


def test_op_names_agree_between_config_and_implementation():
    assert set(OPS) == set(OP_FUNCTIONS)


def crop(h: int, w: int, seed: int = 0) -> np.ndarray:
    img = textured_image(max(h, w), seed)[:, :h, :w]
    return np.ascontiguousarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.mark.parametrize("op", OPS)
def test_every_op_runs_on_every_level_and_keeps_dtype_and_shape(op):
    cfg = PseudoConfig()
    for level in range(len(LEVELS)):
        for h, w in [(48, 40), (7, 3), (2, 2)]:
            src = crop(h, w)
            out = apply_op(op, src, level, cfg, np.random.default_rng(level))
            assert out.shape == src.shape and out.dtype == np.uint8
            assert out.flags.c_contiguous
        big = crop(48, 40)
        assert not np.array_equal(apply_op(op, big, 2, cfg, np.random.default_rng(1)), big), op


def test_ops_do_not_modify_their_input():
    cfg, src = PseudoConfig(), crop(32, 32)
    before = src.copy()
    for op in OPS:
        apply_op(op, src, 2, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(src, before)


def test_heavier_levels_distort_more():
    """Mean absolute change grows light -> heavy for the ops whose strength the level sets."""
    cfg, src = PseudoConfig(), crop(64, 64)
    for op in ("gaussian_blur", "elastic", "jpeg", "torn_lines", "random_erase"):
        change = [
            np.mean(
                [
                    np.abs(
                        apply_op(op, src, lv, cfg, np.random.default_rng(s)).astype(int) - src
                    ).mean()
                    for s in range(6)
                ]
            )
            for lv in range(3)
        ]
        assert change[0] < change[1] < change[2], (op, change)


def test_perlin_fill_paints_one_colour_over_a_level_dependent_share():
    cfg, src = PseudoConfig(), crop(64, 64)
    heavy = [
        (apply_op("perlin_fill", src, 2, cfg, np.random.default_rng(s)) != src).any(axis=2).mean()
        for s in range(10)
    ]
    light = [
        (apply_op("perlin_fill", src, 0, cfg, np.random.default_rng(s)) != src).any(axis=2).mean()
        for s in range(10)
    ]
    assert 0.1 < np.mean(heavy) < 0.7  # threshold 128..150 on noise mapped to 0..255
    assert np.mean(light) < 0.05  # threshold 200..255: rarely reached
    out = apply_op("perlin_fill", src, 2, cfg, np.random.default_rng(0))
    painted = (out != src).any(axis=2)
    assert len(np.unique(out[painted], axis=0)) == 1


def test_elastic_field_quirk_reuses_one_field():
    src = crop(48, 48)
    fixed = PseudoConfig(fixed_elastic_field=True, elastic_alpha=[(30.0, 30.0)] * 3)
    varying = PseudoConfig(fixed_elastic_field=False, elastic_alpha=[(30.0, 30.0)] * 3)
    a, b = (apply_op("elastic", src, 1, fixed, np.random.default_rng(s)) for s in (1, 2))
    np.testing.assert_array_equal(a, b)
    c, d = (apply_op("elastic", src, 1, varying, np.random.default_rng(s)) for s in (1, 2))
    assert not np.array_equal(c, d)
    assert not np.array_equal(a, src)


def test_every_op_runs_through_the_generator_on_every_level():
    for op in OPS:
        cfg = PseudoConfig(level_ops=[[op]] * 3, max_ops=[1, 1, 1], always_color_jitter=False)
        gen = PseudoAnomalyGenerator(cfg, 64, 8)
        for level in LEVELS:
            for seed in range(4):
                s = gen.sample(
                    textured_image(64),
                    disc_foreground(64),
                    np.random.default_rng(seed),
                    level=level,
                )
                assert s.ops in ([], [op])
                assert s.image.dtype == torch.float32
                assert 0.0 <= s.image.min() and s.image.max() <= 1.0


# ----------------------------------------------------------------------------- config


def test_default_config_is_the_reference_table():
    cfg = PseudoConfig()
    cfg.validate()
    assert cfg.severity_probs == [0.2, 0.2, 0.6] and cfg.max_ops == [1, 2, 4]
    assert cfg.level_ops[2] == [
        "elastic",
        "torn_lines",
        "jpeg",
        "perlin_fill",
        "swirl",
        "random_erase",
        "gaussian_blur",
    ]
    assert cfg.dilation_iterations == 10 and cfg.max_attempts == 251 and cfg.rotation == 90.0
    assert cfg.jpeg_quality == [(30, 50), (20, 30), (1, 20)]
    assert cfg.max_size is None and cfg.fixed_elastic_field is False


def test_config_round_trips_through_plain_dicts():
    cfg = PseudoConfig(blur_radius=[(0.1, 0.2), (1.0, 1.0), (2.0, 4.0)], max_size=30)
    again = from_dict(PseudoConfig, to_dict(cfg))
    assert again == cfg


@pytest.mark.parametrize(
    "override,key",
    [
        ({"severity_probs": [0.5, 0.5, 0.5]}, "severity_probs"),
        ({"level_ops": [["blur"], ["swirl"], ["jpeg"]]}, "level_ops[0]"),
        ({"level_ops": [["swirl", "swirl"], ["swirl"], ["jpeg"]]}, "level_ops[0]"),
        ({"max_ops": [1, 2, 9]}, "max_ops[2]"),
        ({"blur_radius": [[0.2, 0.5], [2.0, 1.0], [2.0, 3.0]]}, "blur_radius[1]"),
        ({"jpeg_quality": [[30, 50], [20, 30], [1, 120]]}, "jpeg_quality[2]"),
        ({"jitter_hue": [[0.1, 0.1], [0.3, 0.3], [0.5, 0.7]]}, "jitter_hue[2]"),
        ({"perlin_threshold": [[200, 300], [150, 200], [128, 150]]}, "perlin_threshold[0]"),
        ({"erase_aspect": [0.0, 3.3]}, "erase_aspect"),
        ({"max_size": 4}, "max_size"),
        ({"patch_label_fraction": 1.5}, "patch_label_fraction"),
        ({"patch_label_rule": "most"}, "patch_label_rule"),
        ({"torn_lines": [[1, 3], [5, 10]]}, "torn_lines"),
        ({"perlin_octaves": 0}, "perlin_octaves"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        from_dict(PseudoConfig, override)
    assert str(err.value).startswith(key + ":")
    # nested in an experiment config the key carries its section
    from pgray.config import ExperimentConfig

    with pytest.raises(
        ConfigError, match=r"^pseudo\." + key.replace("[", r"\[").replace("]", r"\]")
    ):
        ExperimentConfig.from_dict({"pseudo": override})


def test_unknown_config_key_is_refused():
    with pytest.raises(ConfigError, match="unknown key blur_sigma"):
        from_dict(PseudoConfig, {"blur_sigma": [[1, 2]] * 3})
