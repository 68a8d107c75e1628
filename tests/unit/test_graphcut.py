"""Known-answer tests of histoflow.graphcut (binary graph cut on probability maps, 2D and 3D)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("maxflow")

from histoflow.graphcut import (  # noqa: E402
    SEED_BACKGROUND,
    SEED_FOREGROUND,
    energy,
    graphcut,
    graphcut_banded,
    neighbourhood_offsets,
    search_parameters,
    seeds_from_masks,
    uncertain_band,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / np.count_nonzero(a | b))


def _disk(shape: tuple[int, int] = (64, 64), radius: float = 20.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def _sphere(n: int = 32, radius: float = 10.0) -> np.ndarray:
    zz, yy, xx = np.mgrid[:n, :n, :n]
    c = (n - 1) / 2
    return (zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2 < radius**2


def _noisy(shape_mask: np.ndarray, std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(shape_mask + rng.normal(0.0, std, shape_mask.shape), 0.0, 1.0).astype(np.float32)


def _brute_force_min(prob, free_mask, fixed_labels, **kw) -> float:
    """Minimal energy over all labellings of the free pixels (others fixed) by enumeration."""
    idx = np.flatnonzero(free_mask)
    best = np.inf
    for bits in itertools.product((False, True), repeat=idx.size):
        lab = fixed_labels.copy()
        lab.flat[idx] = bits
        best = min(best, energy(lab, prob, **kw))
    return best


# --------------------------------------------------------------------------------------------------
# gamma = 0 is thresholding (ties at exactly 0.5 go to background)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 41), (9, 17, 13)])
def test_gamma_zero_is_threshold_at_half(shape):
    rng = np.random.default_rng(0)
    prob = rng.random(shape).astype(np.float32)
    prob.flat[::7] = 0.5  # exact ties: background, like prob > 0.5
    prob.flat[1::11] = np.nextafter(np.float32(0.5), np.float32(1))  # the smallest float32 above 0.5
    expected = prob > 0.5
    for conn in (None, 8 if len(shape) == 2 else 26):
        np.testing.assert_array_equal(graphcut(prob, gamma=0.0, connectivity=conn), expected)
        np.testing.assert_array_equal(graphcut_banded(prob, gamma=0.0, connectivity=conn), expected)
    # float64 input, and an image that does not matter at gamma = 0
    np.testing.assert_array_equal(graphcut(prob.astype(np.float64), rng.random(shape), gamma=0.0), expected)


def test_ties_go_to_background_with_smoothing():
    """A flat 0.5 map has the all-background and all-foreground labellings as minimisers."""
    prob = np.full((12, 15), 0.5, dtype=np.float32)
    assert not graphcut(prob, gamma=1.0).any()
    assert not graphcut(prob[None].repeat(4, axis=0), gamma=1.0).any()


# --------------------------------------------------------------------------------------------------
# optimality: energy of the cut equals the brute-force minimum
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "conn", "rgb"),
    [((3, 4), 4, False), ((3, 4), 8, True), ((2, 2, 3), 6, False), ((2, 2, 3), 26, True)],
)
def test_graphcut_reaches_brute_force_minimum(shape, conn, rgb):
    rng = np.random.default_rng(sum(shape) + conn)
    prob = rng.random(shape).astype(np.float32)
    image = rng.random(shape + (3,) if rgb else shape).astype(np.float32)
    kw = dict(image=image, gamma=0.7, sigma=0.3, delta=0.2, connectivity=conn)
    spacing = (2.0, 1.0, 1.0) if len(shape) == 3 else None
    result = graphcut(prob, spacing=spacing, **kw)
    best = _brute_force_min(prob, np.ones(shape, bool), np.zeros(shape, bool), spacing=spacing, **kw)
    assert energy(result, prob, spacing=spacing, **kw) == pytest.approx(best, rel=1e-6, abs=1e-6)


def test_energy_known_values_and_anisotropy():
    """Flat 0.5 map, labels = upper half of the slices: 0.5 per voxel + one cut per (y, x) column."""
    prob = np.full((4, 5, 6), 0.5)
    labels = np.zeros(prob.shape, bool)
    labels[2:] = True
    assert energy(labels, prob, gamma=2.0) == pytest.approx(0.5 * prob.size + 2.0 * 30)
    # between-slice edges weighted by 1/dz relative to the in-plane ones
    assert energy(labels, prob, gamma=2.0, spacing=(4.0, 1.0, 1.0)) == pytest.approx(60 + 2.0 * 30 / 4)
    # 8-connectivity: diagonal edges weigh 1/sqrt(2)
    lab2 = np.zeros((3, 3), bool)
    lab2[:, 0] = True  # cut between column 0 and 1: 3 axial + 4 diagonal edges
    assert energy(lab2, np.full((3, 3), 0.5), gamma=1.0, connectivity=8) == pytest.approx(
        4.5 + 3 + 4 / np.sqrt(2)
    )
    # contrast: identical intensities give weight 1 (+ delta); differing by sigma gives exp(-1)
    img = np.zeros((1, 2))
    img[0, 1] = 0.2
    lab = np.array([[True, False]])
    p = np.full((1, 2), 0.5)
    assert energy(lab, p, img, gamma=1.0, sigma=0.2, delta=0.3) == pytest.approx(
        1.0 + np.exp(-1) + 0.3, rel=1e-6
    )


# --------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------


def test_seeds_respected_against_strong_contrary_evidence():
    prob = np.ones((30, 30), dtype=np.float32)
    prob[:, 20:] = 0.0
    seeds = np.zeros(prob.shape, np.uint8)
    seeds[5:25, 10] = SEED_BACKGROUND  # background scribble inside certain foreground
    seeds[15, 25] = SEED_FOREGROUND  # single foreground seed inside certain background
    for gamma in (0.0, 1.0, 50.0):
        for fn in (graphcut, graphcut_banded):
            res = fn(prob, gamma=gamma, seeds=seeds)
            assert not res[5:25, 10].any()
            assert res[15, 25]
    # at gamma = 0 the seeds change nothing else
    res = graphcut(prob, gamma=0.0, seeds=seeds)
    expected = prob > 0.5
    expected[5:25, 10] = False
    expected[15, 25] = True
    np.testing.assert_array_equal(res, expected)


def test_seeds_decide_ambiguous_regions_3d():
    """A flat 0.5 volume is filled from one foreground scribble up to background scribbles."""
    prob = np.full((6, 10, 10), 0.5, dtype=np.float32)
    fg = np.zeros(prob.shape, bool)
    bg = np.zeros(prob.shape, bool)
    fg[:, 2:8, 2:8] = _disk((6, 6), 2.5)[None]
    bg[:, 0, :] = bg[:, -1, :] = bg[:, :, 0] = bg[:, :, -1] = True
    seeds = seeds_from_masks(fg, bg)
    assert seeds.dtype == np.uint8 and set(np.unique(seeds)) == {0, 1, 2}
    res = graphcut(prob, gamma=1.0, seeds=seeds)
    assert res[fg].all() and not res[bg].any()


# --------------------------------------------------------------------------------------------------
# smoothing helps on noisy shapes
# --------------------------------------------------------------------------------------------------


def test_smoothing_improves_iou_on_noisy_disk():
    disk = _disk()
    prob = _noisy(disk, 0.6, seed=1)
    iou_thr = _iou(prob > 0.5, disk)
    iou4 = _iou(graphcut(prob, gamma=1.0), disk)
    iou8 = _iou(graphcut(prob, gamma=1.0, connectivity=8), disk)
    # measured: thresholding 0.556, 4-connected 0.968, 8-connected 0.970
    assert iou_thr < 0.6
    assert iou4 > 0.95 and iou8 > 0.95


def test_contrast_term_snaps_to_colour_edge():
    """Probabilities change at column 20, the colour (red | green, equal grey) at column 24."""
    prob = np.where(np.arange(40) < 20, 0.6, 0.4).astype(np.float32)[None].repeat(16, axis=0)
    rgb = np.zeros((16, 40, 3), np.uint8)
    rgb[:, :24, 0] = 255
    rgb[:, 24:, 1] = 255
    res = graphcut(prob, rgb, gamma=1.0, sigma=0.1)
    np.testing.assert_array_equal(res, np.arange(40)[None].repeat(16, axis=0) < 24)
    grey = rgb.mean(axis=-1).astype(np.uint8)  # no edge in grey: the cut stays at column 20
    np.testing.assert_array_equal(graphcut(prob, grey, gamma=1.0, sigma=0.1), prob > 0.5)


def test_smoothing_improves_iou_on_noisy_sphere():
    sphere = _sphere()
    prob = _noisy(sphere, 0.6, seed=2)
    iou_thr = _iou(prob > 0.5, sphere)
    iou6 = _iou(graphcut(prob, gamma=0.5), sphere)
    iou26 = _iou(graphcut(prob, gamma=0.2, connectivity=26), sphere)
    # measured: thresholding 0.34, 6-connected (gamma 0.5) 0.958, 26-connected (gamma 0.2) 0.963; with
    # 26 neighbours the total edge weight per voxel is ~6x larger, so gamma >= 0.3 shrinks the sphere away
    assert iou_thr < 0.4
    assert iou6 > 0.93 and iou26 > 0.93


def test_missing_slice_filled_from_neighbours():
    sphere = _sphere()
    prob = np.where(sphere, 0.9, 0.1).astype(np.float32)
    prob[15] = 0.5  # no evidence on the middle slice
    assert not (prob[15] > 0.5).any()
    for conn, spacing in ((6, None), (26, None), (6, (3.0, 1.0, 1.0))):
        res = graphcut(prob, gamma=0.2, connectivity=conn, spacing=spacing)
        # measured: the missing slice has IoU 0.975 with the true section for all three settings and
        # at most 16 voxels differ from the sphere in the whole volume
        assert _iou(res[15], sphere[15]) > 0.95
        assert np.count_nonzero(res != sphere) <= 20


# --------------------------------------------------------------------------------------------------
# banded fast path
# --------------------------------------------------------------------------------------------------


def test_banded_equals_full_when_band_covers_uncertainty():
    rng = np.random.default_rng(3)
    # 2D: noisy disk, many pixels clipped to exactly 0 / 1
    disk = _disk()
    prob = _noisy(disk, 0.4, seed=3)
    image = (disk * 0.6 + rng.normal(0, 0.1, disk.shape)).clip(0, 1)
    for conn in (4, 8):
        kw = dict(image=image, gamma=1.0, sigma=0.2, delta=0.1, connectivity=conn)
        full = graphcut(prob, **kw)
        banded = graphcut_banded(prob, **kw)
        np.testing.assert_array_equal(banded, full)
    # 3D: a blurred sphere with noise near the surface only
    sphere = _sphere(24, 8.0)
    prob3 = np.where(sphere, 0.99, 0.01).astype(np.float32)
    from scipy import ndimage

    surface = ndimage.binary_dilation(sphere, iterations=2) & ~ndimage.binary_erosion(sphere, iterations=2)
    inside = np.where(sphere[surface], 0.65, 0.35)
    prob3[surface] = np.clip(inside + rng.normal(0, 0.3, surface.sum()), 0, 1)  # 16% of voxels uncertain
    iou_thr = _iou(prob3 > 0.5, sphere)  # measured 0.68
    for conn, spacing, gamma in ((6, None, 0.3), (26, (2.0, 1.0, 1.0), 0.1)):
        full = graphcut(prob3, gamma=gamma, connectivity=conn, spacing=spacing)
        banded = graphcut_banded(prob3, gamma=gamma, connectivity=conn, spacing=spacing)
        np.testing.assert_array_equal(banded, full)
        assert _iou(full, sphere) > iou_thr + 0.1  # measured 0.88 (6-connected) and 0.89 (26-connected)


def test_banded_is_exact_given_fixed_labels():
    """Brute force over the free pixels (margin 0) with fixed neighbours entering as unary terms."""
    rng = np.random.default_rng(4)
    prob = np.where(rng.random((5, 6)) < 0.5, 0.02, 0.98).astype(np.float32)
    free = np.zeros(prob.shape, bool)
    free[1:4, 2:5] = True
    prob[free] = rng.uniform(0.2, 0.8, free.sum())
    image = rng.random(prob.shape)
    kw = dict(image=image, gamma=1.5, sigma=0.5, delta=0.1, connectivity=8)
    res = graphcut_banded(prob, band=(0.05, 0.95), margin=0, **kw)
    np.testing.assert_array_equal(res[~free], prob[~free] > 0.5)
    best = _brute_force_min(prob, free, prob > 0.5, **kw)
    assert energy(res, prob, **kw) == pytest.approx(best, rel=1e-6)


def test_banded_all_confident_and_seeds_outside_band():
    prob = np.where(_disk((20, 20), 6), 1.0, 0.0).astype(np.float32)
    np.testing.assert_array_equal(graphcut_banded(prob, gamma=2.0), prob > 0.5)
    seeds = np.zeros(prob.shape, np.uint8)
    seeds[0, 0] = SEED_FOREGROUND  # contradicts certain background: becomes part of the graph
    seeds[10, 10] = SEED_FOREGROUND  # agrees: just fixed
    res = graphcut_banded(prob, gamma=0.4, seeds=seeds)
    np.testing.assert_array_equal(res, graphcut(prob, gamma=0.4, seeds=seeds))
    assert res[0, 0] and res.sum() == (prob > 0.5).sum() + 1


# --------------------------------------------------------------------------------------------------
# parameter search
# --------------------------------------------------------------------------------------------------


def test_search_parameters_picks_known_good_params():
    """The image edge (contrast 0.5, noise 0.05) lies exactly on the true boundary.

    Known answer: contrast-sensitive smoothing with sigma = 0.2 (between the noise and the edge
    contrast) and delta = 0 cuts exactly along the edge for gamma = 1 and 100 (IoU 1.0; the tie goes
    to the first combination in grid order, gamma = 1). delta = 0.5 at gamma = 100 wipes the disk
    out, sigma = 0.01 makes every noisy pixel pair an "edge" (weights ~0: thresholding-like, IoU 0.57)
    and gamma = 0 is thresholding (IoU 0.50).
    """
    disk = _disk((48, 48), 14)
    rng = np.random.default_rng(5)
    probs = [_noisy(disk, 0.6, seed=s) for s in (6, 7)]
    images = [np.clip(disk * 0.5 + 0.25 + rng.normal(0, 0.05, disk.shape), 0, 1) for _ in probs]
    truths = [disk, disk]
    best, table = search_parameters(
        probs, images, truths, gammas=[0.0, 1.0, 100.0], sigmas=[0.01, 0.2], deltas=[0.0, 0.5]
    )
    assert len(table) == 12 and list(table.columns) == ["gamma", "sigma", "delta", "iou", "iou_min"]
    assert (best["gamma"], best["sigma"], best["delta"]) == (1.0, 0.2, 0.0)
    assert best["iou"] > 0.99  # measured 1.0
    good = table[(table.gamma > 0) & (table.sigma == 0.2) & (table.delta == 0.0)]
    assert len(good) == 2 and (good.iou > 0.99).all()
    thr = np.mean([_iou(p > 0.5, disk) for p in probs])
    assert table.loc[table.gamma == 0.0, "iou"].to_numpy() == pytest.approx(thr)
    assert table.loc[(table.gamma == 100.0) & (table.delta == 0.5), "iou"].max() < 0.1
    # without an image: uniform smoothing, gamma = 1 beats thresholding
    best_dice, table_dice = search_parameters(probs[0], None, disk, [0.0, 1.0], [0.1], [0.0], metric="dice")
    assert best_dice["gamma"] == 1.0 and "dice" in table_dice.columns and len(table_dice) == 2


def test_search_parameters_scores_the_seeded_cut():
    """The search cuts with the seeds it is given (the volume stage's 3-D search with scribbles).

    Known answer: a 3-slice stack whose organ (a disk on every slice) has probability 0.3, below one half, so
    every unseeded cut (thresholding, or smoothing that only removes pixels) is empty, IoU 0; with the whole
    organ seeded as foreground and a background seed everywhere else, every candidate returns the truth, IoU 1.
    """
    disk = np.stack([_disk((32, 32), 10)] * 3)
    prob = np.where(disk, 0.3, 0.05)
    seeds = np.where(disk, 1, 2).astype(np.uint8)
    grid = dict(gammas=[0.0, 2.0], sigmas=[0.1], deltas=[0.0, 0.2], spacing=(4.0, 1.0, 1.0))
    _, unseeded = search_parameters(prob, None, disk, **grid)
    best, seeded = search_parameters(prob, None, disk, seeds=seeds, **grid)
    assert (unseeded.iou == 0.0).all() and (seeded.iou == 1.0).all() and best["iou"] == 1.0
    with pytest.raises(ValueError, match="seeds must hold one entry per case"):
        search_parameters([prob, prob], None, [disk, disk], [1.0], [0.1], [0.0], seeds=[seeds])


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def test_neighbourhood_offsets():
    assert neighbourhood_offsets(2, 4) == [(0, 1), (1, 0)]
    assert len(neighbourhood_offsets(2, 8)) == 4
    assert len(neighbourhood_offsets(3, 6)) == 3
    assert len(neighbourhood_offsets(3, 26)) == 13
    with pytest.raises(ValueError, match="ndim"):
        neighbourhood_offsets(4, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(prob=np.zeros(5)), "2D"),
        (dict(prob=np.zeros((2, 2, 2, 2))), "2D"),
        (dict(prob=np.zeros((0, 3))), "empty"),
        (dict(prob=np.full((3, 3), 1.5)), r"\[0, 1\]"),
        (dict(prob=np.full((3, 3), np.nan)), r"\[0, 1\]"),
        (dict(image=np.zeros((4, 3))), "image"),
        (dict(image=np.zeros((3, 5, 3))), "image"),
        (dict(image=np.full((3, 4), 2.0)), "rescale"),
        (dict(image=np.full((3, 4), -1, np.int16)), ">= 0"),
        (dict(connectivity=6), "connectivity"),
        (dict(connectivity=True), "connectivity"),
        (dict(gamma=-1.0), "gamma"),
        (dict(sigma=0.0), "sigma"),
        (dict(delta=np.inf), "delta"),
        (dict(seeds=np.zeros((4, 3), np.uint8)), "seeds"),
        (dict(seeds=np.full((3, 4), 3)), "seeds values"),
        (dict(seeds=np.zeros((3, 4), bool)), "seeds_from_masks"),
        (dict(spacing=(1.0, 1.0, 1.0)), "spacing"),
        (dict(spacing=(0.0, 1.0)), "spacing"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(prob=np.full((3, 4), 0.3))
    args.update(kwargs)
    for fn in (graphcut, graphcut_banded):
        with pytest.raises(ValueError, match=match):
            fn(**args)


def test_bad_banded_and_helper_arguments_raise():
    prob = np.full((3, 4), 0.3)
    for band in ((0.6, 0.9), (0.1, 0.4), (-0.1, 0.9), 0.5):
        with pytest.raises(ValueError, match="band"):
            graphcut_banded(prob, band=band)
    for margin in (-1, 1.5):
        with pytest.raises(ValueError, match="margin"):
            graphcut_banded(prob, margin=margin)
    with pytest.raises(ValueError, match="overlap"):
        seeds_from_masks(np.ones((2, 2)), np.eye(2))
    with pytest.raises(ValueError, match="same shape"):
        seeds_from_masks(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="labels"):
        energy(np.zeros((3, 3)), prob)
    with pytest.raises(ValueError, match="gammas"):
        search_parameters(prob, None, prob > 0.5, [], [0.1], [0.0])
    with pytest.raises(ValueError, match="metric"):
        search_parameters(prob, None, prob > 0.5, [1.0], [0.1], [0.0], metric="f2")
    with pytest.raises(ValueError, match="same number"):
        search_parameters([prob, prob], None, [prob > 0.5], [1.0], [0.1], [0.0])
    with pytest.raises(ValueError, match="truth shape"):
        search_parameters(prob, None, np.zeros((2, 2)), [1.0], [0.1], [0.0])


def test_uncertain_band():
    prob = np.full((5, 9), 0.01, dtype=np.float32)
    prob[2, 4] = 0.5
    band = uncertain_band(prob, margin=1)
    expected = np.zeros(prob.shape, bool)
    expected[1:4, 3:6] = True  # a (2 margin + 1)^2 square
    np.testing.assert_array_equal(band, expected)
    np.testing.assert_array_equal(uncertain_band(prob, margin=0), prob == 0.5)
    seeds = np.zeros(prob.shape, np.uint8)
    seeds[0, 0] = SEED_FOREGROUND
    assert uncertain_band(prob, margin=0, seeds=seeds)[0, 0]
