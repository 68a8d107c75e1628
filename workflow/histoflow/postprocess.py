"""From a probability map to a clean binary mask and instance labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed


@dataclass
class PostprocessConfig:
    """The ``postprocess:`` block of ``config.yaml``.

    threshold: probability cut, or ``None`` to use the one chosen on the validation split at training.
    min_size: objects smaller than this (pixels) are removed.
    max_hole: holes smaller than this (pixels) are filled.
    split: ``"watershed"`` separates touching objects by a marker watershed on the distance transform;
        ``"components"`` keeps connected components as they are.
    h: marker height for the watershed (in pixels of distance): maxima of the distance transform
        lower than ``h`` above their surroundings merge, so larger ``h`` splits less.
    graphcut: replace plain thresholding by a graph cut (:func:`histoflow.graphcut.graphcut`) that
        smooths the mask along image edges; ``gamma``, ``sigma``, ``delta`` are its weights.
    detections: instance models (Mask R-CNN, US-Net) only. ``"merge"`` (the seed's rule) thresholds
        the sum of the kept detection masks and separates objects like any probability map;
        ``"preserve"`` keeps each detection as its own object.
    """

    threshold: float | None = None
    min_size: int = 30
    max_hole: int = 50
    split: str = "watershed"
    h: float = 2.0
    graphcut: bool = False
    gamma: float = 1.0
    sigma: float = 0.1
    delta: float = 0.0
    detections: str = "merge"

    def __post_init__(self) -> None:
        if self.detections not in ("merge", "preserve"):
            raise ValueError(f"postprocess.detections must be 'merge' or 'preserve', got {self.detections!r}")
        if self.split not in ("watershed", "components"):
            raise ValueError(f"postprocess.split must be 'watershed' or 'components', got {self.split!r}")


def binarize(prob: np.ndarray, threshold: float, min_size: int = 0, max_hole: int = 0) -> np.ndarray:
    """``prob (H, W)`` float → ``bool (H, W)``: threshold, fill holes < ``max_hole``, drop objects < ``min_size``."""
    if prob.ndim != 2:
        raise ValueError(f"probability map must be 2-D, got shape {prob.shape}")
    mask = prob >= threshold
    if max_hole > 0:
        mask = ~drop_small(~mask, max_hole)
    if min_size > 0:
        mask = drop_small(mask, min_size)
    return mask


def drop_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Remove 8-connected components of ``mask`` smaller than ``min_size`` pixels."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def instances_from_mask(mask: np.ndarray, split: str = "watershed", h: float = 2.0, min_size: int = 0) -> np.ndarray:
    """Instance labels ``int32 (H, W)`` from a binary mask (0 = background, 1..N objects).

    ``watershed``: markers are the h-maxima of the Euclidean distance transform (so one marker per
    convex-ish blob, robust to ragged edges), flooded on the negated distance within the mask. A
    connected component too thin to hold an h-maximum becomes one object (it is never dropped).
    """
    if split == "components":
        labels, _ = ndi.label(mask)
    else:
        dist = ndi.distance_transform_edt(mask)
        markers, n_markers = ndi.label(h_maxima(dist, h) if h > 0 else mask)
        comps, n_comps = ndi.label(mask)
        has_marker = np.zeros(n_comps + 1, bool)
        has_marker[comps[markers > 0]] = True
        unmarked = (comps > 0) & ~has_marker[comps]
        markers[unmarked] = comps[unmarked] + n_markers
        labels = watershed(-dist, markers, mask=mask)
    if min_size > 0:
        sizes = np.bincount(labels.ravel())
        labels = np.where(sizes[labels] >= min_size, labels, 0)
    return relabel_sequential(labels)


def grow_instances(labels: np.ndarray, prob: np.ndarray, grow: int) -> np.ndarray:
    """Grow each instance by up to ``grow`` pixels (city-block), by a watershed on ``-prob``.

    The watershed is boundary-aware: neighbours meet where the probability is lowest, i.e. on the predicted
    boundary, so objects predicted without their boundary band (target ``interiors``) get their full extent
    back. The band is an erosion by the same diamond, so growing inverts it exactly up to a morphological
    opening (a convex object loses nothing but sharp corner pixels).
    """
    if grow <= 0 or not labels.any():
        return labels
    reach = ndi.binary_dilation(labels > 0, structure=ndi.generate_binary_structure(2, 1), iterations=grow)
    return watershed(-prob, labels, mask=reach).astype(labels.dtype)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..N in order of first appearance (raster order); background stays 0."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first)]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def recentre(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Monotone piecewise-linear map of probabilities that sends ``threshold`` to 0.5 (0 and 1 stay).

    An energy whose decision point is 0.5 then decides at the chosen threshold.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    p = prob.astype(np.float32)
    return np.where(p < threshold, 0.5 * p / threshold, 0.5 + 0.5 * (p - threshold) / (1 - threshold))


def postprocess(
    prob: np.ndarray, cfg: PostprocessConfig, default_threshold: float = 0.5, image: np.ndarray | None = None,
    grow: int = 0,
) -> np.ndarray:
    """The whole stage: probability ``(H, W)`` → instance labels ``int32 (H, W)``.

    With ``cfg.graphcut`` the mask comes from a graph cut on the probabilities recentred at the
    threshold, with contrast weights from ``image`` (``(H, W, 3)`` uint8, optional). ``grow`` > 0 is
    for models of object interiors (target ``interiors``): the network has already separated touching
    objects by predicting their boundaries as background, so the connected interiors are the markers
    (``cfg.split`` is not used: a distance-transform watershed would split elongated interiors), grown
    back by ``grow`` pixels (the boundary width) with :func:`grow_instances`.
    """
    th = cfg.threshold if cfg.threshold is not None else default_threshold
    if cfg.graphcut:
        from .graphcut import graphcut

        cut = graphcut(recentre(prob, th), image, gamma=cfg.gamma, sigma=cfg.sigma, delta=cfg.delta)
        mask = binarize(cut.astype(np.float32), 0.5, cfg.min_size, cfg.max_hole)
    else:
        mask = binarize(prob, th, cfg.min_size, cfg.max_hole)
    if grow <= 0:
        return instances_from_mask(mask, cfg.split, cfg.h, cfg.min_size)
    labels = grow_instances(ndi.label(mask)[0].astype(np.int32), prob, grow)
    if cfg.min_size > 0:
        sizes = np.bincount(labels.ravel())
        labels = np.where(sizes[labels] >= cfg.min_size, labels, 0)
    return relabel_sequential(labels)


def vote_instances(
    label_maps: list[np.ndarray], weights: list[float] | None = None, vote_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance-level voting between models' instance label images of one image.

    Objects of different members are the same object when their IoU exceeds 0.5 (within a member
    objects do not overlap, so an object has at most one such partner per member). Pairs are joined
    in order of decreasing IoU, never putting two objects of one member in a group. A group is kept
    when its members carry more than ``vote_fraction`` of the total weight; its mask is the pixels
    that at least half of its members' weight covers. Kept objects are painted in order of
    decreasing votes (then area), so a contested pixel goes to the better-supported object.

    Parameters
    ----------
    label_maps:
        ``int (H, W)`` instance labels, one per member (0 = background).
    weights:
        One positive weight per member; default equal.
    vote_fraction:
        In [0, 1): 0.5 keeps the objects a weighted majority found (two equal members: both).

    Returns
    -------
    labels, votes:
        ``int32 (H, W)`` the voted instances, ids 1..N in painting order; ``float32 (H, W)`` the
        weighted fraction of members whose objects cover each pixel (a foreground probability,
        whose mean over an object ranks it for detection AP).
    """
    from .metrics import match_objects

    if len(label_maps) < 2:
        raise ValueError(f"instance voting needs at least two members, got {len(label_maps)}")
    shape = label_maps[0].shape
    if any(m.shape != shape for m in label_maps):
        raise ValueError(f"members' label images differ in shape: {[m.shape for m in label_maps]}")
    if not 0 <= vote_fraction < 1:
        raise ValueError(f"vote_fraction must be in [0, 1), got {vote_fraction}")
    w = np.asarray(weights if weights is not None else [1.0] * len(label_maps), np.float64)
    if len(w) != len(label_maps) or (w <= 0).any():
        raise ValueError(f"need one positive weight per member, got {w.tolist()} for {len(label_maps)} members")
    w = w / w.sum()

    # objects as (member, flat pixel indices), addressed by a global index
    members, pixels, offsets = [], [], []
    for k, lab in enumerate(label_maps):
        offsets.append(len(pixels))
        flat = lab.ravel()
        order = np.argsort(flat, kind="stable")
        ids, starts = np.unique(flat[order], return_index=True)
        for i, (obj, s) in enumerate(zip(ids, starts, strict=True)):
            if obj == 0:
                continue
            end = starts[i + 1] if i + 1 < len(starts) else len(order)
            members.append(k)
            pixels.append(order[s:end])
    # candidate pairs with IoU > 0.5, from every pair of members' overlap tables
    links = []
    for a in range(len(label_maps)):
        for b in range(a + 1, len(label_maps)):
            m = match_objects(label_maps[b], label_maps[a])  # gt side = member a, pred side = member b
            inter = m.pair_overlap
            iou = inter / (m.gt_areas[m.pair_gt] + m.pred_areas[m.pair_pred] - inter)
            for g, p, v in zip(m.pair_gt[iou > 0.5], m.pair_pred[iou > 0.5], iou[iou > 0.5], strict=True):
                links.append((float(v), offsets[a] + int(g), offsets[b] + int(p)))
    # union-find over the links by decreasing IoU; a group holds at most one object per member
    parent = list(range(len(members)))
    group_members = [{k} for k in members]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in sorted(links, reverse=True):
        ri, rj = root(i), root(j)
        if ri != rj and not group_members[ri] & group_members[rj]:
            parent[rj] = ri
            group_members[ri] |= group_members[rj]
    groups: dict[int, list[int]] = {}
    for i in range(len(members)):
        groups.setdefault(root(i), []).append(i)

    votes = np.zeros(int(np.prod(shape)), np.float64)
    for k, lab in enumerate(label_maps):
        votes += w[k] * (lab.ravel() > 0)
    kept = []
    for objs in groups.values():
        support = float(sum(w[members[i]] for i in objs))
        if support <= vote_fraction + 1e-9:
            continue
        pix, where = np.unique(np.concatenate([pixels[i] for i in objs]), return_inverse=True)
        cover = np.bincount(where, weights=np.concatenate([np.full(len(pixels[i]), w[members[i]]) for i in objs]))
        mask = pix[cover >= support / 2 - 1e-9]
        if len(mask):
            kept.append((support, len(mask), mask))
    labels = np.zeros(int(np.prod(shape)), np.int32)
    next_id = 1
    for _, _, mask in sorted(kept, key=lambda t: (-t[0], -t[1], int(t[2][0]))):
        free = mask[labels[mask] == 0]
        if len(free):
            labels[free] = next_id
            next_id += 1
    return labels.reshape(shape), votes.reshape(shape).astype(np.float32)


def instance_growth(spec: dict[str, Any]) -> int:
    """How far instances are grown after thresholding: the boundary width for a model of object interiors, else 0.

    A model of boundaries alone cannot give instances.
    """
    target = spec.get("target", "masks")
    if target == "boundaries":
        raise ValueError(f"model {spec.get('arch')!r} was trained on target boundaries, which gives no objects: "
                         "evaluate a model trained on masks or interiors (e.g. stage 2 of a two-stage model)")
    return int(spec.get("boundary_width", 1)) if target == "interiors" else 0


MERGE_THRESHOLD = 0.9
"""The GlaS U-Net / Mask R-CNN paper's merge rule thresholds the sum of the kept detection masks at 0.9."""


def default_threshold(spec: dict[str, Any]) -> float:
    """The probability cut used when ``postprocess.threshold`` is null.

    For a model of probability maps, the one chosen on the validation split at training (``spec["threshold"]``).
    For an instance model (Mask R-CNN, US-Net), whose map is the sum of its kept masks
    (:func:`histoflow.detection.merged_probability`), the paper's :data:`MERGE_THRESHOLD`: a pixel is foreground
    when its kept masks add up to at least 0.9 (so one mask alone must be that confident).
    """
    if spec.get("instances"):
        return MERGE_THRESHOLD
    return float(spec.get("threshold", 0.5))
