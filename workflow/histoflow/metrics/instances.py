"""Nucleus-instance metrics from the same overlap table: AJI, AJI+, panoptic quality and detection AP.

AJI (Kumar et al. 2017), AJI+, panoptic quality (Kirillov et al. 2019), and detection average precision at
IoU 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .objects import ObjectMatch, _relabel, match_objects


def _pair_iou(m: ObjectMatch) -> tuple[np.ndarray, np.ndarray]:
    """``(intersection, union)`` of every overlapping (gt, pred) pair of the table."""
    inter = m.pair_overlap.astype(np.float64)
    union = m.gt_areas[m.pair_gt] + m.pred_areas[m.pair_pred] - inter
    return inter, union


def _aji(m: ObjectMatch) -> float:
    if m.n_gt == 0 and m.n_pred == 0:
        return 1.0
    inter, union = _pair_iou(m)
    iou = inter / union
    c = u = 0.0
    used = np.zeros(m.n_pred, bool)
    # per ground-truth object, the predicted object of maximal IoU (ties: smallest id)
    order = np.lexsort((m.pair_pred, -iou, m.pair_gt))
    first = np.r_[True, m.pair_gt[order][1:] != m.pair_gt[order][:-1]] if order.size else np.array([], bool)
    best = order[first]
    matched_gt = np.zeros(m.n_gt, bool)
    matched_gt[m.pair_gt[best]] = True
    c += inter[best].sum()
    u += union[best].sum() + m.gt_areas[~matched_gt].sum()
    used[m.pair_pred[best]] = True
    u += m.pred_areas[~used].sum()
    return float(c / u) if u else 0.0


def aji(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017), as in the MoNuSeg evaluation.

    Every ground-truth object G_i is paired with the predicted object S_j of maximal IoU; the
    intersections of these pairs are summed into C and their unions into U; a G_i that overlaps
    nothing adds its area to U; finally every predicted object used by no pair adds its area to U.
    AJI = C / U. A predicted object may pair with several ground-truth objects (the original
    definition; see :func:`aji_plus` for the one-to-one variant). Both images empty → 1.0.
    """
    return _aji(match_objects(pred_labels, gt_labels))


def _one_to_one(m: ObjectMatch, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Pair indices (into the pair table) of a one-to-one matching maximising the summed IoU.

    Only pairs with IoU > ``min_iou`` are matched (Hungarian algorithm; for ``min_iou >= 0.5`` the matching is
    unique and no optimisation is needed).
    """
    from scipy.optimize import linear_sum_assignment

    inter, union = _pair_iou(m)
    iou = inter / np.maximum(union, 1)
    keep = np.flatnonzero(iou > min_iou)
    if keep.size == 0:
        return keep, iou
    if min_iou >= 0.5:
        return keep, iou
    _, rinv = np.unique(m.pair_gt[keep], return_inverse=True)
    _, cinv = np.unique(m.pair_pred[keep], return_inverse=True)
    cost = np.zeros((rinv.max() + 1, cinv.max() + 1))
    cost[rinv, cinv] = -iou[keep]
    pair_at = np.full(cost.shape, -1, np.int64)
    pair_at[rinv, cinv] = keep
    chosen = pair_at[linear_sum_assignment(cost)]
    return chosen[chosen >= 0], iou


def aji_plus(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """AJI+ (Graham et al., HoVer-Net, MedIA 2019): AJI with a one-to-one pairing of maximal summed IoU.

    With that pairing, one large predicted object is not counted against several ground-truth objects.
    """
    m = match_objects(pred_labels, gt_labels)
    if m.n_gt == 0 and m.n_pred == 0:
        return 1.0
    chosen, _ = _one_to_one(m, 0.0)
    inter, union = _pair_iou(m)
    used_g = np.zeros(m.n_gt, bool)
    used_p = np.zeros(m.n_pred, bool)
    used_g[m.pair_gt[chosen]] = True
    used_p[m.pair_pred[chosen]] = True
    c = inter[chosen].sum()
    u = union[chosen].sum() + m.gt_areas[~used_g].sum() + m.pred_areas[~used_p].sum()
    return float(c / u) if u else 0.0


def _panoptic(m: ObjectMatch, iou_threshold: float = 0.5) -> dict[str, float]:
    if m.n_gt == 0 and m.n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    chosen, iou = _one_to_one(m, iou_threshold)
    tp = chosen.size
    fp, fn = m.n_pred - tp, m.n_gt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[chosen].mean()) if tp else 0.0
    return {"pq": dq * sq, "dq": float(dq), "sq": sq}


def panoptic_quality(pred_labels: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Panoptic quality PQ = DQ × SQ (Kirillov et al. 2019; for nuclei, Graham et al. 2019).

    Objects pair when their IoU exceeds ``iou_threshold`` (0.5: then every object has at most one
    partner). DQ = TP / (TP + FP/2 + FN/2) (an F1 of detection), SQ = mean IoU of the pairs.
    Returns ``{"pq", "dq", "sq"}``; both images empty → all 1.0; no pair → SQ = 0.
    """
    return _panoptic(match_objects(pred_labels, gt_labels), iou_threshold)


def match_detections(
    pred_labels: np.ndarray, gt_labels: np.ndarray, scores: Mapping[int, float] | None = None,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy VOC matching of scored predicted objects to ground truth, for :func:`average_precision`.

    Predicted objects are taken in decreasing ``scores[id]`` (default: all 1.0, ties by id); each
    takes the still-unmatched ground-truth object of highest IoU if that IoU is ≥ ``iou_threshold``.
    Returns ``(scores, is_tp, n_gt)`` so that matches of many images can be pooled.
    """
    m = match_objects(pred_labels, gt_labels)
    sc = np.array([float(scores[int(i)]) if scores is not None else 1.0 for i in m.pred_ids])
    inter, union = _pair_iou(m)
    iou = inter / np.maximum(union, 1)
    is_tp = np.zeros(m.n_pred, bool)
    taken = np.zeros(m.n_gt, bool)
    for j in np.argsort(-sc, kind="stable"):
        k = np.flatnonzero((m.pair_pred == j) & (iou >= iou_threshold))
        k = k[~taken[m.pair_gt[k]]]
        if k.size:
            g = m.pair_gt[k[np.argmax(iou[k])]]
            taken[g] = True
            is_tp[j] = True
    return sc, is_tp, m.n_gt


def average_precision(scores: np.ndarray, is_tp: np.ndarray, n_gt: int, points: int | None = None) -> float:
    """VOC average precision of ranked detections.

    ``points=None``: VOC 2010+ all-point interpolation, the area under the precision–recall curve after making
    precision monotonically non-increasing. ``points=11``: the "interpolated average precision" of the VOC
    paper (Everingham et al., IJCV 2010), the mean over the recalls 0, 0.1, …, 1 of the highest precision at
    that recall or above (0 where it is never reached), which US-Net reports. No ground truth → 1.0 if there is
    no detection either, else 0.0.
    """
    if n_gt == 0:
        return 1.0 if len(scores) == 0 else 0.0
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    tp = np.cumsum(np.asarray(is_tp, bool)[order])
    fp = np.cumsum(~np.asarray(is_tp, bool)[order])
    if points is not None:
        recall, precision = tp / n_gt, tp / np.maximum(tp + fp, 1)
        return float(np.mean([precision[recall >= r].max(initial=0.0) for r in np.linspace(0, 1, points)]))
    recall = np.r_[0.0, tp / n_gt, tp[-1] / n_gt if tp.size else 0.0]
    precision = np.r_[1.0, tp / np.maximum(tp + fp, 1), 0.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """``float64 (n, 4)``: the bounding box ``(x0, y0, x1, y1)`` of every object of a label image, ids ascending.

    Pixel edges, end-exclusive: an object covering columns 3..7 has ``x0 = 3, x1 = 8`` (the detectors' convention).
    """
    from scipy import ndimage

    ids, index, _ = _relabel(np.asarray(labels))
    if ids.size == 0:
        return np.zeros((0, 4))
    return np.array([[sx.start, sy.start, sx.stop, sy.stop]
                     for sy, sx in ndimage.find_objects(index, max_label=ids.size)], np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of two sets of ``(x0, y0, x1, y1)`` boxes (continuous coordinates)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_boxes(
    boxes: np.ndarray, scores: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """VOC matching of scored detection boxes to the ground-truth objects' boxes, for :func:`average_precision`.

    The PASCAL VOC rule (its devkit): detections in decreasing score; each is compared with the ground-truth box
    it overlaps most (box IoU); it is a TP if that IoU is at least ``iou_threshold`` and that object is not yet
    taken, else a FP (a duplicate stays a FP even if another object would have matched). Returns
    ``(scores, is_tp, n_gt)``, poolable over images like :func:`match_detections`.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    gt = label_boxes(gt_labels)
    is_tp = np.zeros(scores.size, bool)
    if gt.size and scores.size:
        iou = box_iou(boxes, gt)
        taken = np.zeros(len(gt), bool)
        for j in np.argsort(-scores, kind="stable"):
            g = int(np.argmax(iou[j]))
            if iou[j, g] >= iou_threshold and not taken[g]:
                taken[g] = is_tp[j] = True
    return scores, is_tp, len(gt)


def object_scores(labels: np.ndarray, prob: np.ndarray) -> dict[int, float]:
    """Mean probability inside each object: the detection score of a segmentation model's instance."""
    ids, inv = np.unique(labels.ravel(), return_inverse=True)
    sums = np.bincount(inv, weights=prob.ravel().astype(np.float64))
    counts = np.bincount(inv)
    return {int(i): float(s / c) for i, s, c in zip(ids, sums, counts, strict=True) if i != 0}

