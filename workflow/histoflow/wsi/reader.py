"""Reading whole slides at a chosen resolution behind one :class:`Slide` (regions as ``uint8 (h, w, 3)`` RGB).

The backends are OpenSlide, tifffile + zarr (pyramidal and OME-TIFF) or an ordinary image in memory.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import InputError, PathLike

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size and its downsample factor relative to level 0."""

    height: int
    width: int
    downsample: float


class _Backend:
    """A slide file's pyramid.

    Subclasses implement ``_open`` and ``read``; handles are opened lazily and dropped on pickling, so a backend
    can be sent to DataLoader worker processes (each opens its own file handle).
    """

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
            from ..io import read_rgb

            image = read_rgb(path)
        self.image = _as_rgb(image, str(path))
        self.levels = [Level(self.image.shape[0], self.image.shape[1], 1.0)]

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.image[y : y + h, x : x + w]


class _TiffBackend(_Backend):
    """Pyramidal TIFF / OME-TIFF / SVS / NDPI through tifffile, each level as a zarr array.

    A read decodes only the tiles that overlap the region.
    """

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
    from ..stain import to_rgb_uint8

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
    """Source indices ``(n, m)`` and weights ``float32 (n, m)`` of output pixels ``start .. start+n-1``.

    Here ``factor`` source pixels make one output pixel (area averaging, ``factor >= 1``).

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
            return self._decode(y, x, h, w)
        lv = self.levels[self.level]
        ky, wy = _area_weights(y, h, self.factor, lv.height)
        kx, wx = _area_weights(x, w, self.factor, lv.width)
        sy0, sy1 = int(ky.min()), int(ky.max()) + 1
        sx0, sx1 = int(kx.min()), int(kx.max()) + 1
        src = self._decode(sy0, sx0, sy1 - sy0, sx1 - sx0).astype(np.float32)
        rows = _resample_axis(src, ky, wy, sy0, axis=0)
        out = _resample_axis(rows, kx, wx, sx0, axis=1)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def _decode(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The backend's pixels of this level's region; a decoder failure names the file, region and fix."""
        try:
            return self.backend.read(self.level, y, x, h, w)
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - imagecodecs, tifffile, OpenSlide: any decoding error
            raise InputError(
                f"{self.path}: cannot decode level {self.level}, rows {y}..{y + h}, columns {x}..{x + w} "
                f"({type(exc).__name__}: {exc}). The file is damaged or truncated (e.g. an interrupted copy or "
                "export): copy or export it again, or remove it from slides.images."
            ) from exc

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
    key: str = "slides",
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
    key:
        The config section the settings come from, named in the messages (``slides``, or
        ``datasets.<name>`` for annotated slides).

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
        raise InputError(f"{path}: slide not found. Check the slide paths under {key} in config.yaml.")
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
            f"{path}: the file has no pixel size (µm per pixel), so {key}.mpp = {mpp} cannot be honoured. "
            f"Set {key}.base_mpp to the scanner's µm/pixel at full resolution"
            + (", or use slides.level." if key == "slides" else ".")
        )
    if mpp < be.mpp * (1 - MPP_TOLERANCE):
        raise InputError(
            f"{path}: requested {mpp} µm/px is finer than the slide's full resolution ({be.mpp:.4f} µm/px at "
            f"level 0); choose {key}.mpp >= {be.mpp:.4f}" + (", or level: 0." if key == "slides" else ".")
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


def find_slides(spec: Mapping[str, str] | Sequence[str], base: PathLike = ".",
                key: str = "slides.images") -> dict[str, Path]:
    """Slide name → path from ``slides.images`` (or ``key``): a mapping, or a list of files, folders and patterns.

    In a list, a folder stands for every slide inside it and the names are the file stems. Relative paths are
    taken from ``base``.

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
            raise InputError(f"{key}: the name {name!r} (of {p}) must be a plain file name without "
                             "spaces; give the slide a name in a mapping, e.g. images: {{my_slide: {p}}}")
        if name in found and found[name] != p:
            raise InputError(f"{key}: two slides are named {name!r} ({found[name]}, {p}); "
                             "name them in a mapping (name: path).")
        found[name] = p

    if isinstance(spec, Mapping):
        for name, p in spec.items():
            path = base / str(p)
            if not path.exists():
                raise InputError(f"{path}: slide not found ({key}.{name} in config.yaml).")
            if path.suffix.lower() not in SLIDE_SUFFIXES and not path.is_dir():
                raise InputError(f"{path}: unsupported slide format {path.suffix!r} ({key}.{name}); use "
                                 f"one of {', '.join(SLIDE_SUFFIXES)} or convert it to a pyramidal TIFF.")
            add(str(name), path)
        return found
    for item in spec:
        path = base / str(item)
        if any(c in str(item) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in SLIDE_SUFFIXES)
            if not matches:
                raise InputError(f"{item}: no slide matches this pattern ({key} in config.yaml).")
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
                raise InputError(f"{path}: unsupported slide format {path.suffix!r} ({key}); use one "
                                 f"of {', '.join(SLIDE_SUFFIXES)} or convert it to a pyramidal TIFF.")
            add(_stem(path), path)
        else:
            raise InputError(f"{path}: slide not found ({key} in config.yaml).")
    return found


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem

