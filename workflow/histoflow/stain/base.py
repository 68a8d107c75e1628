"""The :class:`StainNormalizer` base class and the registry that maps a method name to its class.

The base class has ``fit`` / ``fit_source`` / ``transform`` and a dict round trip; classes enter the registry
through :func:`register_normalizer`.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from .colour import to_rgb_uint8

logger = logging.getLogger(__name__)

#: Version of the dict layout written by :meth:`StainNormalizer.to_dict`.
FORMAT_VERSION = 1


class NotFittedError(ValueError):
    """A normalizer was used before :meth:`StainNormalizer.fit` (or loading fitted parameters)."""


class _NoTissueError(Exception):
    """Internal: too little usable tissue to estimate stain statistics; the message says why."""


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
        """The normalizer's own ``(max_pixels, seed)``; ``(None, 0)`` for exact, non-sampling ones."""
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

