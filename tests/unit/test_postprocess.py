"""Known-answer tests for histoflow.postprocess: thresholding, cleanup, instance splitting, relabelling."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from histoflow.postprocess import (
    PostprocessConfig,
    binarize,
    drop_small,
    instances_from_mask,
    postprocess,
    relabel_sequential,
    vote_instances,
)


def test_binarize_threshold_is_inclusive():
    prob = np.array([[0.2, 0.5, 0.7], [0.49, 0.51, 1.0]])
    np.testing.assert_array_equal(binarize(prob, 0.5), [[False, True, True], [False, True, True]])
    assert binarize(prob, 0.5).dtype == bool


def test_binarize_fills_small_holes_only():
    prob = np.zeros((16, 16))
    prob[2:12, 2:12] = 0.9
    prob[4:6, 4:6] = 0.1  # 4-pixel hole
    prob[8:11, 7:10] = 0.1  # 9-pixel hole
    mask = binarize(prob, 0.5, max_hole=5)
    assert mask[4:6, 4:6].all()  # filled: 4 < 5
    assert not mask[8:11, 7:10].any()  # kept: 9 >= 5
    assert mask.sum() == 100 - 9
    assert binarize(prob, 0.5, max_hole=4).sum() == 100 - 13  # a hole of exactly max_hole stays
    assert binarize(prob, 0.5, max_hole=10).sum() == 100
    assert not binarize(prob, 0.5, max_hole=10)[0].any()  # the outer background is no hole


def test_binarize_removes_small_objects_8_connected():
    prob = np.zeros((12, 12))
    prob[1:6, 1:6] = 1.0  # 25 pixels
    prob[8, 8] = prob[9, 9] = prob[10, 10] = 1.0  # 3 pixels, one object through diagonals
    prob[1, 10] = 1.0  # 1 pixel
    assert binarize(prob, 0.5, min_size=3).sum() == 28
    assert binarize(prob, 0.5, min_size=4).sum() == 25
    assert binarize(prob, 0.5, min_size=26).sum() == 0
    assert binarize(prob, 0.5).sum() == 29
    with pytest.raises(ValueError, match="2-D"):
        binarize(np.zeros((2, 3, 3)), 0.5)


def test_drop_small_on_empty_mask_returns_a_copy():
    mask = np.zeros((4, 4), bool)
    out = drop_small(mask, 5)
    assert not out.any() and out is not mask


def two_overlapping_disks() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[disk((20, 20), 10, shape=mask.shape)] = True
    mask[disk((20, 36), 10, shape=mask.shape)] = True  # centres 16 apart: a 12-pixel-wide neck
    return mask


def test_instances_watershed_splits_overlapping_disks():
    mask = two_overlapping_disks()
    labels = instances_from_mask(mask, "watershed", h=2.0)
    assert labels.dtype == np.int32
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels > 0, mask)
    assert labels[20, 20] == 1 and labels[20, 36] == 2  # raster order: the left disk is first
    # The cut runs through the neck, half-way between the centres: sizes are equal within a column.
    sizes = np.bincount(labels.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 40
    assert np.all(labels[:, :28][mask[:, :28]] == 1) and np.all(labels[:, 29:][mask[:, 29:]] == 2)


def test_instances_components_keeps_touching_disks_together():
    mask = two_overlapping_disks()
    labels = instances_from_mask(mask, "components")
    assert labels.max() == 1
    np.testing.assert_array_equal(labels > 0, mask)


def test_instances_watershed_h_controls_splitting():
    # Disks of radius 10 and 7: distance maxima 10 and 7, the smaller one ~2 above the neck.
    mask = np.zeros((40, 60), bool)
    mask[disk((20, 20), 10, shape=mask.shape)] = True
    mask[disk((20, 33), 7, shape=mask.shape)] = True
    assert instances_from_mask(mask, "watershed", h=1.0).max() == 2
    assert instances_from_mask(mask, "watershed", h=3.0).max() == 1
    # h above every maximum: no markers at all, the blob is still one object, not dropped.
    merged = instances_from_mask(mask, "watershed", h=12.0)
    assert merged.max() == 1
    np.testing.assert_array_equal(merged > 0, mask)


def test_instances_watershed_keeps_objects_too_thin_for_a_marker():
    """Regression: objects whose distance maximum is below ``h`` used to get no marker and vanish."""
    mask = np.zeros((40, 40), bool)
    mask[2:4, 5:35] = True  # a 2-pixel-wide bar (60 px): distance maximum 1 < h = 2
    for c in ((15, 8), (15, 30), (32, 8), (32, 30)):
        mask[disk(c, 4, shape=mask.shape)] = True  # radius-4 nuclei: maxima 4 < h = 5
    labels = instances_from_mask(mask, "watershed", h=2.0)
    assert labels.max() == 5
    np.testing.assert_array_equal(labels > 0, mask)
    labels = instances_from_mask(mask, "watershed", h=5.0)
    assert labels.max() == 5
    np.testing.assert_array_equal(labels > 0, mask)
    prob = mask * 0.9
    assert postprocess(prob, PostprocessConfig(threshold=0.5, min_size=30)).max() == 5


def test_instances_min_size_and_separate_objects():
    mask = np.zeros((20, 20), bool)
    mask[2:8, 2:8] = True  # 36
    mask[12:14, 12:14] = True  # 4
    mask[15:19, 2:6] = True  # 16
    for split in ("watershed", "components"):
        labels = instances_from_mask(mask, split)
        assert labels.max() == 3
        kept = instances_from_mask(mask, split, min_size=10)
        assert kept.max() == 2 and kept[12, 12] == 0
        assert kept[3, 3] == 1 and kept[16, 3] == 2  # renumbered without gaps


def test_relabel_sequential_raster_order():
    labels = np.array([[0, 5, 5, 0], [9, 0, 2, 2], [9, 7, 0, 0]])
    expected = np.array([[0, 1, 1, 0], [2, 0, 3, 3], [2, 4, 0, 0]])
    out = relabel_sequential(labels)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(relabel_sequential(np.zeros((3, 3), np.int64)), np.zeros((3, 3)))
    np.testing.assert_array_equal(relabel_sequential(out), out)  # idempotent


def test_postprocess_uses_default_threshold_only_when_unset():
    prob = np.zeros((30, 30))
    prob[5:15, 5:15] = 0.45
    prob[18:26, 18:26] = 0.8
    cfg = PostprocessConfig(threshold=None, min_size=10, max_hole=0, split="components")
    assert postprocess(prob, cfg, default_threshold=0.4).max() == 2
    assert postprocess(prob, cfg, default_threshold=0.5).max() == 1
    assert postprocess(prob, cfg).max() == 1  # default of the default: 0.5
    fixed = PostprocessConfig(threshold=0.3, min_size=10, max_hole=0, split="components")
    assert postprocess(prob, fixed, default_threshold=0.9).max() == 2
    out = postprocess(prob, fixed)
    assert out.dtype == np.int32 and out[10, 10] == 1 and out[20, 20] == 2


def test_postprocess_full_chain():
    prob = two_overlapping_disks() * 0.9
    prob[20, 20] = 0.0  # a 1-pixel hole, filled
    prob[2, 55] = 0.9  # a speck, removed
    labels = postprocess(prob, PostprocessConfig(threshold=0.5, min_size=30, max_hole=50))
    assert labels.max() == 2
    np.testing.assert_array_equal(labels > 0, two_overlapping_disks())


def test_postprocess_config_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        PostprocessConfig(split="graphcut")


def test_recentre_maps_threshold_to_half_monotonically():
    from histoflow.postprocess import recentre

    p = np.linspace(0, 1, 101, dtype=np.float32)
    r = recentre(p, 0.3)
    assert r[0] == 0 and r[-1] == 1 and r[30] == pytest.approx(0.5)
    assert np.all(np.diff(r) > 0)
    with pytest.raises(ValueError):
        recentre(p, 0.0)


def test_graphcut_postprocess_cleans_a_noisy_disk():
    pytest.importorskip("maxflow")
    from skimage.draw import disk

    truth = np.zeros((64, 64), bool)
    truth[disk((32, 32), 18)] = True
    rng = np.random.default_rng(0)
    prob = np.clip(truth * 0.7 + 0.15 + rng.normal(0, 0.3, truth.shape), 0, 1).astype(np.float32)
    plain = postprocess(prob, PostprocessConfig(min_size=0, max_hole=0, split="components"))
    cut = postprocess(prob, PostprocessConfig(min_size=0, max_hole=0, split="components", graphcut=True))

    def iou(a):
        return ((a > 0) & truth).sum() / ((a > 0) | truth).sum()

    assert iou(cut) > 0.95 > iou(plain)
    assert cut.max() == 1  # one clean object instead of speckle


# ------------------------------------------------------------------------------- instance voting
def _disk_labels(shape, disks):
    """Label image with one object per ``(row, col, radius, id)``."""
    lab = np.zeros(shape, np.int32)
    for r, c, rad, i in disks:
        lab[disk((r, c), rad, shape=shape)] = i
    return lab


def _objects(labels):
    return {frozenset(np.flatnonzero(labels.ravel() == i)) for i in np.unique(labels[labels > 0])}


def test_vote_keeps_the_objects_a_majority_found_with_their_majority_pixels():
    """Object A found by all three members (shifted by a pixel), B by one, C by two: the default
    majority keeps A and C; A's mask is the pixels at least two of the three cover."""
    shape = (60, 80)
    m0 = _disk_labels(shape, [(20, 20, 8, 5), (45, 60, 6, 9)])              # A, B
    m1 = _disk_labels(shape, [(21, 20, 8, 1), (15, 60, 7, 2)])              # A, C
    m2 = _disk_labels(shape, [(20, 21, 8, 7), (15, 61, 7, 3)])              # A, C
    labels, votes = vote_instances([m0, m1, m2])
    a_cover = (m0 == 5).astype(int) + (m1 == 1) + (m2 == 7)
    c_cover = (m1 == 2).astype(int) + (m2 == 3)
    assert _objects(labels) == {frozenset(np.flatnonzero((a_cover >= 2).ravel())),
                                frozenset(np.flatnonzero((c_cover >= 1).ravel()))}  # C: half of its 2 finders
    assert labels.max() == 2 and labels[20, 20] == 1  # A (3 votes) is painted first
    np.testing.assert_allclose(votes, ((m0 > 0).astype(float) + (m1 > 0) + (m2 > 0)) / 3, atol=1e-6)
    # every object any member found
    loose, _ = vote_instances([m0, m1, m2], vote_fraction=0.0)
    assert loose.max() == 3 and loose[45, 60] > 0


def test_vote_of_two_equal_members_keeps_what_both_found_and_weights_can_overrule():
    shape = (40, 40)
    a = _disk_labels(shape, [(10, 10, 5, 1), (30, 30, 5, 2)])
    b = _disk_labels(shape, [(10, 11, 5, 4)])
    labels, _ = vote_instances([a, b])
    assert labels.max() == 1 and labels[10, 10] == 1 and labels[30, 30] == 0
    assert ((labels > 0) == ((a == 1) | (b == 4))).all()  # half the weight covers the union
    heavy, _ = vote_instances([a, b], weights=[3, 1])
    assert heavy.max() == 2 and heavy[30, 30] > 0
    assert ((heavy == heavy[10, 10]) == (a == 1)).all()  # 3/4 of the weight: member a's pixels only


def test_vote_matches_only_above_iou_one_half_and_identical_members_give_their_objects():
    shape = (30, 60)
    a = _disk_labels(shape, [(15, 15, 8, 1), (15, 45, 8, 2)])
    shifted = _disk_labels(shape, [(15, 22, 8, 1)])  # IoU with the first disk < 0.5: a different object
    labels, _ = vote_instances([a, shifted])
    assert labels.max() == 0
    same, votes = vote_instances([a, a.copy(), a * 3])
    assert _objects(same) == _objects(a) and set(np.unique(votes)) == {0.0, 1.0}


def test_vote_rejects_bad_input():
    a = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="two members"):
        vote_instances([a])
    with pytest.raises(ValueError, match="shape"):
        vote_instances([a, np.zeros((8, 9), np.int32)])
    with pytest.raises(ValueError, match="weight"):
        vote_instances([a, a], weights=[1, 0])
    with pytest.raises(ValueError, match="vote_fraction"):
        vote_instances([a, a], vote_fraction=1.0)
