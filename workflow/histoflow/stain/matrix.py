"""Stain-matrix normalizers: Macenko et al. (ISBI 2009) and Vahadane et al. (IEEE TMI 2016)."""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np

from .base import NotFittedError, StainNormalizer, _Accumulator, _NoTissueError, register_normalizer
from .checks import _angle_deg, _int, _real
from .colour import _EPS, _OD_LUT, _OD_SCALE, RGB_FROM_HED, _od_threshold_intensity
from .kernels import (
    _BACKENDS,
    _DEVICE_RE,
    _cuda_available,
    _gram,
    _mul,
    _nn_lasso_2,
    _PixelMap,
    _run_pixel_map_numpy,
    _run_pixel_map_torch,
)
from .sampling import _BottomK, _pack, _position_keys, _seed_mix

logger = logging.getLogger(__name__)

_MIN_STAIN_ANGLE_DEG = 1.0  # two stain vectors closer than this cannot be separated


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
    """Stain normalization of Vahadane et al. (IEEE TMI 2016), by sparse non-negative matrix factorisation.

    Vahadane et al., "Structure-preserving color normalization and sparse stain separation for histological
    images", IEEE TMI 35(8), 2016.

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
            init = np.array(RGB_FROM_HED[:2])
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

