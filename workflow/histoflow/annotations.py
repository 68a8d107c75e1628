"""Whole slides annotated in QuPath as training and test data: regions, labelled objects, and their label tiles.

One slide's QuPath GeoJSON export (File > Export objects as GeoJSON; read by :func:`histoflow.qupath.read_annotations`)
holds two kinds of polygon:

- **regions**, whose classification matches the dataset's ``regions`` pattern (``Region*``): where labelling is
  complete. Inside a region every pixel that no object covers is background; outside every region nothing is used
  (the loss gives those pixels weight 0 and evaluation leaves them out);
- **objects**, whose classification is one of the dataset's ``classes``: one instance each (a MultiPolygon is one
  object, as QuPath treats it), of that class.

Rules, stated once here and tested in ``tests/unit/test_annotations.py``:

- coordinates are level-0 pixels of the slide (QuPath's); at the working resolution (``downsample`` level-0 pixels
  per pixel) a pixel belongs to a polygon when its centre lies inside it and outside its holes
  (:func:`histoflow.qupath.paint_geometry`);
- overlapping objects: **the smaller wins** (objects are painted largest first), so a nucleus drawn inside a tumour
  outline keeps its own class and id; overlaps between objects of different classes are logged once per file;
- a self-intersecting polygon is repaired with shapely's ``make_valid`` (its polygonal parts kept) with a warning
  naming the feature; points and lines label no pixels and are skipped with a warning;
- a feature partly outside the slide is clipped to it with a warning; wholly outside it, an unknown or missing
  classification, a slide without annotations or without a region are errors naming the file, the feature and the
  fix, raised when the workflow is parsed (before any job).

Each region is read as one or more **windows** (:func:`region_windows`): its bounding box at the working resolution,
split into near-equal parts of at most ``tile`` pixels, so memory stays bounded however large a region is drawn.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import InputError, PathLike

log = logging.getLogger(__name__)

#: Defaults of an annotated-slides dataset's own keys (config.schema.yaml documents them). Applied when the dataset is
#: resolved rather than by the schema, so that image-folder datasets do not carry keys they have no use for.
SLIDE_DATASET_DEFAULTS = {"base_mpp": None, "regions": "Region*", "tile": 2048, "predict_slides": "test"}


@dataclass(frozen=True)
class SlideAnnotations:
    """One slide's validated annotations in level-0 pixels.

    ``regions``: shapely (Multi)Polygons sorted by their top-left corner (row, then column); ``objects``:
    ``(geometry, class value)`` in painting order (largest area first, so the smaller wins where they overlap).
    """

    path: str
    regions: list[Any]
    objects: list[tuple[Any, int]]


@dataclass(frozen=True)
class Window:
    """A part of a region read as one image: rows ``y .. y+h``, columns ``x .. x+w`` at the working resolution."""

    stem: str
    region: int
    y: int
    x: int
    h: int
    w: int


def _describe(i: int, feature: Mapping[str, Any], name: str | None) -> str:
    fid = feature.get("id") or (feature.get("properties") or {}).get("name")
    return f"feature {i}" + (f" (id {fid})" if fid else "") + f" [{name or 'unclassified'}]"


def _polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry (a GeometryCollection from ``make_valid`` may hold lines and points)."""
    import shapely

    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def load_slide_annotations(
    path: PathLike, slide_size: tuple[int, int], classes: Mapping[str, int], regions: str, slide: str = "",
) -> SlideAnnotations:
    """Read and check one slide's QuPath GeoJSON (see the module's rules).

    Parameters
    ----------
    path : str or os.PathLike
        The GeoJSON file.
    slide_size : (int, int)
        ``(height, width)`` of the slide's level 0.
    classes : mapping
        Classification name -> class value (>= 1) of the objects; names match exactly, as QuPath's do.
    regions : str
        ``fnmatch`` pattern of the region classification(s), e.g. ``Region*``.
    slide : str
        The slide's name, for messages.

    Raises
    ------
    InputError
        Naming the file, the feature and the fix (see the module docstring).
    """
    import shapely
    from shapely.geometry import shape as as_shape

    from .qupath import class_name, read_annotations

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no annotations for slide {slide!r}. Export its objects from QuPath (File > Export "
                         "objects as GeoJSON) under this name, or remove the slide from the dataset.")
    features = read_annotations(path)
    if not features:
        raise InputError(f"{path}: the slide {slide!r} has no annotations. Draw its regions and objects in QuPath and "
                         "export them again, or remove the slide from the dataset.")
    height, width = slide_size
    frame = shapely.box(0, 0, width, height)
    known = f"classes {sorted(classes)} or regions matching {regions!r}"
    region_geoms, objects, skipped = [], [], 0
    for i, feature in enumerate(features):
        name = class_name(feature)
        what = _describe(i, feature, name)
        is_region = name is not None and fnmatch.fnmatchcase(name, regions)
        if not is_region and (name is None or name not in classes):
            raise InputError(f"{path}: {what} has " + ("no classification" if name is None else
                             f"the classification {name!r}") + f"; the dataset knows {known}. Classify it in QuPath, "
                             "add its class to the dataset's classes, or delete it.")
        try:
            geom = as_shape(feature["geometry"])
        except Exception as exc:  # noqa: BLE001 - shapely raises several types for malformed coordinates
            raise InputError(f"{path}: {what} has a malformed geometry ({exc}).") from exc
        if geom.geom_type not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            skipped += 1
            continue
        if not geom.is_valid:
            reason = shapely.is_valid_reason(geom)
            geom = _polygonal(shapely.make_valid(geom))
            log.warning("%s: %s is not a valid polygon (%s); repaired with make_valid", path, what, reason)
        geom = _polygonal(geom)
        if geom.is_empty or geom.area == 0:
            skipped += 1
            continue
        if not geom.intersects(frame) or geom.intersection(frame).area == 0:
            x0, y0, x1, y1 = geom.bounds
            raise InputError(f"{path}: {what} lies outside the slide {slide!r} (x {x0:.0f}..{x1:.0f}, y {y0:.0f}.."
                             f"{y1:.0f}; the slide is {width} x {height} pixels at level 0). Were the annotations "
                             "exported from another image, or from a crop of it? Export them from this slide.")
        if not frame.contains(geom):
            geom = _polygonal(geom.intersection(frame))
            log.warning("%s: %s reaches outside the slide; clipped to it", path, what)
        if is_region:
            region_geoms.append(geom)
        else:
            objects.append((geom, int(classes[name]), i, name))
    if skipped:
        log.warning("%s: %d points, lines or empty shapes skipped (only polygons label pixels)", path, skipped)
    if not region_geoms:
        raise InputError(f"{path}: no region on slide {slide!r}: draw at least one annotation classified as "
                         f"{regions!r} around each part you labelled completely (QuPath: set its class), or set the "
                         "dataset's regions to the class you used.")
    _warn_overlaps(path, objects)
    objects.sort(key=lambda o: -o[0].area)  # the smaller wins: painted last
    region_geoms.sort(key=lambda g: (g.bounds[1], g.bounds[0]))
    return SlideAnnotations(str(path), region_geoms, [(g, v) for g, v, _, _ in objects])


def _warn_overlaps(path: Path, objects: list[tuple[Any, int, int, str]]) -> None:
    """Log once per file how many pairs of objects of different classes overlap, with the first pair."""
    import shapely

    if len(objects) < 2:
        return
    geoms = [o[0] for o in objects]
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = [(a, b) for a, b in zip(left.tolist(), right.tolist(), strict=True)
             if a < b and objects[a][1] != objects[b][1] and geoms[a].intersection(geoms[b]).area > 0]
    if pairs:
        a, b = objects[pairs[0][0]], objects[pairs[0][1]]
        log.warning("%s: %d overlapping pair(s) of objects of different classes, e.g. features %d [%s] and %d [%s]; "
                    "where they overlap the smaller object wins", path, len(pairs), a[2], a[3], b[2], b[3])


def _parts(start: int, stop: int, tile: int) -> list[tuple[int, int]]:
    """``[start, stop)`` split into the fewest near-equal ``(start, length)`` parts of at most ``tile``."""
    n = max(1, math.ceil((stop - start) / tile))
    edges = np.linspace(start, stop, n + 1).round().astype(int)
    return [(int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def region_windows(ann: SlideAnnotations, slide: str, downsample: float, shape: tuple[int, int],
                   tile: int) -> list[Window]:
    """The windows every region of a slide is read in, at the working resolution (``shape`` = its size there).

    A region's window is its bounding box (outer pixel edges, clipped to the slide), split into near-equal parts of
    at most ``tile`` pixels. Stems: ``<slide>_r<k>`` (``k`` from 1, regions in reading order), ``_<j>`` appended
    when the region has several parts.
    """
    out: list[Window] = []
    for k, region in enumerate(ann.regions, start=1):
        x0, y0, x1, y1 = region.bounds
        ys = (max(int(math.floor(y0 / downsample)), 0), min(int(math.ceil(y1 / downsample)), shape[0]))
        xs = (max(int(math.floor(x0 / downsample)), 0), min(int(math.ceil(x1 / downsample)), shape[1]))
        parts = [(y, h, x, w) for y, h in _parts(*ys, tile) for x, w in _parts(*xs, tile)]
        for j, (y, h, x, w) in enumerate(parts, start=1):
            stem = f"{slide}_r{k}" + (f"_{j}" if len(parts) > 1 else "")
            out.append(Window(stem, k, y, x, h, w))
    return out


def _in_window(geom: Any, window: Window, downsample: float) -> dict[str, Any]:
    """A level-0 geometry as GeoJSON in the window's pixel coordinates (origin at its top-left corner)."""
    import shapely
    from shapely.geometry import mapping

    offset = np.array([window.x, window.y], np.float64)
    return mapping(shapely.transform(geom, lambda xy: xy / downsample - offset))


def rasterize_window(ann: SlideAnnotations, window: Window,
                     downsample: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels int32, classes uint8, valid bool)``, each ``(h, w)``, of one window.

    ``valid``: inside a region; ``labels``: one id per object (1, 2, ... in painting order, the smaller object on
    top), 0 for background and outside the regions; ``classes``: the objects' class values, 0 elsewhere.
    """
    import shapely
    from skimage.segmentation import relabel_sequential

    from .qupath import paint_geometry

    shape = (window.h, window.w)
    box = shapely.box(window.x * downsample, window.y * downsample, (window.x + window.w) * downsample,
                      (window.y + window.h) * downsample)
    valid = np.zeros(shape, bool)
    for region in ann.regions:
        if region.intersects(box):
            paint_geometry(valid, _in_window(region, window, downsample), True)
    labels = np.zeros(shape, np.int32)
    classes = np.zeros(shape, np.uint8)
    if ann.objects:
        hits = shapely.intersects(np.array([g for g, _ in ann.objects], dtype=object), box)
        for k, i in enumerate(np.flatnonzero(hits), start=1):
            geom, value = ann.objects[i]
            shape_json = _in_window(geom, window, downsample)
            paint_geometry(labels, shape_json, k)
            paint_geometry(classes, shape_json, value)
    labels[~valid], classes[~valid] = 0, 0
    labels = relabel_sequential(labels)[0].astype(np.int32)
    return labels, classes, valid


def annotation_file(folder: PathLike, slide: str, slide_path: PathLike) -> Path:
    """``<folder>/<slide>.geojson``, or ``<folder>/<file name>.geojson`` (``s1.svs.geojson``) when only that exists."""
    plain = Path(folder) / f"{slide}.geojson"
    named = Path(folder) / f"{Path(slide_path).name}.geojson"
    return named if not plain.exists() and named.exists() else plain


def class_values(classes: Mapping[str, int] | list[str]) -> dict[str, int]:
    """The dataset's ``classes``: a mapping name -> class value as given, or a list of names all of class 1."""
    return dict(classes) if isinstance(classes, Mapping) else {str(n): 1 for n in classes}


def window_files(stem: str, multiclass: bool) -> tuple[str, str]:
    """File names of a window's labels (multi-class: a class map PNG, else an instance TIFF) and region mask."""
    return f"{stem}.png" if multiclass else f"{stem}.tif", f"{stem}_region.png"
