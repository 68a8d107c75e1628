"""Pixel and object (GlaS 2015) metrics for segmentation evaluation.

All functions are pure functions on NumPy arrays.

Pixel metrics (:func:`pixel_metrics`) compare two binary masks (anything ``> 0`` is foreground).

Object metrics follow the GlaS challenge (Sirinukunwattana et al., "Gland segmentation in colon
histology images: The GlaS challenge contest", Medical Image Analysis 35, 2017) and compare two
*instance label images*: integer arrays ``(H, W)`` where 0 is background and every positive id is
one object (ids need not be contiguous):

- :func:`object_detection_counts` / :func:`object_f1`: detection TP/FP/FN and the object F1 score;
- :func:`object_dice`: the object-level Dice index ``D_obj``;
- :func:`object_hausdorff`: the object-level Hausdorff distance ``H_obj``.

They share one overlap (contingency) table built by :func:`match_objects`, so that
:func:`evaluate_instances` computes everything for one image from a single pass over the pixels.
:func:`summarize` aggregates per-image rows over a data set, including the pooled object F1 that
GlaS reports for a test set.

Ties (an object overlapping two others by the same number of pixels, or two objects at the same
distance) are broken towards the smallest label id, as MATLAB's ``mode`` does in the GlaS
reference code.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "ObjectMatch",
    "POOLING_TERMS",
    "aji",
    "aji_plus",
    "average_precision",
    "evaluate_instances",
    "match_detections",
    "object_scores",
    "panoptic_quality",
    "match_objects",
    "object_detection_counts",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "pixel_metrics",
    "summarize",
]


# --------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both inputs as arrays after checking they are non-empty 2D arrays of one shape."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred shape {pred.shape} and gt shape {gt.shape}"
        )
    if pred.ndim != 2:
        raise ValueError(
            f"pred and gt must be 2D arrays (H, W), got {pred.ndim}D arrays of shape {pred.shape}"
        )
    if pred.size == 0:
        raise ValueError(f"pred and gt must not be empty, got shape {pred.shape}")
    return pred, gt


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Check an instance label image (integer or bool dtype, no negative ids); return it as int64."""
    if labels.dtype == np.bool_:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer instance label image (0 = background), got dtype {labels.dtype}; "
            "convert it with e.g. skimage.measure.label or .astype(np.int32)"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} must not contain negative label ids, found {int(labels.min())}")
    return labels.astype(np.int64, copy=False)


def _ratio(num: float, den: float, both_empty: bool) -> float:
    """``num / den``; for ``0 / 0`` return 1.0 if both masks are empty, else 0.0."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


# --------------------------------------------------------------------------------------------------
# pixel metrics
# --------------------------------------------------------------------------------------------------


def pixel_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Pixel-wise confusion counts and scores of a predicted mask against a ground-truth mask.

    Parameters
    ----------
    pred, gt : np.ndarray
        ``(H, W)`` arrays of any numeric or bool dtype and the same shape; pixels ``> 0`` are
        foreground (so instance label images can be passed directly).

    Returns
    -------
    dict[str, float]
        ``tp, fp, fn, tn`` (pixel counts, Python ints), ``precision = tp / (tp + fp)``,
        ``recall = tp / (tp + fn)``, ``f1 = 2 tp / (2 tp + fp + fn)`` (equal to the Dice
        coefficient), ``iou = tp / (tp + fp + fn)`` (Jaccard index) and
        ``accuracy = (tp + tn) / (H W)``.

        Empty cases: when both masks are empty every score is 1.0 (a perfect answer to an image
        with nothing in it). Otherwise an undefined ratio (``0 / 0``) is 0.0: e.g. an empty
        prediction of a non-empty mask has precision 0.0, and a non-empty prediction of an empty
        mask has recall 0.0, so that precision, recall and F1 always agree about failure.

    Raises
    ------
    ValueError
        If the arrays are not 2D, are empty or differ in shape (the message names both shapes).
    """
    pred, gt = _check_pair(pred, gt)
    p = pred > 0
    g = gt > 0
    tp = int(np.count_nonzero(p & g))
    n_p = int(np.count_nonzero(p))
    n_g = int(np.count_nonzero(g))
    fp = n_p - tp
    fn = n_g - tp
    tn = int(p.size) - tp - fp - fn
    both_empty = n_p == 0 and n_g == 0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "accuracy": float(tp + tn) / float(p.size),
    }


# --------------------------------------------------------------------------------------------------
# the shared overlap table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectMatch:
    """Overlap (contingency) table between the objects of a ground-truth and a predicted label image.

    Objects are addressed by *index* ``0 .. n - 1`` in ascending order of their original ids; the
    index images hold ``index + 1`` for every object pixel and 0 for background.

    Attributes
    ----------
    shape : tuple[int, int]
        Image shape ``(H, W)``.
    gt_ids, pred_ids : np.ndarray
        ``int64 (n_gt,)``, ``int64 (n_pred,)``: the original label ids, sorted ascending.
    gt_areas, pred_areas : np.ndarray
        ``int64 (n_gt,)``, ``int64 (n_pred,)``: object areas in pixels.
    pair_gt, pair_pred, pair_overlap : np.ndarray
        ``int64 (n_pairs,)`` each: the sparse overlap table; ``pair_overlap[k]`` pixels belong to
        both ground-truth object ``pair_gt[k]`` and predicted object ``pair_pred[k]`` (indices).
        Only pairs with a non-zero overlap are listed.
    gt_best, gt_best_overlap : np.ndarray
        ``int64 (n_gt,)``: for every ground-truth object, the index of the predicted object that
        overlaps it most (ties: smallest id) and that overlap; -1 and 0 when none overlaps.
    pred_best, pred_best_overlap : np.ndarray
        ``int64 (n_pred,)``: the same from the predicted side.
    gt_index, pred_index : np.ndarray
        ``int64 (H, W)``: the label images relabelled to ``index + 1`` (0 = background).
    """

    shape: tuple[int, int]
    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_areas: np.ndarray
    pred_areas: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_overlap: np.ndarray
    gt_best: np.ndarray
    gt_best_overlap: np.ndarray
    pred_best: np.ndarray
    pred_best_overlap: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray

    @property
    def n_gt(self) -> int:
        """Number of ground-truth objects."""
        return int(self.gt_ids.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted objects."""
        return int(self.pred_ids.size)


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map the positive ids of ``labels`` to ``1 .. n``; return ``(ids, index image, areas)``."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int64, copy=False)
    if ids.size and ids[0] == 0:
        ids = ids[1:]
    else:  # no background pixel at all: shift so that index 0 stays free for background
        inverse = inverse + 1
    areas = np.bincount(inverse.ravel(), minlength=ids.size + 1)[1:].astype(np.int64)
    return ids.astype(np.int64), inverse, areas


def _best_partner(
    rows: np.ndarray, cols: np.ndarray, overlap: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """For every row index, the column with the largest overlap (ties: smallest column index).

    Indices follow ascending ids, so the smallest index is also the smallest id.

    Returns ``(best, best_overlap)``, ``int64 (n_rows,)`` each; -1 / 0 for rows without any pair.
    """
    best = np.full(n_rows, -1, dtype=np.int64)
    best_overlap = np.zeros(n_rows, dtype=np.int64)
    if rows.size == 0:
        return best, best_overlap
    # sort by row, then by decreasing overlap, then by increasing partner id; keep the first per row
    order = np.lexsort((cols, -overlap, rows))
    sorted_rows = rows[order]
    first = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    pick = order[first]
    best[rows[pick]] = cols[pick]
    best_overlap[rows[pick]] = overlap[pick]
    return best, best_overlap


def match_objects(pred_labels: np.ndarray, gt_labels: np.ndarray) -> ObjectMatch:
    """Build the overlap table between predicted and ground-truth objects in one pass.

    Parameters
    ----------
    pred_labels, gt_labels : np.ndarray
        Instance label images ``(H, W)`` of the same shape, integer (or bool) dtype; 0 is
        background, every positive id one object; ids need not be contiguous.

    Returns
    -------
    ObjectMatch
        Ids, areas, the sparse intersection counts of all overlapping (gt, pred) pairs and the
        best-overlapping partner of every object.

    Raises
    ------
    ValueError
        On a shape mismatch, non-2D or empty input, non-integer dtype or negative ids.
    """
    pred_labels, gt_labels = _check_pair(pred_labels, gt_labels)
    pred_labels = _check_labels(pred_labels, "pred_labels")
    gt_labels = _check_labels(gt_labels, "gt_labels")

    gt_ids, gt_index, gt_areas = _relabel(gt_labels)
    pred_ids, pred_index, pred_areas = _relabel(pred_labels)

    both = (gt_index > 0) & (pred_index > 0)
    g = gt_index[both] - 1
    p = pred_index[both] - 1
    n_pred = pred_ids.size
    # sparse counting of (gt, pred) pairs: only pixels in both foregrounds are encoded
    keys, counts = np.unique(g * max(n_pred, 1) + p, return_counts=True)
    pair_gt = (keys // max(n_pred, 1)).astype(np.int64)
    pair_pred = (keys % max(n_pred, 1)).astype(np.int64)
    pair_overlap = counts.astype(np.int64)

    gt_best, gt_best_overlap = _best_partner(pair_gt, pair_pred, pair_overlap, gt_ids.size)
    pred_best, pred_best_overlap = _best_partner(pair_pred, pair_gt, pair_overlap, n_pred)

    return ObjectMatch(
        shape=(int(gt_labels.shape[0]), int(gt_labels.shape[1])),
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        gt_areas=gt_areas,
        pred_areas=pred_areas,
        pair_gt=pair_gt,
        pair_pred=pair_pred,
        pair_overlap=pair_overlap,
        gt_best=gt_best,
        gt_best_overlap=gt_best_overlap,
        pred_best=pred_best,
        pred_best_overlap=pred_best_overlap,
        gt_index=gt_index,
        pred_index=pred_index,
    )


# --------------------------------------------------------------------------------------------------
# detection: TP / FP / FN and object F1
# --------------------------------------------------------------------------------------------------


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` with 0 where ``index == -1`` (no partner); works for empty ``values``."""
    return np.append(values, 0)[index]


def _detection_counts(m: ObjectMatch) -> dict[str, int]:
    """Detection counts from an overlap table (see :func:`object_detection_counts`)."""
    has_partner = m.pred_best >= 0
    partner_area = _gather(m.gt_areas, m.pred_best)
    # |S ∩ G| / |G| >= 0.5, in exact integer arithmetic
    candidate = has_partner & (2 * m.pred_best_overlap >= partner_area)
    cand_pred = np.flatnonzero(candidate)  # ascending, i.e. in order of predicted id
    # every ground-truth object is matched at most once: the first (smallest-id) prediction wins
    _, first = np.unique(m.pred_best[cand_pred], return_index=True)
    tp = int(first.size)
    return {
        "tp": tp,
        "fp": m.n_pred - tp,
        "fn": m.n_gt - tp,
        "n_pred": m.n_pred,
        "n_gt": m.n_gt,
    }


def _f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """``2 TP / (2 TP + FP + FN)``; 1.0 when there is nothing to detect and nothing detected."""
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else float(2 * tp) / float(den)


def object_detection_counts(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, int]:
    """GlaS object detection counts: true positives, false positives and false negatives.

    GlaS definition: a true positive is "a segmented object that intersects with at least 50% of
    its ground truth object". The ground-truth object corresponding to a predicted object ``S`` is
    the one ``G`` that overlaps ``S`` the most (ties: smallest id); ``S`` is a TP if
    ``|S ∩ G| / |G| >= 0.5``, otherwise (including when ``S`` overlaps no ground truth at all) a
    FP. Each ground-truth object is matched by at most one TP (if two predictions each cover
    exactly half of it, the one with the smaller id is the TP and the other a FP). FN is the number
    of ground-truth objects not matched by any TP.

    Parameters
    ----------
    pred_labels, gt_labels : np.ndarray
        Instance label images ``(H, W)``, integer dtype, 0 = background, same shape.

    Returns
    -------
    dict[str, int]
        ``tp, fp, fn, n_pred, n_gt``, with ``tp + fp == n_pred`` and ``tp + fn == n_gt``.

    Raises
    ------
    ValueError
        On invalid inputs (see :func:`match_objects`).
    """
    return _detection_counts(match_objects(pred_labels, gt_labels))


def object_f1(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """GlaS object-level F1 score ``2 TP / (2 TP + FP + FN)`` of one image.

    Counts are those of :func:`object_detection_counts`. Both images empty (no objects at all)
    gives 1.0; exactly one empty gives 0.0.

    Parameters
    ----------
    pred_labels, gt_labels : np.ndarray
        Instance label images ``(H, W)``, integer dtype, 0 = background, same shape.

    Returns
    -------
    float
        The F1 score in ``[0, 1]``.
    """
    c = object_detection_counts(pred_labels, gt_labels)
    return _f1_from_counts(c["tp"], c["fp"], c["fn"])


# --------------------------------------------------------------------------------------------------
# object Dice
# --------------------------------------------------------------------------------------------------


def _object_dice_terms(m: ObjectMatch) -> tuple[float, float]:
    """``(sum_i |G_i| Dice(G_i, S*(G_i)), sum_j |S_j| Dice(G*(S_j), S_j))``: the two area-weighted
    sums of :func:`object_dice` before dividing by the total areas (0 for an empty side)."""

    def side(best: np.ndarray, best_overlap: np.ndarray, areas: np.ndarray, other_areas: np.ndarray) -> float:
        if areas.size == 0:
            return 0.0
        partner_area = _gather(other_areas, best)
        dice = 2.0 * best_overlap / (areas + partner_area)  # 0 where there is no partner
        return float(np.sum(areas * dice))

    return (side(m.gt_best, m.gt_best_overlap, m.gt_areas, m.pred_areas),
            side(m.pred_best, m.pred_best_overlap, m.pred_areas, m.gt_areas))


def _object_dice(m: ObjectMatch) -> float:
    """Object Dice from an overlap table (see :func:`object_dice`)."""
    if m.n_gt == 0 and m.n_pred == 0:
        return 1.0
    if m.n_gt == 0 or m.n_pred == 0:
        return 0.0
    g_sum, s_sum = _object_dice_terms(m)
    return 0.5 * (g_sum / float(np.sum(m.gt_areas)) + s_sum / float(np.sum(m.pred_areas)))


def object_dice(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """GlaS object-level Dice index of one image.

    ``D_obj = 1/2 [ sum_i gamma_i Dice(G_i, S*(G_i)) + sum_j sigma_j Dice(G*(S_j), S_j) ]`` with
    ``gamma_i = |G_i| / sum_k |G_k|``, ``sigma_j = |S_j| / sum_k |S_k|``, ``S*(G_i)`` the predicted
    object with the largest overlap with ``G_i`` (ties: smallest id) and ``G*(S_j)`` the
    ground-truth object with the largest overlap with ``S_j``. An object that overlaps nothing
    is compared with the empty set: its Dice is 0.

    Edge cases: both images without objects gives 1.0; exactly one without objects gives 0.0.

    Parameters
    ----------
    pred_labels, gt_labels : np.ndarray
        Instance label images ``(H, W)``, integer dtype, 0 = background, same shape.

    Returns
    -------
    float
        ``D_obj`` in ``[0, 1]``.
    """
    return _object_dice(match_objects(pred_labels, gt_labels))


# --------------------------------------------------------------------------------------------------
# object Hausdorff
# --------------------------------------------------------------------------------------------------


def _union_box(a: tuple[slice, slice], b: tuple[slice, slice]) -> tuple[slice, slice]:
    """The smallest box holding two boxes."""
    return tuple(slice(min(s.start, t.start), max(s.stop, t.stop)) for s, t in zip(a, b, strict=True))


def _pair_hausdorff(
    m: ObjectMatch,
    gi: int,
    pj: int,
    gt_boxes: list[tuple[slice, slice]],
    pred_boxes: list[tuple[slice, slice]],
) -> float:
    """Exact Hausdorff distance between ground-truth object ``gi`` and predicted object ``pj``.

    Euclidean distance transforms of the complement of each object, computed in the union of the
    two bounding boxes (which holds every pixel of both objects, so the distances are exact), give
    for every pixel its distance to the nearest pixel of that object; the directed distances are
    the maxima of those over the other object's pixels.
    """
    box = _union_box(gt_boxes[gi], pred_boxes[pj])
    a = m.gt_index[box] == gi + 1
    b = m.pred_index[box] == pj + 1
    d_to_a = ndimage.distance_transform_edt(~a)
    d_to_b = ndimage.distance_transform_edt(~b)
    return float(max(d_to_a[b].max(), d_to_b[a].max()))


def _nearest_partners(
    index: np.ndarray,
    boxes: list[tuple[slice, slice]],
    lonely: np.ndarray,
    other_index: np.ndarray,
    other_ids: np.ndarray,
) -> dict[int, int]:
    """For every object in ``lonely`` (indices into ``index``), the nearest object of ``other_index``.

    "Nearest" is the smallest minimum pixel-to-pixel Euclidean distance; ties go to the smallest
    id. ``other_index`` must hold at least one object.
    """
    if lonely.size == 0:
        return {}
    # distance from every pixel to the nearest pixel of any other-side object
    d_other = ndimage.distance_transform_edt(other_index == 0)
    d_min = ndimage.minimum(d_other, labels=index, index=lonely + 1)
    shape = index.shape
    out: dict[int, int] = {}
    for k, dist in zip(lonely.tolist(), np.atleast_1d(d_min).tolist(), strict=True):
        # every pixel within `dist` of the object lies in its box grown by ceil(dist)
        pad = int(math.ceil(dist)) + 1
        box = tuple(
            slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(boxes[k], shape, strict=True)
        )
        d_self = ndimage.distance_transform_edt(index[box] != k + 1)  # exact: the object is inside box
        other = other_index[box]
        near = (other > 0) & (d_self <= dist + 1e-9)
        candidates = np.unique(other[near]) - 1
        out[k] = int(candidates[np.argmin(other_ids[candidates])])
    return out


def _object_hausdorff(m: ObjectMatch) -> float:
    """Object Hausdorff distance from an overlap table (see :func:`object_hausdorff`)."""
    if m.n_gt == 0 and m.n_pred == 0:
        return 0.0
    if m.n_gt == 0 or m.n_pred == 0:
        return float(np.hypot(*m.shape))
    g_sum, s_sum = _object_hausdorff_terms(m)
    return 0.5 * (g_sum / float(np.sum(m.gt_areas)) + s_sum / float(np.sum(m.pred_areas)))


def _object_hausdorff_terms(m: ObjectMatch) -> tuple[float, float]:
    """``(sum_i |G_i| H(G_i, S*(G_i)), sum_j |S_j| H(G*(S_j), S_j))``: the two area-weighted sums of
    :func:`object_hausdorff` before dividing by the total areas. When the other side has no object,
    every object's distance is the image diagonal (as in :func:`object_hausdorff`)."""
    if m.n_gt == 0 or m.n_pred == 0:
        diagonal = float(np.hypot(*m.shape))
        return diagonal * float(np.sum(m.gt_areas)), diagonal * float(np.sum(m.pred_areas))

    gt_boxes = ndimage.find_objects(m.gt_index, max_label=m.n_gt)
    pred_boxes = ndimage.find_objects(m.pred_index, max_label=m.n_pred)

    gt_partner = m.gt_best.copy()
    for gi, pj in _nearest_partners(
        m.gt_index, gt_boxes, np.flatnonzero(gt_partner < 0), m.pred_index, m.pred_ids
    ).items():
        gt_partner[gi] = pj
    pred_partner = m.pred_best.copy()
    for pj, gi in _nearest_partners(
        m.pred_index, pred_boxes, np.flatnonzero(pred_partner < 0), m.gt_index, m.gt_ids
    ).items():
        pred_partner[pj] = gi

    cache: dict[tuple[int, int], float] = {}

    def hausdorff(gi: int, pj: int) -> float:
        key = (gi, pj)
        if key not in cache:
            cache[key] = _pair_hausdorff(m, gi, pj, gt_boxes, pred_boxes)
        return cache[key]

    h_gt = np.array([hausdorff(gi, int(pj)) for gi, pj in enumerate(gt_partner)])
    h_pred = np.array([hausdorff(int(gi), pj) for pj, gi in enumerate(pred_partner)])
    return float(np.sum(m.gt_areas * h_gt)), float(np.sum(m.pred_areas * h_pred))


def object_hausdorff(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """GlaS object-level Hausdorff distance of one image, in pixels.

    ``H_obj = 1/2 [ sum_i gamma_i H(G_i, S*(G_i)) + sum_j sigma_j H(G*(S_j), S_j) ]`` with the
    area weights of :func:`object_dice`. ``S*(G_i)`` is the predicted object with the largest
    overlap with ``G_i``; when ``G_i`` overlaps no predicted object it is the *nearest* predicted
    object (smallest minimum pixel-to-pixel Euclidean distance; ties: smallest id), and
    symmetrically for ``G*(S_j)``.

    ``H`` is the exact Hausdorff distance between the two objects' full pixel sets (pixel centres,
    Euclidean), computed from distance transforms inside the objects' joint bounding box.

    Edge cases: both images without objects gives 0.0. Exactly one without objects gives the image
    diagonal ``hypot(H, W)``, an upper bound of any distance in the image, so that a missing
    prediction is penalised as the worst possible segmentation rather than producing ``inf``.

    Parameters
    ----------
    pred_labels, gt_labels : np.ndarray
        Instance label images ``(H, W)``, integer dtype, 0 = background, same shape.

    Returns
    -------
    float
        ``H_obj >= 0`` in pixels.
    """
    return _object_hausdorff(match_objects(pred_labels, gt_labels))


# --------------------------------------------------------------------------------------------------
# instance metrics: AJI (Kumar 2017), AJI+ and PQ (Graham et al. 2019), detection AP (VOC)
# --------------------------------------------------------------------------------------------------


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
    """Pair indices (into the pair table) of a one-to-one matching maximising the summed IoU over
    pairs with IoU > ``min_iou`` (Hungarian algorithm; for ``min_iou >= 0.5`` the matching is unique
    and no optimisation is needed)."""
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
    """AJI+ (Graham et al., HoVer-Net, MedIA 2019): AJI with a one-to-one pairing of maximal summed
    IoU, so one large predicted object is not counted against several ground-truth objects."""
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


def average_precision(scores: np.ndarray, is_tp: np.ndarray, n_gt: int) -> float:
    """VOC (2010+) all-point interpolated average precision: the area under the precision–recall
    curve after making precision monotonically non-increasing. No ground truth → 1.0 if there is
    no detection either, else 0.0."""
    if n_gt == 0:
        return 1.0 if len(scores) == 0 else 0.0
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    tp = np.cumsum(np.asarray(is_tp, bool)[order])
    fp = np.cumsum(~np.asarray(is_tp, bool)[order])
    recall = np.r_[0.0, tp / n_gt, tp[-1] / n_gt if tp.size else 0.0]
    precision = np.r_[1.0, tp / np.maximum(tp + fp, 1), 0.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def object_scores(labels: np.ndarray, prob: np.ndarray) -> dict[int, float]:
    """Mean probability inside each object: the detection score of a segmentation model's instance."""
    ids, inv = np.unique(labels.ravel(), return_inverse=True)
    sums = np.bincount(inv, weights=prob.ravel().astype(np.float64))
    counts = np.bincount(inv)
    return {int(i): float(s / c) for i, s, c in zip(ids, sums, counts, strict=True) if i != 0}


# --------------------------------------------------------------------------------------------------
# one image, a whole data set
# --------------------------------------------------------------------------------------------------


def evaluate_instances(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float]:
    """All pixel and object metrics of one image, from a single overlap table.

    Parameters
    ----------
    pred_labels, gt_labels : np.ndarray
        Instance label images ``(H, W)``, integer dtype, 0 = background, same shape.

    Returns
    -------
    dict[str, float]
        The :func:`pixel_metrics` of the foregrounds (``> 0``) with keys prefixed ``pixel_``
        (``pixel_tp, ..., pixel_f1, pixel_iou, pixel_accuracy``), then ``object_f1``,
        ``object_dice``, ``object_hausdorff``, ``aji``, ``pq``/``dq``/``sq``, the detection
        counts ``tp, fp, fn, n_pred, n_gt`` (ints), and the terms :func:`summarize` pools over a
        data set (:data:`POOLING_TERMS`): the total object areas ``gt_area``, ``pred_area`` and the
        area-weighted sums of the object Dice and Hausdorff sides.
    """
    m = match_objects(pred_labels, gt_labels)
    row: dict[str, float] = {f"pixel_{k}": v for k, v in pixel_metrics(m.pred_index, m.gt_index).items()}
    counts = _detection_counts(m)
    row["object_f1"] = _f1_from_counts(counts["tp"], counts["fp"], counts["fn"])
    row["object_dice"] = _object_dice(m)
    row["object_hausdorff"] = _object_hausdorff(m)
    row["aji"] = _aji(m)
    row.update(_panoptic(m))
    row.update(counts)
    dice_terms, hausdorff_terms = _object_dice_terms(m), _object_hausdorff_terms(m)
    row.update({"gt_area": int(np.sum(m.gt_areas)), "pred_area": int(np.sum(m.pred_areas)),
                "object_dice_gt_sum": dice_terms[0], "object_dice_pred_sum": dice_terms[1],
                "object_hausdorff_gt_sum": hausdorff_terms[0], "object_hausdorff_pred_sum": hausdorff_terms[1]})
    return row


POOLING_TERMS = ("gt_area", "pred_area", "object_dice_gt_sum", "object_dice_pred_sum",
                 "object_hausdorff_gt_sum", "object_hausdorff_pred_sum")
"""Per-image sums in :func:`evaluate_instances` rows that :func:`summarize` pools (no mean/sd of their own)."""


def _pooled_object_score(rows: Sequence[Mapping[str, object]], name: str, empty: float) -> float:
    """GlaS object Dice or Hausdorff (``name``) over all objects of a data set: each side's
    area-weighted sum over every image divided by that side's total area over every image, averaged
    over the two sides. A side without any object in the whole set drops out (the other side's
    objects then have no partner: Dice 0, Hausdorff the image diagonal); ``empty`` when both do."""
    sides = []
    for side, area in (("gt", "gt_area"), ("pred", "pred_area")):
        total = sum(float(r[area]) for r in rows)
        if total > 0:
            sides.append(sum(float(r[f"{name}_{side}_sum"]) for r in rows) / total)
    return float(np.mean(sides)) if sides else empty


def _is_number(value: object) -> bool:
    """True for real numbers (Python or NumPy), False for bools and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def summarize(rows: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Aggregate per-image metric rows (e.g. from :func:`evaluate_instances`) over a data set.

    For every key holding a real number in at least one row: ``<key>_mean`` and ``<key>_sd`` over
    the rows where it is numeric. The standard deviation is the sample one (``ddof=1``) when there
    are two or more values and 0.0 for a single value. Non-numeric values (names, paths, bools)
    are ignored. Infinite and NaN values are *not* filtered out: they propagate into the mean and
    sd, so an image with an undefined or unbounded metric stays visible in the summary (an ``inf``
    gives an ``inf`` mean and a NaN sd). The metrics of this module never return ``inf`` or NaN.

    ``object_f1_pooled`` is the data-set F1 ``2 TP / (2 TP + FP + FN)`` from the ``tp``, ``fp``
    and ``fn`` summed over all images, which is how GlaS computes F1 over a test set; it differs
    in general from ``object_f1_mean``. It is present only if every row has numeric ``tp``,
    ``fp`` and ``fn``; 1.0 if all three sums are 0. ``n_images`` is the number of rows.

    ``object_dice_pooled`` and ``object_hausdorff_pooled`` are the GlaS object Dice and Hausdorff
    of the data set taken as one collection of objects: the area weights ``gamma_i``, ``sigma_j``
    run over every object of every image (as the GlaS organisers' evaluation code and MILD-Net's
    aggregate a test part), so a large gland counts more than a small one whichever image holds
    it. They are present only if every row has the :data:`POOLING_TERMS` of
    :func:`evaluate_instances`, which get no ``_mean`` / ``_sd`` of their own.

    Parameters
    ----------
    rows : sequence of mappings
        One mapping ``{metric name: value}`` per image.

    Returns
    -------
    dict[str, float]
        ``n_images``, ``<key>_mean`` / ``<key>_sd`` in first-seen key order, and the pooled
        ``object_f1_pooled``, ``object_dice_pooled``, ``object_hausdorff_pooled``.

    Raises
    ------
    ValueError
        If ``rows`` is empty.
    """
    if len(rows) == 0:
        raise ValueError("summarize() needs at least one row of metrics, got none")
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if _is_number(value) and key not in POOLING_TERMS:
                keys.setdefault(key, None)

    out: dict[str, float] = {"n_images": len(rows)}
    for key in keys:
        values = np.array([float(r[key]) for r in rows if key in r and _is_number(r[key])])
        out[f"{key}_mean"] = float(np.mean(values))
        with np.errstate(invalid="ignore"):  # inf values give a NaN sd, documented above
            out[f"{key}_sd"] = float(np.std(values, ddof=1)) if values.size > 1 else 0.0

    if all(all(_is_number(r.get(k)) for k in ("tp", "fp", "fn")) for r in rows):
        tp, fp, fn = (sum(float(r[k]) for r in rows) for k in ("tp", "fp", "fn"))
        out["object_f1_pooled"] = _f1_from_counts(tp, fp, fn)
    if all(all(_is_number(r.get(k)) for k in POOLING_TERMS) for r in rows):
        out["object_dice_pooled"] = _pooled_object_score(rows, "object_dice", empty=1.0)
        out["object_hausdorff_pooled"] = _pooled_object_score(rows, "object_hausdorff", empty=0.0)
    return out


# --------------------------------------------------------------------------------------------------
# per-fibre precision / recall at fixed (FT) and dynamic (DT) thresholds
# --------------------------------------------------------------------------------------------------


def per_fibre_precision_recall(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float]:
    """Per-fibre precision and recall of one image (the muscle-fibre protocol).

    For every ground-truth fibre ``G`` the predicted segment ``S`` overlapping it most is taken;
    ``precision = |S ∩ G| / |S|``, ``recall = |S ∩ G| / |G|`` (both 0 when nothing overlaps ``G``).
    Both are averaged over the image's ground-truth fibres and ``f1 = 2 P R / (P + R)`` of the
    averages. A split fibre loses recall, a merged one precision. With no ground-truth fibre the
    scores are NaN (the image does not enter the averages), with ``n_gt = 0``.

    Returns ``{"precision", "recall", "f1", "n_gt"}``.
    """
    m = match_objects(pred_labels, gt_labels)
    if m.n_gt == 0:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan"), "n_gt": 0}
    inter = m.gt_best_overlap.astype(np.float64)
    seg_area = _gather(m.pred_areas, m.gt_best).astype(np.float64)
    precision = float(np.mean(np.divide(inter, seg_area, out=np.zeros_like(inter), where=seg_area > 0)))
    recall = float(np.mean(inter / m.gt_areas))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1), "n_gt": m.n_gt}


def fixed_and_dynamic_thresholds(
    scores: np.ndarray, thresholds: list[float] | np.ndarray, names: tuple[str, ...] = ("precision", "recall", "f1")
) -> dict[str, Any]:
    """Summaries at a fixed threshold (FT) and at dynamic, per-image thresholds (DT).

    ``scores`` is ``(n_images, n_thresholds, len(names))`` with F1 last (NaN rows = images without
    ground truth, skipped). FT is the one threshold maximising the mean F1 over the images (ties: the
    lower threshold); DT takes each image's own best threshold (ties: the lower). Both are the
    protocol's *oracle* choices made on the evaluated images (like the ODS / OIS of edge detection),
    reported next to — never instead of — the validation-chosen threshold.

    Returns ``{"ft_threshold", "ft_<name>_mean", "ft_<name>_sd", "dt_thresholds", "dt_<name>_mean",
    "dt_<name>_sd", "n_images"}`` (sd: the sample standard deviation over images, as in
    :func:`summarize`).
    """
    scores = np.asarray(scores, np.float64)
    thresholds = np.asarray(thresholds, np.float64)
    if scores.ndim != 3 or scores.shape[1] != thresholds.size or scores.shape[2] != len(names):
        raise ValueError(f"scores must be (n_images, {thresholds.size}, {len(names)}), got {scores.shape}")
    keep = ~np.isnan(scores[:, :, -1]).all(axis=1)
    s = scores[keep]
    out: dict[str, Any] = {"n_images": int(keep.sum())}
    if not keep.any():
        return out | {"ft_threshold": float("nan"), "dt_thresholds": []}
    ft = int(np.argmax(np.nanmean(s[:, :, -1], axis=0)))
    dt = np.argmax(np.nan_to_num(s[:, :, -1], nan=-1.0), axis=1)
    out["ft_threshold"] = float(thresholds[ft])
    out["dt_thresholds"] = thresholds[dt].tolist()
    at_dt = s[np.arange(len(s)), dt]
    ddof = 1 if len(s) > 1 else 0
    for k, name in enumerate(names):
        out[f"ft_{name}_mean"], out[f"ft_{name}_sd"] = float(np.mean(s[:, ft, k])), float(np.std(s[:, ft, k], ddof=ddof))
        out[f"dt_{name}_mean"], out[f"dt_{name}_sd"] = float(np.mean(at_dt[:, k])), float(np.std(at_dt[:, k], ddof=ddof))
    return out
