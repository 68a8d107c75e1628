"""Instance models' shared machinery: detections, training targets, tiled detection and the merge rules.

An *instance model* (Mask R-CNN, US-Net) is a ``torch.nn.Module`` with ``instance_model = True``
and three methods the workflow calls:

- ``instance_losses(images, labels) -> dict[str, Tensor]``: ``images (B, 3, H, W)`` float in
  [0, 1], ``labels (B, H, W)`` int64 instance labels (0 = background); returns named, already
  weighted loss terms whose sum is the training loss (the model is in training mode);
- ``detect(images, min_score=0.0) -> list[Detections]``: one :class:`Detections` per image, boxes
  in that image's pixel coordinates, none scoring under ``min_score`` (eval mode, called under
  ``torch.no_grad``). Callers pass the lowest score threshold they will apply, so the mask head
  (Mask R-CNN) or the refinement net (US-Net) only runs on detections that can be kept;
- ``param_groups() -> dict[str, list[Parameter]]``: the parameter groups that get their own
  optimizer (one group for Mask R-CNN; backbone/segmentation, detection and refinement for US-Net).

A detection is a box ``(x0, y0, x1, y1)`` in continuous pixel coordinates (the pixel ``(r, c)``
covers ``[c, c + 1) × [r, r + 1)``), a score, and a soft mask ``(M, M)`` in the box's frame (Mask
R-CNN's 28 × 28, US-Net's refined 48 × 48), pasted into the image by bilinear resizing to the box.
Keeping masks in the box frame makes a whole slide's detections a few hundred bytes each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class Detections:
    """``boxes float32 (N, 4)`` xyxy pixels, ``scores float32 (N,)``, ``masks float32 (N, M, M)`` in [0, 1]."""

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.masks = np.asarray(self.masks, np.float32)
        if self.masks.ndim != 3 and len(self.boxes) == 0:
            self.masks = self.masks.reshape(0, 1, 1)
        if not (len(self.boxes) == len(self.scores) == len(self.masks)):
            raise ValueError(f"detections disagree: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                             f"{len(self.masks)} masks")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, mask_size: int = 1) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, mask_size, mask_size)))

    @classmethod
    def from_torch(cls, boxes: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor) -> Detections:
        return cls(*(t.detach().float().cpu().numpy() for t in (boxes, scores, masks)))

    def select(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.masks[keep])

    def shifted(self, dx: float, dy: float) -> Detections:
        return Detections(self.boxes + np.float32([dx, dy, dx, dy]), self.scores, self.masks)

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections.empty()
        size = max(p.masks.shape[-1] for p in parts)
        masks = [p.masks if p.masks.shape[-1] == size else _resize_masks(p.masks, size) for p in parts]
        return Detections(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                          np.concatenate(masks))


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(masks)[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


# ----------------------------------------------------------------------------------------- targets
def instance_targets(labels: torch.Tensor, min_area: int = 4) -> dict[str, torch.Tensor]:
    """Boxes and masks of the instances in one label image ``(H, W)`` (ids need not be contiguous).

    Returns ``boxes float32 (N, 4)`` xyxy with exclusive right/bottom edges (an object covering
    columns 3..5 has ``x0 = 3, x1 = 6``), ``masks uint8 (N, H, W)``, ``labels int64 (N,)`` all 1
    (one object class) and ``ids`` (the label values). Objects under ``min_area`` pixels (slivers
    left at a patch border by a crop or rotation) are dropped: a box of one pixel teaches nothing.
    """
    ids, counts = torch.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= min_area]
    h, w = labels.shape
    if len(ids) == 0:
        return {"boxes": torch.zeros((0, 4)), "masks": torch.zeros((0, h, w), dtype=torch.uint8),
                "labels": torch.zeros(0, dtype=torch.int64), "ids": ids}
    masks = labels[None] == ids[:, None, None]
    rows, cols = masks.any(2), masks.any(1)
    ar_h = torch.arange(h, device=labels.device)
    ar_w = torch.arange(w, device=labels.device)
    big = torch.iinfo(torch.int64).max
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return {"boxes": boxes, "masks": masks.to(torch.uint8), "labels": torch.ones(len(ids), dtype=torch.int64),
            "ids": ids}


def box_masks(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each full-image mask ``(N, H, W)`` to its box and resize to ``(N, size, size)`` (RoI Align).

    The result is the target of a mask head that predicts in the box frame.
    """
    from torchvision.ops import roi_align

    if len(boxes) == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], 1)
    out = roi_align(masks[:, None].float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out[:, 0]


# ------------------------------------------------------------------------------------- paste & merge
def _box_window(box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = box
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)), shape[1]), min(int(np.ceil(y1)), shape[0])
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def paste_mask(mask: np.ndarray, box: np.ndarray,
               shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Resize a box-frame mask ``(M, M)`` onto the pixels its box covers (clipped to ``shape``).

    Returns ``(slices, values)`` with ``values`` the mask sampled (bilinear, edge values extended up
    to the box border) at those pixels' centres, 0 where a centre lies outside the box; None when
    the box lies outside the image. The box-frame coordinate of pixel centre ``c + 0.5`` is
    ``(c + 0.5 - x0) / (x1 - x0) * M``, the same convention as RoI Align with ``aligned=True``.
    """
    win = _box_window(box, shape)
    if win is None:
        return None
    r0, r1, c0, c1 = win
    x0, y0, x1, y1 = (float(v) for v in box)
    gx = ((np.arange(c0, c1) + 0.5 - x0) / max(x1 - x0, 1e-6)) * 2 - 1  # grid_sample's [-1, 1]
    gy = ((np.arange(r0, r1) + 0.5 - y0) / max(y1 - y0, 1e-6)) * 2 - 1
    grid = torch.from_numpy(np.stack(np.meshgrid(gx, gy), -1).astype(np.float32))[None]
    vals = F.grid_sample(torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None], grid,
                         mode="bilinear", padding_mode="border", align_corners=False)[0, 0].numpy()
    inside = (np.abs(gy) <= 1)[:, None] & (np.abs(gx) <= 1)[None, :]  # centres outside the box get 0
    vals = np.where(inside, vals, 0).astype(np.float32)
    return (slice(r0, r1), slice(c0, c1)), vals


def filter_detections(dets: Detections, score_threshold: float, nms_iou: float) -> Detections:
    """Drop detections scoring under ``score_threshold``, then suppress overlapping boxes (NMS at ``nms_iou``).

    The survivors come sorted by decreasing score.
    """
    from torchvision.ops import nms

    keep = np.flatnonzero(dets.scores >= score_threshold)
    if len(keep) == 0:
        return dets.select(keep)
    kept = nms(torch.from_numpy(dets.boxes[keep]), torch.from_numpy(dets.scores[keep]), nms_iou).numpy()
    return dets.select(keep[kept])


def merged_probability(dets: Detections, shape: tuple[int, int], mask_threshold: float = 0.3) -> np.ndarray:
    """The seed's merge map: the sum of the kept masks, clipped to [0, 1].

    Every kept mask has its pixels under ``mask_threshold`` zeroed before the sum. Thresholding the map (at the
    paper's 0.9 by default, :func:`histoflow.postprocess.default_threshold`; the clip does not change a cut at or
    below 1) gives the merged foreground.
    """
    out = np.zeros(shape, np.float32)
    for box, mask in zip(dets.boxes, dets.masks, strict=True):
        pasted = paste_mask(mask, box, shape)
        if pasted is None:
            continue
        sl, vals = pasted
        out[sl] += np.where(vals >= mask_threshold, vals, 0)
    return np.clip(out, 0, 1)


def merge_map_predictor(
    detect: Callable[[torch.Tensor], list[Detections]], score_threshold: float, nms_iou: float,
    mask_threshold: float = 0.3,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An instance model as a probability predictor for the tiled and whole-slide runners.

    For a batch ``(B, C, H, W)`` the predictor gives the :func:`merged_probability` of each tile's kept
    detections (score at least ``score_threshold``, then NMS), ``float32 (B, 1, H, W)`` on the batch's
    device. Blended over overlapping tiles and thresholded (at 0.9, :func:`histoflow.postprocess.default_threshold`),
    it is the seed's merge rule on images of any size.
    """

    def predict(batch: torch.Tensor) -> torch.Tensor:
        shape = tuple(batch.shape[-2:])
        maps = [merged_probability(filter_detections(d, score_threshold, nms_iou), shape, mask_threshold)
                for d in detect(batch)]
        return torch.from_numpy(np.stack(maps))[:, None].to(batch.device)

    return predict


def instance_labels(dets: Detections, shape: tuple[int, int], mask_threshold: float = 0.5,
                    min_size: int = 0) -> np.ndarray:
    """The instance-preserving merge of the detections into a label map ``int32 (H, W)``.

    Each detection keeps its own id (1, 2, ... by decreasing score), painted where its mask is at least
    ``mask_threshold`` on pixels no higher-scoring detection took. Objects left with fewer than ``min_size``
    pixels are dropped.
    """
    labels = np.zeros(shape, np.int32)
    order = np.argsort(-dets.scores, kind="stable")
    next_id = 1
    for i in order:
        pasted = paste_mask(dets.masks[i], dets.boxes[i], shape)
        if pasted is None:
            continue
        sl, vals = pasted
        new = (vals >= mask_threshold) & (labels[sl] == 0)
        if new.sum() < max(min_size, 1):
            continue
        labels[sl][new] = next_id
        next_id += 1
    return labels


# ------------------------------------------------------------------------------------ tiled detection
def ownership_bounds(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """The interval of ``[0, length)`` each tile owns.

    Boundaries lie at the middle of each overlap, so every position belongs to exactly one tile and lies at
    least half an overlap inside it.
    """
    cuts = [0.0] + [(s_next + s + tile) / 2
                    for s, s_next in zip(starts[:-1], starts[1:], strict=True)] + [float(length)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def detect_tiled(
    detector: Callable[[torch.Tensor], list[Detections]],
    image: np.ndarray | torch.Tensor,
    tile: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    nms_iou: float = 0.5,
    progress: bool = False,
) -> Detections:
    """Detect instances in an image of any size, tile by tile, without duplicated or cut objects.

    ``image`` is ``(C, H, W)`` float. Each tile keeps only the detections whose box centre lies in
    the part of the image it owns (:func:`ownership_bounds`: the overlaps are split down the
    middle), so an object seen by two tiles is kept once, from the tile that sees it whole whenever
    it is smaller than half the overlap plus the distance to the cut: choose ``overlap`` at least
    the largest object's diameter. A final NMS over the whole image removes what is left of objects
    straddling a cut. Images smaller than a tile are zero-padded (detections in the padding are
    dropped by ownership).
    """
    from .device import to_device
    from .tiling import tile_starts

    x = torch.as_tensor(image).float()
    if x.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(x.shape)}")
    c, h, w = x.shape
    ph, pw = max(h, tile), max(w, tile)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    ys, xs = tile_starts(ph, tile, overlap), tile_starts(pw, tile, overlap)
    own_y = dict(zip(ys, ownership_bounds(ys, tile, h) if len(ys) > 1 else [(0.0, float(h))], strict=True))
    own_x = dict(zip(xs, ownership_bounds(xs, tile, w) if len(xs) > 1 else [(0.0, float(w))], strict=True))
    corners = [(y, x0) for y in ys for x0 in xs]
    device = torch.device(device)
    parts: list[Detections] = []
    bar = tqdm(total=len(corners), desc="tiles", unit="tile", disable=not progress, mininterval=5)
    for batch in _chunks(corners, batch_size):
        tiles = torch.stack([x[:, y : y + tile, x0 : x0 + tile] for y, x0 in batch])
        with torch.no_grad():
            found = detector(to_device(tiles, device))
        for (y, x0), d in zip(batch, found, strict=True):
            d = d.shifted(x0, y)
            cx, cy = (d.boxes[:, 0] + d.boxes[:, 2]) / 2, (d.boxes[:, 1] + d.boxes[:, 3]) / 2
            (ylo, yhi), (xlo, xhi) = own_y[y], own_x[x0]
            parts.append(d.select((cy >= ylo) & (cy < yhi) & (cx >= xlo) & (cx < xhi)))
        bar.update(len(batch))
    bar.close()
    dets = Detections.concat(parts)
    return filter_detections(dets, -np.inf, nms_iou) if len(dets) else dets


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def instance_detector(model, spec: dict[str, Any], predict: dict[str, Any], dev):
    """An instance model's ``detect`` as the image and slide runners call it, and its detection score threshold.

    The threshold is ``predict.score_threshold``, or when null the one chosen on the validation patches at
    training (``spec.json``). The detector runs under autocast in ``predict.precision`` (``auto`` stays fp32
    on a CPU, :func:`histoflow.train.instance_precision`) and passes the score as ``min_score``, so the
    mask/refine heads skip what the threshold drops anyway.
    """
    from .device import autocast
    from .train import instance_precision

    if predict.get("tta", "none") != "none":
        raise ValueError(f"predict.tta: {predict['tta']} averages probability maps; detections of the instance model "
                         f"{spec['arch']!r} cannot be averaged that way. Set tta: none for this model (or ensemble "
                         "its probability map with other models).")
    score = predict.get("score_threshold")
    score = float(spec.get("score_threshold", 0.5) if score is None else score)

    precision = instance_precision(predict.get("precision", "auto"), dev)

    def detect(batch):
        with autocast(dev, precision):
            return model.detect(batch, min_score=score)

    return detect, score
