"""Whole-slide images: reading at a chosen resolution, tissue detection, streaming tiled inference
with bounded memory, region split/merge, pyramidal OME-TIFF and QuPath GeoJSON outputs.

The stage in five steps, each usable on its own:

1. :func:`open_slide` opens a slide (OpenSlide for SVS/NDPI/MRXS/..., tifffile + zarr for
   pyramidal and OME-TIFF, or any ordinary image in memory) at a resolution given in µm per pixel
   or as a pyramid level, and reads regions of it as ``uint8 (h, w, 3)`` RGB.
2. :func:`detect_tissue` finds tissue on a low-resolution thumbnail (Otsu on saturation and/or
   optical density, then closing, hole filling and small-object removal); :class:`TissueMask`
   says how much of a tile is tissue. Background tiles are never sent to the model.
3. :func:`predict_slide` runs a predictor over the tissue tiles of a slide, evenly spaced with
   overlap (:func:`histoflow.tiling.tile_starts`) and blended with a smooth window, reading and
   stain-normalizing tiles in DataLoader workers and accumulating the weighted outputs in a band of
   rows that moves down the slide; finished rows are normalized by their summed weights and written
   to a chunked zarr store, so memory is bounded by the slide's width, never its area. Every pixel
   gets exactly the operations, in the same order, as in :func:`histoflow.tiling.predict_tiled` on
   the whole image, so the two agree bit for bit where the image fits in memory.
4. :func:`split_regions` cuts the tile grid into row bands for separate jobs; each job also runs
   the tile rows above its band that overlap it (its halo), so it finishes its own rows exactly as
   one job over the whole slide would, and :func:`merge_regions` only concatenates bands.
5. :func:`write_ome_pyramid` writes a zarr array as a tiled, pyramidal OME-TIFF (sub-resolutions
   as SubIFDs, physical pixel size in the OME-XML and the TIFF resolution tags) tile by tile;
   :func:`slide_instances` turns the probability map into instance labels block by block (each
   object is kept by the block that holds the top-left corner of its connected component) and
   streams them into a QuPath GeoJSON FeatureCollection with per-object measurements.

Coordinates: ``(y, x)`` = (row, column) in pixels of the slide *at the chosen resolution* unless
stated otherwise; GeoJSON coordinates are level-0 pixels (what QuPath shows for the slide file).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import InputError, atomic_path

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

#: Suffixes read through OpenSlide first (tifffile is the fallback for the TIFF-based ones).
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide", ".dcm")
#: Suffixes read through tifffile + zarr first (OpenSlide is the fallback).
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
#: Ordinary images, read whole into memory.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SLIDE_SUFFIXES = OPENSLIDE_SUFFIXES + TIFF_SUFFIXES + IMAGE_SUFFIXES

#: Relative tolerance when matching a requested µm/pixel to a pyramid level (scanners report
#: 0.2527 for a "0.25" objective, pyramids have downsamples like 4.0002).
MPP_TOLERANCE = 0.05
#: Plausible µm/pixel range for resolution tags (72 dpi "defaults" are not a pixel size).
_MPP_RANGE = (0.01, 100.0)
#: Rows (and columns) of one zarr chunk of the probability and label stores; the inference band
#: holds ``tile + CHUNK`` rows and is written out a chunk row at a time.
CHUNK = 512


# ==================================================================================================
# reading slides
# ==================================================================================================


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size and its downsample factor relative to level 0."""

    height: int
    width: int
    downsample: float


class _Backend:
    """A slide file's pyramid. Subclasses implement ``_open`` and ``read``; handles are opened
    lazily and dropped on pickling, so a backend can be sent to DataLoader worker processes (each
    opens its own file handle)."""

    name = "base"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.levels: list[Level] = []
        self.mpp: float | None = None
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def reset(self) -> None:
        """Forget the file handle (call in a forked worker before its first read)."""
        self._handle = None

    def close(self) -> None:
        handle, self._handle = self._handle, None
        close = getattr(handle, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``uint8 (h, w, 3)`` of ``level``; the region must lie inside the level."""
        raise NotImplementedError


class _ArrayBackend(_Backend):
    """An image held in memory (PNG/JPEG/..., or an array given directly): one level."""

    name = "image"

    def __init__(self, path: Path, image: np.ndarray | None = None) -> None:
        super().__init__(path)
        if image is None:
            from .io import read_rgb

            image = read_rgb(path)
        self.image = _as_rgb(image, str(path))
        self.levels = [Level(self.image.shape[0], self.image.shape[1], 1.0)]

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.image[y : y + h, x : x + w]


class _TiffBackend(_Backend):
    """Pyramidal TIFF / OME-TIFF / SVS / NDPI through tifffile, each level as a zarr array; a
    read decodes only the tiles that overlap the region."""

    name = "tifffile"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import tifffile

        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise InputError(f"{path}: the TIFF holds no image series.")
            series = tf.series[0]
            self._axes = series.axes
            levels = list(series.levels) or [series]
            ys, xs = self._axes.index("Y"), self._axes.index("X")
            h0 = levels[0].shape[ys]
            self.levels = [
                Level(int(lv.shape[ys]), int(lv.shape[xs]), float(h0) / float(lv.shape[ys])) for lv in levels
            ]
            self.mpp = _tiff_mpp(tf)
        self._check_axes()

    def _check_axes(self) -> None:
        axes = self._axes
        other = [a for a in axes if a not in "YXSC"]
        if "Y" not in axes or "X" not in axes or len(axes) - len(other) > 3:
            raise InputError(
                f"{self.path}: unsupported TIFF layout (axes {axes!r}); expected a 2-D RGB or grey image "
                "(axes YXS, SYX, CYX or YX). Convert it to a pyramidal RGB TIFF, e.g. with "
                "'vips tiffsave in out.tif --tile --pyramid'."
            )

    def _open(self) -> list[Any]:
        if self._handle is None:
            import tifffile
            import zarr

            store = tifffile.imread(self.path, aszarr=True, series=0)
            root = zarr.open(store, mode="r")
            if hasattr(root, "shape"):  # one level: an array
                self._handle = [root]
            else:
                self._handle = [root[str(i)] for i in range(len(self.levels))]
        return self._handle

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        arr = self._open()[level]
        index: list[Any] = []
        for a in self._axes:
            if a == "Y":
                index.append(slice(y, y + h))
            elif a == "X":
                index.append(slice(x, x + w))
            elif a in "SC":
                index.append(slice(None))
            else:
                index.append(0)
        data = np.asarray(arr[tuple(index)])
        kept = [a for a in self._axes if a in "YXSC"]
        order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a in "SC"]
        data = np.transpose(data, order)
        return _as_rgb(data, str(self.path))


class _OpenSlideBackend(_Backend):
    """SVS, NDPI, MRXS, SCN, VMS, BIF, DICOM and generic tiled TIFF through OpenSlide."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        osr = self._open()
        self.levels = [
            Level(int(h), int(w), float(d))
            for (w, h), d in zip(osr.level_dimensions, osr.level_downsamples, strict=True)
        ]
        props = osr.properties
        try:
            mpp = float(props.get("openslide.mpp-x", "nan"))
        except ValueError:
            mpp = float("nan")
        self.mpp = mpp if math.isfinite(mpp) and mpp > 0 else None

    def _open(self) -> Any:
        if self._handle is None:
            openslide = _import_openslide(self.path)
            try:
                self._handle = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideError as exc:
                raise InputError(f"{self.path}: OpenSlide cannot read this file ({exc}).") from exc
            except openslide.OpenSlideUnsupportedFormatError as exc:
                raise InputError(
                    f"{self.path}: not a format OpenSlide reads ({exc}). Supported: SVS, NDPI, MRXS, SCN, "
                    "VMS/VMU, BIF, DICOM, tiled TIFF; convert other formats to a pyramidal TIFF."
                ) from exc
        return self._handle

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        osr = self._open()
        ds = self.levels[level].downsample
        rgba = np.asarray(osr.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h)))
        rgb = rgba[..., :3]
        alpha = rgba[..., 3:4]
        if alpha.min() < 255:  # transparent = not scanned: composite onto white (glass)
            a = alpha.astype(np.uint16)
            rgb = ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)


def _import_openslide(path: Path) -> Any:
    try:
        import openslide
    except (ImportError, OSError) as exc:
        raise InputError(
            f"{path}: reading this slide needs OpenSlide, which is not installed ({exc}). Install it with "
            "'python -m pip install openslide-python openslide-bin' (or 'conda install -c conda-forge "
            "openslide-python'), or convert the slide to a pyramidal TIFF (read with tifffile)."
        ) from exc
    return openslide


def _as_rgb(data: np.ndarray, name: str) -> np.ndarray:
    if data.dtype == np.uint8 and data.ndim == 3 and data.shape[2] == 3:
        return data
    from .stain import to_rgb_uint8

    return to_rgb_uint8(np.asarray(data), name=name)


def _tiff_mpp(tf: Any) -> float | None:
    """µm per pixel of level 0 from OME-XML, the Aperio description, or the resolution tags."""
    import tifffile

    with contextlib.suppress(Exception):
        if tf.is_ome and tf.ome_metadata:
            image = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
            size = float(pixels["PhysicalSizeX"])
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit)
            if scale is not None and size > 0:
                return size * scale
    with contextlib.suppress(Exception):
        if tf.is_svs:
            mpp = float(tifffile.svs_description_metadata(tf.pages[0].description)["MPP"])
            if mpp > 0:
                return mpp
    with contextlib.suppress(Exception):
        page = tf.pages[0]
        xres = float(page.resolution[0])
        unit = int(page.resolutionunit)
        if xres > 0 and unit in (2, 3):  # inch, centimetre
            mpp = (25400.0 if unit == 2 else 10000.0) / xres
            if _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]:
                return mpp
    return None


def _area_weights(start: int, n: int, factor: float, src_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``(n, m)`` and weights ``float32 (n, m)`` of output pixels ``start .. start+n-1``
    when ``factor`` source pixels make one output pixel (area averaging, ``factor >= 1``).

    Output pixel ``i`` covers the source interval ``[i f, (i + 1) f)``; each source pixel weighs the
    length of its overlap with it. The weights of a pixel depend only on its global index, so a
    region read in pieces equals the region read whole.
    """
    i = np.arange(start, start + n, dtype=np.float64)
    lo, hi = i * factor, (i + 1) * factor
    k0 = np.floor(lo).astype(np.int64)
    m = int(math.ceil(factor)) + 1
    k = k0[:, None] + np.arange(m)[None, :]
    w = np.minimum(k + 1, hi[:, None]) - np.maximum(k, lo[:, None])
    w = np.clip(w, 0.0, None)
    w[k >= src_len] = 0.0
    k = np.minimum(k, src_len - 1)
    w /= w.sum(axis=1, keepdims=True)
    return k, w.astype(np.float32)


def _resample_axis(src: np.ndarray, k: np.ndarray, w: np.ndarray, offset: int, axis: int) -> np.ndarray:
    """Weighted gather along ``axis`` (0 or 1) of a float32 ``(h, w, 3)`` array."""
    idx = k - offset
    out = None
    for j in range(k.shape[1]):
        part = np.take(src, idx[:, j], axis=axis)
        wj = w[:, j][:, None, None] if axis == 0 else w[:, j][None, :, None]
        out = part * wj if out is None else out + part * wj
    assert out is not None  # k has at least two columns
    return out


class Slide:
    """A slide at one resolution (a pyramid level, optionally area-resampled to a µm/pixel).

    Attributes
    ----------
    shape : tuple of int
        ``(height, width)`` at this resolution.
    mpp : float or None
        µm per pixel at this resolution (None when the file has no pixel size).
    level : int
        The pyramid level regions are read from.
    factor : float
        Level pixels per output pixel (1 = the level as it is; > 1 = area-averaged down).
    downsample : float
        Level-0 pixels per output pixel (level downsample × ``factor``): multiply by it to get
        coordinates on the original slide (QuPath's pixel coordinates).
    """

    def __init__(self, backend: _Backend, level: int = 0, factor: float = 1.0) -> None:
        if not 0 <= level < len(backend.levels):
            raise ValueError(f"level {level} out of range 0..{len(backend.levels) - 1}")
        if factor < 1.0 - 1e-9:
            raise ValueError(f"factor must be >= 1 (area downsampling), got {factor}")
        self.backend = backend
        self.level = level
        self.factor = 1.0 if abs(factor - 1.0) < 1e-9 else float(factor)
        lv = backend.levels[level]
        self.shape = (
            (lv.height, lv.width)
            if self.factor == 1.0
            else (int(math.floor(lv.height / self.factor + 1e-9)), int(math.floor(lv.width / self.factor + 1e-9)))
        )
        if min(self.shape) < 1:
            raise InputError(f"{backend.path}: the slide is empty at this resolution (shape {self.shape}).")
        self.downsample = lv.downsample * self.factor
        self.mpp = None if backend.mpp is None else backend.mpp * self.downsample

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_array(cls, image: np.ndarray, mpp: float | None = None, name: str = "<array>") -> Slide:
        """Wrap an in-memory ``(H, W, 3)`` image (uint8, or anything ``to_rgb_uint8`` takes)."""
        backend = _ArrayBackend(Path(name), image)
        backend.mpp = mpp
        return cls(backend)

    @property
    def path(self) -> Path:
        return self.backend.path

    @property
    def levels(self) -> list[Level]:
        return self.backend.levels

    def reset(self) -> None:
        """Forget file handles (each DataLoader worker process opens its own)."""
        self.backend.reset()

    def close(self) -> None:
        self.backend.close()

    def info(self) -> dict[str, Any]:
        """JSON-friendly description (path, backend, levels, the chosen resolution)."""
        return {
            "path": str(self.path),
            "backend": self.backend.name,
            "levels": [[lv.height, lv.width, lv.downsample] for lv in self.levels],
            "base_mpp": self.backend.mpp,
            "level": self.level,
            "factor": self.factor,
            "downsample": self.downsample,
            "mpp": self.mpp,
            "shape": list(self.shape),
        }

    # ---- reading ----------------------------------------------------------------------------
    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``uint8 (h, w, 3)`` RGB of rows ``y .. y+h`` and columns ``x .. x+w`` at this resolution.

        Parts outside the slide are white (glass). Only the tiles of the file that overlap the
        region are decoded.
        """
        if h < 0 or w < 0:
            raise ValueError(f"region size must be >= 0, got {h}x{w}")
        out_h, out_w = self.shape
        y0, y1 = max(y, 0), min(y + h, out_h)
        x0, x1 = max(x, 0), min(x + w, out_w)
        if (y0, x0, y1, x1) == (y, x, y + h, x + w):
            return self._read_inside(y, x, h, w)
        out = np.full((h, w, 3), 255, np.uint8)
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read_inside(y0, x0, y1 - y0, x1 - x0)
        return out

    def _read_inside(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)
        if self.factor == 1.0:
            return self.backend.read(self.level, y, x, h, w)
        lv = self.levels[self.level]
        ky, wy = _area_weights(y, h, self.factor, lv.height)
        kx, wx = _area_weights(x, w, self.factor, lv.width)
        sy0, sy1 = int(ky.min()), int(ky.max()) + 1
        sx0, sx1 = int(kx.min()), int(kx.max()) + 1
        src = self.backend.read(self.level, sy0, sx0, sy1 - sy0, sx1 - sx0).astype(np.float32)
        rows = _resample_axis(src, ky, wy, sy0, axis=0)
        out = _resample_axis(rows, kx, wx, sx0, axis=1)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """Low-resolution RGB of the whole slide, longest side at most ``max_size``.

        Read from the coarsest pyramid level that is still at least as fine as the thumbnail, area
        averaged, in strips (memory stays bounded for slides without a pyramid).

        Returns
        -------
        (np.ndarray, float)
            ``uint8 (h, w, 3)`` and the scale: pixels of this slide (at its chosen resolution) per
            thumbnail pixel.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        h, w = self.shape
        scale = max(h / max_size, w / max_size, 1.0)
        want = scale * self.downsample  # level-0 pixels per thumbnail pixel
        level = max((i for i, lv in enumerate(self.levels) if lv.downsample <= want * (1 + 1e-6)), default=0,
                    key=lambda i: self.levels[i].downsample)
        view = Slide(self.backend, level, max(want / self.levels[level].downsample, 1.0))
        th, tw = view.shape
        src_w = self.levels[level].width
        strip = max(1, int(8e6 / max(src_w * view.factor, 1)))  # ~8 MP of the level per strip
        out = np.empty((th, tw, 3), np.uint8)
        for y in range(0, th, strip):
            out[y : y + strip] = view.read_region(y, 0, min(strip, th - y), tw)
        return out, view.downsample / self.downsample


def open_slide(
    path: PathLike,
    mpp: float | None = None,
    level: int | None = None,
    *,
    base_mpp: float | None = None,
    backend: str = "auto",
) -> Slide:
    """Open a whole-slide image (or any image) at a resolution.

    Parameters
    ----------
    path:
        SVS, NDPI, MRXS, SCN, VMS, BIF, DICOM (OpenSlide), pyramidal TIFF / OME-TIFF (tifffile +
        zarr; OpenSlide as fallback), or PNG/JPEG/BMP/WebP (read whole into memory).
    mpp:
        Wanted µm per pixel. The coarsest level at or finer than it is read and area-averaged down
        to it (within :data:`MPP_TOLERANCE` a level is used as it is). Needs a pixel size in the
        file or ``base_mpp``.
    level:
        A pyramid level instead (0 = full resolution). Give ``mpp`` or ``level``, not both; neither
        means level 0.
    base_mpp:
        µm per pixel of level 0, overriding (or supplying) the file's.
    backend:
        ``auto``, ``openslide``, ``tifffile`` or ``image``.

    Raises
    ------
    InputError
        Naming the file and the fix: missing file, unsupported format, OpenSlide not installed,
        no pixel size for an ``mpp`` request, ``mpp`` finer than level 0, level out of range.
    """
    path = Path(path)
    if mpp is not None and level is not None:
        raise ValueError("give mpp or level, not both (slides.mpp / slides.level in config.yaml)")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    if not path.exists():
        raise InputError(f"{path}: slide not found. Check the paths under slides.images in config.yaml.")
    be = _open_backend(path, backend)
    if base_mpp is not None:
        if not base_mpp > 0:
            raise ValueError(f"base_mpp must be > 0, got {base_mpp}")
        if be.mpp is not None and abs(be.mpp - base_mpp) > MPP_TOLERANCE * base_mpp:
            log.warning("%s: the file says %.4f µm/px at level 0; using base_mpp %.4f", path, be.mpp, base_mpp)
        be.mpp = float(base_mpp)
    if level is not None:
        if not 0 <= level < len(be.levels):
            raise InputError(
                f"{path}: level {level} does not exist; the slide has levels 0..{len(be.levels) - 1} "
                f"(downsamples {', '.join(f'{lv.downsample:g}' for lv in be.levels)}). Fix slides.level."
            )
        return Slide(be, level)
    if mpp is None:
        return Slide(be, 0)
    if be.mpp is None:
        raise InputError(
            f"{path}: the file has no pixel size (µm per pixel), so slides.mpp = {mpp} cannot be honoured. "
            "Set slides.base_mpp to the scanner's µm/pixel at full resolution, or use slides.level."
        )
    if mpp < be.mpp * (1 - MPP_TOLERANCE):
        raise InputError(
            f"{path}: requested {mpp} µm/px is finer than the slide's full resolution ({be.mpp:.4f} µm/px at "
            f"level 0); choose slides.mpp >= {be.mpp:.4f}, or level: 0."
        )
    candidates = [i for i, lv in enumerate(be.levels) if be.mpp * lv.downsample <= mpp * (1 + MPP_TOLERANCE)]
    best = max(candidates, key=lambda i: be.levels[i].downsample)
    factor = mpp / (be.mpp * be.levels[best].downsample)
    if abs(factor - 1.0) <= MPP_TOLERANCE or factor < 1.0:
        factor = 1.0
    return Slide(be, best, factor)


def _open_backend(path: Path, backend: str) -> _Backend:
    suffix = path.suffix.lower()
    if backend == "image":
        return _ArrayBackend(path)
    if backend == "tifffile":
        return _try_tiff(path)
    if backend == "openslide":
        return _OpenSlideBackend(path)
    if backend != "auto":
        raise ValueError(f"backend must be auto, openslide, tifffile or image, got {backend!r}")
    if path.is_dir() or suffix in OPENSLIDE_SUFFIXES:
        try:
            return _OpenSlideBackend(path)
        except InputError:
            if suffix not in (".svs", ".ndpi"):
                raise
            log.info("%s: OpenSlide failed, trying tifffile", path)
            return _try_tiff(path)
    if suffix in TIFF_SUFFIXES:
        try:
            return _try_tiff(path)
        except InputError as exc:
            log.info("%s: tifffile failed (%s), trying OpenSlide", path, exc)
            try:
                return _OpenSlideBackend(path)
            except InputError:
                raise exc from None
    if suffix in IMAGE_SUFFIXES:
        return _ArrayBackend(path)
    raise InputError(
        f"{path}: unsupported slide format {suffix!r}. Use one of {', '.join(SLIDE_SUFFIXES)} (convert "
        "others to a pyramidal TIFF, e.g. with 'vips tiffsave in out.tif --tile --pyramid --compression jpeg')."
    )


def _try_tiff(path: Path) -> _Backend:
    import tifffile

    try:
        return _TiffBackend(path)
    except InputError:
        raise
    except (tifffile.TiffFileError, ValueError, KeyError, OSError) as exc:
        raise InputError(f"{path}: cannot be read as a TIFF ({exc}).") from exc


def find_slides(spec: Mapping[str, str] | Sequence[str], base: PathLike = ".") -> dict[str, Path]:
    """Slide name → path from ``slides.images``: a mapping, or a list of files, folders (every
    slide inside) and glob patterns (names = file stems). Relative paths are taken from ``base``.

    Raises
    ------
    InputError
        A listed file or folder that does not exist, a pattern or folder without slides, two
        slides with the same name, or a name with characters unfit for file names.
    """
    base = Path(base)
    found: dict[str, Path] = {}

    def add(name: str, p: Path) -> None:
        if not name or any(c in name for c in '/\\*?[]{}"\' ') or name.startswith("."):
            raise InputError(f"slides.images: the name {name!r} (of {p}) must be a plain file name without "
                             "spaces; give the slide a name in a mapping, e.g. images: {{my_slide: {p}}}")
        if name in found and found[name] != p:
            raise InputError(f"slides.images: two slides are named {name!r} ({found[name]}, {p}); "
                             "name them in a mapping (name: path).")
        found[name] = p

    if isinstance(spec, Mapping):
        for name, p in spec.items():
            path = base / str(p)
            if not path.exists():
                raise InputError(f"{path}: slide not found (slides.images.{name} in config.yaml).")
            if path.suffix.lower() not in SLIDE_SUFFIXES and not path.is_dir():
                raise InputError(f"{path}: unsupported slide format {path.suffix!r} (slides.images.{name}); use "
                                 f"one of {', '.join(SLIDE_SUFFIXES)} or convert it to a pyramidal TIFF.")
            add(str(name), path)
        return found
    for item in spec:
        path = base / str(item)
        if any(c in str(item) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in SLIDE_SUFFIXES)
            if not matches:
                raise InputError(f"{item}: no slide matches this pattern (slides.images in config.yaml).")
            for m in matches:
                add(_stem(m), m)
        elif path.is_dir() and path.suffix.lower() not in OPENSLIDE_SUFFIXES:
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
            if not matches:
                raise InputError(f"{path}: folder has no slides ({', '.join(SLIDE_SUFFIXES)}).")
            for m in matches:
                add(_stem(m), m)
        elif path.exists():
            if path.suffix.lower() not in SLIDE_SUFFIXES and not path.is_dir():
                raise InputError(f"{path}: unsupported slide format {path.suffix!r} (slides.images); use one "
                                 f"of {', '.join(SLIDE_SUFFIXES)} or convert it to a pyramidal TIFF.")
            add(_stem(path), path)
        else:
            raise InputError(f"{path}: slide not found (slides.images in config.yaml).")
    return found


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ==================================================================================================
# tissue detection
# ==================================================================================================

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
        from .postprocess import drop_small

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
        """Fraction of tissue among the mask pixels that the slide region touches (a mask pixel
        partly inside the region counts whole, so thin tissue at a tile's edge is not missed)."""
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


# ==================================================================================================
# tile grid and regions
# ==================================================================================================


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a slide: evenly spaced starts per axis and which tiles hold tissue.

    ``height``, ``width``: the slide; tiles live in the slide padded to at least one tile
    (``padded``), as :func:`histoflow.tiling.predict_tiled` pads images smaller than a tile.
    ``keep``: ``bool (len(ys), len(xs))``.
    """

    height: int
    width: int
    tile: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    keep: np.ndarray

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height, self.tile), max(self.width, self.tile)

    @property
    def n_tiles(self) -> int:
        return int(self.keep.sum())


def plan_grid(
    shape: tuple[int, int], tile: int, overlap: int, tissue: TissueMask | None = None, min_fraction: float = 0.0
) -> TileGrid:
    """Tile grid over ``shape`` (as :func:`histoflow.tiling.iter_tiles`), keeping the tiles whose
    tissue fraction is at least ``min_fraction`` (and above 0); all tiles without ``tissue``."""
    from .tiling import tile_starts

    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    hp, wp = max(h, tile), max(w, tile)
    ys, xs = tile_starts(hp, tile, overlap), tile_starts(wp, tile, overlap)
    keep = np.ones((len(ys), len(xs)), bool)
    if tissue is not None:
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                f = tissue.fraction(y, x, min(tile, h - y), min(tile, w - x))
                keep[i, j] = f > 0 and f >= min_fraction
    return TileGrid(h, w, tile, overlap, tuple(ys), tuple(xs), keep)


@dataclass(frozen=True)
class Region:
    """One job's share of a slide: it owns output rows ``rows`` and runs tile rows ``tile_rows``
    (its own, plus the halo above whose tiles overlap its first rows)."""

    index: int
    count: int
    rows: tuple[int, int]
    tile_rows: tuple[int, int]


def split_regions(grid: TileGrid, n: int) -> list[Region]:
    """Split ``grid`` into ``n`` row bands along tile rows, balanced by tissue tiles.

    Region ``r`` owns the tile rows ``[a_r, a_{r+1})`` and the output rows from the start of its
    first tile row (0 for the first) to the start of the next region's; it also runs the tile rows
    above that overlap its rows, so each region finishes its own rows exactly as a single job over
    the whole slide would. With more regions than tile rows, the extra ones are empty.
    """
    if n < 1:
        raise ValueError(f"number of regions must be >= 1, got {n}")
    rows = len(grid.ys)
    counts = grid.keep.sum(axis=1).astype(np.float64)
    if counts.sum() == 0:
        counts[:] = 1.0
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    starts = [0]
    for r in range(1, n):
        a = int(np.argmin(np.abs(cum - cum[-1] * r / n)))  # the tile row boundary nearest to r/n of the work
        starts.append(min(max(a, starts[-1] + 1), rows) if starts[-1] < rows else rows)
    starts.append(rows)
    regions = []
    for r in range(n):
        a, b = starts[r], max(starts[r + 1], starts[r])
        row0 = 0 if r == 0 else (grid.ys[a] if a < rows else grid.height)
        row1 = grid.height if b >= rows else grid.ys[b]
        row0 = min(row0, grid.height)
        row1 = max(min(row1, grid.height), row0)
        halo = a
        while halo > 0 and grid.ys[halo - 1] + grid.tile > row0:
            halo -= 1
        regions.append(Region(r, n, (row0, row1), (halo, b) if row1 > row0 else (a, a)))
    return regions


# ==================================================================================================
# streaming inference
# ==================================================================================================


def _pad_index(n: int, pad_to: int, mode: str) -> np.ndarray:
    """``np.pad`` index map: padded position -> source position, for padding ``n`` up to ``pad_to``."""
    i = np.arange(pad_to)
    if mode == "reflect":
        period = 2 * (n - 1)
        j = np.mod(i, period) if period > 0 else np.zeros_like(i)
        return np.where(j < n, j, period - j)
    return np.minimum(i, n - 1)


def _window_index(start: int, length: int, n: int, padded: int, context: int, mode1: str, mode2: str) -> np.ndarray:
    """Source indices of positions ``start .. start+length`` of the slide padded as predict_tiled
    pads an image: first at the end up to ``padded`` (``mode1``), then ``context`` on both sides
    (``mode2``); positions are in the context-padded frame shifted by ``-context``."""
    pos = np.arange(start, start + length)
    inner = pos
    if context:
        if mode2 == "reflect":
            period = 2 * (padded - 1)
            j = np.mod(pos, period) if period > 0 else np.zeros_like(pos)
            inner = np.where(j < padded, j, period - j)
        else:
            inner = np.clip(pos, 0, padded - 1)
    if padded > n:
        inner = _pad_index(n, padded, mode1)[inner]
    return inner


class _TileDataset:
    """Tiles of a slide (with context), as ``uint8 (3, t + 2c, t + 2c)`` tensors; stain-normalized
    if a normalizer is given. Picklable; each worker process opens the slide itself."""

    def __init__(self, slide: Slide, grid: TileGrid, tiles: list[tuple[int, int]], context: int,
                 normalizer: Any = None, stain_source: Mapping[str, Any] | None = None) -> None:
        self.slide, self.grid, self.tiles, self.context = slide, grid, tiles, context
        self.normalizer, self.stain_source = normalizer, stain_source
        h, w = grid.height, grid.width
        hp, wp = grid.padded
        self.mode1 = "reflect" if (hp - h < h and wp - w < w) else "replicate"
        self.mode2 = "reflect" if context < min(hp, wp) else "replicate"

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, k: int) -> tuple[Any, int]:
        import torch

        i, j = self.tiles[k]
        g, c = self.grid, self.context
        size = g.tile + 2 * c
        rows = _window_index(g.ys[i] - c, size, g.height, g.padded[0], c, self.mode1, self.mode2)
        cols = _window_index(g.xs[j] - c, size, g.width, g.padded[1], c, self.mode1, self.mode2)
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        region = self.slide.read_region(r0, c0, r1 - r0, c1 - c0)
        if r1 - r0 != size or c1 - c0 != size or rows[0] != r0 or cols[0] != c0:
            region = region[np.ix_(rows - r0, cols - c0)]
        if self.normalizer is not None:
            region = self.normalizer.transform(region, source_params=self.stain_source)
        return torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1))), k


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.slide.reset()


def cpu_normalizer(normalizer: Any) -> Any:
    """The same fitted normalizer on the NumPy backend (CUDA cannot be used in worker processes)."""
    if normalizer is None:
        return None
    from .stain import StainNormalizer

    d = normalizer.to_dict()
    if "backend" in d.get("params", {}):
        d = {**d, "params": {**d["params"], "backend": "numpy"}}
        return StainNormalizer.from_dict(d)
    return normalizer


def open_group(path: PathLike, mode: str = "r") -> Any:
    """Open a zarr group (zarr 2 or 3)."""
    import zarr

    return zarr.open_group(str(path), mode=mode)


def create_array(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> Any:
    """A zero-filled, Blosc-LZ4 compressed array in a zarr group (zarr 3 ``create_array`` or
    zarr 2 ``create_dataset``)."""
    chunks = tuple(max(1, min(c, s)) if s else max(1, c) for c, s in zip(chunks, shape, strict=True))
    if hasattr(group, "create_array"):
        from zarr.codecs import BloscCodec

        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                  compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
    from numcodecs import Blosc  # pragma: no cover - zarr 2

    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,  # pragma: no cover
                                compressor=Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE))


_FLUSH_COLS = 8192


class _Writer:
    """Writes row blocks into a zarr array in a background thread (at most one more block waits)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer")
        self.pending: list[Future[Any]] = []

    def write(self, r0: int, block: np.ndarray) -> None:
        while len(self.pending) >= 1:
            self.pending.pop(0).result()
        r1 = r0 + block.shape[1]
        self.pending.append(self.pool.submit(self.array.__setitem__, (slice(None), slice(r0, r1)), block))

    def close(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pool.shutdown(wait=True)


def limit_malloc_retention(threshold: int = 1 << 20) -> bool:
    """Make glibc return freed blocks of ``threshold`` bytes or more to the system at once.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
    blocks of tiles, batches and row bands come from heap arenas that keep their freed memory: on
    a 30k-wide slide that doubled the peak resident memory of an inference process (2.3 GB instead
    of 1.2 GB). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, also ``M_TRIM_THRESHOLD``)
    keeps memory flat. Process-wide; call it in a process that runs whole-slide inference. Returns
    False (and does nothing) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))
    except (OSError, AttributeError):
        return False


def predict_slide(
    slide: Slide | np.ndarray,
    predictor: Callable[[Any], Any],
    out: PathLike,
    *,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 8,
    blend: str = "gaussian",
    device: Any = "cpu",
    num_workers: int = 0,
    normalizer: Any = None,
    stain_source: Mapping[str, Any] | None = None,
    tissue: TissueMask | None = None,
    min_tissue_fraction: float = 0.0,
    region: Region | None = None,
    grid: TileGrid | None = None,
    context: int = 0,
    out_channels: int = 1,
    progress: bool = True,
    name: str | None = None,
    attrs: Mapping[str, Any] | None = None,
    static_batches: bool = False,
) -> dict[str, Any]:
    """Tiled inference over a whole slide into a chunked zarr store, with bounded memory.

    Parameters
    ----------
    slide:
        A :class:`Slide` (see :func:`open_slide`) or an in-memory ``(H, W, 3)`` image.
    predictor:
        Maps a float tensor ``(B, 3, t + 2c, t + 2c)`` (RGB / 255, on ``device``) to
        ``(B, K, t, t)`` (e.g. ``sigmoid(model(x))``); run under bf16 autocast on CUDA.
    out:
        The zarr group to write: array ``prob`` ``float32 (K, rows, W)`` holding the output rows of
        ``region`` (all rows by default), and attributes describing the run.
    tile, overlap, blend, context:
        As :func:`histoflow.tiling.predict_tiled`; the result equals its result on the whole image
        (bit for bit on CPU with a batch-independent predictor) where only tissue is skipped.
    batch_size:
        Tiles per forward pass; on CUDA out-of-memory the batch is split in halves (and the smaller
        size kept). Batches never span two tile rows, so a region's batches are exactly the single
        job's and a predictor whose output for a tile depends on its batch (convolution kernels
        chosen by batch size) still gives regions that merge into the single job's result.
    static_batches:
        Pad the last batch of each tile row to ``batch_size`` (one input shape: what
        ``torch.compile`` and cuDNN autotuning want); the padding's outputs are dropped.
    num_workers:
        DataLoader worker processes reading (and normalizing) tiles; 0 reads in this process.
    normalizer, stain_source:
        A fitted stain normalizer applied to every tile with the slide's staining ``stain_source``
        (:meth:`histoflow.stain.StainNormalizer.fit_source`), so all tiles get the same mapping.
    tissue, min_tissue_fraction:
        Only tiles with at least this fraction of tissue (and some tissue) are run; pixels no run
        tile covers get 0. Ignored when ``grid`` is given.
    region:
        Run only this region (:func:`split_regions`) and store only its rows.
    grid:
        A precomputed :func:`plan_grid` (must match ``slide.shape``, ``tile`` and ``overlap``).

    Returns
    -------
    dict
        Run statistics: tiles, seconds, tiles/s, megapixels covered (slide pixels under run tiles,
        in this region's rows) and MP/s.
    """
    import torch
    from tqdm import tqdm

    from .tiling import blend_window

    if isinstance(slide, np.ndarray):
        slide = Slide.from_array(slide)
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if grid is None:
        grid = plan_grid(slide.shape, tile, overlap, tissue, min_tissue_fraction)
    elif (grid.height, grid.width, grid.tile, grid.overlap) != (*slide.shape, tile, overlap):
        raise ValueError("grid does not match the slide shape, tile and overlap")
    if region is None:
        region = Region(0, 1, (0, grid.height), (0, len(grid.ys)))
    device = torch.device(device)
    h, w = grid.height, grid.width
    hp, wp = grid.padded
    own0, own1 = region.rows
    tiles = [(i, j) for i in range(*region.tile_rows) for j in range(len(grid.xs)) if grid.keep[i, j]]
    name = name or slide.path.name

    group = open_group(out, "w")
    prob = create_array(group, "prob", (out_channels, own1 - own0, w), (1, CHUNK, CHUNK), np.float32)
    group.attrs.update({
        "slide": slide.info(), "tile": tile, "overlap": overlap, "blend": blend, "context": context,
        "height": h, "width": w, "rows": [own0, own1], "region": region.index, "regions": region.count,
        "tile_rows": list(region.tile_rows), **(dict(attrs) if attrs else {}),
    })

    window = torch.from_numpy(blend_window((tile, tile), blend)).to(device)
    band_h = tile + CHUNK
    first_y = grid.ys[region.tile_rows[0]] if tiles else own0
    band_y0 = own0 - CHUNK * math.ceil(max(own0 - first_y, 0) / CHUNK)  # chunk-aligned with own0
    acc = torch.zeros((out_channels, band_h, wp), dtype=torch.float32, device=device)
    wsum = torch.zeros((band_h, wp), dtype=torch.float32, device=device)
    # two host buffers of one chunk row: one is filled while the other is being written
    host = [np.empty((out_channels, CHUNK, w), np.float32) for _ in range(2)]
    slot = 0
    writer = _Writer(prob)
    covered = 0

    def flush_chunk() -> None:
        """Finish the band's first CHUNK rows: normalize, write the owned ones, shift the band."""
        nonlocal band_y0, covered, slot
        r0, r1 = max(band_y0, own0), min(band_y0 + CHUNK, own1)
        if r1 > r0:
            buf = host[slot][:, : r1 - r0]
            for c0 in range(0, w, _FLUSH_COLS):  # in column blocks: small temporaries on wide slides
                c1 = min(c0 + _FLUSH_COLS, w)
                a = acc[:, r0 - band_y0 : r1 - band_y0, c0:c1]
                ws = wsum[r0 - band_y0 : r1 - band_y0, c0:c1]
                hit = ws > 0
                buf[:, :, c0:c1] = torch.where(hit, a / torch.where(hit, ws, 1.0), 0.0).cpu().numpy()
                covered += int(hit.sum())
            writer.write(r0 - own0, buf)
            slot ^= 1
        for k in range(0, band_h - CHUNK, CHUNK):  # shift up by CHUNK rows, piece by piece (no copy)
            n = min(CHUNK, band_h - CHUNK - k)
            acc[:, k : k + n] = acc[:, k + CHUNK : k + CHUNK + n]
            wsum[k : k + n] = wsum[k + CHUNK : k + CHUNK + n]
        acc[:, band_h - CHUNK :] = 0
        wsum[band_h - CHUNK :] = 0
        band_y0 += CHUNK

    ds = _TileDataset(slide, grid, tiles, context, normalizer, stain_source)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=_row_batches(tiles, batch_size), num_workers=num_workers,
        pin_memory=device.type == "cuda", worker_init_fn=_worker_init if num_workers else None,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
    )
    micro = batch_size
    bar = tqdm(total=len(tiles), desc=name, unit="tile", disable=not progress, mininterval=5, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        for batch, index in loader:
            n = batch.shape[0]
            if static_batches and n < batch_size:
                batch = torch.cat([batch, batch[-1:].expand(batch_size - n, -1, -1, -1)])
            x = batch.to(device, non_blocking=True).float() / 255.0
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            outs, micro = _forward(predictor, x, micro, device, tile)
            outs = outs[:n].float()
            if outs.shape[1] != out_channels or outs.shape[-2:] != (tile, tile):
                raise ValueError(
                    f"predictor returned {tuple(outs.shape)} for a batch {tuple(x.shape)}; expected "
                    f"(B, {out_channels}, {tile}, {tile}) (set out_channels, or context for models that crop)"
                )
            outs = outs * window
            for o, k in zip(outs, index.tolist(), strict=True):
                i, j = ds.tiles[k]
                y, xx = grid.ys[i], grid.xs[j]
                while y + tile > band_y0 + band_h:
                    flush_chunk()
                acc[:, y - band_y0 : y - band_y0 + tile, xx : xx + tile] += o
                wsum[y - band_y0 : y - band_y0 + tile, xx : xx + tile] += window
            bar.update(len(index))
        while band_y0 < own1:
            flush_chunk()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        bar.close()
        writer.close()
    seconds = time.perf_counter() - t0
    stats = {
        "tiles": len(tiles), "tiles_total": len(grid.ys) * len(grid.xs), "seconds": round(seconds, 3),
        "tiles_per_s": round(len(tiles) / seconds, 2) if seconds > 0 else None,
        "pixels": covered, "megapixels": round(covered / 1e6, 6), "mpps": round(covered / 1e6 / seconds, 3) if seconds > 0 else None,
        "micro_batch": micro, "device": str(device), "workers": num_workers,
    }
    group.attrs.update({"stats": stats})
    log.info("%s: %d of %d tiles (%.1f MP) in %.1f s: %.1f tiles/s, %.2f MP/s", name, len(tiles),
             stats["tiles_total"], covered / 1e6, seconds, stats["tiles_per_s"] or 0, stats["mpps"] or 0)
    return stats


def _row_batches(tiles: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of ``tiles`` (in order) in batches of at most ``batch_size`` within one tile row."""
    batches: list[list[int]] = []
    current: list[int] = []
    row = None
    for k, (i, _) in enumerate(tiles):
        if current and (i != row or len(current) == batch_size):
            batches.append(current)
            current = []
        current.append(k)
        row = i
    if current:
        batches.append(current)
    return batches


def _forward(predictor: Callable[[Any], Any], x: Any, micro: int, device: Any, tile: int) -> tuple[Any, int]:
    """Predictor over ``x`` in micro-batches; halves the micro-batch on CUDA out-of-memory."""
    import torch

    from .device import autocast

    while True:
        try:
            with torch.inference_mode(), autocast(device):
                if micro >= x.shape[0]:
                    return predictor(x), micro
                return torch.cat([predictor(x[s : s + micro]) for s in range(0, x.shape[0], micro)]), micro
        except torch.cuda.OutOfMemoryError:
            if micro == 1:
                raise RuntimeError(
                    f"out of GPU memory with one {tile}x{tile} tile: lower slides.tile in config.yaml"
                ) from None
            micro = max(min(micro, x.shape[0]) // 2, 1)
            log.warning("out of GPU memory: continuing with batches of %d tiles", micro)
            torch.cuda.empty_cache()


def merge_regions(region_stores: Sequence[PathLike], out: PathLike) -> dict[str, Any]:
    """Concatenate the row bands of region stores (in any order) into one store ``out``.

    Each region finished its own rows completely, so this is a copy (chunk row by chunk row,
    bounded memory) and the result equals a single job's bit for bit.

    Raises
    ------
    ValueError
        If the regions do not tile the slide's rows exactly once, or disagree on its size.
    """
    groups = [open_group(p, "r") for p in region_stores]
    if not groups:
        raise ValueError("no region stores to merge")
    meta = [dict(g.attrs) for g in groups]
    order = sorted(range(len(groups)), key=lambda k: meta[k]["rows"][0])
    h, w = meta[0]["height"], meta[0]["width"]
    k_ch = groups[0]["prob"].shape[0]
    pos = 0
    for k in order:
        m = meta[k]
        if (m["height"], m["width"]) != (h, w) or groups[k]["prob"].shape[0] != k_ch:
            raise ValueError(f"{region_stores[k]}: region of a different slide or model ({m['height']}x{m['width']})")
        if m["rows"][0] != pos:
            raise ValueError(f"regions do not tile the rows: expected a region starting at row {pos}, "
                             f"got {region_stores[k]} at {m['rows'][0]}")
        pos = m["rows"][1]
    if pos != h:
        raise ValueError(f"regions end at row {pos}, the slide has {h} rows")
    target = open_group(out, "w")
    prob = create_array(target, "prob", (k_ch, h, w), (1, CHUNK, CHUNK), np.float32)
    spans = [(meta[k]["rows"][0], meta[k]["rows"][1], groups[k]["prob"]) for k in order]
    for r0 in range(0, h, CHUNK):
        r1 = min(r0 + CHUNK, h)
        for c0 in range(0, w, 8 * CHUNK):
            c1 = min(c0 + 8 * CHUNK, w)
            block = np.zeros((k_ch, r1 - r0, c1 - c0), np.float32)
            for s0, s1, arr in spans:
                a, b = max(r0, s0), min(r1, s1)
                if b > a:
                    block[:, a - r0 : b - r0] = arr[:, a - s0 : b - s0, c0:c1]
            prob[:, r0:r1, c0:c1] = block
    stats = [m.get("stats", {}) for m in meta]
    attrs = {k: v for k, v in meta[order[0]].items() if k not in ("rows", "region", "tile_rows", "stats")}
    merged_stats = {
        "tiles_run": sum(s.get("tiles", 0) for s in stats),  # halo tiles count once per region running them
        "tiles_total": stats[0].get("tiles_total"),
        "pixels": sum(s.get("pixels", 0) for s in stats),
        "megapixels": round(sum(s.get("pixels", 0) for s in stats) / 1e6, 6),
        "seconds_per_region": [s.get("seconds") for s in (stats[k] for k in order)],
    }
    target.attrs.update({**attrs, "rows": [0, h], "regions": len(groups), "stats": merged_stats})
    return merged_stats


# ==================================================================================================
# pyramidal OME-TIFF
# ==================================================================================================


def _levels_shapes(h: int, w: int, min_size: int) -> list[tuple[int, int]]:
    shapes = [(h, w)]
    while max(shapes[-1]) > min_size:
        ph, pw = shapes[-1]
        shapes.append((max(ph // 2, 1), max(pw // 2, 1)))
    return shapes


def _reduce2(block: np.ndarray, kind: str) -> np.ndarray:
    """Halve the last two axes: 2x2 mean (probabilities) or top-left sample (labels)."""
    hh, ww = block.shape[-2] // 2, block.shape[-1] // 2
    if kind == "labels":
        return block[..., : 2 * hh : 2, : 2 * ww : 2]
    b = block[..., : 2 * hh, : 2 * ww].astype(np.float32)
    return (b[..., 0::2, 0::2] + b[..., 1::2, 0::2] + b[..., 0::2, 1::2] + b[..., 1::2, 1::2]) * np.float32(0.25)


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
) -> list[tuple[int, int]]:
    """Write a 2-D or ``(K, H, W)`` array (zarr or NumPy) as a tiled pyramidal OME-TIFF, tile by tile.

    ``(1, H, W)`` is written as one 2-D plane (axes ``YX``), ``K > 1`` as ``CYX``.

    Level 0 is the array; each sub-resolution halves it (``kind="prob"``: 2x2 means of the float
    values, ``"labels"``: every other pixel, so ids stay ids) until its longest side is at most
    ``min_size``. Sub-resolutions are stored as SubIFDs of level 0, as QuPath and Bio-Formats read
    OME-TIFF pyramids (OpenSlide reads level 0 of it). The physical pixel size goes into the
    OME-XML (``PhysicalSizeX/Y`` in µm) and the TIFF resolution tags (pixels per cm).
    Probabilities are written as ``uint8`` (0..255 = 0..1, rounded) by default, or as ``dtype``.
    Sub-levels are built in a temporary zarr store beside ``path``; nothing holds a whole level in
    memory. Written atomically.

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
    out_dtype = np.dtype(dtype) if dtype is not None else (np.dtype(np.uint8) if kind == "prob" else np.dtype(source.dtype))

    def as_3d(arr: Any) -> Callable[[int, int, int, int], np.ndarray]:
        if len(arr.shape) == 3:
            return lambda y0, y1, x0, x1: np.asarray(arr[:, y0:y1, x0:x1])
        return lambda y0, y1, x0, x1: np.asarray(arr[y0:y1, x0:x1])[None]

    def convert(block: np.ndarray) -> np.ndarray:
        if kind == "prob" and out_dtype == np.uint8:
            return np.rint(np.clip(block, 0, 1) * 255).astype(np.uint8)
        return block.astype(out_dtype, copy=False)

    shapes = _levels_shapes(h, w, min_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as tmpdir:
        readers = [as_3d(source)]
        if len(shapes) > 1:
            group = open_group(Path(tmpdir) / "levels.zarr", "w")
            level_dtype = np.float32 if kind == "prob" else source.dtype
            prev = readers[0]
            for n, (lh, lw) in enumerate(shapes[1:], start=1):
                arr = create_array(group, str(n), (k_ch, lh, lw), (1, CHUNK, CHUNK), level_dtype)
                for r0 in range(0, lh, CHUNK):
                    r1 = min(r0 + CHUNK, lh)
                    for c0 in range(0, lw, 4 * CHUNK):
                        c1 = min(c0 + 4 * CHUNK, lw)
                        arr[:, r0:r1, c0:c1] = _reduce2(prev(2 * r0, 2 * r1, 2 * c0, 2 * c1), kind)
                prev = as_3d(arr)
                readers.append(prev)

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


# ==================================================================================================
# instances and GeoJSON
# ==================================================================================================


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

    from .morphometry import measure_objects
    from .postprocess import PostprocessConfig, postprocess, relabel_sequential
    from .qupath import iter_features, write_features

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


# ==================================================================================================
# synthetic slides (tests, benchmarks, demos)
# ==================================================================================================


def _texture_bank(n: int, size: int, seed: int) -> np.ndarray:
    from .demo import FibreParams, make_fibre_image

    return np.stack([make_fibre_image(seed + i, FibreParams(size=(size, size)))[0] for i in range(n)])


def synthetic_slide_region(
    y: int, x: int, h: int, w: int, step: int, height: int, width: int, bank: np.ndarray, seed: int = 0
) -> np.ndarray:
    """``uint8 (h, w, 3)`` of a synthetic H&E slide of ``height x width`` level-0 pixels, sampled
    every ``step`` pixels from level-0 position ``(y, x)``: elliptical tissue pieces filled with
    blocks of muscle-fibre texture from ``bank``, on white glass."""
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
    bank = _texture_bank(n_textures, texture_size, seed)
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


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` (e.g. a zarr store); on success it replaces
    ``path``, on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

