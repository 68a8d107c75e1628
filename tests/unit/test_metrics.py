"""Known-answer tests for histoflow.metrics (pixel metrics and GlaS object metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from imageio.v3 import imread
from scipy import ndimage
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from histoflow.metrics import (
    evaluate_instances,
    match_objects,
    object_detection_counts,
    object_dice,
    object_f1,
    object_hausdorff,
    pixel_metrics,
    summarize,
)


def rect(shape: tuple[int, int], boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """Label image with rectangles ``{id: (row0, row1, col0, col1)}`` (end-exclusive)."""
    out = np.zeros(shape, dtype=np.int32)
    for label, (r0, r1, c0, c1) in boxes.items():
        out[r0:r1, c0:c1] = label
    return out


def disks(shape: tuple[int, int], items: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """Label image with disks ``{id: (row, col, radius)}``."""
    out = np.zeros(shape, dtype=np.int32)
    for label, (r, c, radius) in items.items():
        out[disk((r, c), radius, shape=shape)] = label
    return out


THREE = {1: (15, 15, 8), 2: (15, 45, 8), 3: (45, 30, 8)}


# --------------------------------------------------------------------------------------------------
# pixel metrics
# --------------------------------------------------------------------------------------------------


def test_pixel_metrics_overlapping_squares() -> None:
    pred = rect((20, 20), {1: (0, 10, 0, 10)})
    gt = rect((20, 20), {1: (5, 15, 0, 10)})
    m = pixel_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (50, 50, 50, 250)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(300 / 400)


def test_pixel_metrics_any_positive_value_is_foreground() -> None:
    pred = np.array([[0, 3], [7, 0]])
    gt = np.array([[0.0, 0.5], [0.0, 0.0]])
    m = pixel_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 0, 2)


def test_pixel_metrics_empty_conventions() -> None:
    empty = np.zeros((4, 4), dtype=np.uint8)
    full = np.ones((4, 4), dtype=np.uint8)
    both = pixel_metrics(empty, empty)
    for key in ("precision", "recall", "f1", "iou", "accuracy"):
        assert both[key] == 1.0
    missed = pixel_metrics(empty, full)
    assert (missed["precision"], missed["recall"], missed["f1"], missed["iou"]) == (0.0, 0.0, 0.0, 0.0)
    spurious = pixel_metrics(full, empty)
    assert (spurious["precision"], spurious["recall"], spurious["f1"]) == (0.0, 0.0, 0.0)


def test_pixel_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        pixel_metrics(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="2D"):
        pixel_metrics(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)))


# --------------------------------------------------------------------------------------------------
# object metrics: known answers
# --------------------------------------------------------------------------------------------------


def test_identical_disks_are_perfect() -> None:
    gt = disks((64, 64), THREE)
    counts = object_detection_counts(gt.copy(), gt)
    assert counts == {"tp": 3, "fp": 0, "fn": 0, "n_pred": 3, "n_gt": 3}
    assert object_f1(gt.copy(), gt) == 1.0
    assert object_dice(gt.copy(), gt) == 1.0
    assert object_hausdorff(gt.copy(), gt) == 0.0


def test_missed_and_spurious_disk() -> None:
    gt = disks((64, 64), THREE)
    pred = disks((64, 64), {1: THREE[1], 2: THREE[2], 3: (52, 55, 5)})  # misses gt 3, adds a spurious one
    counts = object_detection_counts(pred, gt)
    assert (counts["tp"], counts["fp"], counts["fn"]) == (2, 1, 1)
    assert object_f1(pred, gt) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    a = np.count_nonzero(gt == 1)  # every gt disk has this area
    b = np.count_nonzero(pred == 3)  # the spurious disk
    # gt side: weights 1/3 each, Dice 1, 1, 0; pred side: weights a, a, b / (2a + b), Dice 1, 1, 0
    assert object_dice(pred, gt) == pytest.approx(0.5 * (2 / 3 + 2 * a / (2 * a + b)))


def test_forty_percent_coverage_is_fp_and_fn() -> None:
    gt = rect((12, 12), {1: (0, 10, 0, 10)})  # area 100
    pred = rect((12, 12), {1: (0, 10, 0, 4)})  # area 40, all inside gt: covers 40%
    assert object_detection_counts(pred, gt) == {"tp": 0, "fp": 1, "fn": 1, "n_pred": 1, "n_gt": 1}
    assert object_f1(pred, gt) == 0.0
    assert object_dice(pred, gt) == pytest.approx(2 * 40 / 140)  # same pair from both sides


def test_fifty_percent_boundary_follows_the_organisers_code() -> None:
    """F1score.m counts a TP when |S ∩ G| / |G| > 0.5: exactly half is not enough."""
    gt = rect((12, 12), {1: (0, 10, 0, 10)})
    half = rect((12, 12), {1: (0, 10, 0, 5)})  # exactly 50 of 100 pixels: a FP, and the gt object a FN
    assert object_detection_counts(half, gt) == {"tp": 0, "fp": 1, "fn": 1, "n_pred": 1, "n_gt": 1}
    above = half.copy()
    above[0, 5] = 1  # 51 of 100 pixels
    assert object_detection_counts(above, gt)["tp"] == 1


def test_two_predictions_covering_half_each_are_both_false_positives() -> None:
    gt = rect((12, 12), {1: (0, 10, 0, 10)})
    pred = rect((12, 12), {4: (0, 10, 0, 5), 2: (0, 10, 5, 10)})
    assert object_detection_counts(pred, gt) == {"tp": 0, "fp": 2, "fn": 1, "n_pred": 2, "n_gt": 1}


def test_merged_prediction_over_two_gt_objects() -> None:
    gt = rect((10, 30), {1: (0, 10, 0, 12), 2: (0, 10, 20, 30)})  # areas 120 and 100
    pred = rect((10, 30), {1: (0, 10, 0, 30)})  # area 300, covers both
    # the prediction corresponds to gt 1 (overlap 120 > 100) and covers all of it: 1 TP; gt 2 is FN
    assert object_detection_counts(pred, gt) == {"tp": 1, "fp": 0, "fn": 1, "n_pred": 1, "n_gt": 2}
    assert object_f1(pred, gt) == pytest.approx(2 / 3)
    dice_1 = 2 * 120 / (120 + 300)
    dice_2 = 2 * 100 / (100 + 300)
    g_side = (120 * dice_1 + 100 * dice_2) / 220
    assert object_dice(pred, gt) == pytest.approx(0.5 * (g_side + dice_1))
    # H(gt1, S): S's column 29 is 18 px from gt1's column 11; H(gt2, S): S's column 0 is 20 from 20
    h_g_side = (120 * 18 + 100 * 20) / 220
    assert object_hausdorff(pred, gt) == pytest.approx(0.5 * (h_g_side + 18))


def test_shifted_square_hausdorff_equals_shift() -> None:
    gt = rect((32, 32), {1: (10, 20, 10, 20)})
    pred = rect((32, 32), {1: (10, 20, 13, 23)})
    assert object_hausdorff(pred, gt) == pytest.approx(3.0)
    assert object_dice(pred, gt) == pytest.approx(0.7)  # overlap 70, areas 100 + 100
    assert object_detection_counts(pred, gt)["tp"] == 1


def test_hausdorff_uses_all_pixels_not_only_boundaries() -> None:
    # pred is a ring; gt fills it: the gt centre is 4 px from the ring, boundaries coincide
    gt = rect((11, 11), {1: (1, 10, 1, 10)})
    pred = gt.copy()
    pred[2:9, 2:9] = 0
    assert object_hausdorff(pred, gt) == pytest.approx(4.0)


def test_object_dice_weights_on_two_squares() -> None:
    gt = rect((50, 50), {1: (0, 10, 0, 10), 2: (30, 50, 30, 50)})  # areas 100 and 400
    pred = rect((50, 50), {1: (0, 10, 0, 10), 2: (30, 50, 30, 40)})  # areas 100 and 200
    # gt side: 0.2 * 1 + 0.8 * (2*200/600); pred side: 1/3 * 1 + 2/3 * (2/3)
    expected = 0.5 * ((0.2 + 0.8 * 2 / 3) + (1 / 3 + 2 / 3 * 2 / 3))
    assert expected == pytest.approx(34 / 45)
    assert object_dice(pred, gt) == pytest.approx(34 / 45)
    assert object_detection_counts(pred, gt)["tp"] == 1  # pred 2 covers exactly 50% of gt 2: not more


def test_unmatched_gt_is_paired_with_the_only_prediction() -> None:
    gt = rect((5, 25), {1: (0, 5, 0, 5), 2: (0, 5, 20, 25)})
    pred = rect((5, 25), {1: (0, 5, 0, 5)})
    # gt 2 overlaps nothing: its partner is the only prediction, H = 20
    assert object_hausdorff(pred, gt) == pytest.approx(0.5 * ((0 + 20) / 2 + 0))


def test_unmatched_gt_picks_the_prediction_at_the_smaller_hausdorff_distance() -> None:
    gt = rect((5, 30), {1: (0, 5, 10, 15)})
    pred = rect((5, 30), {7: (0, 5, 0, 5), 3: (0, 5, 22, 27)})  # gaps of 6 and 8 px to gt
    # gt side: H(gt, 7) = 10 < H(gt, 3) = 12, so pred 7; pred side: H(7) = 10, H(3) = 12, weights 1/2 each
    assert object_hausdorff(pred, gt) == pytest.approx(0.5 * (10 + (10 + 12) / 2))
    assert object_dice(pred, gt) == 0.0


def test_unmatched_object_is_paired_by_hausdorff_distance_not_by_gap() -> None:
    """ObjectHausdorff.m pairs an object that overlaps nothing with the object at the smallest *Hausdorff*
    distance, which need not be the nearest one."""
    gt = rect((5, 60), {1: (0, 5, 20, 25)})
    pred = rect((5, 60), {2: (0, 5, 26, 60), 5: (0, 5, 10, 15)})
    # pred 2 (a long bar, area 170) is 2 px from gt 1 but H = 59 - 24 = 35; pred 5 (area 25) is 6 px away,
    # H = 20 - 10 = 10. Gt side: pred 5, H = 10 (the nearest, pred 2, would give 35).
    # Pred side, with the only gt object: (170 * 35 + 25 * 10) / 195.
    expected = 0.5 * (10 + (170 * 35 + 25 * 10) / 195)
    assert object_hausdorff(pred, gt) == pytest.approx(expected)


def test_non_contiguous_ids_give_the_same_results() -> None:
    gt = disks((64, 64), THREE)
    pred = disks((64, 64), {1: (16, 14, 8), 2: (15, 47, 6), 3: (52, 55, 5)})
    gt_odd = np.select([gt == 1, gt == 2, gt == 3], [5, 1000, 42], 0).astype(np.int64)
    pred_odd = np.select([pred == 1, pred == 2, pred == 3], [2**40, 3, 99999], 0).astype(np.int64)
    assert evaluate_instances(pred_odd, gt_odd) == pytest.approx(evaluate_instances(pred, gt))
    m = match_objects(pred_odd, gt_odd)
    assert m.gt_ids.tolist() == [5, 42, 1000]
    assert m.pred_ids.tolist() == [3, 99999, 2**40]


def test_empty_images() -> None:
    empty = np.zeros((30, 40), dtype=np.int32)
    gt = rect((30, 40), {1: (0, 10, 0, 10)})
    assert object_detection_counts(empty, empty) == {"tp": 0, "fp": 0, "fn": 0, "n_pred": 0, "n_gt": 0}
    assert object_f1(empty, empty) == 1.0
    assert object_dice(empty, empty) == 1.0
    assert object_hausdorff(empty, empty) == 0.0
    for pred, truth in ((empty, gt), (gt, empty)):
        assert object_f1(pred, truth) == 0.0
        assert object_dice(pred, truth) == 0.0
        assert object_hausdorff(pred, truth) == pytest.approx(50.0)  # hypot(30, 40)
    assert object_detection_counts(empty, gt) == {"tp": 0, "fp": 0, "fn": 1, "n_pred": 0, "n_gt": 1}


def test_object_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(10, 10\).*\(10, 11\)"):
        object_dice(np.zeros((10, 10), dtype=int), np.zeros((10, 11), dtype=int))
    with pytest.raises(ValueError, match="integer"):
        object_f1(np.zeros((4, 4), dtype=float), np.zeros((4, 4), dtype=int))
    with pytest.raises(ValueError, match="negative"):
        object_hausdorff(np.zeros((4, 4), dtype=int), -np.ones((4, 4), dtype=int))


def test_match_objects_table() -> None:
    gt = rect((10, 30), {3: (0, 10, 0, 12), 8: (0, 10, 20, 30)})
    pred = rect((10, 30), {5: (0, 10, 0, 25)})
    m = match_objects(pred, gt)
    assert m.gt_areas.tolist() == [120, 100]
    assert m.pred_areas.tolist() == [250]
    table = sorted(zip(m.pair_gt.tolist(), m.pair_pred.tolist(), m.pair_overlap.tolist(), strict=True))
    assert table == [(0, 0, 120), (1, 0, 50)]
    assert m.gt_best.tolist() == [0, 0]
    assert m.pred_best.tolist() == [0]
    assert m.pred_best_overlap.tolist() == [120]


# --------------------------------------------------------------------------------------------------
# object metrics against a brute-force reference on small seeded random label images
# --------------------------------------------------------------------------------------------------


def _reference(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """Object F1, Dice and Hausdorff by direct per-object loops, from the organisers' definitions
    (F1score.m, ObjectDice.m, ObjectHausdorff.m): the partner of an object is the other side's object it
    overlaps most (ties: smallest id); an object that overlaps nothing is paired, for the Hausdorff term, with
    the other side's object at the smallest Hausdorff distance (ties: smallest id) and scores Dice 0; a
    predicted object is a TP when it covers more than half of its partner."""
    g_ids = [i for i in np.unique(gt) if i]
    s_ids = [i for i in np.unique(pred) if i]

    def haus(a: np.ndarray, b: np.ndarray) -> float:  # whole-image distance transforms, no boxes
        return float(max(ndimage.distance_transform_edt(~a)[b].max(), ndimage.distance_transform_edt(~b)[a].max()))

    def best(obj: np.ndarray, other: np.ndarray, other_ids: list[int]) -> int:
        overlaps = [np.count_nonzero(obj & (other == j)) for j in other_ids]
        if max(overlaps) > 0:
            return other_ids[int(np.argmax(overlaps))]
        return other_ids[int(np.argmin([haus(obj, other == j) for j in other_ids]))]

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))

    total = {"dice": 0.0, "haus": 0.0}
    for objs, labels, other, other_ids in ((g_ids, gt, pred, s_ids), (s_ids, pred, gt, g_ids)):
        area_sum = sum(np.count_nonzero(labels == i) for i in objs)
        for i in objs:
            obj = labels == i
            w = np.count_nonzero(obj) / area_sum
            partner = other == best(obj, other, other_ids)
            total["dice"] += 0.5 * w * dice(obj, partner)  # 0 when they do not overlap
            total["haus"] += 0.5 * w * haus(obj, partner)
    tp = sum(
        2 * np.count_nonzero((pred == j) & (gt == g)) > np.count_nonzero(gt == g)
        for j in s_ids
        for g in [best(pred == j, gt, g_ids)]
    )
    f1 = 2 * tp / (len(s_ids) + len(g_ids))
    return f1, total["dice"], total["haus"]


def _random_labels(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    for label in rng.choice(np.arange(1, 1000), size=n, replace=False):
        center = (int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])))
        out[disk(center, float(rng.uniform(2, 7)), shape=shape)] = label
    return out


@pytest.mark.parametrize("seed", range(8))
def test_object_metrics_match_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = _random_labels(rng, (40, 48), 6)
    pred = _random_labels(rng, (40, 48), 5)
    f1_ref, dice_ref, haus_ref = _reference(pred, gt)
    assert object_f1(pred, gt) == pytest.approx(f1_ref)
    assert object_dice(pred, gt) == pytest.approx(dice_ref)
    assert object_hausdorff(pred, gt) == pytest.approx(haus_ref)


# --------------------------------------------------------------------------------------------------
# one image and a data set
# --------------------------------------------------------------------------------------------------


def test_evaluate_instances_combines_everything() -> None:
    gt = rect((32, 32), {1: (10, 20, 10, 20)})
    pred = rect((32, 32), {1: (10, 20, 13, 23)})
    row = evaluate_instances(pred, gt)
    assert row["pixel_tp"] == 70 and row["pixel_fp"] == 30 and row["pixel_fn"] == 30
    assert row["pixel_f1"] == pytest.approx(0.7)
    assert row["object_f1"] == 1.0
    assert row["object_dice"] == pytest.approx(0.7)
    assert row["object_hausdorff"] == pytest.approx(3.0)
    assert (row["tp"], row["fp"], row["fn"], row["n_pred"], row["n_gt"]) == (1, 0, 0, 1, 1)


def test_summarize_pooled_f1_differs_from_mean() -> None:
    rows = [
        {"image": "a", "object_f1": 1.0, "tp": 1, "fp": 0, "fn": 0},
        {"image": "b", "object_f1": 0.0, "tp": 0, "fp": 1, "fn": 9},
    ]
    s = summarize(rows)
    assert s["n_images"] == 2
    assert s["object_f1_mean"] == pytest.approx(0.5)
    assert s["object_f1_sd"] == pytest.approx(math.sqrt(0.5))  # ddof=1
    assert s["object_f1_pooled"] == pytest.approx(2 / (2 + 1 + 9))
    assert s["fn_mean"] == pytest.approx(4.5)
    assert s["fn_sd"] == pytest.approx(math.sqrt(40.5))
    assert not any(key.startswith("image") for key in s)


def test_summarize_single_row_inf_and_empty() -> None:
    s = summarize([{"object_hausdorff": 2.5, "flag": True}])
    assert s == {"n_images": 1, "object_hausdorff_mean": 2.5, "object_hausdorff_sd": 0.0}
    s = summarize([{"object_hausdorff": 1.0}, {"object_hausdorff": np.inf}])
    assert s["object_hausdorff_mean"] == np.inf
    assert math.isnan(s["object_hausdorff_sd"])
    with pytest.raises(ValueError, match="at least one row"):
        summarize([])


def test_summarize_rows_from_evaluate_instances() -> None:
    gt = disks((64, 64), THREE)
    pred = disks((64, 64), {1: THREE[1], 2: THREE[2], 3: (52, 55, 5)})
    rows = [evaluate_instances(gt.copy(), gt), evaluate_instances(pred, gt)]
    s = summarize(rows)
    assert s["object_f1_mean"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert s["object_f1_pooled"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    assert s["pixel_f1_mean"] == pytest.approx((rows[0]["pixel_f1"] + rows[1]["pixel_f1"]) / 2)


def test_pooled_object_dice_and_hausdorff_weigh_every_object_of_the_set() -> None:
    """Pooled over a set = the per-image formula on the images laid side by side (area weights over
    all objects), which differs from the mean over images when the images' object areas differ."""
    gt_a = disks((64, 64), {1: (20, 20, 12), 2: (44, 44, 10)})
    pred_a = disks((64, 64), {1: (22, 21, 12), 2: (44, 40, 9), 3: (8, 56, 3)})  # 3 overlaps nothing
    gt_b = disks((64, 64), {1: (32, 32, 4)})
    pred_b = disks((64, 64), {5: (34, 32, 5)})
    rows = [evaluate_instances(pred_a, gt_a), evaluate_instances(pred_b, gt_b)]
    s = summarize(rows)
    gap = np.zeros((64, 400), np.int32)  # far enough that no object's nearest partner is in the other image
    side_by_side_gt = np.hstack([gt_a, gap, np.where(gt_b > 0, gt_b + 10, 0)])
    side_by_side_pred = np.hstack([pred_a, gap, np.where(pred_b > 0, pred_b + 10, 0)])
    assert s["object_dice_pooled"] == pytest.approx(object_dice(side_by_side_pred, side_by_side_gt))
    assert s["object_hausdorff_pooled"] == pytest.approx(object_hausdorff(side_by_side_pred, side_by_side_gt))
    assert s["object_dice_pooled"] != pytest.approx(s["object_dice_mean"])
    assert "gt_area_mean" not in s and "object_dice_gt_sum_mean" not in s  # pooling terms only
    one = summarize(rows[:1])
    assert one["object_dice_pooled"] == pytest.approx(rows[0]["object_dice"])
    assert one["object_hausdorff_pooled"] == pytest.approx(rows[0]["object_hausdorff"])


def test_pooled_object_scores_without_objects() -> None:
    gt = disks((32, 32), {1: (10, 10, 5)})
    empty = np.zeros((32, 32), np.int32)
    nothing_found = summarize([evaluate_instances(empty, gt), evaluate_instances(empty, empty)])
    assert nothing_found["object_dice_pooled"] == 0.0
    assert nothing_found["object_hausdorff_pooled"] == pytest.approx(math.hypot(32, 32))
    nothing_there = summarize([evaluate_instances(empty, empty)])
    assert (nothing_there["object_dice_pooled"], nothing_there["object_hausdorff_pooled"]) == (1.0, 0.0)
    assert "object_dice_pooled" not in summarize([{"object_dice": 0.5}])


# --------------------------------------------------------------------------------------------------
# real GlaS labels (skipped without the sibling shared/datasets)
# --------------------------------------------------------------------------------------------------

GLAS_TEST_A = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "glas" / "testA" / "labels"


def _damaged(gt: np.ndarray) -> np.ndarray:
    """A prediction made from real labels: every object eroded by 6 px and shifted by (2, -1) px, every
    third one deleted with every object overlapping it (unmatched ground truth), and a disk added where the
    background is widest (an unmatched prediction)."""
    pred = gt.copy()
    for _ in range(6):
        pred[find_boundaries(pred, mode="inner")] = 0
    pred = np.roll(pred, (2, -1), axis=(0, 1))
    for label in np.unique(gt)[1::3]:
        pred[np.isin(pred, pred[gt == label])] = 0  # and whatever else overlaps it
    dist = ndimage.distance_transform_edt(gt == 0)
    centre = np.unravel_index(int(np.argmax(dist)), gt.shape)
    pred[disk(centre, min(15.0, float(dist.max()) - 1), shape=gt.shape)] = int(gt.max()) + 1
    return pred


@pytest.mark.shared
@pytest.mark.skipif(not GLAS_TEST_A.is_dir(), reason=f"GlaS labels not found under {GLAS_TEST_A}")
@pytest.mark.parametrize("stem", ["testA_1", "testA_23", "testA_47"])
def test_object_metrics_on_real_glas_labels_match_the_reference(stem: str) -> None:
    gt = imread(GLAS_TEST_A / f"{stem}.png").astype(np.int64)
    pred = _damaged(gt)
    m = match_objects(pred, gt)
    assert (m.gt_best < 0).any() and (m.pred_best < 0).any()  # both rules for unmatched objects are exercised
    f1_ref, dice_ref, haus_ref = _reference(pred, gt)
    assert object_f1(pred, gt) == pytest.approx(f1_ref)
    assert object_dice(pred, gt) == pytest.approx(dice_ref)
    assert object_hausdorff(pred, gt) == pytest.approx(haus_ref, rel=1e-9)
