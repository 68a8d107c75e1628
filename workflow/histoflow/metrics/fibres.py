"""The muscle-fibre protocol: per-fibre precision / recall / F1 and their fixed- and dynamic-threshold summaries."""

from __future__ import annotations

from typing import Any

import numpy as np

from .objects import _gather, match_objects


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
        out[f"ft_{name}_mean"], out[f"ft_{name}_sd"] = (
            float(np.mean(s[:, ft, k])), float(np.std(s[:, ft, k], ddof=ddof))
        )
        out[f"dt_{name}_mean"], out[f"dt_{name}_sd"] = (
            float(np.mean(at_dt[:, k])), float(np.std(at_dt[:, k], ddof=ddof))
        )
    return out

