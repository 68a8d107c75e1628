"""Pixel metrics of two binary masks (anything ``> 0`` is foreground), and the input checks all metrics share."""

from __future__ import annotations

import numpy as np


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

