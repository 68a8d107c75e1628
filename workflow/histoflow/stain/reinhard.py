"""Reinhard et al. (2001) CIE-LAB mean / standard deviation transfer, and the identity (``"none"``)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .base import NotFittedError, StainNormalizer, _Accumulator, _NoTissueError, register_normalizer
from .checks import _bool, _int, _real
from .colour import _check_threshold, _lab32, _lab32_to_rgb
from .kernels import _NUMPY_CHUNK, _parallel_ranges


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
    over tissue pixels (:func:`luminosity_tissue_mask`) with ``tissue_only=True``; the mapping is applied to
    all pixels.

    Parameters
    ----------
    tissue_only : bool
        Compute statistics on tissue pixels only (default: all pixels).
    luminosity_threshold : float
        Tissue threshold on LAB ``L / 100``, see :func:`luminosity_tissue_mask`.
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

