"""The graph of the energy: input checks, neighbourhoods, terminal capacities and :func:`energy` itself.

Neighbourhoods come with their edge weights; terminal capacities come from the probability and the seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass


SEED_NONE = 0


"""Seed value: no constraint."""


SEED_FOREGROUND = 1


"""Seed value: the pixel (voxel) must be foreground."""


SEED_BACKGROUND = 2


"""Seed value: the pixel (voxel) must be background."""


_DEFAULT_CONNECTIVITY = {2: 4, 3: 6}


_ALLOWED_CONNECTIVITY = {2: (4, 8), 3: (6, 26)}


def _check_prob(prob: np.ndarray) -> np.ndarray:
    """Return ``prob`` as a float32 array after checking it is a 2D/3D map with values in [0, 1]."""
    arr = np.asarray(prob)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"prob must be a 2D (H, W) or 3D (Z, H, W) probability map, got {arr.ndim}D shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"prob must not be empty, got shape {arr.shape}")
    if not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool
    ):
        raise ValueError(f"prob must be a numeric array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
        raise ValueError(f"prob must hold finite probabilities in [0, 1], got values in [{lo}, {hi}]")
    return arr


def _check_params(gamma: float, sigma: float, delta: float) -> tuple[float, float, float]:
    """Check the energy parameters (gamma >= 0, sigma > 0, delta >= 0, all finite)."""
    gamma, sigma, delta = float(gamma), float(sigma), float(delta)
    if not (math.isfinite(gamma) and gamma >= 0.0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    if not (math.isfinite(sigma) and sigma > 0.0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    if not (math.isfinite(delta) and delta >= 0.0):
        raise ValueError(f"delta must be a finite number >= 0, got {delta}")
    return gamma, sigma, delta


def _check_connectivity(ndim: int, connectivity: int | None) -> int:
    """Return the connectivity, defaulting to 4 (2D) or 6 (3D); reject values not allowed for ndim."""
    if connectivity is None:
        return _DEFAULT_CONNECTIVITY[ndim]
    allowed = _ALLOWED_CONNECTIVITY[ndim]
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValueError(f"connectivity must be one of {allowed} for {ndim}D data, got {connectivity!r}")
    return int(connectivity)


def _check_spacing(ndim: int, spacing: Sequence[float] | None) -> np.ndarray:
    """Return the relative spacing ``spacing / min(spacing)`` as float64 ``(ndim,)`` (ones if None)."""
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (ndim,):
        raise ValueError(
            f"spacing must hold one value per spatial axis ({ndim} for a {ndim}D map), got {spacing!r}"
        )
    if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        raise ValueError(f"spacing values must be finite and > 0, got {spacing!r}")
    return sp / sp.min()


def _check_seeds(seeds: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Return the seeds as a uint8 array of ``shape`` with values in {0, 1, 2}, or None."""
    if seeds is None:
        return None
    arr = np.asarray(seeds)
    if arr.shape != shape:
        raise ValueError(f"seeds must have the spatial shape of prob {shape}, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"seeds must be an integer array (0 = none, 1 = foreground, 2 = background), got dtype "
            f"{arr.dtype}; build it from two bool masks with seeds_from_masks(foreground, background)"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        raise ValueError(
            f"seeds values must be 0 (none), 1 (foreground) or 2 (background), found values in "
            f"[{int(arr.min())}, {int(arr.max())}]"
        )
    return np.ascontiguousarray(arr, dtype=np.uint8)


class _Image:
    """A validated image as a flat ``(N, C)`` view plus the factor that scales it to [0, 1]."""

    def __init__(self, image: np.ndarray, shape: tuple[int, ...]) -> None:
        arr = np.asarray(image)
        if arr.shape == shape:
            arr = arr[..., np.newaxis]
        elif not (arr.ndim == len(shape) + 1 and arr.shape[:-1] == shape and arr.shape[-1] >= 1):
            raise ValueError(
                f"image must have the spatial shape of prob {shape} (grey) or {shape + ('C',)} "
                f"(e.g. RGB), got shape {arr.shape}"
            )
        if arr.dtype == bool:
            scale = 1.0
        elif np.issubdtype(arr.dtype, np.integer):
            if arr.size and arr.min() < 0:
                raise ValueError(f"integer image intensities must be >= 0, found {int(arr.min())}")
            scale = 1.0 / float(np.iinfo(arr.dtype).max)
        elif np.issubdtype(arr.dtype, np.floating):
            lo, hi = float(arr.min()), float(arr.max())
            if not (lo >= 0.0 and hi <= 1.0):
                raise ValueError(
                    f"float image intensities must be finite and in [0, 1], got values in [{lo}, {hi}]; "
                    "rescale the image or pass an integer (e.g. uint8) image"
                )
            scale = 1.0
        else:
            raise ValueError(f"image must be a numeric array, got dtype {arr.dtype}")
        self.flat = np.ascontiguousarray(arr).reshape(-1, arr.shape[-1])
        self.scale = scale

    def take(self, index: np.ndarray) -> np.ndarray:
        """Intensities of the flat voxel indices ``index`` ``(n,)`` as float32 ``(n, C)`` in [0, 1]."""
        vals = self.flat[index].astype(np.float32)
        if self.scale != 1.0:
            vals *= np.float32(self.scale)
        return vals


def neighbourhood_offsets(ndim: int, connectivity: int) -> list[tuple[int, ...]]:
    """Half of a neighbourhood: one offset of every pair ``{d, -d}`` (so every edge is listed once).

    Parameters
    ----------
    ndim : int
        2 or 3.
    connectivity : int
        4 or 8 (2D), 6 or 26 (3D).

    Returns
    -------
    list[tuple[int, ...]]
        ``connectivity // 2`` offsets of length ``ndim``, each lexicographically positive, axial
        offsets first (e.g. ``[(0, 1), (1, 0), (1, -1), (1, 1)]`` for 8-connectivity).

    Raises
    ------
    ValueError
        If ``ndim`` is not 2 or 3, or the connectivity is not allowed for it.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    connectivity = _check_connectivity(ndim, connectivity)
    max_order = 1 if connectivity in (4, 6) else ndim
    offsets = [
        d
        for d in itertools.product((-1, 0, 1), repeat=ndim)
        if d > (0,) * ndim and sum(map(abs, d)) <= max_order
    ]
    offsets.sort(key=lambda d: (sum(map(abs, d)), d))
    return offsets


def _offset_factors(offsets: list[tuple[int, ...]], rel_spacing: np.ndarray) -> list[float]:
    """Inverse physical length ``1 / |d * s|`` of each offset (s: spacing relative to its minimum)."""
    return [1.0 / float(np.linalg.norm(np.asarray(d) * rel_spacing)) for d in offsets]


def _pair_slices(shape: tuple[int, ...], d: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of every ``v`` whose neighbour ``v + d`` lies in the array (``src``) and of those ``v + d``."""
    src = tuple(slice(max(0, -di), n - max(0, di)) for n, di in zip(shape, d, strict=True))
    dst = tuple(slice(max(0, di), n - max(0, -di)) for n, di in zip(shape, d, strict=True))
    return src, dst


def _pair_weights(
    xa: np.ndarray | None,
    xb: np.ndarray | None,
    n: int,
    gamma: float,
    sigma: float,
    delta: float,
    factor: float,
) -> np.ndarray:
    """Edge weights ``gamma * factor * (exp(-|xa - xb|^2 / sigma^2) + delta)`` as float32 ``(n,)``.

    ``xa`` and ``xb`` are float32 ``(n, C)`` intensities in [0, 1] of the two ends of each edge, or
    both None (no image: the contrast term is 1).
    """
    scale = np.float32(gamma * factor)
    if xa is None or xb is None:
        return np.full(n, scale * np.float32(1.0 + delta), dtype=np.float32)
    diff = xa - xb
    d2 = np.einsum("ij,ij->i", diff, diff)
    d2 *= np.float32(-1.0 / (sigma * sigma))
    w = np.exp(d2, out=d2)
    if delta:
        w += np.float32(delta)
    w *= scale
    return w


def _seed_capacity(gamma: float, delta: float, factors: list[float]) -> float:
    """A terminal capacity that no cut can afford: above the unary range plus all incident weights.

    Flipping one voxel changes the energy by at most ``1`` (unary) plus the sum of its incident
    edge weights, each at most ``gamma * f * (1 + delta)``; a capacity above twice that bound makes
    the seed label strictly optimal.
    """
    incident = 2.0 * sum(gamma * f * (1.0 + delta) for f in factors)
    return 2.0 * (1.0 + incident) + 1.0


def _terminal_caps(diff: np.ndarray, seeds: np.ndarray | None, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Source/sink capacities from ``diff = cost(label 0) - cost(label 1)`` and the hard seeds.

    The label-1 (foreground) side of the cut is the sink side: a foreground voxel cuts its source
    edge and pays the source capacity, a background voxel pays the sink capacity. Only the
    difference of the two unary costs matters, so each voxel gets one non-negative capacity.
    """
    source = np.maximum(-diff, 0).astype(np.float64)
    sink = np.maximum(diff, 0).astype(np.float64)
    if seeds is not None:
        fg = seeds == SEED_FOREGROUND
        bg = seeds == SEED_BACKGROUND
        source[fg], sink[fg] = 0.0, cap
        source[bg], sink[bg] = cap, 0.0
    return source, sink


def _check_band(band: tuple[float, float], margin: int) -> tuple[float, float, int]:
    """Check ``band = (low, high)`` with ``0 <= low <= 0.5 <= high <= 1`` and ``margin >= 0``."""
    try:
        lo, hi = (float(b) for b in band)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"band must be a pair (low, high) of floats, got {band!r}") from exc
    if not (0.0 <= lo <= 0.5 <= hi <= 1.0):
        raise ValueError(f"band must satisfy 0 <= low <= 0.5 <= high <= 1, got {band!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")
    return lo, hi, int(margin)


def _fixed_labels(h: np.ndarray, seeds: np.ndarray | None) -> np.ndarray:
    """``h > 0.5`` with the seeded voxels set to their seed label (bool, shape of ``h``)."""
    labels = h > 0.5
    if seeds is not None:
        seeded = seeds != SEED_NONE
        labels[seeded] = seeds[seeded] == SEED_FOREGROUND
    return labels


def _free_mask(h: np.ndarray, lo: float, hi: float, margin: int, seeds: np.ndarray | None) -> np.ndarray:
    """Uncertain voxels (and seeds contradicting ``h > 0.5``) dilated by a ``(2 margin + 1)^ndim`` cube."""
    uncertain = (h >= lo) & (h <= hi)
    if seeds is not None:
        seeded = seeds != SEED_NONE
        uncertain |= seeded & ((seeds == SEED_FOREGROUND) != (h > 0.5))
    if margin == 0:
        return uncertain
    # a separable maximum filter: much faster than a binary dilation on large volumes
    free = ndimage.maximum_filter(uncertain.view(np.uint8), size=2 * margin + 1, mode="constant")
    return free.view(bool)


def _import_maxflow() -> Any:
    """Import PyMaxflow lazily with an actionable error."""
    try:
        import maxflow
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("graph cuts need PyMaxflow: pip install 'PyMaxflow>=1.3'") from exc
    return maxflow


def _prepare(
    prob: np.ndarray,
    image: np.ndarray | None,
    gamma: float,
    sigma: float,
    delta: float,
    connectivity: int | None,
    seeds: np.ndarray | None,
    spacing: Sequence[float] | None,
) -> tuple[
    np.ndarray,
    _Image | None,
    tuple[float, float, float],
    list[tuple[int, ...]],
    list[float],
    np.ndarray | None,
]:
    """Validate the shared arguments of :func:`graphcut`, :func:`graphcut_banded` and :func:`energy`."""
    h = _check_prob(prob)
    params = _check_params(gamma, sigma, delta)
    conn = _check_connectivity(h.ndim, connectivity)
    rel = _check_spacing(h.ndim, spacing)
    img = None if image is None else _Image(image, h.shape)
    sd = _check_seeds(seeds, h.shape)
    offsets = neighbourhood_offsets(h.ndim, conn)
    return h, img, params, offsets, _offset_factors(offsets, rel), sd


def seeds_from_masks(foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Combine two scribble masks into one seed array.

    Parameters
    ----------
    foreground, background : np.ndarray
        Bool (or 0/1) arrays of one shape ``(H, W)`` or ``(Z, H, W)``; ``True`` marks a scribbled
        pixel of that class. They must not overlap.

    Returns
    -------
    np.ndarray
        uint8 array of the same shape: :data:`SEED_FOREGROUND` (1) where ``foreground``,
        :data:`SEED_BACKGROUND` (2) where ``background``, :data:`SEED_NONE` (0) elsewhere.

    Raises
    ------
    ValueError
        If the shapes differ or a pixel is marked in both masks.
    """
    fg = np.asarray(foreground).astype(bool)
    bg = np.asarray(background).astype(bool)
    if fg.shape != bg.shape:
        raise ValueError(
            f"foreground and background masks must have the same shape, got {fg.shape} and {bg.shape}"
        )
    both = int(np.count_nonzero(fg & bg))
    if both:
        raise ValueError(f"foreground and background scribbles overlap in {both} pixels")
    seeds = np.zeros(fg.shape, dtype=np.uint8)
    seeds[fg] = SEED_FOREGROUND
    seeds[bg] = SEED_BACKGROUND
    return seeds


def energy(
    labels: np.ndarray,
    prob: np.ndarray,
    image: np.ndarray | None = None,
    gamma: float = 1.0,
    sigma: float = 0.1,
    delta: float = 0.0,
    connectivity: int | None = None,
    spacing: Sequence[float] | None = None,
) -> float:
    """The energy ``E(l)`` of a labelling (see the module docstring); seeds are not part of it.

    Parameters
    ----------
    labels : np.ndarray
        Bool (or 0/1) ``(H, W)`` / ``(Z, H, W)`` labelling, the shape of ``prob``.
    prob, image, gamma, sigma, delta, connectivity, spacing
        As in :func:`graphcut`.

    Returns
    -------
    float
        ``sum |l - h| + sum over neighbour pairs [l != l'] * weight`` (float64 accumulation of the
        float32 weights that :func:`graphcut` puts into the graph).

    Raises
    ------
    ValueError
        On invalid arguments or a ``labels`` shape different from ``prob``'s.
    """
    h, img, (gamma, sigma, delta), offsets, factors, _ = _prepare(
        prob, image, gamma, sigma, delta, connectivity, None, spacing
    )
    lab = np.asarray(labels)
    if lab.shape != h.shape:
        raise ValueError(f"labels must have the shape of prob {h.shape}, got {lab.shape}")
    lab = lab.astype(bool)
    total = float(np.abs(lab.astype(np.float64) - h).sum())
    if gamma == 0.0:
        return total
    idx = np.arange(h.size).reshape(h.shape)
    for d, f in zip(offsets, factors, strict=True):
        src, dst = _pair_slices(h.shape, d)
        cut = lab[src] != lab[dst]
        if not cut.any():
            continue
        a, b = idx[src][cut], idx[dst][cut]
        xa = None if img is None else img.take(a)
        xb = None if img is None else img.take(b)
        total += float(_pair_weights(xa, xb, a.size, gamma, sigma, delta, f).sum(dtype=np.float64))
    return total

