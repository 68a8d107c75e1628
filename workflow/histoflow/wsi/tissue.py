"""Tissue detection on a slide's thumbnail and the :class:`TissueMask` that says how much of a tile is tissue.

The detection is Otsu on saturation and / or optical density, then closing, hole filling and small-object
removal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .reader import Slide

#: Otsu thresholds are clamped to these ranges, so an all-background thumbnail gives no tissue and
#: an all-tissue one keeps its pale parts (Otsu would split either into two classes).
TISSUE_THRESHOLD_RANGE = {"saturation": (0.04, 0.2), "od": (0.15, 0.4)}


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``float32 (H, W)`` in [0, 1] of ``uint8 (H, W, 3)`` RGB (0 where black)."""
    arr = rgb.astype(np.float32)
    mx, mn = arr.max(axis=2), arr.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0.0).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density ``float32 (H, W)`` over the channels, ``-ln((I + 1) / 256)``."""
    return (-np.log((rgb.astype(np.float32) + 1.0) / 256.0)).mean(axis=2)


def detect_tissue(
    rgb: np.ndarray,
    method: str = "saturation",
    closing: int = 2,
    min_object: int = 100,
    max_hole: int = 400,
) -> np.ndarray:
    """Tissue mask ``bool (H, W)`` of a low-resolution ``uint8 (H, W, 3)`` RGB image.

    ``method``: ``saturation`` (stained tissue is coloured, glass and black borders are not),
    ``od`` (optical density: anything that absorbs light), ``both`` (tissue by both: excludes
    pen-free dark debris and pale colour casts), ``none`` (everything is tissue). Each channel is
    thresholded by Otsu's method, clamped to :data:`TISSUE_THRESHOLD_RANGE`. Cleanup (in pixels of
    ``rgb``): binary closing with a disk of radius ``closing``, holes smaller than ``max_hole``
    filled, objects smaller than ``min_object`` removed.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got shape {rgb.shape}")
    if method == "none":
        return np.ones(rgb.shape[:2], bool)
    if method not in ("saturation", "od", "both"):
        raise ValueError(f"tissue method must be saturation, od, both or none, got {method!r}")
    masks = []
    for kind in ("saturation", "od") if method == "both" else (method,):
        values = saturation(rgb) if kind == "saturation" else optical_density(rgb)
        lo, hi = TISSUE_THRESHOLD_RANGE[kind]
        th = float(threshold_otsu(values)) if np.ptp(values) > 0 else hi
        masks.append(values > min(max(th, lo), hi))
    mask = np.logical_and.reduce(masks)
    if closing > 0:
        pad = closing + 1
        mask = ndi.binary_closing(np.pad(mask, pad), structure=disk(closing))[pad:-pad, pad:-pad]
    if max_hole > 0:
        holes = ndi.binary_fill_holes(mask) & ~mask
        lab, n = ndi.label(holes)
        if n:
            sizes = np.bincount(lab.ravel())
            fill = sizes < max_hole
            fill[0] = False
            mask |= fill[lab]
    if min_object > 0:
        from ..postprocess import drop_small

        mask = drop_small(mask, min_object)
    return mask


@dataclass
class TissueMask:
    """A low-resolution tissue mask of a slide and the tissue fraction of any slide region.

    ``mask``: ``bool (h, w)``; ``scale``: slide pixels (at the inference resolution) per mask
    pixel.
    """

    mask: np.ndarray
    scale: float
    _integral: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, bool)
        if self.mask.ndim != 2:
            raise ValueError(f"mask must be 2-D, got shape {self.mask.shape}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        ii = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
        ii[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        self._integral = ii

    @classmethod
    def everywhere(cls, shape: tuple[int, int]) -> TissueMask:
        """All tissue (every tile is processed)."""
        return cls(np.ones((1, 1), bool), float(max(shape)))

    def fraction(self, y: int, x: int, h: int, w: int) -> float:
        """Fraction of tissue among the mask pixels that the slide region touches.

        A mask pixel partly inside the region counts whole, so thin tissue at a tile's edge is not missed.
        """
        mh, mw = self.mask.shape
        r0 = min(max(int(math.floor(y / self.scale)), 0), mh - 1)
        c0 = min(max(int(math.floor(x / self.scale)), 0), mw - 1)
        r1 = min(max(int(math.ceil((y + h) / self.scale)), r0 + 1), mh)
        c1 = min(max(int(math.ceil((x + w) / self.scale)), c0 + 1), mw)
        ii = self._integral
        total = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return float(total) / float((r1 - r0) * (c1 - c0))


def tissue_mask(
    slide: Slide,
    method: str = "saturation",
    thumbnail_size: int = 2048,
    closing: int = 2,
    min_object: int = 100,
    max_hole: int = 400,
) -> tuple[TissueMask, np.ndarray]:
    """Detect tissue on the slide's thumbnail; returns the mask and the thumbnail ``uint8 RGB``."""
    thumb, scale = slide.thumbnail(thumbnail_size)
    mask = detect_tissue(thumb, method, closing=closing, min_object=min_object, max_hole=max_hole)
    return TissueMask(mask, scale), thumb

