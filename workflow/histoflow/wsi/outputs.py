"""Slide outputs: a tiled pyramidal OME-TIFF written tile by tile, and instance labels found block by block.

The instances are streamed into a QuPath GeoJSON FeatureCollection with per-object measurements.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike, atomic_path
from .ngff import build_levels, level_shapes
from .store import open_group

log = logging.getLogger(__name__)


def write_ome_pyramid(
    source: Any,
    path: PathLike,
    *,
    kind: str = "prob",
    mpp: float | None = None,
    tile: int = 512,
    dtype: Any = None,
    min_size: int = 1024,
    channel_names: Sequence[str] | None = None,
    compression: str = "zlib",
    levels: Sequence[Any] | None = None,
) -> list[tuple[int, int]]:
    """Write a 2-D or ``(K, H, W)`` array (zarr or NumPy) as a tiled pyramidal OME-TIFF, tile by tile.

    ``(1, H, W)`` is written as one 2-D plane (axes ``YX``), ``K > 1`` as ``CYX``.

    Level 0 is the array; each sub-resolution halves it (``kind="prob"``: 2x2 means of the float
    values, ``"labels"``: every other pixel, so ids stay ids) until its longest side is at most
    ``min_size``. Sub-resolutions are stored as SubIFDs of level 0, as QuPath and Bio-Formats read
    OME-TIFF pyramids (OpenSlide reads level 0 of it). The physical pixel size goes into the
    OME-XML (``PhysicalSizeX/Y`` in µm) and the TIFF resolution tags (pixels per cm).
    Probabilities are written as ``uint8`` (0..255 = 0..1, rounded) by default, or as ``dtype``.
    ``levels``: the sub-resolutions already made (an NGFF store's levels, :func:`histoflow.wsi.ngff.build_levels`,
    ``source`` first); otherwise they are built in a temporary zarr store beside ``path``. Nothing holds a
    whole level in memory. Written atomically.

    Returns
    -------
    list of (int, int)
        The ``(height, width)`` of each level.
    """
    import tifffile

    if kind not in ("prob", "labels"):
        raise ValueError(f"kind must be prob or labels, got {kind!r}")
    shape = tuple(source.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"source must be (H, W) or (K, H, W), got shape {shape}")
    planar = len(shape) == 3 and shape[0] > 1
    k_ch = shape[0] if len(shape) == 3 else 1
    h, w = shape[-2:]
    out_dtype = (
        np.dtype(dtype) if dtype is not None else (np.dtype(np.uint8) if kind == "prob" else np.dtype(source.dtype))
    )

    def as_3d(arr: Any) -> Callable[[int, int, int, int], np.ndarray]:
        if len(arr.shape) == 3:
            return lambda y0, y1, x0, x1: np.asarray(arr[:, y0:y1, x0:x1])
        return lambda y0, y1, x0, x1: np.asarray(arr[y0:y1, x0:x1])[None]

    def convert(block: np.ndarray) -> np.ndarray:
        if kind == "prob" and out_dtype == np.uint8:
            return np.rint(np.clip(block, 0, 1) * 255).astype(np.uint8)
        return block.astype(out_dtype, copy=False)

    shapes = level_shapes(h, w, min_size)
    if levels is not None and [tuple(a.shape[-2:]) for a in levels] != shapes:
        raise ValueError(f"levels of shapes {[tuple(a.shape[-2:]) for a in levels]} are not the halvings of "
                         f"{(h, w)} down to {min_size} px: {shapes}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as tmpdir:
        if levels is None:
            levels = build_levels(open_group(Path(tmpdir) / "levels.zarr", "w"), source, kind, min_size)
        readers = [as_3d(a) for a in levels]

        def tiles(read: Callable[[int, int, int, int], np.ndarray], lh: int, lw: int) -> Iterator[np.ndarray]:
            for c in range(k_ch):
                for y in range(0, lh, tile):
                    y1 = min(y + tile, lh)
                    for xb in range(0, lw, 8 * tile):
                        xb1 = min(xb + 8 * tile, lw)
                        strip = convert(read(y, y1, xb, xb1)[c])
                        for x in range(xb, xb1, tile):
                            t = np.zeros((tile, tile), out_dtype)
                            part = strip[:, x - xb : min(x + tile, xb1) - xb]
                            t[: part.shape[0], : part.shape[1]] = part
                            yield t

        meta: dict[str, Any] = {"axes": "CYX" if planar else "YX"}
        if mpp:
            meta.update({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm",
                         "PhysicalSizeYUnit": "µm"})
        if planar and channel_names:
            meta["Channel"] = {"Name": list(channel_names)}
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
            for n, ((lh, lw), read) in enumerate(zip(shapes, readers, strict=True)):
                lshape = (k_ch, lh, lw) if planar else (lh, lw)
                kwargs: dict[str, Any] = {
                    "shape": lshape, "dtype": out_dtype, "tile": (tile, tile), "compression": compression,
                    "photometric": "minisblack",
                }
                if mpp:
                    scale = 2**n if n else 1
                    kwargs.update({"resolution": (1e4 / mpp / scale, 1e4 / mpp / scale),
                                   "resolutionunit": "CENTIMETER"})
                if n == 0:
                    kwargs.update({"subifds": len(shapes) - 1, "metadata": meta})
                else:
                    kwargs.update({"subfiletype": 1, "metadata": None})
                tw.write(tiles(read, lh, lw), **kwargs)
    return shapes


def _scale_coords(coords: Any, s: float) -> Any:
    if isinstance(coords, list) and coords and isinstance(coords[0], (int, float)):
        return [round(c * s, 3) for c in coords]
    return [_scale_coords(c, s) for c in coords]


def slide_instances(
    prob: Any,
    labels_out: Any,
    geojson_path: PathLike | None,
    *,
    threshold: float,
    postprocess_cfg: Any = None,
    block: int = 2048,
    margin: int = 128,
    channel: int = 0,
    mpp: float | None = None,
    downsample: float = 1.0,
    classification: str = "Object",
    progress: bool = True,
) -> dict[str, Any]:
    """Instance segmentation of a whole-slide probability map, block by block, streamed out.

    Each block's core is post-processed with ``margin`` pixels of context on every side
    (:func:`histoflow.postprocess.postprocess`: threshold, hole filling, small-object removal,
    watershed). A connected component of the foreground is kept by the block whose core holds its
    bounding box's top-left pixel, so every object is written once; objects no larger than
    ``margin`` come out as whole-image post-processing would give them (components touching the
    context's outer edge are counted in ``truncated``: raise the margin if there are many).

    Parameters
    ----------
    prob:
        ``(K, H, W)`` probabilities (zarr array or NumPy); channel ``channel`` is used.
    labels_out:
        ``(H, W)`` integer zarr array (zero-filled) receiving the instance ids, 1..N, or None.
    geojson_path:
        QuPath GeoJSON FeatureCollection of the objects (or None): detections with
        ``classification``, per-object measurements (:func:`histoflow.morphometry.measure_objects`,
        in µm with ``mpp``), the id in ``metadata.label``, coordinates in level-0 pixels
        (× ``downsample``), written one feature at a time.

    Returns
    -------
    dict
        ``objects``, ``truncated``, ``blocks`` (with foreground), ``foreground_pixels``, ``seconds``.
    """
    from scipy import ndimage as ndi
    from tqdm import tqdm

    from ..morphometry import measure_objects
    from ..postprocess import PostprocessConfig, postprocess, relabel_sequential
    from ..qupath import iter_features, write_features

    pp = postprocess_cfg if postprocess_cfg is not None else PostprocessConfig()
    if isinstance(pp, Mapping):
        pp = PostprocessConfig(**pp)
    threshold = float(pp.threshold) if pp.threshold is not None else float(threshold)
    if getattr(pp, "graphcut", False):
        log.warning("postprocess.graphcut is not applied to slides (it needs the image); thresholding instead")
        pp = PostprocessConfig(**{**pp.__dict__, "graphcut": False})
    h, w = prob.shape[-2:]
    three_d = len(prob.shape) == 3
    stats = {"objects": 0, "truncated": 0, "blocks": 0, "foreground_pixels": 0}
    t0 = time.perf_counter()
    cores = [(y, x) for y in range(0, h, block) for x in range(0, w, block)]

    def features() -> Iterator[dict[str, Any]]:
        next_id = 0
        for cy, cx in tqdm(cores, desc="instances", unit="block", disable=not progress, mininterval=5):
            wy0, wx0 = max(cy - margin, 0), max(cx - margin, 0)
            wy1, wx1 = min(cy + block + margin, h), min(cx + block + margin, w)
            p = np.asarray(prob[channel, wy0:wy1, wx0:wx1] if three_d else prob[wy0:wy1, wx0:wx1])
            if not (p >= threshold).any():
                continue
            lab = postprocess(p.astype(np.float32), pp, threshold)
            if lab.max() == 0:
                continue
            stats["blocks"] += 1
            comps, n = ndi.label(lab > 0, structure=np.ones((3, 3), bool))
            keep = np.zeros(n + 1, bool)
            for c, sl in enumerate(ndi.find_objects(comps), start=1):
                if sl is None:
                    continue
                ay, ax = wy0 + sl[0].start, wx0 + sl[1].start
                if cy <= ay < cy + block and cx <= ax < cx + block:
                    keep[c] = True
                    edge = ((sl[0].start == 0 and wy0 > 0) or (sl[0].stop == lab.shape[0] and wy1 < h)
                            or (sl[1].start == 0 and wx0 > 0) or (sl[1].stop == lab.shape[1] and wx1 < w))
                    stats["truncated"] += int(edge)
            local = relabel_sequential(np.where(keep[comps], lab, 0))
            m = int(local.max())
            if m == 0:
                continue
            stats["foreground_pixels"] += int((local > 0).sum())
            if labels_out is not None:
                cur = np.asarray(labels_out[wy0:wy1, wx0:wx1])
                sel = local > 0
                cur[sel] = (local[sel] + next_id).astype(cur.dtype)
                labels_out[wy0:wy1, wx0:wx1] = cur
            if geojson_path is not None:
                measurements = measure_objects(local, None, mpp)
                for f in iter_features(local, classification, "detection", measurements, offset=(wx0, wy0)):
                    lid = int(f["properties"]["metadata"]["label"])
                    f["properties"]["metadata"]["label"] = str(lid + next_id)
                    if downsample != 1.0:
                        f["geometry"]["coordinates"] = _scale_coords(f["geometry"]["coordinates"], downsample)
                    yield f
            next_id += m
        stats["objects"] = next_id

    if geojson_path is not None:
        write_features(geojson_path, features())
    else:
        for _ in features():
            pass
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats

