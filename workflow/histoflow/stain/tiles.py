"""Whole slides: one source estimate from a slide's tiles, so tile-by-tile transforms have no seams."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from .base import StainNormalizer, _NoTissueError
from .checks import _int
from .colour import to_rgb_uint8
from .sampling import _MAX_COORD

logger = logging.getLogger(__name__)

def _tile_and_origin(item: Any, index: int, next_row: int) -> tuple[np.ndarray, tuple[int, int]]:
    if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[1], np.ndarray):
        tile, origin = item
        if (
            not isinstance(origin, (tuple, list))
            or len(origin) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in origin)
            or not all(0 <= int(v) < _MAX_COORD for v in origin)
        ):
            raise ValueError(
                f"tile {index}: the origin must be a (row, col) pair of integers in [0, 2**32), got {origin!r}"
            )
        return to_rgb_uint8(tile, name=f"tile {index}"), (int(origin[0]), int(origin[1]))
    return to_rgb_uint8(item, name=f"tile {index}"), (next_row, 0)


def fit_source_from_tiles(
    normalizer: StainNormalizer,
    tiles: Iterable[np.ndarray | tuple[np.ndarray, tuple[int, int]]],
    *,
    max_pixels: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Estimate a whole slide's source staining once, from its tiles, for tile-by-tile transforms.

    The tiles are read one at a time (memory stays bounded by one tile plus the pixel sample):
    stain-matrix methods keep a seeded random sample of at most ``max_pixels`` tissue pixels
    ("opaque" ones for the stain vectors, "stained" ones for the maximal concentrations); Reinhard
    accumulates its LAB mean and variance exactly. The sample is drawn by a hash of each pixel's
    position in the slide, so when the tiles carry their positions the result equals
    ``normalizer.fit_source(slide)`` on the assembled slide (the same pixels are sampled), and
    ``normalizer.transform(tile, source_params=result)`` over all tiles reproduces
    ``normalizer.transform(slide)`` -- no seams. Overlapping tiles count their shared pixels twice.

    Parameters
    ----------
    normalizer : StainNormalizer
        The normalizer the result is for (it need not be fitted).
    tiles : iterable
        ``(h, w, 3)`` uint8 RGB tiles (anything :func:`to_rgb_uint8` accepts), each either alone or
        as ``(tile, (row, col))`` with the slide position of its top-left pixel. Tiles without a
        position are placed below each other (row = rows of the preceding position-less tiles,
        col = 0), as if stacked into one tall image.
    max_pixels : int, optional
        Sample size; default: the normalizer's ``max_pixels``. Ignored by Reinhard.
    seed : int, optional
        Sample seed; default: the normalizer's ``seed``. Ignored by Reinhard.

    Returns
    -------
    dict
        Same layout as :meth:`StainNormalizer.fit_source`: ``{"method", "tissue", <statistics>}``,
        JSON-serialisable. Without enough tissue a warning is logged and ``"tissue"`` is False.

    Raises
    ------
    ValueError
        For a bad tile or position, or bad ``max_pixels`` / ``seed``.
    """
    if not isinstance(normalizer, StainNormalizer):
        raise ValueError(f"normalizer must be a StainNormalizer, got {type(normalizer).__name__}")
    own_max, own_seed = normalizer._sampling()
    k = own_max if max_pixels is None else _int("max_pixels", max_pixels, lo=100)
    s = own_seed if seed is None else _int("seed", seed, lo=0)
    acc = normalizer._accumulator(k, s)
    next_row = n_tiles = 0
    for index, item in enumerate(tiles):
        rgb, origin = _tile_and_origin(item, index, next_row)
        if origin == (next_row, 0) and not isinstance(item, tuple):
            next_row += rgb.shape[0]
        acc.add(rgb, origin)
        n_tiles += 1
    try:
        stats = acc.finalize()
    except _NoTissueError as exc:
        logger.warning(
            "%s stain normalization: the %d tiles have no usable tissue (%s); they will be passed "
            "through unchanged",
            normalizer.method,
            n_tiles,
            exc,
        )
        return {"method": normalizer.method, "tissue": False}
    return {"method": normalizer.method, "tissue": True, **normalizer._stats_to_json(stats)}

