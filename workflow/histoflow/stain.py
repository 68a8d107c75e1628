"""Stain normalization of brightfield (H&E-like) RGB images.

The interface follows TIAToolbox: a normalizer is ``fit`` to one *target* image and then
``transform`` maps any *source* image to the target's colour appearance. Every normalizer is a
:class:`StainNormalizer` and is built by name with :func:`get_normalizer`:

``"macenko"``   :class:`MacenkoNormalizer`  stain separation after Macenko et al., ISBI 2009
``"reinhard"``  :class:`ReinhardNormalizer` CIE-LAB mean/std transfer after Reinhard et al., 2001
``"none"``      :class:`IdentityNormalizer` no-op, so a workflow can switch normalization off

Whole slides are normalized tile by tile. Estimating the source statistics on every tile gives
visible seams, so :meth:`StainNormalizer.fit_source` estimates them once (on the whole image or
a thumbnail) and ``transform(tile, source_params=...)`` reuses that estimate for every tile.
Fitted parameters and source estimates are plain JSON-serialisable dicts
(:meth:`StainNormalizer.to_dict`, :func:`save_normalizer`, :func:`load_normalizer`).

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

Adding a method (e.g. Vahadane)
-------------------------------
Subclass :class:`StainMatrixNormalizer` and implement ``_estimate_stain_matrix`` (and, for
sparse non-negative concentrations, override ``_concentrations``), or subclass
:class:`StainNormalizer` and implement ``_estimate``/``_apply``/``get_params`` plus the
``_STAT_SHAPES`` class attribute; decorate the class with :func:`register_normalizer`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import numbers
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from skimage import color

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "IdentityNormalizer",
    "MacenkoNormalizer",
    "NotFittedError",
    "ReinhardNormalizer",
    "StainMatrixNormalizer",
    "StainNormalizer",
    "available_normalizers",
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
    rgb = to_rgb_uint8(image)
    return -np.log((rgb.astype(np.float64) + 1.0) / _OD_SCALE)


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
    statistic that describes one image's staining), ``_estimate`` (image -> statistics),
    ``_apply`` (image + its statistics -> normalized image, towards the fitted target
    statistics) and ``get_params`` (constructor keyword arguments).
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
    def _estimate(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """Staining statistics of an ``(H, W, 3)`` uint8 image; raise ``_NoTissueError`` if none."""

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


class StainMatrixNormalizer(StainNormalizer):
    """Base for normalizers that separate two stains in optical-density space (Macenko, Vahadane).

    An image's staining is its stain matrix ``S`` (2, 3) -- unit OD vectors of hematoxylin
    (row 0) and eosin (row 1) -- and its maximal concentrations ``c_max`` (2,). ``transform``
    unmixes the source, ``C = OD S_src^+`` (least squares), rescales ``C * c_max_tgt / c_max_src``
    and recomposes ``OD_out = C S_tgt``.

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
    """

    _STAT_SHAPES: ClassVar[dict[str, tuple[int, ...]]] = {"stain_matrix": (2, 3), "max_concentrations": (2,)}

    def __init__(
        self,
        *,
        beta: float = 0.15,
        percentile: float = 99.0,
        min_tissue_fraction: float = 0.01,
        min_tissue_pixels: int = 100,
    ) -> None:
        super().__init__()
        self.beta = _real("beta", beta, lo=0.0, hi=math.log(_OD_SCALE), hi_open=True)
        self.percentile = _real("percentile", percentile, lo=0.0, hi=100.0, lo_open=True)
        self.min_tissue_fraction = _real("min_tissue_fraction", min_tissue_fraction, lo=0.0, hi=1.0)
        self.min_tissue_pixels = _int("min_tissue_pixels", min_tissue_pixels, lo=3)

    def get_params(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "percentile": self.percentile,
            "min_tissue_fraction": self.min_tissue_fraction,
            "min_tissue_pixels": self.min_tissue_pixels,
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

    @staticmethod
    def _concentrations(od: np.ndarray, stain_matrix: np.ndarray) -> np.ndarray:
        """Least-squares unmixing of ``(N, 3)`` OD with ``(2, 3)`` stains -> ``(N, 2)`` float64."""
        if od.shape[0] == 0:
            return np.zeros((0, 2))
        solution, *_ = np.linalg.lstsq(stain_matrix.T, od.T, rcond=None)
        return solution.T

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

    def _estimate(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        od = rgb_to_od(rgb).reshape(-1, 3)
        n_total = od.shape[0]
        opaque = np.all(od >= self.beta, axis=1)
        n_opaque = int(np.count_nonzero(opaque))
        needed = max(self.min_tissue_pixels, math.ceil(self.min_tissue_fraction * n_total))
        if n_opaque < needed:
            fraction = n_opaque / n_total if n_total else 0.0
            raise _NoTissueError(
                f"{n_opaque} of {n_total} pixels ({fraction:.2%}) have OD >= beta={self.beta:g} in every "
                f"channel, at least {needed} needed"
            )
        stains = self._orient_and_order(self._estimate_stain_matrix(od[opaque]))
        angle = _angle_deg(stains[0], stains[1])
        if angle < _MIN_STAIN_ANGLE_DEG:
            raise _NoTissueError(
                f"the two stain vectors are only {angle:.2f} degrees apart; the image looks single-stained"
            )
        stained = np.any(od >= self.beta, axis=1)
        conc = self._concentrations(od[stained], stains)
        max_conc = np.percentile(conc, self.percentile, axis=0)
        if np.any(max_conc <= _EPS):
            raise _NoTissueError(
                f"the {self.percentile:g}-th concentration percentiles {max_conc} are not positive"
            )
        return {"stain_matrix": stains, "max_concentrations": max_conc}

    def _apply(self, rgb: np.ndarray, source: dict[str, np.ndarray]) -> np.ndarray:
        target = self._target
        if target is None:  # guarded by transform(); keeps type checkers and direct callers honest
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        od = rgb_to_od(rgb).reshape(-1, 3)
        conc = self._concentrations(od, source["stain_matrix"])
        conc *= target["max_concentrations"] / source["max_concentrations"]
        return od_to_rgb(conc @ target["stain_matrix"]).reshape(rgb.shape)


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
    beta, percentile, min_tissue_fraction, min_tissue_pixels
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
    ) -> None:
        super().__init__(
            beta=beta,
            percentile=percentile,
            min_tissue_fraction=min_tissue_fraction,
            min_tissue_pixels=min_tissue_pixels,
        )
        self.alpha = _real("alpha", alpha, lo=0.0, hi=50.0, hi_open=True)

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super().get_params()}

    def _estimate_stain_matrix(self, od: np.ndarray) -> np.ndarray:
        _, eigvecs = np.linalg.eigh(np.cov(od, rowvar=False))  # ascending eigenvalues
        plane = eigvecs[:, [2, 1]].copy()  # (3, 2): largest, second largest
        if plane[:, 0].sum() < 0:  # OD is non-negative: orient the main axis into it
            plane[:, 0] *= -1.0
        projected = od @ plane
        # the main axis points into the data, so angles stay inside (-pi/2, pi/2): no wrap-around
        angles = np.arctan2(projected[:, 1], projected[:, 0])
        lo, hi = np.percentile(angles, [self.alpha, 100.0 - self.alpha])
        directions = np.array([[np.cos(lo), np.sin(lo)], [np.cos(hi), np.sin(hi)]])
        return directions @ plane.T


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

    def _estimate(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        n_total = rgb.shape[0] * rgb.shape[1]
        needed = max(self.min_tissue_pixels, math.ceil(self.min_tissue_fraction * n_total))
        if n_total == 0:
            raise _NoTissueError("the image is empty")
        lab = color.rgb2lab(rgb).reshape(-1, 3)
        tissue = _tissue_from_lab(lab, self.luminosity_threshold)
        n_tissue = int(np.count_nonzero(tissue))
        if n_tissue < needed:
            raise _NoTissueError(
                f"{n_tissue} of {n_total} pixels ({n_tissue / n_total:.2%}) are darker than "
                f"L/100={self.luminosity_threshold:g}, at least {needed} needed"
            )
        values = lab[tissue] if self.tissue_only else lab
        return {"mean": values.mean(axis=0), "std": values.std(axis=0)}

    def _apply(self, rgb: np.ndarray, source: dict[str, np.ndarray]) -> np.ndarray:
        target = self._target
        if target is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted")
        src_std = source["std"]
        scale = np.where(src_std > 1e-6, target["std"] / np.maximum(src_std, 1e-6), 1.0)
        lab = (color.rgb2lab(rgb) - source["mean"]) * scale + target["mean"]
        lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
        return _lab_to_uint8(lab)


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

    def _estimate(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def _apply(self, rgb: np.ndarray, source: dict[str, np.ndarray]) -> np.ndarray:
        return rgb.copy()


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
