"""Object metrics of the GlaS challenge: detection counts and object F1, object Dice, object Hausdorff.

The metrics of Sirinukunwattana et al. (Medical Image Analysis 35, 2017) on two instance label images, all from
one overlap table (:class:`ObjectMatch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .pixel import _check_labels, _check_pair


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


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` with 0 where ``index == -1`` (no partner); works for empty ``values``."""
    return np.append(values, 0)[index]


def _detection_counts(m: ObjectMatch) -> dict[str, int]:
    """Detection counts from an overlap table (see :func:`object_detection_counts`)."""
    has_partner = m.pred_best >= 0
    partner_area = _gather(m.gt_areas, m.pred_best)
    # |S ∩ G| / |G| > 0.5, in exact integer arithmetic. Predicted objects are disjoint, so at most one of them
    # covers more than half of a ground-truth object: no ground-truth object is counted twice.
    tp = int(np.count_nonzero(has_partner & (2 * m.pred_best_overlap > partner_area)))
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
    its ground truth object"; the organisers' evaluation code (``F1score.m``), which produced the
    leaderboard, counts it when the intersection is *more than* half, and so does this function. The
    ground-truth object corresponding to a predicted object ``S`` is the one ``G`` that overlaps ``S``
    the most (ties: smallest id); ``S`` is a TP if ``|S ∩ G| / |G| > 0.5``, otherwise (including when
    ``S`` overlaps no ground truth at all) a FP. Predicted objects are disjoint, so at most one of
    them covers more than half of a ground-truth object. FN is the number of ground-truth objects not
    matched by any TP.

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


def _object_dice_terms(m: ObjectMatch) -> tuple[float, float]:
    """The two area-weighted sums of :func:`object_dice` before dividing by the total areas.

    ``(sum_i |G_i| Dice(G_i, S*(G_i)), sum_j |S_j| Dice(G*(S_j), S_j))`` (0 for an empty side).
    """

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
    id. ``other_index`` must hold at least one object. (A seed for :func:`_min_hausdorff_partners`.)
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
        box = _grown_box(boxes[k], dist, shape)
        d_self = ndimage.distance_transform_edt(index[box] != k + 1)  # exact: the object is inside box
        other = other_index[box]
        near = (other > 0) & (d_self <= dist + 1e-9)
        candidates = np.unique(other[near]) - 1
        out[k] = int(candidates[np.argmin(other_ids[candidates])])
    return out


def _grown_box(box: tuple[slice, slice], radius: float, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """``box`` grown by ``ceil(radius) + 1`` pixels on every side, clipped to the image.

    Every pixel within Euclidean distance ``radius`` of a pixel inside ``box`` lies inside the result.
    """
    pad = int(math.ceil(radius)) + 1
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape, strict=True))


def _min_hausdorff_partners(
    lonely: np.ndarray,
    hausdorff,
    index: np.ndarray,
    boxes: list[tuple[slice, slice]],
    other_index: np.ndarray,
    other_boxes: list[tuple[slice, slice]],
    other_ids: np.ndarray,
) -> dict[int, int]:
    """For every object in ``lonely``, the object of the other side at the smallest Hausdorff distance.

    This is the GlaS organisers' rule (``ObjectHausdorff.m``) for an object that overlaps nothing: it is
    compared with every object of the other side and paired with the one whose Hausdorff distance to it is
    smallest (ties: smallest id). Exact, without computing all pairs: start from the nearest object
    (:func:`_nearest_partners`), whose distance ``h0`` bounds the answer. An object ``B`` with
    ``H(A, B) <= h0`` has every pixel within ``h0`` of ``A``, so it lies wholly inside ``A``'s box grown by
    ``h0``; for those, the distance transform of ``A`` gives the lower bound ``max(max_B d_A, min_B d_A) <=
    H(A, B)``, and exact distances are computed in order of that bound until it exceeds the best found.

    ``hausdorff(k, j)`` is the exact distance between lonely object ``k`` and other-side object ``j``.
    """
    out: dict[int, int] = {}
    shape = index.shape
    seeds = _nearest_partners(index, boxes, lonely, other_index, other_ids)
    for k in lonely.tolist():
        best_j = seeds[k]
        best_h = hausdorff(k, best_j)
        box = _grown_box(boxes[k], best_h, shape)
        inside = [
            j for j in np.unique(other_index[box]).tolist()
            if j > 0 and all(o.start >= b.start and o.stop <= b.stop
                             for o, b in zip(other_boxes[j - 1], box, strict=True))
        ]
        if not inside:
            out[k] = best_j
            continue
        d_self = ndimage.distance_transform_edt(index[box] != k + 1)  # exact: the object is inside box
        labels = np.asarray(inside)
        far = np.atleast_1d(ndimage.maximum(d_self, labels=other_index[box], index=labels))
        near = np.atleast_1d(ndimage.minimum(d_self, labels=other_index[box], index=labels))
        bound = np.maximum(far, near)
        for i in np.lexsort((other_ids[labels - 1], bound)).tolist():
            if bound[i] > best_h:
                break
            j = int(labels[i]) - 1
            if j == best_j:
                continue
            h = hausdorff(k, j)
            if h < best_h or (h == best_h and other_ids[j] < other_ids[best_j]):
                best_j, best_h = j, h
        out[k] = best_j
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
    """The two area-weighted sums of :func:`object_hausdorff` before dividing by the total areas.

    ``(sum_i |G_i| H(G_i, S*(G_i)), sum_j |S_j| H(G*(S_j), S_j))``. When the other side has no object, every
    object's distance is the image diagonal (as in :func:`object_hausdorff`).
    """
    if m.n_gt == 0 or m.n_pred == 0:
        diagonal = float(np.hypot(*m.shape))
        return diagonal * float(np.sum(m.gt_areas)), diagonal * float(np.sum(m.pred_areas))

    gt_boxes = ndimage.find_objects(m.gt_index, max_label=m.n_gt)
    pred_boxes = ndimage.find_objects(m.pred_index, max_label=m.n_pred)

    cache: dict[tuple[int, int], float] = {}

    def hausdorff(gi: int, pj: int) -> float:
        key = (gi, pj)
        if key not in cache:
            cache[key] = _pair_hausdorff(m, gi, pj, gt_boxes, pred_boxes)
        return cache[key]

    gt_partner = m.gt_best.copy()
    for gi, pj in _min_hausdorff_partners(
        np.flatnonzero(gt_partner < 0), hausdorff, m.gt_index, gt_boxes, m.pred_index, pred_boxes, m.pred_ids
    ).items():
        gt_partner[gi] = pj
    pred_partner = m.pred_best.copy()
    for pj, gi in _min_hausdorff_partners(
        np.flatnonzero(pred_partner < 0), lambda pj, gi: hausdorff(gi, pj), m.pred_index, pred_boxes, m.gt_index,
        gt_boxes, m.gt_ids
    ).items():
        pred_partner[pj] = gi

    h_gt = np.array([hausdorff(gi, int(pj)) for gi, pj in enumerate(gt_partner)])
    h_pred = np.array([hausdorff(int(gi), pj) for pj, gi in enumerate(pred_partner)])
    return float(np.sum(m.gt_areas * h_gt)), float(np.sum(m.pred_areas * h_pred))


def object_hausdorff(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """GlaS object-level Hausdorff distance of one image, in pixels.

    ``H_obj = 1/2 [ sum_i gamma_i H(G_i, S*(G_i)) + sum_j sigma_j H(G*(S_j), S_j) ]`` with the
    area weights of :func:`object_dice`. ``S*(G_i)`` is the predicted object with the largest
    overlap with ``G_i``; when ``G_i`` overlaps no predicted object it is the predicted object at the
    smallest Hausdorff distance from ``G_i`` (ties: smallest id), as in the organisers' evaluation code
    (``ObjectHausdorff.m``), and symmetrically for ``G*(S_j)``.

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

