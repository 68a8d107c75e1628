"""Every instance metric of one image from one pass, and the summary of a data set's per-image rows.

:func:`evaluate_instances` gives the metrics of one image; :func:`summarize` gives the mean, sd, and the pooled
GlaS object scores of the rows.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from .instances import _aji, _panoptic
from .objects import (
    _detection_counts,
    _f1_from_counts,
    _object_dice,
    _object_dice_terms,
    _object_hausdorff,
    _object_hausdorff_terms,
    match_objects,
)
from .pixel import pixel_metrics


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
    """GlaS object Dice or Hausdorff (``name``) over all objects of a data set.

    Each side's area-weighted sum over every image is divided by that side's total area over every image, and
    the two sides are averaged. A side without any object in the whole set drops out (the other side's objects
    then have no partner: Dice 0, Hausdorff the image diagonal); ``empty`` when both do.
    """
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

