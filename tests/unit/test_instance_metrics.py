"""AJI, AJI+, PQ and detection AP on hand-worked cases.

The worked example (``worked_example``) is small enough to check on paper; every expected value
below is derived in its comment.
"""

from __future__ import annotations

import numpy as np
import pytest

from histoflow.metrics import (
    aji,
    aji_plus,
    average_precision,
    box_iou,
    evaluate_instances,
    label_boxes,
    match_boxes,
    match_detections,
    object_scores,
    panoptic_quality,
)


def worked_example() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: A = 10×10 (100 px) and B = 10×10 (100 px) side by side, C = 4×4 (16 px) far away.

    Prediction: P1 covers A shifted 2 columns right (8×10 on A + 2×10 spill = 100 px, IoU 80/120);
    P2 covers B exactly (IoU 1); P3 = a 5×5 false positive (25 px) on background; C is missed.
    """
    gt = np.zeros((40, 40), np.int32)
    gt[0:10, 0:10] = 1  # A
    gt[0:10, 20:30] = 2  # B
    gt[30:34, 30:34] = 3  # C
    pred = np.zeros_like(gt)
    pred[0:10, 2:12] = 7  # P1: 80 px on A, 20 px on background
    pred[0:10, 20:30] = 9  # P2 = B
    pred[20:25, 0:5] = 4  # P3: false positive
    return pred, gt


def test_aji_worked_example():
    pred, gt = worked_example()
    # C = 80 + 100; U = 120 (A∪P1) + 100 (B∪P2) + 16 (C unmatched) + 25 (P3 unused) = 261
    assert aji(pred, gt) == pytest.approx(180 / 261)
    assert aji_plus(pred, gt) == pytest.approx(180 / 261)  # one-to-one already


def test_pq_worked_example():
    pred, gt = worked_example()
    # pairs with IoU > 0.5: (A, P1) 2/3 and (B, P2) 1 -> TP 2, FP 1 (P3), FN 1 (C)
    q = panoptic_quality(pred, gt)
    assert q["dq"] == pytest.approx(2 / (2 + 0.5 + 0.5))
    assert q["sq"] == pytest.approx((2 / 3 + 1) / 2)
    assert q["pq"] == pytest.approx(q["dq"] * q["sq"])


def test_aji_reuses_a_merged_prediction_but_aji_plus_does_not():
    gt = np.zeros((10, 20), np.int32)
    gt[:, :10] = 1
    gt[:, 10:] = 2
    pred = np.ones_like(gt)  # one object over both
    # AJI: both G pair with the single S (IoU 100/200 each): C = 200, U = 200 + 200 = 400
    assert aji(pred, gt) == pytest.approx(0.5)
    # AJI+: S pairs with G1 only: C = 100, U = 200 + 100 (G2 unmatched) = 300
    assert aji_plus(pred, gt) == pytest.approx(1 / 3)
    # PQ: IoU 0.5 is not > 0.5, so no pair: DQ = 0
    assert panoptic_quality(pred, gt)["pq"] == 0.0


def test_aji_plus_hungarian_beats_greedy():
    gt = np.zeros((1, 30), np.int32)
    gt[0, 0:10] = 1  # G1
    gt[0, 10:20] = 2  # G2
    pred = np.zeros_like(gt)
    pred[0, 3:18] = 1  # S1: 7 px on G1, 8 px on G2 (15 px)
    pred[0, 0:3] = 2  # S2: 3 px on G1
    # IoU(G1,S1) = 7/18, IoU(G1,S2) = 3/10, IoU(G2,S1) = 8/17.
    # Greedy per GT would give G1-S1 and leave G2 unmatched (sum IoU 0.39); the one-to-one optimum
    # is G1-S2 + G2-S1 (sum 0.77): C = 3 + 8 = 11, U = 10 + 17 = 27.
    assert aji_plus(pred, gt) == pytest.approx(11 / 27)
    # Original AJI: G1-S1 (7/18) and G2-S1 (8/17), S2 unused adds 3: C = 15, U = 18 + 17 + 3 = 38
    assert aji(pred, gt) == pytest.approx(15 / 38)


def test_empty_and_identical():
    z = np.zeros((8, 8), np.int32)
    assert aji(z, z) == 1.0 and panoptic_quality(z, z)["pq"] == 1.0
    one = z.copy()
    one[2:5, 2:5] = 3
    assert aji(one, one) == 1.0 and panoptic_quality(one, one) == {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    assert aji(z, one) == 0.0 and aji(one, z) == 0.0


def test_average_precision_hand_values():
    # 3 GT; detections by score: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3
    # interpolated: recall 0..1/3 at 1.0, 1/3..2/3 at 2/3 -> AP = 1/3 + 2/9
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3) == pytest.approx(
        1 / 3 + 2 / 9
    )
    assert average_precision(np.array([0.9]), np.array([True]), 1) == pytest.approx(1.0)
    assert average_precision(np.array([]), np.array([], bool), 0) == 1.0
    assert average_precision(np.array([0.5]), np.array([False]), 0) == 0.0


def test_eleven_point_average_precision_by_hand():
    # same ranking as above: max precision at recall >= r is 1 for r = 0 .. 0.3 (4 points), 2/3 for r = 0.4 .. 0.6
    # (3 points), 0 for r = 0.7 .. 1 (never reached, 4 points) -> (4 + 2) / 11
    got = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3, points=11)
    assert got == pytest.approx(6 / 11)
    assert average_precision(np.array([0.9]), np.array([True]), 1, points=11) == pytest.approx(1.0)


def test_label_boxes_and_box_iou():
    pred, gt = worked_example()
    # A: rows 0..9, cols 0..9; B: cols 20..29; C: rows and cols 30..33 -- end-exclusive pixel edges
    np.testing.assert_array_equal(label_boxes(gt), [[0, 0, 10, 10], [20, 0, 30, 10], [30, 30, 34, 34]])
    assert label_boxes(np.zeros((3, 3), int)).shape == (0, 4)
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0]])


def test_match_boxes_follows_the_voc_rule():
    """US-Net's detection AP: the detector's boxes and confidences against the ground-truth boxes."""
    _, gt = worked_example()  # boxes A [0, 0, 10, 10], B [20, 0, 30, 10], C [30, 30, 34, 34]
    boxes = np.array([[0, 0, 10, 10],     # 0.9: A exactly -> TP
                      [0, 0, 10, 9],      # 0.8: A again (IoU 0.9) -> duplicate, FP
                      [21, 0, 30, 10],    # 0.7: B (IoU 0.9) -> TP
                      [50, 50, 60, 60]])  # 0.6: nothing -> FP; C is missed
    scores, is_tp, n_gt = match_boxes(boxes, [0.9, 0.8, 0.7, 0.6], gt)
    assert is_tp.tolist() == [True, False, True, False] and n_gt == 3
    # precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3: 11-point AP = (4 * 1 + 3 * 2/3) / 11
    assert average_precision(scores, is_tp, n_gt, points=11) == pytest.approx(6 / 11)
    # a box overlapping its object by less than half is a FP even as the only detection
    _, weak, _ = match_boxes(np.array([[0, 0, 10, 4]]), [0.9], gt)  # IoU 40 / 100
    assert weak.tolist() == [False]


def test_match_detections_uses_scores():
    pred, gt = worked_example()
    scores, is_tp, n_gt = match_detections(pred, gt, {7: 0.6, 9: 0.9, 4: 0.95})
    assert n_gt == 3
    order = np.argsort(-scores)
    assert is_tp[order].tolist() == [False, True, True]  # P3 (FP) first, then P2, P1
    # precision 0, 1/2, 2/3 at recall 0, 1/3, 2/3 -> AP = 2/3 * 2/3
    assert average_precision(scores, is_tp, n_gt) == pytest.approx(4 / 9)


def test_object_scores_and_evaluate_instances_keys():
    pred, gt = worked_example()
    prob = np.where(pred > 0, 0.8, 0.1)
    assert object_scores(pred, prob) == pytest.approx({4: 0.8, 7: 0.8, 9: 0.8})
    row = evaluate_instances(pred, gt)
    assert row["aji"] == pytest.approx(180 / 261) and row["pq"] == pytest.approx(2 / 3 * 5 / 6)
