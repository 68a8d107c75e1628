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

Modules: ``pixel``, ``objects`` (GlaS), ``instances`` (AJI, PQ, AP), ``summary`` (per image, per data set),
``fibres`` (per-fibre FT / DT).
"""

from .fibres import fixed_and_dynamic_thresholds, per_fibre_precision_recall
from .instances import (
    aji,
    aji_plus,
    average_precision,
    box_iou,
    label_boxes,
    match_boxes,
    match_detections,
    object_scores,
    panoptic_quality,
)
from .objects import (
    ObjectMatch,
    match_objects,
    object_detection_counts,
    object_dice,
    object_f1,
    object_hausdorff,
)
from .pixel import pixel_metrics
from .summary import POOLING_TERMS, evaluate_instances, summarize

__all__ = [
    "ObjectMatch",
    "POOLING_TERMS",
    "aji",
    "aji_plus",
    "average_precision",
    "box_iou",
    "evaluate_instances",
    "fixed_and_dynamic_thresholds",
    "label_boxes",
    "match_boxes",
    "match_detections",
    "match_objects",
    "object_detection_counts",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "object_scores",
    "panoptic_quality",
    "per_fibre_precision_recall",
    "pixel_metrics",
    "summarize",
]
