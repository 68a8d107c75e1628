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
