"""Instance models' shared machinery (histoflow.detection): targets, paste, the merge rules and tiled
detection, checked on synthetic disks whose answer is known and with an exact detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk
from skimage.measure import label as cc_label

from histoflow.detection import (
    Detections,
    box_masks,
    detect_tiled,
    filter_detections,
    instance_labels,
    instance_targets,
    merge_map_predictor,
    merged_probability,
    ownership_bounds,
    paste_mask,
)
from histoflow.postprocess import MERGE_THRESHOLD, default_threshold


def disks_image(shape=(200, 230), n=30, seed=0, radius=(5, 9)):
    """Non-touching disks: ``labels (H, W)`` and an image whose channel 0 is each disk's own
    intensity (distinct, so an exact detector's scores order them uniquely)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    for _ in range(2000):
        r = int(rng.integers(*radius))
        cy, cx = int(rng.integers(r, shape[0] - r)), int(rng.integers(r, shape[1] - r))
        rr, cc = disk((cy, cx), r + 2, shape=shape)
        if labels[rr, cc].any():
            continue
        k += 1
        rr, cc = disk((cy, cx), r, shape=shape)
        labels[rr, cc] = k
        if k == n:
            break
    image = np.zeros((3, *shape), np.float32)
    image[0] = np.where(labels > 0, 0.3 + 0.6 * labels / labels.max(), 0)
    return image, labels


def exact_detector(size: int = 28, channel: int = 0, score=lambda v: v):
    """Connected components of ``channel`` > 0: boxes, box-frame masks and, as score, ``score`` of
    each component's mean intensity in channel 0."""

    def detect(batch: torch.Tensor) -> list[Detections]:
        out = []
        for img in batch:
            lab = torch.from_numpy(cc_label(img[channel].numpy() > 0)).long()
            t = instance_targets(lab, min_area=1)
            v = torch.stack([img[0][lab == i].mean() for i in t["ids"].tolist()]) if len(t["ids"]) else torch.zeros(0)
            out.append(Detections(t["boxes"].numpy(), score(v).detach().numpy(),
                                  box_masks(t["masks"], t["boxes"], size).numpy()))
        return out

    return detect


def test_instance_targets_boxes_have_exclusive_far_edges_and_skip_slivers():
    lab = torch.zeros(20, 30, dtype=torch.int64)
    lab[2:5, 3:6] = 7  # ids need not be contiguous
    lab[10:18, 20:29] = 3
    lab[0, 29] = 9  # a one-pixel sliver
    t = instance_targets(lab, min_area=4)
    assert t["ids"].tolist() == [3, 7]
    assert t["boxes"].tolist() == [[20, 10, 29, 18], [3, 2, 6, 5]]
    assert t["masks"].shape == (2, 20, 30) and int(t["masks"][1].sum()) == 9
    assert t["labels"].tolist() == [1, 1]
    empty = instance_targets(torch.zeros(8, 8, dtype=torch.int64))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 8, 8)


def test_box_frame_masks_paste_back_to_the_objects():
    _, labels = disks_image((120, 140), n=12)
    t = instance_targets(torch.from_numpy(labels).long())
    dets = Detections(t["boxes"].numpy(), np.linspace(1, 0.5, len(t["ids"])),
                      box_masks(t["masks"], t["boxes"], 28).numpy())
    pasted = instance_labels(dets, labels.shape, 0.5)
    assert pasted.max() == len(t["ids"])
    for k, gid in enumerate(t["ids"].tolist(), start=1):  # ids follow decreasing score
        a, b = pasted == k, labels == gid
        assert (a & b).sum() / (a | b).sum() > 0.93


def test_paste_mask_clips_to_the_image_and_skips_boxes_outside():
    sl, vals = paste_mask(np.ones((4, 4), np.float32), np.array([-3.0, 2.0, 5.0, 6.0]), (10, 10))
    assert (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop) == (2, 6, 0, 5)
    assert vals.shape == (4, 5) and vals.min() > 0.99
    assert paste_mask(np.ones((4, 4)), np.array([20.0, 20.0, 30.0, 30.0]), (10, 10)) is None


def test_seed_merge_map_zeroes_weak_pixels_sums_and_clips():
    box = np.array([[0, 0, 4, 4]] * 2, np.float32)
    def merged(a, b):
        d = Detections(box, [0.9, 0.8], np.stack([np.full((4, 4), a), np.full((4, 4), b)]))
        return merged_probability(d, (6, 6), mask_threshold=0.3)

    np.testing.assert_allclose(merged(0.2, 0.6)[:4, :4], 0.6)  # 0.2 < 0.3 is zeroed
    np.testing.assert_allclose(merged(0.4, 0.4)[:4, :4], 0.8)  # summed
    np.testing.assert_allclose(merged(0.6, 0.7)[:4, :4], 1.0)  # clipped
    assert merged(0.9, 0.9)[4:, :].max() == 0


def test_paper_merge_rule_thresholds_the_sum_at_0_9():
    """GlaS paper: masks of detections scoring 0.4 or more (after NMS), pixels under 0.3 zeroed, summed, cut at 0.9."""
    spec = {"instances": True, "threshold": 0.5}
    assert default_threshold(spec) == MERGE_THRESHOLD == 0.9  # the spec's 0.5 is not the merge rule's cut
    assert default_threshold({"threshold": 0.35}) == 0.35  # probability models: the validation-chosen one
    box = np.array([[0, 0, 4, 4], [0, 0, 4, 4], [6, 0, 10, 4], [12, 0, 16, 4]], np.float32)  # x0, y0, x1, y1
    masks = np.stack([np.full((4, 4), v, np.float32) for v in (0.5, 0.45, 0.95, 0.95)])
    kept = filter_detections(Detections(box, [0.9, 0.4, 0.39, 0.8], masks), 0.4, nms_iou=1.0)
    fg = merged_probability(kept, (4, 16), mask_threshold=0.3) >= default_threshold(spec)
    assert fg[:, :4].all()  # 0.5 + 0.45: two confident-enough masks add up past 0.9
    assert not fg[:, 6:10].any()  # score 0.39 < 0.4: dropped, confident as its mask is
    assert fg[:, 12:].all()  # one mask alone must reach 0.9
    single = filter_detections(Detections(box[:1], [0.9], masks[:1]), 0.4, nms_iou=1.0)
    assert not (merged_probability(single, (4, 16), 0.3) >= MERGE_THRESHOLD).any()  # 0.5 alone is not enough


def test_instance_preserving_merge_gives_overlaps_to_the_higher_score_and_drops_remnants():
    boxes = np.array([[0, 0, 6, 6], [3, 0, 9, 6], [0, 0, 4, 1]], np.float32)
    d = Detections(boxes, [0.5, 0.9, 0.7], np.ones((3, 8, 8)))
    lab = instance_labels(d, (8, 10), 0.5)
    assert (lab[:6, 3:9] == 1).all()  # the 0.9 detection is id 1 and owns its overlaps
    assert (lab[0, :3] == 2).all()  # the 0.7 one keeps its 3 free pixels
    assert (lab[1:6, :3] == 3).all()  # the 0.5 one what is left of it
    assert (lab[6:] == 0).all() and (lab[:, 9] == 0).all()
    lab = instance_labels(d, (8, 10), 0.5, min_size=5)
    assert (lab[:6, 3:9] == 1).all() and (lab[:6, :3] == 2).all()  # the 3-pixel remnant is dropped
    assert lab.max() == 2


def test_filter_detections_drops_low_scores_suppresses_overlaps_and_sorts():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    d = Detections(boxes, [0.6, 0.9, 0.5, 0.2], np.ones((4, 2, 2)))
    kept = filter_detections(d, 0.4, 0.5)
    np.testing.assert_allclose(kept.scores, [0.9, 0.5])
    np.testing.assert_allclose(kept.boxes[0], boxes[1])


def test_ownership_bounds_partition_the_axis_at_overlap_midpoints():
    bounds = ownership_bounds([0, 48, 96], 64, 160)
    assert bounds == [(0.0, 56.0), (56.0, 104.0), (104.0, 160.0)]


@pytest.mark.parametrize(("tile", "overlap"), [(64, 32), (80, 40), (256, 64)])
def test_tiled_detection_equals_whole_image_detection(tile, overlap):
    image, labels = disks_image()
    detector = exact_detector()
    whole = detector(torch.from_numpy(image)[None])[0]
    tiled = detect_tiled(detector, image, tile=tile, overlap=overlap, batch_size=3)
    assert len(tiled) == len(whole) == labels.max()  # nothing duplicated, nothing lost
    a = instance_labels(tiled, labels.shape, 0.5)
    b = instance_labels(whole, labels.shape, 0.5)
    np.testing.assert_array_equal(a, b)  # the same objects, each seen whole


def test_tiled_detection_without_ownership_would_duplicate():
    """The exact detector sees objects in the overlaps twice: ownership is what removes them."""
    image, labels = disks_image()
    detector = exact_detector()
    from histoflow.tiling import iter_tiles

    seen = 0
    for y, x in iter_tiles(*labels.shape, 64, 32):
        seen += len(detector(torch.from_numpy(image[:, y : y + 64, x : x + 64].copy())[None])[0])
    assert seen > labels.max()
    assert len(detect_tiled(detector, image, tile=64, overlap=32)) == labels.max()


@pytest.mark.parametrize(("tile", "overlap"), [(64, 32), (96, 24)])
def test_merge_map_predictor_blended_over_tiles_gives_the_objects(tile, overlap):
    """The seed's merge map tile by tile, blended like a U-Net's probabilities (the whole-slide
    path): with an exact detector it recovers the disks, including those cut by tile edges."""
    from histoflow.tiling import predict_tiled

    image, labels = disks_image()
    x = torch.from_numpy(image)
    predictor = merge_map_predictor(exact_detector(), score_threshold=0.0, nms_iou=0.5)
    whole = predictor(x[None])[0, 0].numpy()
    blended = predict_tiled(predictor, x, tile=tile, overlap=overlap, batch_size=4)[0]
    assert blended.shape == labels.shape and blended.dtype == np.float32
    for prob in (whole, blended):
        fg, gt = prob >= 0.5, labels > 0
        assert (fg & gt).sum() / (fg | gt).sum() > 0.95
    # a score threshold above every object's leaves nothing
    none = merge_map_predictor(exact_detector(), score_threshold=1.0, nms_iou=0.5)(x[None])
    assert none.shape == (1, 1, *labels.shape) and not none.any()


def test_small_image_is_padded_and_detections_in_the_padding_dropped():
    image, labels = disks_image((50, 40), n=3, radius=(4, 6))
    tiled = detect_tiled(exact_detector(), image, tile=64, overlap=16)
    assert len(tiled) == labels.max()
    assert tiled.boxes[:, 2].max() <= 40 and tiled.boxes[:, 3].max() <= 50


def test_detections_validate_lengths_and_concat_resizes_masks():
    with pytest.raises(ValueError, match="disagree"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros((2, 4, 4)))
    a = Detections(np.zeros((1, 4)), [0.5], np.ones((1, 28, 28)))
    b = Detections(np.zeros((2, 4)), [0.1, 0.2], np.ones((2, 48, 48)))
    c = Detections.concat([a, Detections.empty(), b])
    assert len(c) == 3 and c.masks.shape == (3, 48, 48)
    assert len(Detections.concat([])) == 0
