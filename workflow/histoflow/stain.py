"""Stain normalization of brightfield (H&E-like) RGB images.

The interface follows TIAToolbox: a normalizer is ``fit`` to one *target* image and then
``transform`` maps any *source* image to the target's colour appearance. Every normalizer is a
:class:`StainNormalizer` and is built by name with :func:`get_normalizer`:

``"macenko"``   :class:`MacenkoNormalizer`  stain separation after Macenko et al., ISBI 2009
``"vahadane"``  :class:`VahadaneNormalizer` sparse non-negative stain separation after Vahadane
                et al., IEEE TMI 2016
``"reinhard"``  :class:`ReinhardNormalizer` CIE-LAB mean/std transfer after Reinhard et al., 2001
``"none"``      :class:`IdentityNormalizer` no-op, so a workflow can switch normalization off

Whole slides are normalized tile by tile. Estimating the source statistics on every tile gives
visible seams, so :func:`fit_source_from_tiles` (or :meth:`StainNormalizer.fit_source` on the
whole image or a thumbnail) estimates them once and ``transform(tile, source_params=...)``
reuses that estimate for every tile. Estimates are made through an accumulator that takes the
image tile by tile, and the stain-matrix methods sample pixels by a hash of their position, so
the tiled estimate equals the one-piece estimate and tiled output equals one-piece output.
Fitted parameters and source estimates are plain JSON-serialisable dicts
(:meth:`StainNormalizer.to_dict`, :func:`save_normalizer`, :func:`load_normalizer`).

The per-pixel transform is vectorised float32 NumPy, threaded over the CPU cores; Macenko and
Vahadane also have a torch backend (``backend="torch"``, used by default when a CUDA GPU is
visible) that agrees with NumPy within one grey level. :func:`augment_stain` perturbs H&E
concentrations for training (Tellez et al. 2018).

Images that hold (almost) no tissue -- background-only tiles, empty arrays -- are passed through
unchanged with a logged warning; a *target* without tissue is an error, because it cannot define
a stain appearance.

Optical density convention
--------------------------
Beer--Lambert with incident intensity ``I0 = 255`` and a +1 offset so that black pixels stay
finite: ``OD = -ln((I + 1) / 256)`` for 8-bit intensities ``I``. White (255) has ``OD = 0``, black
(0) has ``OD = ln 256 ~ 5.55``. The inverse is ``I = 256 * exp(-OD) - 1`` (:func:`rgb_to_od`,
:func:`od_to_rgb`). Natural logarithms are used throughout; the base only scales OD and
concentrations and cancels in the normalization.

Adding a method
---------------
Subclass :class:`StainMatrixNormalizer` and implement ``_estimate_stain_matrix`` (and, for
other concentrations, ``_concentrations`` and ``_pixel_map``), or subclass
:class:`StainNormalizer` and implement ``_accumulator``/``_apply``/``get_params`` plus the
``_STAT_SHAPES`` class attribute; decorate the class with :func:`register_normalizer`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import numbers
import os
import re
import sys
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from skimage import color
from skimage.color import colorconv as _colorconv

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "IdentityNormalizer",
    "MacenkoNormalizer",
    "NotFittedError",
    "ReinhardNormalizer",
    "StainMatrixNormalizer",
    "StainNormalizer",
    "VahadaneNormalizer",
    "augment_stain",
    "available_normalizers",
    "fit_source_from_tiles",
    "get_normalizer",
    "load_normalizer",
    "od_to_rgb",
    "register_normalizer",
    "rgb_to_od",
    "save_normalizer",
    "standardize_luminosity",
    "tissue_mask",
    "to_rgb_uint8",
]

#: Version of the dict layout written by :meth:`StainNormalizer.to_dict`.
FORMAT_VERSION = 1

_OD_SCALE = 256.0  # I0 = 255 plus the +1 offset: OD = -ln((I + 1) / 256)
_MIN_STAIN_ANGLE_DEG = 1.0  # two stain vectors closer than this cannot be separated
_EPS = 1e-8

_EXPECTED_IMAGE = (
    "expected a grey (H, W) or (H, W, 1), RGB (H, W, 3) or RGBA (H, W, 4) array of dtype uint8, "
    "uint16, integers in [0, 255] or floats in [0, 1]"
)


class NotFittedError(ValueError):
    """A normalizer was used before :meth:`StainNormalizer.fit` (or loading fitted parameters)."""


class _NoTissueError(Exception):
    """Internal: too little usable tissue to estimate stain statistics; the message says why."""


# --------------------------------------------------------------------------------------------
# input conversion and colour helpers
# --------------------------------------------------------------------------------------------


def to_rgb_uint8(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Convert an image to 8-bit RGB.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` or ``(H, W, 1)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA. Accepted
        dtypes: ``uint8``; ``uint16`` (full 16-bit range, scaled by ``1/257`` and rounded, so
        65535 -> 255); other integer dtypes holding values in ``[0, 255]``; floats in ``[0, 1]``
        (scaled by 255 and rounded).
    name : str
        Name of the argument, used in error messages.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8. Grey is repeated into three channels. RGBA drops the alpha channel
        when it is fully opaque everywhere, and otherwise is composited onto a white background
        (``rgb * a + white * (1 - a)``). An input that already is C-contiguous ``(H, W, 3)``
        uint8 is returned as is (not copied).

    Raises
    ------
    ValueError
        For any other shape (e.g. 4-D, two channels), dtype (bool, complex, object) or value
        range (negative, NaN, floats above 1, integers above 255); the message names ``name``.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., np.newaxis]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: got an array of shape {np.shape(image)}; {_EXPECTED_IMAGE}")

    if arr.dtype == np.uint8:
        full = 255.0
    elif arr.dtype == np.uint16:
        full = 65535.0
    elif arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}; {_EXPECTED_IMAGE}")
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(
                f"{name}: integer dtype {arr.dtype} with values in [{arr.min()}, {arr.max()}]; "
                f"{_EXPECTED_IMAGE}"
            )
        full = 255.0
    else:  # floating
        if arr.size:
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name}: float image contains NaN or infinite values; {_EXPECTED_IMAGE}")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1e-6 or hi > 1.0 + 1e-6:
                raise ValueError(f"{name}: float image with values in [{lo:g}, {hi:g}]; {_EXPECTED_IMAGE}")
        full = 1.0

    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        if np.all(alpha == full):
            arr = arr[..., :3]
        else:
            a = alpha.astype(np.float64)[..., np.newaxis] / full
            rgb = arr[..., :3].astype(np.float64) / full
            return _unit_float_to_uint8(rgb * a + (1.0 - a))

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        # round(x / 257); 257 is odd so no value sits exactly on a .5 tie
        out = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.uint8)
    else:
        out = _unit_float_to_uint8(arr.astype(np.float64))

    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _unit_float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats nominally in ``[0, 1]`` (any shape) -> uint8 by ``rint(255 * x)`` with clipping."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def rgb_to_od(image: np.ndarray) -> np.ndarray:
    """Optical density of an RGB image.

    Parameters
    ----------
    image : np.ndarray
        Anything :func:`to_rgb_uint8` accepts.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` float64, ``OD = -ln((I + 1) / 256)`` in ``[0, ln 256]`` (see the module
        docstring for the convention).
    """
    return _OD_LUT[to_rgb_uint8(image)]


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`: ``I = 256 * exp(-OD) - 1``, rounded and clipped to uint8.

    Parameters
    ----------
    od : np.ndarray
        ``(..., 3)`` float optical densities; negative values are treated as 0 (white).

    Returns
    -------
    np.ndarray
        ``(..., 3)`` uint8.
    """
    od = np.asarray(od, dtype=np.float64)
    if od.ndim < 1 or od.shape[-1] != 3:
        raise ValueError(f"od: expected an array of shape (..., 3), got {od.shape}")
    intensity = _OD_SCALE * np.exp(-np.maximum(od, 0.0)) - 1.0
    return np.clip(np.rint(intensity), 0, 255).astype(np.uint8)


#: OD of every 8-bit intensity, ``_OD_LUT[I] = -ln((I + 1) / 256)``: a table look-up replaces a logarithm
#: per pixel and channel (float64 for the estimates, float32 for the per-pixel transform)
_OD_LUT = -np.log((np.arange(256, dtype=np.float64) + 1.0) / _OD_SCALE)
_OD_LUT.setflags(write=False)
_OD_LUT32 = _OD_LUT.astype(np.float32)
_OD_LUT32.setflags(write=False)


def _od_threshold_intensity(beta: float) -> int:
    """Largest 8-bit intensity whose OD is ``>= beta`` (OD decreases with intensity), -1 if none."""
    return int(np.count_nonzero(_OD_LUT >= beta)) - 1


# ---- tiling-invariant pixel sampling --------------------------------------------------------
# A pixel's sampling key is a hash of its position (y, x) in the whole image and the seed: the
# MurmurHash3 64-bit finaliser of the row and of the column, XOR-ed and multiplied by an odd
# constant (so the top bits depend on both). Keeping the pixels with the k smallest keys
# ("bottom-k" sampling) draws a uniform random sample without replacement that does not depend
# on how the image is cut into tiles or in which order the tiles arrive: estimating on a slide's
# tiles and on the assembled slide selects exactly the same pixels.

_FMIX_C1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U33 = np.uint64(33)
_MAX_COORD = 1 << 32


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3 64-bit finaliser, a bijection of uint64; modifies ``x`` in place and returns it."""
    x ^= x >> _U33
    x *= _FMIX_C1
    x ^= x >> _U33
    x *= _FMIX_C2
    x ^= x >> _U33
    return x


def _seed_mix(seed: int) -> np.uint64:
    return _fmix64(np.array([seed % (1 << 64)], dtype=np.uint64) ^ _GOLDEN)[0]


def _position_keys(origin: tuple[int, int], height: int, width: int, mix: np.uint64) -> np.ndarray:
    """``(height, width)`` uint64 sampling keys of the pixels of a tile whose top-left pixel is ``origin``."""
    rows = _fmix64((np.arange(height, dtype=np.uint64) + np.uint64(origin[0])) ^ mix)
    cols = _fmix64(((np.arange(width, dtype=np.uint64) + np.uint64(origin[1])) | np.uint64(1 << 40)) ^ mix)
    keys = rows[:, np.newaxis] ^ cols[np.newaxis, :]
    keys *= _GOLDEN
    return keys


_LOW24 = np.uint64(0xFFFFFF)
_HIGH40 = np.uint64(0xFFFFFFFFFF000000)


def _pack(keys: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Sampling value of pixels: the top 40 bits of their key, then their colour (24 bits).

    Ordering by it is canonical (a function of position and colour only), so the sample and its
    order do not depend on the tiling; ties are identical pixels.
    """
    rgb24 = pixels[:, 0].astype(np.uint64) << np.uint64(16)
    rgb24 |= pixels[:, 1].astype(np.uint64) << np.uint64(8)
    rgb24 |= pixels[:, 2]
    return (keys & _HIGH40) | rgb24


class _BottomK:
    """The ``k`` smallest sampling values (:func:`_pack`) seen so far; all of them when ``k`` is None."""

    def __init__(self, k: int | None) -> None:
        self.k = k
        self.values = np.empty(0, dtype=np.uint64)

    def bounds(self, n_new: int) -> tuple[int | None, int | None]:
        """``(tentative, safe)`` exclusive upper bounds on the keys of ``n_new`` offered pixels.

        Pixels whose key is at or above ``safe`` cannot enter (None: no bound). Keys are uniform,
        so with high probability all that enter lie below the much smaller ``tentative`` bound,
        which saves gathering the others; :meth:`enough_below` checks that.
        """
        k = self.k
        if k is None:
            return None, None
        safe = None
        if self.values.size >= k:
            top = (int(self.values.max()) >> 24) + 1
            safe = None if top >= 1 << 40 else top << 24
        total = self.values.size + n_new
        q = (k + 8.0 * math.sqrt(k) + 64.0) / total
        if total <= k or q >= 1.0:
            return safe, safe
        tentative = int(q * 2.0**40) << 24
        return (tentative if safe is None else min(tentative, safe)), safe

    def enough_below(self, n_candidates: int, bound: int) -> bool:
        """Whether ``n_candidates`` new values below ``bound`` plus the kept ones below it reach ``k``."""
        return (
            self.k is None or n_candidates + int(np.count_nonzero(self.values < np.uint64(bound))) >= self.k
        )

    def offer(self, values: np.ndarray) -> None:
        merged = np.concatenate([self.values, values]) if self.values.size else values
        if self.k is not None and merged.size > self.k:
            merged = np.partition(merged, self.k - 1)[: self.k]
        self.values = merged

    def sample(self, ordered: bool = True) -> np.ndarray:
        """``(m, 3)`` uint8 sampled pixels, in canonical order (or as kept, for order-free uses)."""
        v = np.sort(self.values) if ordered else self.values
        out = np.empty((v.size, 3), dtype=np.uint8)
        out[:, 0] = v >> np.uint64(16)  # the uint8 cast keeps the low 8 bits
        out[:, 1] = v >> np.uint64(8)
        out[:, 2] = v
        return out


# ---- fast sRGB <-> CIE-LAB (D65, 2 degree observer), scikit-image's formulas in float32 ---------
# sRGB decoding of every 8-bit value is a table; the XYZ matrix and the white point are
# scikit-image's own. Agrees with skimage.color.rgb2lab / lab2rgb to float32 precision.
_SRGB_LINEAR = np.where(
    np.arange(256) / 255.0 > 0.04045,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
    np.arange(256) / 255.0 / 12.92,
).astype(np.float32)
_SRGB_LINEAR.setflags(write=False)
_WHITE = np.asarray(_colorconv.xyz_tristimulus_values(illuminant="D65", observer="2"), dtype=np.float64)
_XYZN_FROM_RGB = (_colorconv.xyz_from_rgb / _WHITE[:, np.newaxis]).astype(np.float32)  # white -> (1, 1, 1)
_RGB_FROM_XYZN = (_colorconv.rgb_from_xyz * _WHITE[np.newaxis, :]).astype(np.float32)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """CIE-LAB companding of a float32 temporary, in place."""
    small = t <= np.float32(0.008856)
    lin = t * np.float32(7.787) + np.float32(16.0 / 116.0)
    np.cbrt(t, out=t)
    np.copyto(t, lin, where=small)
    return t


def _lab_f_inv(f: np.ndarray) -> np.ndarray:
    """Inverse companding of a float32 temporary, in place."""
    small = f <= np.float32(0.2068966)
    lin = (f - np.float32(16.0 / 116.0)) * np.float32(1.0 / 7.787)
    np.power(f, 3, out=f)
    np.copyto(f, lin, where=small)
    return f


def _lab32(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 3)`` uint8 sRGB -> CIE-LAB ``(L, a, b)``, each ``(n,)`` float32."""
    lin = [_SRGB_LINEAR[pixels[:, c]] for c in range(3)]
    m = _XYZN_FROM_RGB
    f = [_lab_f(lin[0] * m[i, 0] + lin[1] * m[i, 1] + lin[2] * m[i, 2]) for i in range(3)]
    light = f[1] * np.float32(116.0) - np.float32(16.0)
    a = (f[0] - f[1]) * np.float32(500.0)
    b = (f[1] - f[2]) * np.float32(200.0)
    return light, a, b


def _lab32_to_rgb(light: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """CIE-LAB float32 temporaries ``(n,)`` -> sRGB uint8 written into ``out`` ``(n, 3)``.

    As scikit-image: negative ``z`` is clipped to 0, out-of-gamut RGB is clipped to [0, 1].
    """
    fy = (light + np.float32(16.0)) * np.float32(1.0 / 116.0)
    fx = a * np.float32(1.0 / 500.0) + fy
    fz = fy - b * np.float32(1.0 / 200.0)
    np.maximum(fz, 0.0, out=fz)
    xyz = [_lab_f_inv(fx), _lab_f_inv(fy), _lab_f_inv(fz)]
    m = _RGB_FROM_XYZN
    for c in range(3):
        v = xyz[0] * m[c, 0] + xyz[1] * m[c, 1] + xyz[2] * m[c, 2]
        small = v <= np.float32(0.0031308)
        lin = v * np.float32(12.92)
        np.maximum(v, np.float32(0.0031308), out=v)
        np.power(v, np.float32(1 / 2.4), out=v)
        v *= np.float32(1.055)
        v -= np.float32(0.055)
        np.copyto(v, lin, where=small)
        v *= np.float32(255.0)
        np.rint(v, out=v)
        np.clip(v, 0.0, 255.0, out=v)
        out[:, c] = v


def _lab_to_uint8(lab: np.ndarray) -> np.ndarray:
    """CIE-LAB ``(H, W, 3)`` float -> sRGB uint8; out-of-gamut colours are clipped silently."""
    with warnings.catch_warnings():
        # skimage warns about negative Z values it clips; out-of-gamut clipping is intended here
        warnings.simplefilter("ignore", UserWarning)
        rgb = color.lab2rgb(lab)
    return _unit_float_to_uint8(rgb)


def _check_threshold(luminosity_threshold: float) -> float:
    return _real("luminosity_threshold", luminosity_threshold, lo=0.0, hi=1.0, lo_open=True)


def _tissue_from_lab(lab: np.ndarray, luminosity_threshold: float) -> np.ndarray:
    return lab[..., 0] / 100.0 < luminosity_threshold


def tissue_mask(image: np.ndarray, luminosity_threshold: float = 0.8) -> np.ndarray:
    """Tissue (non-background) pixels of a brightfield image.

    Parameters
    ----------
    image : np.ndarray
        Anything :func:`to_rgb_uint8` accepts, ``(H, W[, C])``.
    luminosity_threshold : float
        In ``(0, 1]``; pixels whose CIE-LAB lightness ``L / 100`` is below it are tissue
        (brightfield background is bright).

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool, True for tissue.
    """
    threshold = _check_threshold(luminosity_threshold)
    rgb = to_rgb_uint8(image)
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    return _tissue_from_lab(color.rgb2lab(rgb), threshold)


def standardize_luminosity(image: np.ndarray, percentile: float = 95) -> np.ndarray:
    """Luminosity standardization: stretch lightness so the background becomes white.

    The CIE-LAB lightness ``L`` is scaled by ``100 / p``, where ``p`` is the given percentile of
    ``L`` over the image, and clipped to ``[0, 100]``; chroma (a, b) is kept. With mostly bright
    background the percentile lies in the background, which thus maps to white.

    Parameters
    ----------
    image : np.ndarray
        Anything :func:`to_rgb_uint8` accepts, ``(H, W[, C])``.
    percentile : float
        In ``(0, 100]``.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8. A black (or empty) image is returned unchanged (black: with a
        logged warning).
    """
    pct = _real("percentile", percentile, lo=0.0, hi=100.0, lo_open=True)
    rgb = to_rgb_uint8(image)
    if rgb.size == 0:
        return rgb.copy()
    lab = color.rgb2lab(rgb)
    ref = float(np.percentile(lab[..., 0], pct))
    if ref <= 1e-6:
        logger.warning(
            "standardize_luminosity: the %g-th lightness percentile is 0 (black image); returned unchanged",
            pct,
        )
        return rgb.copy()
    lab[..., 0] = np.clip(lab[..., 0] * (100.0 / ref), 0.0, 100.0)
    return _lab_to_uint8(lab)


# --------------------------------------------------------------------------------------------
# parameter validation
# --------------------------------------------------------------------------------------------


def _real(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Validate a finite real number within optional bounds; returns it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value:g}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi:g}, got {value:g}")
    return value


def _int(name: str, value: Any, *, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


# --------------------------------------------------------------------------------------------
# base class and registry
# --------------------------------------------------------------------------------------------


class _Accumulator(ABC):
    """Staining statistics of an image that arrives tile by tile."""

    @abstractmethod
    def add(self, rgb: np.ndarray, origin: tuple[int, int]) -> None:
        """Take an ``(h, w, 3)`` uint8 tile whose top-left pixel is ``origin`` = (row, col) in the image."""

    @abstractmethod
    def finalize(self) -> dict[str, np.ndarray]:
        """The statistics of everything added; raise ``_NoTissueError`` with too little tissue."""


_REGISTRY: dict[str, type[StainNormalizer]] = {}
_N = TypeVar("_N", bound="type[StainNormalizer]")


def register_normalizer(cls: _N) -> _N:
    """Class decorator: make a concrete :class:`StainNormalizer` available by its ``method``."""
    name = getattr(cls, "method", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'method'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"stain normalization method {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls


def available_normalizers() -> list[str]:
    """Sorted names accepted by :func:`get_normalizer`."""
    return sorted(_REGISTRY)


def _lookup(method: Any) -> type[StainNormalizer]:
    key = method.strip().lower() if isinstance(method, str) else method
    if key not in _REGISTRY:
        valid = ", ".join(repr(m) for m in available_normalizers())
        raise ValueError(f"unknown stain normalization method {method!r}; valid methods: {valid}")
    return _REGISTRY[key]


def _construct(cls: type[StainNormalizer], params: Mapping[str, Any]) -> StainNormalizer:
    accepted = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for stain normalization method "
            f"{cls.method!r}; accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(**dict(params))


class StainNormalizer(ABC):
    """Base class of all stain normalizers.

    Subclasses define ``method`` (registry name), ``_STAT_SHAPES`` (name -> shape of each
    statistic that describes one image's staining), ``_accumulator`` (an object that takes an
    image tile by tile and returns its statistics; :meth:`fit`, :meth:`fit_source`,
    :meth:`transform` and :func:`fit_source_from_tiles` all estimate through it, so an image and
    its tiles give the same statistics), ``_apply`` (image + its statistics -> normalized image,
    towards the fitted target statistics) and ``get_params`` (constructor keyword arguments).
    """

    method: ClassVar[str]
    _STAT_SHAPES: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init__(self) -> None:
        self._target: dict[str, np.ndarray] | None = None

    # ---- hooks ---------------------------------------------------------------------------
    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """Constructor keyword arguments as a JSON-serialisable dict."""

    @abstractmethod
    def _accumulator(self, max_pixels: int | None, seed: int) -> _Accumulator:
        """A fresh accumulator of staining statistics (sample size and seed where it samples)."""

    def _sampling(self) -> tuple[int | None, int]:
        """This normalizer's own ``(max_pixels, seed)``; ``(None, 0)`` for exact, non-sampling ones."""
        return None, 0

    def _estimate(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """Staining statistics of an ``(H, W, 3)`` uint8 image; raise ``_NoTissueError`` if none."""
        acc = self._accumulator(*self._sampling())
        acc.add(rgb, (0, 0))
        return acc.finalize()

    @abstractmethod
    def _apply(self, rgb: np.ndarray, source: dict[str, np.ndarray]) -> np.ndarray:
        """Map ``(H, W, 3)`` uint8 with statistics ``source`` to the target -> ``(H, W, 3)`` uint8."""

    def _validate_stats(self, stats: dict[str, np.ndarray], what: str) -> None:
        """Extra checks on parsed statistics (shapes and finiteness are already checked)."""
        return None

    # ---- public API ----------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """True once target statistics are set (by :meth:`fit` or :meth:`from_dict`)."""
        return self._target is not None

    def fit(self, target: np.ndarray) -> StainNormalizer:
        """Estimate the target appearance.

        Parameters
        ----------
        target : np.ndarray
            Target image, ``(H, W, 3)`` uint8 RGB (anything :func:`to_rgb_uint8` accepts).

        Returns
        -------
        StainNormalizer
            ``self``.

        Raises
        ------
        ValueError
            If the target holds too little tissue to estimate its staining.
        """
        rgb = to_rgb_uint8(target, name="target")
        try:
            stats = self._estimate(rgb)
        except _NoTissueError as exc:
            raise ValueError(
                f"{self.method} stain normalization: the target image has no usable tissue ({exc}); "
                "choose another target image that shows stained tissue"
            ) from None
        self._target = stats
        logger.debug("%s normalizer fitted: %s", self.method, self._stats_to_json(stats))
        return self

    def fit_source(self, image: np.ndarray) -> dict[str, Any]:
        """Estimate a source image's staining once, for reuse on all of its tiles.

        Parameters
        ----------
        image : np.ndarray
            Source image (e.g. a whole slide or its thumbnail), ``(H, W, 3)`` uint8 RGB.

        Returns
        -------
        dict
            JSON-serialisable ``{"method": ..., "tissue": bool, <statistics>}`` to pass as
            ``transform(tile, source_params=...)``. Does not need :meth:`fit`. With too little
            tissue a warning is logged and ``"tissue"`` is False: tiles transformed with these
            parameters are returned unchanged.
        """
        rgb = to_rgb_uint8(image)
        try:
            stats = self._estimate(rgb)
        except _NoTissueError as exc:
            logger.warning(
                "%s stain normalization: source image has no usable tissue (%s); its tiles "
                "will be passed through unchanged",
                self.method,
                exc,
            )
            return {"method": self.method, "tissue": False}
        return {"method": self.method, "tissue": True, **self._stats_to_json(stats)}

    def transform(self, image: np.ndarray, source_params: Mapping[str, Any] | None = None) -> np.ndarray:
        """Normalize an image to the fitted target.

        Parameters
        ----------
        image : np.ndarray
            ``(H, W, 3)`` uint8 RGB (anything :func:`to_rgb_uint8` accepts).
        source_params : dict, optional
            Output of :meth:`fit_source` for the image this one is a tile of. When given, the
            source staining is not re-estimated, so all tiles of an image get the same mapping.

        Returns
        -------
        np.ndarray
            ``(H, W, 3)`` uint8. Images with too little tissue (without ``source_params``) and
            empty images are returned unchanged (a copy) with a logged warning.

        Raises
        ------
        NotFittedError
            (a ValueError) if neither :meth:`fit` nor :meth:`from_dict` set the target.
        ValueError
            For a bad image or malformed ``source_params``.
        """
        if self._target is None:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted; call fit(target) or load fitted parameters first"
            )
        rgb = to_rgb_uint8(image)
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            logger.warning(
                "%s stain normalization: empty image of shape %s passed through unchanged",
                self.method,
                rgb.shape,
            )
            return rgb.copy()
        if source_params is None:
            try:
                source = self._estimate(rgb)
            except _NoTissueError as exc:
                logger.warning(
                    "%s stain normalization: image has no usable tissue (%s); passed through unchanged",
                    self.method,
                    exc,
                )
                return rgb.copy()
        else:
            parsed = self._parse_source_params(source_params)
            if parsed is None:
                logger.debug(
                    "%s stain normalization: source_params mark the image as tissue-free; "
                    "tile passed through unchanged",
                    self.method,
                )
                return rgb.copy()
            source = parsed
        return self._apply(rgb, source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: method, constructor params and fitted statistics.

        Returns
        -------
        dict
            ``{"format_version": int, "method": str, "params": {...}, "fitted": {...} | None}``.
        """
        fitted = None if self._target is None else self._stats_to_json(self._target)
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "params": self.get_params(),
            "fitted": fitted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StainNormalizer:
        """Rebuild a normalizer from :meth:`to_dict` output.

        Called on :class:`StainNormalizer` (or another abstract base) the class is chosen by
        ``d["method"]``; called on a concrete class, ``d["method"]`` must match it.

        Raises
        ------
        ValueError
            For a malformed dict, an unknown or mismatching method, unknown parameters or
            fitted statistics of the wrong shape.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a dict from to_dict(), got {type(d).__name__}")
        version = d.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"unsupported stain normalizer format_version {version!r} "
                f"(this version reads <= {FORMAT_VERSION})"
            )
        if "method" not in d:
            raise ValueError("stain normalizer dict has no 'method'")
        method = d["method"]
        if inspect.isabstract(cls):
            klass = _lookup(method)
            if not issubclass(klass, cls):
                raise ValueError(f"method {method!r} is a {klass.__name__}, not a {cls.__name__}")
        else:
            if method != cls.method:
                raise ValueError(f"dict describes method {method!r}, not {cls.method!r} ({cls.__name__})")
            klass = cls
        params = d.get("params") or {}
        if not isinstance(params, Mapping):
            raise ValueError(f"'params' must be a dict, got {type(params).__name__}")
        norm = _construct(klass, params)
        fitted = d.get("fitted")
        if fitted is not None:
            if not isinstance(fitted, Mapping):
                raise ValueError(f"'fitted' must be a dict or None, got {type(fitted).__name__}")
            norm._target = norm._stats_from_json(fitted, "fitted parameters")
        return norm

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params}){'' if self.is_fitted else ' [not fitted]'}"

    # ---- (de)serialisation helpers ---------------------------------------------------------
    def _stats_to_json(self, stats: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {key: np.asarray(stats[key], dtype=np.float64).tolist() for key in self._STAT_SHAPES}

    def _stats_from_json(self, data: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
        stats: dict[str, np.ndarray] = {}
        for key, shape in self._STAT_SHAPES.items():
            if key not in data:
                raise ValueError(f"{what} for {self.method!r} lack {key!r}")
            try:
                arr = np.array(data[key], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{what}: {key!r} is not numeric ({exc})") from None
            if arr.shape != shape:
                raise ValueError(f"{what}: {key!r} must have shape {shape}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{what}: {key!r} contains NaN or infinite values")
            stats[key] = arr
        self._validate_stats(stats, what)
        return stats

    def _parse_source_params(self, source_params: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        if not isinstance(source_params, Mapping):
            raise ValueError(
                f"source_params must be a dict from fit_source(), got {type(source_params).__name__}"
            )
        if source_params.get("method") != self.method:
            raise ValueError(
                f"source_params were estimated by method {source_params.get('method')!r}, "
                f"but this normalizer is {self.method!r}"
            )
        if not source_params.get("tissue", True):
            return None
        return self._stats_from_json(source_params, "source_params")


# --------------------------------------------------------------------------------------------
# stain-matrix (Beer-Lambert) normalizers
# --------------------------------------------------------------------------------------------

_BACKENDS = ("auto", "numpy", "torch")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_NUMPY_CHUNK = 1 << 16  # pixels per step of the NumPy kernel: its float32 temporaries stay in cache
_TORCH_CHUNK = 1 << 22


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; without an NVIDIA driver torch is not even imported (slow)."""
    if "torch" not in sys.modules and not any(
        os.path.exists(path) for path in ("/dev/nvidiactl", "/proc/driver/nvidia/version")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class _PixelMap:
    """Per-pixel map of a stain-matrix normalization, from source OD to target OD.

    ``kind == "linear"``: ``od_out = od @ matrix`` with ``matrix`` (3, 3) (least-squares unmixing,
    rescaling and recomposition folded into one matrix). ``kind == "nn_lasso"``: concentrations
    ``c`` (2,) per pixel minimise ``0.5 ||od - c @ stains||^2 + lam * sum(c)`` subject to
    ``c >= 0`` (closed form, :func:`_nn_lasso_2`), then ``od_out = c @ out`` with ``out`` (2, 3)
    the target stain matrix with its rows scaled by the concentration ratios.
    """

    kind: str
    matrix: np.ndarray | None = None
    stains: np.ndarray | None = None
    lam: float = 0.0
    out: np.ndarray | None = None


def _nn_lasso_2(b0: Any, b1: Any, gram: np.ndarray, xp: Any) -> tuple[Any, Any]:
    """Exact non-negative lasso for two stains, vectorised over pixels.

    Minimises ``f(c) = 0.5 c^T G c - b^T c`` over ``c >= 0`` per pixel, with ``G`` (2, 2) the Gram
    matrix of the stain vectors and ``b_j = s_j . od - lam`` (``lam = 0``: non-negative least
    squares). ``f`` is convex: if the unconstrained minimiser ``G^-1 b`` (the 2x2 normal
    equations) is non-negative it is the answer. Otherwise the minimum lies on a face, where the
    single-stain minimiser is ``c_j = max(b_j, 0) / G_jj``. For stains that are not negatively
    correlated (``G_01 >= 0``, always so for non-negative stain vectors) the KKT conditions show
    that the face is the one of the negative coefficient: a negative ``c_0`` becomes 0 and ``c_1``
    its single-stain value, and vice versa (both negative happens only when ``b <= 0``, giving 0).
    For ``G_01 < 0`` both faces are evaluated and the one with the lower ``f =
    -max(b_j, 0)^2 / (2 G_jj)`` is taken.

    Parameters
    ----------
    b0, b1 : array
        ``(n,)`` float arrays (NumPy, or torch tensors with ``xp`` the torch module); not modified.
    gram : np.ndarray
        ``(2, 2)`` symmetric positive-definite Gram matrix.
    xp : module
        ``numpy`` or ``torch``.

    Returns
    -------
    tuple of arrays
        ``(c0, c1)``, each ``(n,)``, non-negative.
    """
    g00, g01, g11 = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    inv_det = 1.0 / (g00 * g11 - g01 * g01)
    c0 = (b0 * (g11 * inv_det)) - (b1 * (g01 * inv_det))
    c1 = (b1 * (g00 * inv_det)) - (b0 * (g01 * inv_det))
    if g01 >= 0.0:
        neg0, neg1 = c0 < 0, c1 < 0
        c0 = xp.where(neg1, b0 * (1.0 / g00), c0)
        c1 = xp.where(neg0, b1 * (1.0 / g11), c1)
    else:
        inside = (c0 >= 0) & (c1 >= 0)
        p0, p1 = _relu(b0 * 1.0, xp), _relu(b1 * 1.0, xp)
        first = p0 * p0 * g11 >= p1 * p1 * g00  # face c1 = 0 has the lower objective
        zero = xp.zeros_like(c0)
        c0 = xp.where(inside, c0, xp.where(first, p0 * (1.0 / g00), zero))
        c1 = xp.where(inside, c1, xp.where(first, zero, p1 * (1.0 / g11)))
    return _relu(c0, xp), _relu(c1, xp)


def _nn_lasso_2_inplace(b0: np.ndarray, b1: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_nn_lasso_2` for NumPy temporaries and ``G_01 >= 0`` with fewer temporaries; overwrites b."""
    g00, g01, g11 = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    inv_det = 1.0 / (g00 * g11 - g01 * g01)
    dtype = b0.dtype.type
    tmp = b1 * dtype(g01 * inv_det)
    c0 = b0 * dtype(g11 * inv_det)
    c0 -= tmp
    np.multiply(b0, dtype(g01 * inv_det), out=tmp)
    c1 = b1 * dtype(g00 * inv_det)
    c1 -= tmp
    neg0 = c0 < 0
    neg1 = c1 < 0
    if g00 != 1.0:
        b0 *= dtype(1.0 / g00)
    if g11 != 1.0:
        b1 *= dtype(1.0 / g11)
    np.copyto(c0, b0, where=neg1)
    np.copyto(c1, b1, where=neg0)
    return np.maximum(c0, 0.0, out=c0), np.maximum(c1, 0.0, out=c1)


def _relu(a: Any, xp: Any) -> Any:
    """``max(a, 0)`` in place (``a`` must be a temporary)."""
    if xp is np:
        return np.maximum(a, 0.0, out=a)
    return a.clamp_min_(0.0)


def _worker_count() -> int:
    """CPU cores this process may use (its affinity mask), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _run_pixel_map_numpy(pixels: np.ndarray, pm: _PixelMap) -> np.ndarray:
    """``(N, 3)`` uint8 -> ``(N, 3)`` uint8 through ``pm``, float32, in cache-sized chunks.

    The pixels are split into one contiguous range per CPU core, run in threads (NumPy releases
    the GIL inside its loops). Every pixel goes through the same element-wise operations whatever
    the range or chunk it falls in, so the result does not depend on the image's size or tiling.
    The intensity ``256 exp(-od) - 1`` is rounded as ``floor(256 exp(-od) - 0.5)``.
    """
    out = np.empty_like(pixels)
    lut = _OD_LUT32
    log_scale = np.float32(math.log(_OD_SCALE))
    if pm.kind == "linear":
        coef = -np.asarray(pm.matrix, dtype=np.float32).T  # (3 out, 3 in)
    else:
        stains = np.asarray(pm.stains, dtype=np.float32)
        coef = -np.asarray(pm.out, dtype=np.float32).T  # (3 out, 2 stains)
        gram = np.asarray(pm.stains, dtype=np.float64) @ np.asarray(pm.stains, dtype=np.float64).T
        lam = np.float32(pm.lam)

    def run(lo: int, hi: int) -> None:
        for start in range(lo, hi, _NUMPY_CHUNK):
            stop = min(hi, start + _NUMPY_CHUNK)
            chunk = pixels[start:stop]
            od = [lut[chunk[:, 0]], lut[chunk[:, 1]], lut[chunk[:, 2]]]
            if pm.kind == "linear":
                terms = od
            else:
                b0 = od[0] * stains[0, 0]
                b0 += od[1] * stains[0, 1]
                b0 += od[2] * stains[0, 2]
                b0 -= lam
                b1 = od[0] * stains[1, 0]
                b1 += od[1] * stains[1, 1]
                b1 += od[2] * stains[1, 2]
                b1 -= lam
                solve = _nn_lasso_2_inplace if gram[0, 1] >= 0 else functools.partial(_nn_lasso_2, xp=np)
                terms = list(solve(b0, b1, gram))
            tmp = np.empty_like(terms[0])
            for ch in range(3):
                # x = ln 256 - od_out, capped at ln 256 (od_out >= 0); intensity = exp(x) - 1
                x = terms[0] * coef[ch, 0]
                for j in range(1, len(terms)):
                    np.multiply(terms[j], coef[ch, j], out=tmp)
                    x += tmp
                x += log_scale
                np.minimum(x, log_scale, out=x)
                np.exp(x, out=x)
                x -= np.float32(0.5)
                np.maximum(x, 0.0, out=x)
                out[start:stop, ch] = x  # truncation = floor, as x >= 0

    _parallel_ranges(pixels.shape[0], run)
    return out


def _parallel_ranges(n: int, run: Callable[[int, int], Any]) -> list[Any]:
    """``run(lo, hi)`` over contiguous ranges covering ``[0, n)``, in one thread per CPU core.

    Four ranges per thread, taken as threads become free, keep the cores balanced when another
    process takes one of them for a while. Results come back in range order. Small inputs (fewer
    than four chunks per core) run in the calling thread.
    """
    workers = min(_worker_count(), max(1, n // (4 * _NUMPY_CHUNK)))
    if workers <= 1:
        return [run(0, n)]
    parts = min(4 * workers, max(1, n // _NUMPY_CHUNK))
    edges = [round(i * n / parts / _NUMPY_CHUNK) * _NUMPY_CHUNK for i in range(parts)] + [n]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, edges[:-1], edges[1:]))


def _run_pixel_map_torch(pixels: np.ndarray, pm: _PixelMap, device: str) -> np.ndarray:
    """Torch twin of :func:`_run_pixel_map_numpy` (float32) on ``device``."""
    import torch

    dev = torch.device(device)
    lut = torch.tensor(_OD_LUT32, device=dev)
    log_scale = math.log(_OD_SCALE)
    if pm.kind == "linear":
        coef = torch.as_tensor(-np.asarray(pm.matrix, dtype=np.float32), device=dev)  # (3 in, 3 out)
    else:
        stains_t = torch.as_tensor(np.asarray(pm.stains, dtype=np.float32).T.copy(), device=dev)  # (3, 2)
        coef = torch.as_tensor(-np.asarray(pm.out, dtype=np.float32), device=dev)  # (2, 3)
        gram = np.asarray(pm.stains, dtype=np.float64) @ np.asarray(pm.stains, dtype=np.float64).T
    with warnings.catch_warnings():  # a read-only input is fine: the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(pixels)
    on_cpu = dev.type == "cpu"
    result = torch.empty(pixels.shape, dtype=torch.uint8) if on_cpu else None
    parts = []
    chunk_size = _TORCH_CHUNK if not on_cpu else 1 << 18
    with torch.inference_mode():
        for start in range(0, pixels.shape[0], chunk_size):
            chunk = src[start : start + chunk_size].to(dev, non_blocking=True)
            od = lut[chunk.long()]  # (n, 3)
            if pm.kind == "linear":
                x = od @ coef
            else:
                b = od @ stains_t - float(pm.lam)  # (n, 2)
                c0, c1 = _nn_lasso_2(b[:, 0], b[:, 1], gram, torch)
                x = torch.stack((c0, c1), dim=1) @ coef
            x = x.add_(log_scale).clamp_max_(log_scale).exp_().sub_(0.5).clamp_min_(0.0).to(torch.uint8)
            if result is not None:
                result[start : start + chunk.shape[0]] = x
            else:
                parts.append(x)
        if result is None:
            result = torch.cat(parts).cpu() if parts else torch.empty(pixels.shape, dtype=torch.uint8)
        return result.numpy()


_BLAS_BLOCK = 8192  # rows per product: OpenBLAS runs products this small in the calling thread


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a long ``(n, k)`` by a small ``(k, m)`` matrix, in blocks of rows.

    OpenBLAS starts its own threads for large products; beside other busy processes (or this
    module's worker threads) its spinning threads can make a millisecond product take tens of
    milliseconds. Products of at most :data:`_BLAS_BLOCK` rows stay in the calling thread.
    """
    if a.shape[0] <= _BLAS_BLOCK:
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    for start in range(0, a.shape[0], _BLAS_BLOCK):
        np.matmul(a[start : start + _BLAS_BLOCK], b, out=out[start : start + _BLAS_BLOCK])
    return out


def _gram(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x @ y.T`` for ``(p, n)`` and ``(q, n)`` with long ``n``, summed over blocks (see :func:`_mul`)."""
    out = np.zeros((x.shape[0], y.shape[0]), dtype=np.result_type(x, y))
    for start in range(0, x.shape[1], _BLAS_BLOCK):
        out += x[:, start : start + _BLAS_BLOCK] @ y[:, start : start + _BLAS_BLOCK].T
    return out


def _angle_extremes(od: np.ndarray, alpha: float) -> np.ndarray:
    """Macenko's stain directions: ``(M, 3)`` OD -> ``(2, 3)`` (unordered, not normalised).

    The OD is projected onto the plane of the two largest eigenvectors of its covariance; the
    directions at the ``alpha``-th and ``(100 - alpha)``-th percentiles of the angle in that plane
    are returned.
    """
    centred = np.ascontiguousarray((od - od.mean(axis=0)).T)
    cov = _gram(centred, centred) / max(od.shape[0] - 1, 1)
    _, eigvecs = np.linalg.eigh(cov)  # ascending eigenvalues
    plane = eigvecs[:, [2, 1]].copy()  # (3, 2): largest, second largest
    if plane[:, 0].sum() < 0:  # OD is non-negative: orient the main axis into it
        plane[:, 0] *= -1.0
    projected = _mul(od, plane)
    # the main axis points into the data, so angles stay inside (-pi/2, pi/2): no wrap-around
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angles, [alpha, 100.0 - alpha])
    directions = np.array([[np.cos(lo), np.sin(lo)], [np.cos(hi), np.sin(hi)]])
    return directions @ plane.T


class _StainMatrixAccumulator(_Accumulator):
    """Counts and bottom-k samples of a tiled image's "opaque" and "stained" pixels."""

    def __init__(self, norm: StainMatrixNormalizer, max_pixels: int | None, seed: int) -> None:
        self.norm = norm
        self.threshold = _od_threshold_intensity(norm.beta)
        self.mix = _seed_mix(seed)
        self.n_total = self.n_opaque = self.n_stained = 0
        self.opaque = _BottomK(max_pixels)
        self.stained = _BottomK(max_pixels)

    def add(self, rgb: np.ndarray, origin: tuple[int, int]) -> None:
        height, width = rgb.shape[:2]
        if height * width == 0:
            return
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        # OD >= beta  <=>  intensity <= threshold, per channel
        stained = (np.minimum(np.minimum(r, g), b) <= self.threshold).reshape(-1)  # in some channel
        opaque = (np.maximum(np.maximum(r, g), b) <= self.threshold).reshape(-1)  # in every channel
        n_stained, n_opaque = int(np.count_nonzero(stained)), int(np.count_nonzero(opaque))
        self.n_total += height * width
        self.n_stained += n_stained
        self.n_opaque += n_opaque
        if n_stained == 0:
            return
        keys = _position_keys(origin, height, width, self.mix).reshape(-1)
        pixels = rgb.reshape(-1, 3)
        plans = [(self.stained, stained, n_stained), (self.opaque, opaque, n_opaque)]
        bounds = [sample.bounds(n) for sample, _, n in plans]
        tentatives = [t for t, _ in bounds]
        if any(t is None for t in tentatives):
            cand = np.flatnonzero(stained)  # opaque pixels are stained too
        else:
            cand = np.flatnonzero(keys < np.uint64(max(t for t in tentatives if t is not None)))
        cand_keys = keys[cand]
        cand_values = _pack(cand_keys, pixels[cand])
        for (sample, mask, n), (tentative, safe) in zip(plans, bounds, strict=True):
            if n == 0:
                continue
            select = mask[cand]
            if tentative is not None:
                select &= cand_keys < np.uint64(tentative)
                if not sample.enough_below(int(np.count_nonzero(select)), tentative):  # rare: widen
                    wide = mask if safe is None else mask & (keys < np.uint64(safe))
                    idx = np.flatnonzero(wide)
                    sample.offer(_pack(keys[idx], pixels[idx]))
                    continue
            sample.offer(cand_values[select])

    def finalize(self) -> dict[str, np.ndarray]:
        norm = self.norm
        if self.n_total == 0:
            raise _NoTissueError("the image is empty")
        needed = max(norm.min_tissue_pixels, math.ceil(norm.min_tissue_fraction * self.n_total))
        if self.n_opaque < needed:
            raise _NoTissueError(
                f"{self.n_opaque} of {self.n_total} pixels ({self.n_opaque / self.n_total:.2%}) have OD >= "
                f"beta={norm.beta:g} in every channel, at least {needed} needed"
            )
        stains = norm._orient_and_order(norm._estimate_stain_matrix(_OD_LUT[self.opaque.sample()]))
        angle = _angle_deg(stains[0], stains[1])
        if angle < _MIN_STAIN_ANGLE_DEG:
            raise _NoTissueError(
                f"the two stain vectors are only {angle:.2f} degrees apart; the image looks single-stained"
            )
        conc = norm._concentrations(
            _OD_LUT[self.stained.sample(ordered=False)], stains
        )  # percentile: any order
        max_conc = np.percentile(conc, norm.percentile, axis=0)
        if np.any(max_conc <= _EPS):
            raise _NoTissueError(
                f"the {norm.percentile:g}-th concentration percentiles {max_conc} are not positive"
            )
        return {"stain_matrix": stains, "max_concentrations": max_conc}


class StainMatrixNormalizer(StainNormalizer):
    """Base for normalizers that separate two stains in optical-density space (Macenko, Vahadane).

    An image's staining is its stain matrix ``S`` (2, 3) -- unit OD vectors of hematoxylin
    (row 0) and eosin (row 1) -- and its maximal concentrations ``c_max`` (2,). ``transform``
    unmixes the source into concentrations ``C`` (least squares, ``OD S_src^+``, for Macenko;
    non-negative for Vahadane), rescales ``C * c_max_tgt / c_max_src`` and recomposes
    ``OD_out = C S_tgt``.

    Both statistics are estimated on a seeded random sample of at most ``max_pixels`` pixels (one
    sample of "opaque" pixels for ``S``, one of "stained" pixels for ``c_max``). The sample is
    drawn by a hash of each pixel's position, so an image and its tiles (with their positions, see
    :func:`fit_source_from_tiles`) select the same pixels and give the same estimate.

    Parameters
    ----------
    beta : float
        OD threshold: pixels with OD below ``beta`` in any channel are too transparent and are
        ignored when estimating the stain matrix. Also decides the tissue amount: pixels with OD
        ``>= beta`` in at least one channel are the "stained" pixels over which ``c_max`` is taken.
    percentile : float
        Percentile in ``(0, 100]`` of the stained pixels' concentrations used as ``c_max``
        (robust maximum; taking it over stained pixels only keeps it independent of how much
        background an image or tile has).
    min_tissue_fraction, min_tissue_pixels : float, int
        An image needs at least ``max(min_tissue_pixels, min_tissue_fraction * H * W)`` pixels
        passing the ``beta`` threshold in every channel; otherwise it counts as tissue-free.
    max_pixels : int or None
        Sample size for the estimates (>= 100); None uses every pixel.
    seed : int
        Seed of the pixel sample (>= 0).
    backend : {"auto", "numpy", "torch"}
        Engine of the per-pixel transform (OD conversion, unmixing, recomposition; float32).
        ``"auto"`` uses torch when a CUDA GPU is visible, else NumPy. Both agree within one grey
        level. Estimation always runs in NumPy (it works on the sample).
    device : str
        Torch device for ``backend="torch"``: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    """

    _STAT_SHAPES: ClassVar[dict[str, tuple[int, ...]]] = {"stain_matrix": (2, 3), "max_concentrations": (2,)}

    def __init__(
        self,
        *,
        beta: float = 0.15,
        percentile: float = 99.0,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
        max_pixels: int | None = 30_000,
        seed: int = 0,
        backend: str = "auto",
        device: str = "auto",
    ) -> None:
        super().__init__()
        self.beta = _real("beta", beta, lo=0.0, hi=math.log(_OD_SCALE), hi_open=True)
        self.percentile = _real("percentile", percentile, lo=0.0, hi=100.0, lo_open=True)
        self.min_tissue_fraction = _real("min_tissue_fraction", min_tissue_fraction, lo=0.0, hi=1.0)
        self.min_tissue_pixels = _int("min_tissue_pixels", min_tissue_pixels, lo=3)
        self.max_pixels = None if max_pixels is None else _int("max_pixels", max_pixels, lo=100)
        self.seed = _int("seed", seed, lo=0)
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, got {backend!r}")
        self.backend = backend
        if not isinstance(device, str) or not _DEVICE_RE.match(device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
        self.device = device

    def get_params(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "percentile": self.percentile,
            "min_tissue_fraction": self.min_tissue_fraction,
            "min_tissue_pixels": self.min_tissue_pixels,
            "max_pixels": self.max_pixels,
            "seed": self.seed,
            "backend": self.backend,
            "device": self.device,
        }

    @property
    def stain_matrix(self) -> np.ndarray:
        """Fitted target stain matrix, ``(2, 3)`` float64, unit rows, hematoxylin first."""
        if self._target is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        return self._target["stain_matrix"].copy()

    @property
    def max_concentrations(self) -> np.ndarray:
        """Fitted target maximal concentrations, ``(2,)`` float64 (hematoxylin, eosin)."""
        if self._target is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        return self._target["max_concentrations"].copy()

    @abstractmethod
    def _estimate_stain_matrix(self, od: np.ndarray) -> np.ndarray:
        """``(M, 3)`` OD of pixels above ``beta`` in every channel -> ``(2, 3)`` stain vectors."""

    def _concentrations(self, od: np.ndarray, stain_matrix: np.ndarray) -> np.ndarray:
        """Least-squares unmixing of ``(N, 3)`` OD with ``(2, 3)`` stains -> ``(N, 2)`` float64."""
        if od.shape[0] == 0:
            return np.zeros((0, 2))
        return _mul(od, np.linalg.pinv(stain_matrix))

    def _pixel_map(self, source: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> _PixelMap:
        """Least-squares unmixing, rescaling and recomposition as one ``(3, 3)`` OD matrix."""
        scale = target["max_concentrations"] / source["max_concentrations"]
        matrix = np.linalg.pinv(source["stain_matrix"]) @ (scale[:, np.newaxis] * target["stain_matrix"])
        return _PixelMap("linear", matrix=matrix)

    @staticmethod
    def _orient_and_order(vectors: np.ndarray) -> np.ndarray:
        """Point both vectors into positive OD, normalise them, hematoxylin (larger red OD) first."""
        vectors = np.array(vectors, dtype=np.float64)
        vectors[vectors.sum(axis=1) < 0] *= -1.0
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), _EPS)
        if vectors[1, 0] > vectors[0, 0]:
            vectors = vectors[::-1].copy()
        return vectors

    def _validate_stats(self, stats: dict[str, np.ndarray], what: str) -> None:
        if np.any(np.linalg.norm(stats["stain_matrix"], axis=1) < _EPS):
            raise ValueError(f"{what}: 'stain_matrix' has a zero row")
        if np.any(stats["max_concentrations"] <= 0):
            raise ValueError(f"{what}: 'max_concentrations' must be positive")

    def _sampling(self) -> tuple[int | None, int]:
        return self.max_pixels, self.seed

    def _accumulator(self, max_pixels: int | None, seed: int) -> _Accumulator:
        return _StainMatrixAccumulator(self, max_pixels, seed)

    def _torch_device(self) -> str | None:
        """The torch device the per-pixel transform runs on, or None for NumPy."""
        if self.backend == "numpy" or (self.backend == "auto" and not _cuda_available()):
            return None
        if self.device == "auto":
            return "cuda" if _cuda_available() else "cpu"
        if self.device.startswith("cuda") and not _cuda_available():
            raise ValueError(
                f"{self.method} stain normalization: device={self.device!r} was requested but no CUDA GPU "
                "is visible; use device='auto' or 'cpu', or backend='numpy'"
            )
        return self.device

    def _apply(self, rgb: np.ndarray, source: dict[str, np.ndarray]) -> np.ndarray:
        target = self._target
        if target is None:  # guarded by transform(); keeps type checkers and direct callers honest
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        pm = self._pixel_map(source, target)
        pixels = rgb.reshape(-1, 3)
        device = self._torch_device()
        out = _run_pixel_map_numpy(pixels, pm) if device is None else _run_pixel_map_torch(pixels, pm, device)
        return out.reshape(rgb.shape)


@register_normalizer
class MacenkoNormalizer(StainMatrixNormalizer):
    """Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009.

    Stain vectors: take the OD of pixels above ``beta`` in every channel, project them onto the
    plane of the two largest eigenvectors of their covariance, and take the directions at the
    ``alpha``-th and ``(100 - alpha)``-th percentiles of the angle in that plane. The vector with
    the larger red OD component is hematoxylin. Concentrations by least squares; see
    :class:`StainMatrixNormalizer` for the other parameters.

    Parameters
    ----------
    alpha : float
        Angle percentile in ``[0, 50)``; 1 means the 1st and 99th percentiles (robust extremes).
    beta, percentile, min_tissue_fraction, min_tissue_pixels, max_pixels, seed, backend, device
        See :class:`StainMatrixNormalizer`.
    """

    method: ClassVar[str] = "macenko"

    def __init__(
        self,
        *,
        beta: float = 0.15,
        alpha: float = 1.0,
        percentile: float = 99.0,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
        max_pixels: int | None = 30_000,
        seed: int = 0,
        backend: str = "auto",
        device: str = "auto",
    ) -> None:
        super().__init__(
            beta=beta,
            percentile=percentile,
            min_tissue_fraction=min_tissue_fraction,
            min_tissue_pixels=min_tissue_pixels,
            max_pixels=max_pixels,
            seed=seed,
            backend=backend,
            device=device,
        )
        self.alpha = _real("alpha", alpha, lo=0.0, hi=50.0, hi_open=True)

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super().get_params()}

    def _estimate_stain_matrix(self, od: np.ndarray) -> np.ndarray:
        return _angle_extremes(od, self.alpha)


def _dictionary_learning_2(
    od: np.ndarray, init: np.ndarray, lam: float, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Sparse non-negative dictionary learning with two atoms (Vahadane et al. 2016).

    Minimises ``0.5 ||V - W H||_F^2 + lam ||H||_1`` over ``W >= 0`` (3, 2) with columns of norm
    <= 1 and ``H >= 0`` (2, n), where ``V`` (3, n) holds the pixels' OD, by alternating exact
    block minimisation: the H-step solves every pixel's two-variable non-negative lasso in closed
    form (:func:`_nn_lasso_2`); the W-step updates each column in turn by the block-coordinate rule
    of Mairal et al. (JMLR 2010), ``w_j <- P(w_j + (B_j - W A_j) / A_jj)`` with ``A = H H^T``,
    ``B = V H^T`` and ``P`` the projection onto ``{w >= 0, ||w|| <= 1}`` (clip, then shrink to the
    unit ball). The objective never increases; it stops when no entry of ``W`` moves by more than
    ``tol``.

    Parameters
    ----------
    od : np.ndarray
        ``(n, 3)`` float64 OD of the pixels.
    init : np.ndarray
        ``(2, 3)`` initial atoms (rows), non-negative with positive norm.
    lam : float
        Sparsity weight ``lam >= 0``.
    max_iter : int
        Maximum number of H/W sweeps.
    tol : float
        Convergence threshold on the change of ``W``.

    Returns
    -------
    atoms : np.ndarray
        ``(2, 3)`` learned atoms (rows, not yet normalised or ordered).
    n_iter : int
        Sweeps done.
    """
    w = np.array(init, dtype=np.float64).T  # (3, 2)
    w /= np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1.0)
    od_t = np.ascontiguousarray(od.T)  # (3, n): contiguous rows keep the per-pixel steps fast
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (reported)
        b = _mul(od, w)  # (n, 2)
        b -= lam
        h = np.stack(_nn_lasso_2(b[:, 0], b[:, 1], w.T @ w, np))  # (2, n)
        a = _gram(h, h)  # H H^T
        bb = _gram(od_t, h)  # V H^T, (3, 2)
        previous = w.copy()
        for j in range(2):
            if a[j, j] <= _EPS:
                continue  # an unused atom stays where it is
            u = w[:, j] + (bb[:, j] - w @ a[:, j]) / a[j, j]
            np.maximum(u, 0.0, out=u)
            norm = float(np.linalg.norm(u))
            if norm > 1.0:
                u /= norm
            if norm > _EPS:
                w[:, j] = u
        if np.max(np.abs(w - previous)) < tol:
            break
    return w.T.copy(), n_iter


@register_normalizer
class VahadaneNormalizer(StainMatrixNormalizer):
    """Vahadane et al., "Structure-preserving color normalization and sparse stain separation for
    histological images", IEEE TMI 35(8), 2016.

    Stain vectors by sparse non-negative matrix factorisation of the OD ``V`` (3, n) of a seeded
    random sample of at most ``max_pixels`` pixels above ``beta`` in every channel:
    ``min 0.5 ||V - W H||^2 + regularizer * sum(H)`` with ``W, H >= 0`` and unit stain vectors
    (columns of ``W``), two stains, solved by :func:`_dictionary_learning_2` (exact alternating
    block minimisation, vectorised, deterministic) from Macenko's estimate (``alpha = 1``) as the
    starting point, first on every 4th sample pixel (to ``10 * tol``), then on all of them. The
    vector with the larger red OD component is hematoxylin.

    Concentrations -- for ``c_max`` and for every pixel in ``transform`` -- are non-negative:
    per pixel ``min 0.5 ||od - c S||^2 + concentration_regularizer * sum(c)``, ``c >= 0``. For two
    stains this has a closed form (:func:`_nn_lasso_2`): solve the 2x2 normal equations; where a
    coefficient comes out negative, the single-stain solution ``c_j = max(s_j . od - lam, 0)`` of
    the better of the two stains is exact. staintools solves the same problems with SPAMS
    (``trainDL`` with lambda 0.1, ``lasso`` with lambda 0.01), hence the defaults.

    Parameters
    ----------
    regularizer : float
        Sparsity weight ``lambda`` of the dictionary learning (>= 0; default 0.1 as in staintools).
    concentration_regularizer : float
        Sparsity weight of the per-pixel concentrations (>= 0; default 0.01 as in staintools;
        0 gives non-negative least squares).
    max_iter : int
        Maximum alternating sweeps of the dictionary learning.
    tol : float
        Stop when no stain-vector entry changes by more than ``tol`` in a sweep.
    beta, percentile, min_tissue_fraction, min_tissue_pixels, max_pixels, seed, backend, device
        See :class:`StainMatrixNormalizer` (here ``max_pixels`` defaults to 30000).
    """

    method: ClassVar[str] = "vahadane"

    def __init__(
        self,
        *,
        regularizer: float = 0.1,
        concentration_regularizer: float = 0.01,
        max_iter: int = 200,
        tol: float = 1e-4,
        beta: float = 0.15,
        percentile: float = 99.0,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
        max_pixels: int | None = 30_000,
        seed: int = 0,
        backend: str = "auto",
        device: str = "auto",
    ) -> None:
        super().__init__(
            beta=beta,
            percentile=percentile,
            min_tissue_fraction=min_tissue_fraction,
            min_tissue_pixels=min_tissue_pixels,
            max_pixels=max_pixels,
            seed=seed,
            backend=backend,
            device=device,
        )
        self.regularizer = _real("regularizer", regularizer, lo=0.0)
        self.concentration_regularizer = _real("concentration_regularizer", concentration_regularizer, lo=0.0)
        self.max_iter = _int("max_iter", max_iter, lo=1)
        self.tol = _real("tol", tol, lo=0.0, lo_open=True)

    def get_params(self) -> dict[str, Any]:
        return {
            "regularizer": self.regularizer,
            "concentration_regularizer": self.concentration_regularizer,
            "max_iter": self.max_iter,
            "tol": self.tol,
            **super().get_params(),
        }

    def _estimate_stain_matrix(self, od: np.ndarray) -> np.ndarray:
        # coarse to fine: every 4th pixel (also for the start) to 10x the tolerance, then all
        coarse_od = od[::4] if od.shape[0] >= 4 * 2000 else od
        init = np.maximum(self._orient_and_order(_angle_extremes(coarse_od, 1.0)), 0.0)
        if np.any(np.linalg.norm(init, axis=1) < 1e-3):  # degenerate start: textbook H&E vectors
            init = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
        coarse = 0
        if coarse_od is not od:
            init, coarse = _dictionary_learning_2(
                coarse_od, init, self.regularizer, self.max_iter, 10 * self.tol
            )
        atoms, n_iter = _dictionary_learning_2(od, init, self.regularizer, self.max_iter, self.tol)
        logger.debug(
            "vahadane dictionary learning: %d sweeps on %d pixels after %d on 1/4",
            n_iter,
            od.shape[0],
            coarse,
        )
        return atoms

    def _concentrations(self, od: np.ndarray, stain_matrix: np.ndarray) -> np.ndarray:
        """Non-negative (lasso) unmixing of ``(N, 3)`` OD with ``(2, 3)`` stains -> ``(N, 2)``."""
        b = _mul(od, stain_matrix.T) - self.concentration_regularizer
        c0, c1 = _nn_lasso_2(b[:, 0], b[:, 1], stain_matrix @ stain_matrix.T, np)
        return np.stack((c0, c1), axis=1)

    def _pixel_map(self, source: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> _PixelMap:
        scale = target["max_concentrations"] / source["max_concentrations"]
        return _PixelMap(
            "nn_lasso",
            stains=source["stain_matrix"],
            lam=self.concentration_regularizer,
            out=scale[:, np.newaxis] * target["stain_matrix"],
        )


class _MomentAccumulator(_Accumulator):
    """Exact running LAB mean and variance over a tiled image (Chan et al.'s pairwise update).

    LAB is computed per pixel in float32 (:func:`_lab32`); counts, means and squared deviations are
    accumulated in float64 per chunk and merged.
    """

    def __init__(self, norm: ReinhardNormalizer) -> None:
        self.norm = norm
        self.n_total = self.n_tissue = self.count = 0
        self.mean = np.zeros(3)
        self.m2 = np.zeros(3)

    def _merge(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def add(self, rgb: np.ndarray, origin: tuple[int, int]) -> None:
        pixels = rgb.reshape(-1, 3)
        if pixels.shape[0] == 0:
            return
        limit = np.float32(100.0 * self.norm.luminosity_threshold)
        tissue_only = self.norm.tissue_only

        def run(lo: int, hi: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
            parts = []
            for start in range(lo, hi, _NUMPY_CHUNK):
                lab = _lab32(pixels[start : min(hi, start + _NUMPY_CHUNK)])
                tissue = lab[0] < limit
                n_tissue = int(np.count_nonzero(tissue))
                values = [v[tissue] for v in lab] if tissue_only else list(lab)
                n = values[0].shape[0]
                means, m2s = np.zeros(3), np.zeros(3)
                for c, v in enumerate(values):
                    if n:
                        v64 = v.astype(np.float64)
                        means[c] = v64.mean()
                        v64 -= means[c]
                        np.multiply(v64, v64, out=v64)
                        m2s[c] = v64.sum()
                parts.append((n_tissue, n, means, m2s))
            return parts

        for parts in _parallel_ranges(pixels.shape[0], run):
            for n_tissue, n, means, m2s in parts:
                self.n_tissue += n_tissue
                self._merge(n, means, m2s)
        self.n_total += pixels.shape[0]

    def finalize(self) -> dict[str, np.ndarray]:
        norm = self.norm
        if self.n_total == 0:
            raise _NoTissueError("the image is empty")
        needed = max(norm.min_tissue_pixels, math.ceil(norm.min_tissue_fraction * self.n_total))
        if self.n_tissue < needed:
            raise _NoTissueError(
                f"{self.n_tissue} of {self.n_total} pixels ({self.n_tissue / self.n_total:.2%}) are darker "
                f"than L/100={norm.luminosity_threshold:g}, at least {needed} needed"
            )
        return {"mean": self.mean.copy(), "std": np.sqrt(self.m2 / self.count)}


@register_normalizer
class ReinhardNormalizer(StainNormalizer):
    """Reinhard et al., "Color transfer between images", IEEE CG&A 2001, in CIE-LAB.

    Each LAB channel is standardised with the source mean/std and rescaled to the target's:
    ``lab_out = (lab - mean_src) * std_tgt / std_src + mean_tgt`` (a channel whose source std is
    ~0 is only shifted). The statistics are ``mean`` (3,) and ``std`` (3,) over all pixels, or
    over tissue pixels (:func:`tissue_mask`) with ``tissue_only=True``; the mapping is applied to
    all pixels.

    Parameters
    ----------
    tissue_only : bool
        Compute statistics on tissue pixels only (default: all pixels).
    luminosity_threshold : float
        Tissue threshold on LAB ``L / 100``, see :func:`tissue_mask`.
    min_tissue_fraction, min_tissue_pixels : float, int
        An image with fewer than ``max(min_tissue_pixels, min_tissue_fraction * H * W)`` tissue
        pixels counts as tissue-free (passed through / rejected as target).
    """

    method: ClassVar[str] = "reinhard"
    _STAT_SHAPES: ClassVar[dict[str, tuple[int, ...]]] = {"mean": (3,), "std": (3,)}

    def __init__(
        self,
        *,
        tissue_only: bool = False,
        luminosity_threshold: float = 0.8,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
    ) -> None:
        super().__init__()
        self.tissue_only = _bool("tissue_only", tissue_only)
        self.luminosity_threshold = _check_threshold(luminosity_threshold)
        self.min_tissue_fraction = _real("min_tissue_fraction", min_tissue_fraction, lo=0.0, hi=1.0)
        self.min_tissue_pixels = _int("min_tissue_pixels", min_tissue_pixels, lo=1)

    def get_params(self) -> dict[str, Any]:
        return {
            "tissue_only": self.tissue_only,
            "luminosity_threshold": self.luminosity_threshold,
            "min_tissue_fraction": self.min_tissue_fraction,
            "min_tissue_pixels": self.min_tissue_pixels,
        }

    def _validate_stats(self, stats: dict[str, np.ndarray], what: str) -> None:
        if np.any(stats["std"] < 0):
            raise ValueError(f"{what}: 'std' must be non-negative")

    def _accumulator(self, max_pixels: int | None, seed: int) -> _Accumulator:
        return _MomentAccumulator(self)

    def _apply(self, rgb: np.ndarray, source: dict[str, np.ndarray]) -> np.ndarray:
        target = self._target
        if target is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        src_std = source["std"]
        scale = np.where(src_std > 1e-6, target["std"] / np.maximum(src_std, 1e-6), 1.0)
        # lab_out = lab * scale + offset, per channel
        gain = scale.astype(np.float32)
        offset = (target["mean"] - source["mean"] * scale).astype(np.float32)
        pixels = rgb.reshape(-1, 3)
        out = np.empty_like(pixels)

        def run(lo: int, hi: int) -> None:
            for start in range(lo, hi, _NUMPY_CHUNK):
                stop = min(hi, start + _NUMPY_CHUNK)
                lab = list(_lab32(pixels[start:stop]))
                for c in range(3):
                    lab[c] *= gain[c]
                    lab[c] += offset[c]
                np.clip(lab[0], 0.0, 100.0, out=lab[0])
                _lab32_to_rgb(lab[0], lab[1], lab[2], out=out[start:stop])

        _parallel_ranges(pixels.shape[0], run)
        return out.reshape(rgb.shape)


class _NullAccumulator(_Accumulator):
    def add(self, rgb: np.ndarray, origin: tuple[int, int]) -> None:
        return None

    def finalize(self) -> dict[str, np.ndarray]:
        return {}


@register_normalizer
class IdentityNormalizer(StainNormalizer):
    """Method ``"none"``: no normalization. Always fitted; ``transform`` returns (a copy of) the input."""

    method: ClassVar[str] = "none"
    _STAT_SHAPES: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._target = {}

    def get_params(self) -> dict[str, Any]:
        return {}

    def _accumulator(self, max_pixels: int | None, seed: int) -> _Accumulator:
        return _NullAccumulator()

    def _apply(self, rgb: np.ndarray, source: dict[str, np.ndarray]) -> np.ndarray:
        return rgb.copy()


# --------------------------------------------------------------------------------------------
# whole slides and stain augmentation
# --------------------------------------------------------------------------------------------


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


def augment_stain(
    image: np.ndarray,
    rng: np.random.Generator | int | None = None,
    sigma_alpha: float = 0.2,
    sigma_beta: float = 0.2,
    *,
    stain_matrix: np.ndarray | None = None,
    method: str = "macenko",
    beta: float = 0.15,
) -> np.ndarray:
    """Random H&E stain augmentation for training (Tellez et al., "H and E stain augmentation
    improves generalization of convolutional networks for histopathological mitosis detection",
    SPIE Medical Imaging 2018).

    The image is unmixed into hematoxylin and eosin concentrations ``c`` (least squares against
    its stain matrix); per stain ``c' = c * alpha + beta`` with ``alpha ~ U(1 - sigma_alpha,
    1 + sigma_alpha)`` and ``beta ~ U(-sigma_beta, sigma_beta)`` (OD units), drawn once per call;
    the change ``(c' - c) S`` is added to the pixel's OD, so the residual off the stain plane is
    kept and zero sigmas give the input back exactly. Only stained pixels (OD >= ``beta`` in some
    channel) are changed: background stays background.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB (anything :func:`to_rgb_uint8` accepts).
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for ``numpy.random.default_rng``.
    sigma_alpha, sigma_beta : float
        Half-widths of the uniform factor and offset ranges, ``sigma_alpha`` in ``[0, 1]``,
        ``sigma_beta >= 0``.
    stain_matrix : np.ndarray, optional
        ``(2, 3)`` stain vectors (H, E) of the image; default: estimated with ``method``.
    method : str
        Stain-matrix method used when ``stain_matrix`` is None (``"macenko"`` or ``"vahadane"``).
    beta : float
        OD threshold of stained pixels.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8. An image whose stain matrix cannot be estimated (too little tissue)
        is returned unchanged (a copy; logged at debug level, as training draws many such patches).
    """
    sa = _real("sigma_alpha", sigma_alpha, lo=0.0, hi=1.0)
    sb = _real("sigma_beta", sigma_beta, lo=0.0)
    b = _real("beta", beta, lo=0.0, hi=math.log(_OD_SCALE), hi_open=True)
    if rng is None or isinstance(rng, numbers.Integral):
        rng = np.random.default_rng(rng)
    elif not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
    rgb = to_rgb_uint8(image)
    if (sa == 0.0 and sb == 0.0) or rgb.size == 0:
        return rgb.copy()
    alpha = rng.uniform(1.0 - sa, 1.0 + sa, size=2)
    shift = rng.uniform(-sb, sb, size=2)
    if stain_matrix is None:
        if method not in ("macenko", "vahadane"):
            raise ValueError(f"method must be 'macenko' or 'vahadane', got {method!r}")
        norm = get_normalizer(method, beta=b, backend="numpy")
        try:
            stains = norm._estimate(rgb)["stain_matrix"]
        except _NoTissueError as exc:
            logger.debug("augment_stain: no usable tissue (%s); image returned unchanged", exc)
            return rgb.copy()
    else:
        stains = np.array(stain_matrix, dtype=np.float64)
        if stains.shape != (2, 3) or not np.all(np.isfinite(stains)):
            raise ValueError(f"stain_matrix must be a finite (2, 3) array, got shape {stains.shape}")
        if abs(np.linalg.det(stains @ stains.T)) < 1e-12:
            raise ValueError("stain_matrix: the two stain vectors are (nearly) parallel")
    flat = rgb.reshape(-1, 3)
    stained = flat.min(axis=1) <= _od_threshold_intensity(b)
    od = _OD_LUT[flat[stained]]
    conc = _mul(od, np.linalg.pinv(stains))
    od += _mul(conc * (alpha - 1.0) + shift, stains)
    out = flat.copy()
    out[stained] = od_to_rgb(od)
    return out.reshape(rgb.shape)


# --------------------------------------------------------------------------------------------
# factory and persistence
# --------------------------------------------------------------------------------------------


def get_normalizer(method: str, **params: Any) -> StainNormalizer:
    """Build an (unfitted) normalizer by name.

    Parameters
    ----------
    method : str
        One of :func:`available_normalizers` (``"macenko"``, ``"none"``, ``"reinhard"``);
        case-insensitive.
    **params
        Constructor keyword arguments of that class (e.g. ``beta``, ``alpha``, ``percentile``).

    Raises
    ------
    ValueError
        Unknown method (the message lists the valid names), unknown or invalid parameters.
    """
    return _construct(_lookup(method), params)


def save_normalizer(norm: StainNormalizer, path: str | os.PathLike[str]) -> Path:
    """Write ``norm.to_dict()`` as JSON, atomically (temporary file + ``os.replace``).

    Returns
    -------
    Path
        The written path. Parent folders are created.
    """
    if not isinstance(norm, StainNormalizer):
        raise ValueError(f"norm must be a StainNormalizer, got {type(norm).__name__}")
    path = Path(path)
    text = json.dumps(norm.to_dict(), indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_normalizer(path: str | os.PathLike[str]) -> StainNormalizer:
    """Read a normalizer written by :func:`save_normalizer`.

    Raises
    ------
    ValueError
        If the file is not valid JSON or does not describe a normalizer (message names the path).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid stain normalizer JSON file ({exc})") from None
    try:
        return StainNormalizer.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
