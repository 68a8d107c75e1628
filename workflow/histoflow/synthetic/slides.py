"""Synthetic pyramidal H&E slides (tests, benchmarks, demos): tissue pieces filled with muscle-fibre texture."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike, atomic_path


def texture_bank(n: int, size: int, seed: int) -> np.ndarray:
    from .fibres import FibreParams, make_fibre_image

    return np.stack([make_fibre_image(seed + i, FibreParams(size=(size, size)))[0] for i in range(n)])


def synthetic_slide_region(
    y: int, x: int, h: int, w: int, step: int, height: int, width: int, bank: np.ndarray, seed: int = 0
) -> np.ndarray:
    """``uint8 (h, w, 3)`` of a synthetic H&E slide of ``height x width`` level-0 pixels.

    The slide is sampled every ``step`` pixels from level-0 position ``(y, x)``: elliptical tissue pieces
    filled with blocks of muscle-fibre texture from ``bank``, on white glass.
    """
    rows = (y + np.arange(h) * step).astype(np.float64)
    cols = (x + np.arange(w) * step).astype(np.float64)
    rng = np.random.default_rng(seed)
    n_blobs = 3
    centres = rng.uniform(0.25, 0.75, size=(n_blobs, 2)) * [height, width]
    radii = rng.uniform(0.12, 0.3, size=(n_blobs, 2)) * [height, width]
    inside = np.zeros((h, w), bool)
    for (cy, cx), (ry, rx) in zip(centres, radii, strict=True):
        inside |= ((rows[:, None] - cy) / ry) ** 2 + ((cols[None, :] - cx) / rx) ** 2 <= 1.0
    out = np.full((h, w, 3), 242, np.uint8)
    if not inside.any():
        return out
    size = bank.shape[1]
    ri, ci = (rows.astype(np.int64) // size), (cols.astype(np.int64) // size)
    which = (ri[:, None] * 7919 + ci[None, :] * 104729 + seed) % bank.shape[0]
    rr = (rows.astype(np.int64) % size)[:, None]
    cc = (cols.astype(np.int64) % size)[None, :]
    tex = bank[which, np.broadcast_to(rr, (h, w)), np.broadcast_to(cc, (h, w))]
    out[inside] = tex[inside]
    return out


def write_synthetic_slide(
    path: PathLike,
    height: int,
    width: int,
    *,
    mpp: float = 0.5,
    levels: int = 3,
    tile: int = 256,
    seed: int = 0,
    compression: str = "jpeg",
    texture_size: int = 512,
    n_textures: int = 6,
    workers: int = 1,
) -> Path:
    """Write a synthetic pyramidal tiled TIFF slide (RGB, JPEG tiles by default), tile by tile.

    Levels downsample by 2 and are stored as consecutive pages (reduced-resolution subfile type),
    as OpenSlide's generic tiled TIFF and tifffile both read them; the pixel size is in the
    resolution tags (``mpp`` µm at level 0). Memory stays bounded by a few tiles per thread
    (``workers`` threads make and compress tiles).
    """
    import tifffile

    path = Path(path)
    bank = texture_bank(n_textures, texture_size, seed)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=height * width * 3 > 2**31) as tw:
        for n in range(levels):
            step = 2**n
            lh, lw = height // step, width // step
            if min(lh, lw) < 1:
                break

            def make(yx: tuple[int, int], step: int = step) -> np.ndarray:
                return synthetic_slide_region(yx[0] * step, yx[1] * step, tile, tile, step, height, width, bank, seed)

            coords = ((ty, tx) for ty in range(0, lh, tile) for tx in range(0, lw, tile))
            tw.write(_ordered_map(make, coords, workers), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                     compression=compression, photometric="rgb", subfiletype=0 if n == 0 else 1,
                     resolution=(1e4 / (mpp * step), 1e4 / (mpp * step)), resolutionunit="CENTIMETER",
                     metadata=None, maxworkers=workers)
    return path


def _ordered_map(fn: Callable[[Any], Any], items: Iterator[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` in ``workers`` threads, in order, at most ``4 * workers`` results ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[Any]] = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()



def write_pyramid(path: PathLike, image: np.ndarray, *, mpp: float, levels: int = 3, tile: int = 256,
                  compression: str = "zlib") -> Path:
    """Write an in-memory ``uint8 (H, W, 3)`` image as a pyramidal tiled TIFF, as :func:`write_synthetic_slide` does.

    Level ``n`` is the 2 x 2 mean of level ``n - 1`` (rounded), so a level read back equals that mean of the one
    above exactly (lossless ``zlib`` tiles by default).
    """
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tw:
        level = np.asarray(image, np.uint8)
        for n in range(levels):
            if n:
                h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
                if min(h, w) < 2:
                    break
                blocks = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.float32)
                level = np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)
            res = 1e4 / (mpp * 2**n)
            tw.write(level, tile=(tile, tile), compression=compression, photometric="rgb",
                     subfiletype=0 if n == 0 else 1, resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)
    return path


def annotated_slide(size: tuple[int, int], seed: int = 0, radius: tuple[float, float] = (9.0, 16.0),
                    n_nuclei: int = 120) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """A synthetic H&E-like slide of round nuclei and its QuPath annotations (the README example, tests).

    Returns the ``uint8 (H, W, 3)`` image, the GeoJSON features (nuclei as 48-gons classified ``Nucleus``, the two
    regions as rectangles classified ``Region``; only the nuclei that reach into a region are drawn, as a pathologist
    labels a few areas completely) and the ``int32 (H, W)`` labels of every nucleus (pixels whose centre
    lies inside its polygon).
    """
    from ..qupath import geometry_mask

    rng = np.random.default_rng(seed)
    h, w = size
    noise = rng.normal(0, 6, (h, w, 1))
    image = np.array([232, 182, 212], np.float32) + noise  # eosin-pink stroma
    labels = np.zeros(size, np.int32)
    features: list[dict[str, Any]] = []
    centres: list[tuple[float, float, float]] = []
    for _ in range(50 * n_nuclei):
        if len(centres) == n_nuclei:
            break
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 3) ** 2 for y, x, q in centres):
            centres.append((cy, cx, r))
    boxes = ((0.05, 0.05, 0.45, 0.55), (0.55, 0.4, 0.95, 0.95))  # the regions, as fractions (y0, x0, y1, x1)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    for k, (cy, cx, r) in enumerate(centres, start=1):
        ring = [[float(cx + r * np.cos(a)), float(cy + r * np.sin(a))] for a in angles]
        geometry = {"type": "Polygon", "coordinates": [ring + ring[:1]]}
        inside = geometry_mask(geometry, size)
        labels[inside] = k
        shade = rng.uniform(0.85, 1.15)
        image[inside] = np.array([92, 52, 140], np.float32) * shade + noise[inside]  # haematoxylin-blue nuclei
        if any(y0 * h - r <= cy <= y1 * h + r and x0 * w - r <= cx <= x1 * w + r for y0, x0, y1, x1 in boxes):
            features.append({"type": "Feature", "id": f"nucleus-{k}", "geometry": geometry,
                             "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}}})
    for y0, x0, y1, x1 in boxes:
        ring = [[x0 * w, y0 * h], [x1 * w, y0 * h], [x1 * w, y1 * h], [x0 * w, y1 * h], [x0 * w, y0 * h]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "classification": {"name": "Region"}}})
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), features, labels
