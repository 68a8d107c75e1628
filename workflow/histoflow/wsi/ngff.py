"""Slide-sized zarr stores as OME-NGFF images: resolution levels and the multiscales metadata.

A store written here is what ``ome-zarr``, napari and other NGFF readers open as an image: level
arrays ``"0"``, ``"1"``, … (each half the previous one's height and width) and the ``multiscales``
metadata naming the axes (``c, y, x`` for probabilities, ``y, x`` for labels) and each level's pixel
size in µm. Zarr 3 stores follow NGFF 0.5 (the metadata under the ``"ome"`` attribute), zarr 2 stores
NGFF 0.4. A label image carries ``image-label`` as well, so readers show it as labels, not intensities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .store import CHUNK, create_array, zarr_major

#: The level-0 array of an NGFF store (the full-resolution probabilities or labels).
LEVEL0 = "0"


def dimension_names(channels: bool) -> tuple[str, ...]:
    """The axes of a level array: ``("c", "y", "x")`` for probabilities, ``("y", "x")`` for labels."""
    return ("c", "y", "x") if channels else ("y", "x")


def level_shapes(h: int, w: int, min_size: int) -> list[tuple[int, int]]:
    """``(h, w)`` and each half of the previous one (floor, at least 1) until the longest side is ≤ ``min_size``."""
    shapes = [(h, w)]
    while max(shapes[-1]) > min_size:
        ph, pw = shapes[-1]
        shapes.append((max(ph // 2, 1), max(pw // 2, 1)))
    return shapes


def reduce2(block: np.ndarray, kind: str) -> np.ndarray:
    """Halve the last two axes: 2x2 mean (``kind="prob"``) or the top-left sample (``"labels"``: ids stay ids)."""
    hh, ww = block.shape[-2] // 2, block.shape[-1] // 2
    if kind == "labels":
        return block[..., : 2 * hh : 2, : 2 * ww : 2]
    b = block[..., : 2 * hh, : 2 * ww].astype(np.float32)
    return (b[..., 0::2, 0::2] + b[..., 1::2, 0::2] + b[..., 0::2, 1::2] + b[..., 1::2, 1::2]) * np.float32(0.25)


def build_levels(group: Any, level0: Any, kind: str, min_size: int = 1024) -> list[Any]:
    """Write the sub-resolutions of ``level0`` (``(K, H, W)`` or ``(H, W)``) into ``group`` as ``"1"``, ``"2"``, ….

    Each level is made from the previous one block by block (bounded memory), halved by :func:`reduce2`
    until its longest side is at most ``min_size``. Probability levels are float32, label levels keep the
    labels' dtype. Returns every level, ``level0`` first.
    """
    if kind not in ("prob", "labels"):
        raise ValueError(f"kind must be prob or labels, got {kind!r}")
    lead = tuple(level0.shape[:-2])  # (K,) for probabilities, () for labels
    dtype = np.float32 if kind == "prob" else level0.dtype
    dims = dimension_names(bool(lead))
    levels = [level0]
    for n, (lh, lw) in enumerate(level_shapes(*level0.shape[-2:], min_size)[1:], start=1):
        arr = create_array(group, str(n), (*lead, lh, lw), (*(1,) * len(lead), CHUNK, CHUNK), dtype, dims)
        prev = levels[-1]
        for r0 in range(0, lh, CHUNK):
            r1 = min(r0 + CHUNK, lh)
            for c0 in range(0, lw, 4 * CHUNK):
                c1 = min(c0 + 4 * CHUNK, lw)
                arr[..., r0:r1, c0:c1] = reduce2(np.asarray(prev[..., 2 * r0 : 2 * r1, 2 * c0 : 2 * c1]), kind)
        levels.append(arr)
    return levels


def multiscales(n_levels: int, *, channels: bool, mpp: float | None, name: str, kind: str) -> dict[str, Any]:
    """The ``multiscales`` entry of an image of ``n_levels`` levels (axes, per-level scale in µm or pixels)."""
    unit = {"unit": "micrometer"} if mpp else {}
    axes = [{"name": a, "type": "channel"} if a == "c" else {"name": a, "type": "space", **unit}
            for a in dimension_names(channels)]
    pixel = float(mpp) if mpp else 1.0
    datasets = []
    for n in range(n_levels):
        scale = [pixel * 2**n, pixel * 2**n]
        datasets.append({"path": str(n), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, *scale] if channels else scale}]})
    return {"name": name, "axes": axes, "datasets": datasets,
            "type": "mean" if kind == "prob" else "nearest",
            "metadata": {"method": "histoflow.wsi.ngff.reduce2", "kind": kind}}


def ngff_attrs(n_levels: int, *, kind: str, mpp: float | None, name: str,
               channel_names: Sequence[str] | None = None, source: str | None = None,
               major: int | None = None) -> dict[str, Any]:
    """The group attributes that make a store an NGFF image (``kind="prob"``) or label image (``"labels"``).

    ``major`` is the zarr format (3: NGFF 0.5, everything under ``"ome"``; 2: NGFF 0.4, at the top level).
    Probabilities get ``omero`` channel names with a 0..1 display window; a label image may name the
    image it labels (``source``, a path relative to the label store), which readers then open beside it.
    """
    major = zarr_major() if major is None else major
    version = "0.5" if major >= 3 else "0.4"
    ms = multiscales(n_levels, channels=kind == "prob", mpp=mpp, name=name, kind=kind)
    meta: dict[str, Any] = {"multiscales": [ms]}
    if kind == "prob" and channel_names:
        window = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
        meta["omero"] = {"channels": [{"label": c, "color": "FFFFFF", "active": True, "window": window}
                                      for c in channel_names]}
    if kind == "labels":
        meta["image-label"] = {"source": {"image": source}} if source else {}
        if version == "0.4":
            meta["image-label"]["version"] = version
    if version == "0.5":
        return {"ome": {"version": version, **meta}}
    ms["version"] = version
    return meta


def write_ngff(group: Any, *, kind: str, mpp: float | None, name: str,
               channel_names: Sequence[str] | None = None, source: str | None = None,
               min_size: int = 1024) -> list[Any]:
    """Finish a store whose level 0 (array :data:`LEVEL0`) is written: its sub-resolutions and NGFF metadata.

    Returns the levels, level 0 first (what :func:`histoflow.wsi.write_ome_pyramid` takes as ``levels``).
    """
    levels = build_levels(group, group[LEVEL0], kind, min_size)
    group.attrs.update(ngff_attrs(len(levels), kind=kind, mpp=mpp, name=name, channel_names=channel_names,
                                  source=source))
    return levels


def image_levels(group: Any) -> list[Any]:
    """The level arrays of an NGFF image store (NGFF 0.5 or 0.4), full resolution first."""
    attrs = dict(group.attrs)
    meta = attrs.get("ome", attrs)
    if "multiscales" not in meta:
        raise ValueError(f"{getattr(group, 'store', group)}: not an OME-NGFF image (no multiscales metadata)")
    return [group[d["path"]] for d in meta["multiscales"][0]["datasets"]]
