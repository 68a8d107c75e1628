"""GeoJSON that QuPath (0.4 and later) imports and exports: instance labels out, annotations in.

Format (checked against QuPath's own serialiser, ``qupath-core`` ``PathObjectTypeAdapters`` and
``ROITypeAdapters``, and the v0.4 change log of qupath/qupath PR #1099 "Improved GeoJSON support"):

* a ``FeatureCollection`` of ``Feature`` objects; coordinates are pixels of the full-resolution
  image, ``(x, y)`` order, origin at the top-left *corner* of the top-left pixel (pixel ``(row r,
  col c)`` covers ``[c, c + 1] x [r, r + 1]``, its centre is ``(c + 0.5, r + 0.5)``);
* ``properties.objectType``: ``"detection"``, ``"annotation"``, ``"cell"``, ``"tile"``;
* ``properties.classification``: ``{"name": str, "color": [r, g, b]}`` (``names`` for derived
  classes, read here as ``"A: B"``);
* ``properties.measurements``: a JSON object ``{"name": value}`` (v0.4+; v0.3 wrote a list of
  ``{"name", "value"}``, which QuPath still reads). JSON has no NaN, so non-finite values are left
  out (QuPath shows a missing measurement as NaN anyway);
* the image plane of a z-stack: QuPath writes and reads ``{"c": -1, "z": z, "t": 0}`` as
  ``geometry.plane``. :func:`iter_features` writes it there *and* as ``properties.plane``;
  :func:`rasterize_annotations` reads ``geometry.plane.z``, then ``properties.plane.z``, then
  ``properties.z``.

Polygons written by :func:`iter_features` trace the object's pixel outline through the midpoints
of its boundary pixel edges (:func:`skimage.measure.find_contours` at level 0.5, 8-connected
objects), simplified losslessly (vertices on straight runs dropped; an optional Douglas-Peucker
``tolerance`` of at most half a pixel simplifies further). Objects with holes become
Polygons with interior rings; an instance made of several 8-connected pieces becomes a
MultiPolygon. Exterior rings are counter-clockwise in ``(x, y)`` numbers (RFC 7946; clockwise on a
screen, whose y axis points down), holes clockwise. Filling a written polygon back
(:func:`geometry_mask`: pixels whose centre lies inside) gives exactly the object's pixels again
(with ``tolerance > 0``, up to the pixels the simplification moves across).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .io import InputError, PathLike, atomic_path

log = logging.getLogger(__name__)

#: Classification names (lower case) of scribble annotations and their seed values (see graphcut).
SCRIBBLE_CLASSES: dict[str, int] = {"foreground": 1, "fg": 1, "background": 2, "bg": 2}

#: QuPath-like colours for common class names; other names get a colour from a hash of the name.
_KNOWN_COLORS: dict[str, tuple[int, int, int]] = {
    "nucleus": (160, 90, 160),
    "foreground": (200, 0, 0),
    "background": (0, 0, 200),
    "tumor": (200, 0, 0),
    "stroma": (150, 200, 150),
}
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def _class_color(name: str) -> list[int]:
    known = _KNOWN_COLORS.get(name.lower())
    if known is not None:
        return list(known)
    return list(_PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)])


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _ring(
    contour: np.ndarray, origin: tuple[float, float], tolerance: float, exterior: bool
) -> list[list[float]] | None:
    """A closed GeoJSON ring ``[[x, y], ...]`` from a closed ``find_contours`` path (row, col).

    ``origin = (x0, y0)`` is added to the (col, row) coordinates; None for a degenerate ring.
    """
    from skimage.measure import approximate_polygon

    if len(contour) < 4:
        return None
    contour = _drop_collinear(contour)
    if len(contour) < 4:
        return None
    if tolerance > 0:
        simple = approximate_polygon(contour, tolerance)
        if len(simple) >= 4 and abs(_signed_area(simple[:, ::-1])) > 0:
            contour = simple
    xy = np.column_stack([contour[:, 1] + origin[0], contour[:, 0] + origin[1]])
    area = _signed_area(xy)
    if area == 0:
        return None
    if (area > 0) != exterior:
        xy = xy[::-1]
    return np.round(xy, 3).tolist()


def _drop_collinear(contour: np.ndarray) -> np.ndarray:
    """Remove the vertices of a closed path that lie on the straight segment between their neighbours.

    Lossless (the ring covers exactly the same points) and vectorised; returns a closed path
    (first vertex repeated at the end).
    """
    pts = contour[:-1] if np.array_equal(contour[0], contour[-1]) else contour
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    a, b = pts - prev, nxt - pts
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = (a * b).sum(axis=1)
    keep = ~((np.abs(cross) < 1e-9) & (dot > 0))
    pts = pts[keep]
    return np.vstack([pts, pts[:1]])


def _longest(contours: list[np.ndarray]) -> np.ndarray | None:
    return max(contours, key=len) if contours else None


def _object_polygons(
    mask: np.ndarray, origin: tuple[float, float], tolerance: float, holes: bool
) -> list[list[list[list[float]]]]:
    """Polygons (each ``[exterior, *holes]``) of a bool object mask padded by one pixel."""
    from skimage.measure import find_contours

    eight = np.ones((3, 3), dtype=bool)
    comps, n = ndi.label(mask, structure=eight)
    polygons = []
    for k in range(1, n + 1):
        comp = comps == k
        filled = ndi.binary_fill_holes(comp)
        outer = _longest(find_contours(filled.astype(np.float32), 0.5, fully_connected="high"))
        ring = _ring(outer, origin, tolerance, exterior=True) if outer is not None else None
        if ring is None:
            continue
        rings = [ring]
        if holes:
            hole_lab, n_holes = ndi.label(filled & ~comp)
            for j in range(1, n_holes + 1):
                inner = _longest(
                    find_contours((hole_lab == j).astype(np.float32), 0.5, fully_connected="low")
                )
                hole_ring = _ring(inner, origin, tolerance, exterior=False) if inner is not None else None
                if hole_ring is not None:
                    rings.append(hole_ring)
        polygons.append(rings)
    return polygons


def _check_labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) instance label image, got shape {lab.shape}")
    if lab.dtype == bool:
        return lab.astype(np.int32)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer array (0 = background), got {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    return lab


def _clean_measurements(values: Mapping[str, Any] | None, label: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in (values or {}).items():
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"measurement {name!r} of object {label} is not a number: {value!r}") from exc
        if math.isfinite(v):
            out[str(name)] = v
    return out


def iter_features(
    labels: np.ndarray,
    classification: str = "Nucleus",
    object_type: str = "detection",
    measurements: Mapping[int, Mapping[str, float]] | None = None,
    offset: tuple[float, float] = (0, 0),
    z: int | None = None,
    *,
    color: tuple[int, int, int] | None = None,
    tolerance: float = 0.0,
    holes: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield one QuPath GeoJSON ``Feature`` per instance of a label image, in label order.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer ``(H, W)`` instance labels, 0 = background (bool: one object).
    classification : str
        Class name of every object.
    object_type : str
        QuPath object type: ``"detection"`` (light, for many objects), ``"annotation"``, ``"cell"`` ...
    measurements : mapping, optional
        ``{label: {name: value}}``; written as ``properties.measurements`` (non-finite values are
        left out, labels without an entry get ``{}``).
    offset : tuple of float
        ``(x, y)`` added to every coordinate, e.g. the origin of this tile in the whole slide.
    z : int, optional
        Slice index of a z-stack: adds ``plane = {"c": -1, "z": z, "t": 0}`` to the geometry (where
        QuPath reads it) and to the properties.
    color : tuple of int, optional
        Class colour ``(r, g, b)``; default: a fixed colour per class name.
    tolerance : float
        Extra Douglas-Peucker simplification in pixels, at most 0.5 (the outline then moves by up
        to that much; slower). The default 0 only removes the vertices that lie on straight runs of
        the outline, which changes nothing of its shape or topology.
    holes : bool
        Write holes of objects as interior rings (else only the outer outline, holes filled).

    Yields
    ------
    dict
        ``{"type": "Feature", "geometry": {"type": "Polygon" | "MultiPolygon", "coordinates": ...},
        "properties": {"objectType", "classification": {"name", "color"}, "measurements",
        "metadata": {"label": "<id>"}}}``. The label id is kept in ``metadata`` (QuPath keeps
        metadata of annotations and ignores it for detections).

    Raises
    ------
    ValueError
        On bad labels or arguments.
    """
    lab = _check_labels(labels)
    if not isinstance(classification, str) or not classification:
        raise ValueError(f"classification must be a non-empty string, got {classification!r}")
    if not isinstance(object_type, str) or not object_type:
        raise ValueError(f"object_type must be a non-empty string, got {object_type!r}")
    tolerance = float(tolerance)
    if not 0 <= tolerance <= 0.5:
        raise ValueError(f"tolerance must be in [0, 0.5] pixels, got {tolerance}")
    try:
        ox, oy = (float(v) for v in offset)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"offset must be (x, y) numbers, got {offset!r}") from exc
    plane = None
    if z is not None:
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or z < 0:
            raise ValueError(f"z must be a non-negative integer or None, got {z!r}")
        plane = {"c": -1, "z": int(z), "t": 0}
    rgb = _class_color(classification) if color is None else [int(c) for c in color]
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"color must be (r, g, b) in 0..255, got {color!r}")
    if lab.size == 0 or lab.max() == 0:
        return
    slices = ndi.find_objects(lab)
    for index, sl in enumerate(slices):
        if sl is None:
            continue
        label = index + 1
        crop = np.pad(lab[sl] == label, 1)
        # crop pixel (i, j) is image pixel (sl.start + i - 1, ...); its centre has x = col + 0.5
        origin = (sl[1].start - 1 + 0.5 + ox, sl[0].start - 1 + 0.5 + oy)
        polygons = _object_polygons(crop, origin, tolerance, holes)
        if not polygons:
            continue
        if len(polygons) == 1:
            geometry: dict[str, Any] = {"type": "Polygon", "coordinates": polygons[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": polygons}
        properties: dict[str, Any] = {
            "objectType": object_type,
            "classification": {"name": classification, "color": rgb},
            "measurements": _clean_measurements(measurements.get(label) if measurements else None, label),
            "metadata": {"label": str(label)},
        }
        if plane is not None:
            geometry["plane"] = dict(plane)
            properties["plane"] = dict(plane)
        yield {"type": "Feature", "geometry": geometry, "properties": properties}


def instances_to_geojson(
    labels: np.ndarray,
    path: PathLike,
    classification: str = "Nucleus",
    object_type: str = "detection",
    measurements: Mapping[int, Mapping[str, float]] | None = None,
    offset: tuple[float, float] = (0, 0),
    z: int | None = None,
    **kwargs: Any,
) -> int:
    """Write the instances of a label image as a QuPath-importable GeoJSON FeatureCollection.

    The file is streamed (header, then one feature per line as :func:`iter_features` yields it,
    never the whole list in memory) into a temporary file that replaces ``path`` atomically when
    complete. Import it in QuPath with *File > Import objects from file* (or drag and drop).

    Parameters
    ----------
    labels, classification, object_type, measurements, offset, z
        See :func:`iter_features`.
    path : str or os.PathLike
        Output ``.geojson`` file.
    **kwargs
        ``color``, ``tolerance``, ``holes`` of :func:`iter_features`.

    Returns
    -------
    int
        The number of features written.

    Raises
    ------
    ValueError
        On bad labels or arguments (nothing is written then).
    """
    features = iter_features(labels, classification, object_type, measurements, offset, z, **kwargs)
    return write_features(path, features)


def write_features(path: PathLike, features: Iterable[Mapping[str, Any]]) -> int:
    """Stream GeoJSON features into a ``FeatureCollection`` file, one feature per line.

    The features are consumed one at a time (an iterator over a whole slide's objects never
    becomes a list) and written to a temporary file that replaces ``path`` atomically when the
    iterator is exhausted; if it raises, ``path`` is left untouched.

    Returns
    -------
    int
        The number of features written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        for feature in features:
            fh.write(
                ("\n" if n == 0 else ",\n") + json.dumps(feature, separators=(",", ":"), allow_nan=False)
            )
            n += 1
        fh.write("\n]}\n")
    return n


# --------------------------------------------------------------------------------------------------
# reading and rasterising
# --------------------------------------------------------------------------------------------------


def read_annotations(path: PathLike) -> list[dict[str, Any]]:
    """Read the features of a GeoJSON file (QuPath export or any GeoJSON).

    Accepts a ``FeatureCollection``, a list of ``Feature`` objects (QuPath's "export as array") or
    a single ``Feature``.

    Returns
    -------
    list of dict
        The features, each with a ``geometry`` dict holding a ``type`` (features whose geometry is
        null are dropped with a warning).

    Raises
    ------
    InputError
        Naming the file, if it is missing, not JSON or not GeoJSON features.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found. Export the annotations from QuPath as GeoJSON.")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc}). Export the objects from QuPath with "
            "File > Export objects as GeoJSON."
        ) from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise InputError(f"{path}: expected a GeoJSON FeatureCollection, a Feature or a list of Features.")
    if not isinstance(features, list):
        raise InputError(f"{path}: 'features' must be a list.")
    out = []
    n_null = 0
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type", "Feature") != "Feature":
            raise InputError(f"{path}: item {i} is not a GeoJSON Feature.")
        geometry = feature.get("geometry")
        if geometry is None:
            n_null += 1
            continue
        if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
            raise InputError(f"{path}: feature {i} has no valid 'geometry' with a 'type'.")
        out.append(feature)
    if n_null:
        log.warning("%s: %d features without geometry ignored", path, n_null)
    return out


def class_name(feature: Mapping[str, Any]) -> str | None:
    """A feature's QuPath classification name (derived classes as ``"A: B"``), or None when unclassified."""
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls
    if isinstance(cls, dict):
        if isinstance(cls.get("name"), str):
            return cls["name"]
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
    return None


def _feature_z(feature: Mapping[str, Any]) -> int | None:
    props = feature.get("properties") or {}
    for plane in (feature.get("geometry", {}).get("plane"), props.get("plane")):
        if isinstance(plane, dict) and plane.get("z") is not None:
            return plane["z"]
    return props.get("z")


def _footprint(width: int) -> np.ndarray:
    """A digital disk of diameter ``width`` (``width x width`` box; 3 -> 3 x 3, 2 -> 2 x 2)."""
    c = (width - 1) / 2.0
    o = np.arange(width)
    return ((o[:, None] - c) ** 2 + (o[None, :] - c) ** 2) <= (width / 2.0) ** 2


def _coords(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2 or not np.all(np.isfinite(arr[:, :2])):
        raise ValueError("coordinates must be a list of finite [x, y] pairs")
    return arr[:, :2]


def _paint_polygon(out: np.ndarray, rings: list[Any], value: int | bool) -> None:
    """Fill a polygon (exterior minus holes) into ``out``: pixels whose centre lies inside."""
    from skimage.draw import polygon as draw_polygon

    if not rings:
        return
    h, w = out.shape
    ext = _coords(rings[0])
    rows, cols = ext[:, 1] - 0.5, ext[:, 0] - 0.5
    r0, r1 = max(int(math.floor(rows.min())), 0), min(int(math.ceil(rows.max())) + 1, h)
    c0, c1 = max(int(math.floor(cols.min())), 0), min(int(math.ceil(cols.max())) + 1, w)
    if r0 >= r1 or c0 >= c1:
        return
    local = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    rr, cc = draw_polygon(rows - r0, cols - c0, local.shape)
    local[rr, cc] = True
    for hole in rings[1:]:
        hc = _coords(hole)
        rr, cc = draw_polygon(hc[:, 1] - 0.5 - r0, hc[:, 0] - 0.5 - c0, local.shape)
        local[rr, cc] = False
    out[r0:r1, c0:c1][local] = value


def _paint_lines(out: np.ndarray, lines: list[np.ndarray], value: int | bool, width: int) -> None:
    """Draw polylines (and single points) ``width`` pixels thick into ``out``."""
    from skimage.draw import line as draw_line

    h, w = out.shape
    fp = _footprint(width)
    lo, hi = (width - 1) // 2, width // 2
    pts = [np.floor(line).astype(np.int64) for line in lines if len(line)]
    if not pts:
        return
    allp = np.concatenate(pts)
    r0, r1 = max(int(allp[:, 1].min()) - hi - 1, 0), min(int(allp[:, 1].max()) + hi + 2, h)
    c0, c1 = max(int(allp[:, 0].min()) - hi - 1, 0), min(int(allp[:, 0].max()) + hi + 2, w)
    if r0 >= r1 or c0 >= c1:
        return
    # centre line on a canvas padded by the footprint's reach, then dilated and cropped to the image
    pr0, pc0 = r0 - hi - 1, c0 - hi - 1
    canvas = np.zeros((r1 - r0 + 2 * (hi + 1), c1 - c0 + 2 * (hi + 1)), dtype=bool)
    for p in pts:
        rr_all, cc_all = [p[:1, 1]], [p[:1, 0]]
        for (xa, ya), (xb, yb) in zip(p[:-1], p[1:], strict=True):
            rr, cc = draw_line(int(ya), int(xa), int(yb), int(xb))
            rr_all.append(rr)
            cc_all.append(cc)
        rr = np.concatenate(rr_all) - pr0
        cc = np.concatenate(cc_all) - pc0
        keep = (rr >= 0) & (rr < canvas.shape[0]) & (cc >= 0) & (cc < canvas.shape[1])
        canvas[rr[keep], cc[keep]] = True
    if width > 1:
        # dilate by the footprint, spanning offsets -lo .. hi around each centre-line pixel
        grown = np.zeros_like(canvas)
        ch, cw = canvas.shape
        for dy, dx in zip(*np.nonzero(fp), strict=True):
            oy, ox = int(dy) - lo, int(dx) - lo
            grown[max(oy, 0) : ch + min(oy, 0), max(ox, 0) : cw + min(ox, 0)] |= canvas[
                max(-oy, 0) : ch - max(oy, 0), max(-ox, 0) : cw - max(ox, 0)
            ]
        canvas = grown
    local = canvas[r0 - pr0 : r1 - pr0, c0 - pc0 : c1 - pc0]
    out[r0:r1, c0:c1][local] = value


def paint_geometry(out: np.ndarray, geometry: Mapping[str, Any], value: int | bool, width: int = 3) -> None:
    """Paint one GeoJSON geometry into ``out`` in place, as :func:`geometry_mask` rasterises it, with ``value``."""
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Polygon":
        _paint_polygon(out, coords, value)
    elif kind == "MultiPolygon":
        for poly in coords:
            _paint_polygon(out, poly, value)
    elif kind == "LineString":
        _paint_lines(out, [_coords(coords)], value, width)
    elif kind == "MultiLineString":
        _paint_lines(out, [_coords(c) for c in coords], value, width)
    elif kind == "Point":
        _paint_lines(out, [_coords([coords])], value, width)
    elif kind == "MultiPoint":
        _paint_lines(out, [_coords([c]) for c in coords], value, width)
    elif kind == "GeometryCollection":
        for g in geometry.get("geometries", []):
            paint_geometry(out, g, value, width)
    else:
        raise ValueError(f"unsupported geometry type {kind!r}")


def _check_width(width: Any) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    return int(width)


def geometry_mask(geometry: Mapping[str, Any], shape: tuple[int, int], width: int = 3) -> np.ndarray:
    """Rasterise one GeoJSON geometry into a bool ``(H, W)`` mask.

    Polygons / MultiPolygons are filled (pixels whose centre lies inside the exterior and outside
    every hole); LineStrings / MultiLineStrings (and Points) are drawn ``width`` pixels thick (the
    pixels containing the vertices, joined by Bresenham lines, dilated by a digital disk of
    diameter ``width``). Coordinates are QuPath pixels: ``(x, y)``, origin at the top-left corner.

    Raises
    ------
    ValueError
        On an unsupported geometry type or malformed coordinates.
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {shape}")
    out = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    paint_geometry(out, geometry, True, _check_width(width))
    return out


def rasterize_annotations(
    path: PathLike, shape: tuple[int, ...], class_to_value: Mapping[str, int], width: int = 3
) -> np.ndarray:
    """Rasterise the classified features of a GeoJSON file into a value map.

    Parameters
    ----------
    path : str or os.PathLike
        GeoJSON file (see :func:`read_annotations`).
    shape : tuple of int
        ``(H, W)``, or ``(Z, H, W)`` for a stack: each feature then goes to slice
        ``geometry.plane.z`` (where QuPath writes it), else ``properties.plane.z``, else
        ``properties.z``.
    class_to_value : mapping
        Classification name -> value, matched case-insensitively (e.g. ``{"Foreground": 1,
        "Background": 2}``). Features of other (or no) classes are ignored with one logged warning
        listing the class names seen.
    width : int
        Thickness in pixels of lines and points (polygons are filled).

    Returns
    -------
    numpy.ndarray
        int32 ``shape``: 0 where no feature was drawn; features are painted in file order, a later
        one overwriting an earlier one where they overlap.

    Raises
    ------
    InputError
        Naming the file and feature, for a file that cannot be read, a feature without ``z`` (or
        with a ``z`` outside the stack) when ``shape`` is 3-D, or a malformed geometry.
    ValueError
        On bad ``shape``, ``class_to_value`` or ``width``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) or (Z, H, W), got {shape}")
    width = _check_width(width)
    lookup: dict[str, int] = {}
    for name, value in class_to_value.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"class_to_value must map names to integers, got {name!r}: {value!r}")
        lookup[name.lower()] = int(value)
    path = Path(path)
    features = read_annotations(path)
    out = np.zeros(shape, dtype=np.int32)
    ignored: dict[str, int] = {}
    for i, feature in enumerate(features):
        name = class_name(feature)
        value = lookup.get(name.lower()) if name is not None else None
        if value is None:
            key = name if name is not None else "<unclassified>"
            ignored[key] = ignored.get(key, 0) + 1
            continue
        if len(shape) == 3:
            z = _feature_z(feature)
            if z is None:
                raise InputError(
                    f"{path}: feature {i} ({name}) has no z plane, but the stack has {shape[0]} slices. "
                    "Draw the annotation on its slice in QuPath (geometry.plane.z) or set properties.z."
                )
            if isinstance(z, bool) or not isinstance(z, (int, float)) or z != int(z) or not 0 <= z < shape[0]:
                raise InputError(
                    f"{path}: feature {i} ({name}) has z = {z!r}, outside the stack's 0..{shape[0] - 1}."
                )
            target = out[int(z)]
        else:
            target = out
        try:
            paint_geometry(target, feature["geometry"], value, width)
        except (ValueError, TypeError, IndexError) as exc:
            raise InputError(f"{path}: feature {i} ({name}) has a malformed geometry: {exc}.") from exc
    if ignored:
        log.warning(
            "%s: ignored %d features whose class is not one of %s; classes seen: %s",
            path,
            sum(ignored.values()),
            sorted(lookup),
            ", ".join(f"{k} ({v})" for k, v in sorted(ignored.items())),
        )
    return out
