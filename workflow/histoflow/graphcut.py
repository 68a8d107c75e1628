"""Binary graph-cut refinement of a foreground probability map (2D images and 3D stacks).

Given a foreground probability map ``h`` (values in ``[0, 1]``) and, optionally, the image ``x``,
:func:`graphcut` returns the binary labelling ``l`` (``True`` = foreground) that minimises

.. math::

    E(l) = \\sum_v |l_v - h_v|
           + \\gamma \\sum_{(v, v')} [l_v \\ne l_{v'}] \\, f_{v v'}
             \\left(\\exp(-\\lVert x_v - x_{v'} \\rVert^2 / \\sigma^2) + \\delta\\right)

exactly, by one s-t minimum cut (PyMaxflow, Boykov-Kolmogorov). The unary cost of label 1 is
``1 - h_v`` and of label 0 is ``h_v``; the pairwise term is a Potts term on neighbouring pixels
(voxels) whose weight is high where the image is smooth (contrast sensitive) plus a constant
``delta`` that smooths regardless of the image.

Neighbourhoods and edge weights
    ``connectivity`` is 4 (default) or 8 in 2D and 6 (default) or 26 in 3D. The factor
    ``f_{vv'} = 1 / |d * s|`` (element-wise product) is the inverse length of the offset
    ``d = v' - v`` in units of the smallest pixel spacing: axial neighbours get 1, in-plane
    diagonals ``1/sqrt(2)``, 3D corner diagonals ``1/sqrt(3)``. With an anisotropic
    ``spacing = (dz, dy, dx)`` the offsets are scaled by ``s = spacing / min(spacing)``, so e.g.
    ``spacing=(4, 1, 1)`` weights the between-slice edges by ``1/4`` relative to the in-plane ones.

Image
    ``image`` is grey ``(H, W)`` / ``(Z, H, W)`` or multi-channel (RGB) ``(H, W, C)`` /
    ``(Z, H, W, C)``; colour differences are Euclidean over the channels. Intensities are scaled
    to ``[0, 1]``: integer images are divided by the maximum of their dtype (255 for ``uint8``),
    bool images are 0/1, float images must already lie in ``[0, 1]``. Without an image the
    contrast term is 1, i.e. the edge weight is ``gamma * f * (1 + delta)``.

Seeds (scribbles)
    ``seeds`` is an integer array of the spatial shape with ``1`` = foreground seed, ``2`` =
    background seed and ``0`` = no seed (:data:`SEED_FOREGROUND`, :data:`SEED_BACKGROUND`,
    :data:`SEED_NONE`; :func:`seeds_from_masks` builds it from two bool masks). Seeded pixels get
    a terminal capacity larger than any cut through their other edges, so they keep their seed
    label in the result whatever the evidence (hard constraints; they are not part of ``E``).

Ties
    With ``gamma = 0`` the result is exactly ``prob > 0.5``: a pixel with ``h = 0.5`` exactly is
    background. More generally, where several labellings reach the same minimal energy the solver
    returns background for the undecided pixels (they end on the source side of the cut).

:func:`graphcut_banded` is the fast path for large volumes (the max-flow solver is
single-threaded): confidently decided voxels are fixed and only the uncertain band enters the
graph. :func:`energy` evaluates ``E`` for any labelling and :func:`search_parameters` chooses
``gamma``, ``sigma`` and ``delta`` by a grid search on validation data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = [
    "SEED_BACKGROUND",
    "SEED_FOREGROUND",
    "SEED_NONE",
    "energy",
    "graphcut",
    "graphcut_banded",
    "neighbourhood_offsets",
    "search_parameters",
    "seeds_from_masks",
    "uncertain_band",
]

SEED_NONE = 0
"""Seed value: no constraint."""
SEED_FOREGROUND = 1
"""Seed value: the pixel (voxel) must be foreground."""
SEED_BACKGROUND = 2
"""Seed value: the pixel (voxel) must be background."""

_DEFAULT_CONNECTIVITY = {2: 4, 3: 6}
_ALLOWED_CONNECTIVITY = {2: (4, 8), 3: (6, 26)}


# --------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# neighbourhoods and weights
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


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


def graphcut(
    prob: np.ndarray,
    image: np.ndarray | None = None,
    gamma: float = 1.0,
    sigma: float = 0.1,
    delta: float = 0.0,
    connectivity: int | None = None,
    seeds: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Globally optimal binary segmentation of a probability map by one graph cut.

    Every pixel (voxel) is a node of a PyMaxflow grid graph; the edges and terminal capacities are
    added with the vectorised grid API, one call per neighbourhood offset.

    Parameters
    ----------
    prob : np.ndarray
        Foreground probability, ``(H, W)`` or ``(Z, H, W)``, any real dtype, values in ``[0, 1]``.
    image : np.ndarray, optional
        Image for the contrast term: grey ``prob.shape`` or multi-channel ``prob.shape + (C,)``
        (integer dtypes are scaled by their maximum, floats must be in ``[0, 1]``). None: no
        contrast term (uniform smoothing).
    gamma : float
        Weight of the pairwise term (>= 0). ``gamma = 0`` gives ``prob > 0.5`` exactly.
    sigma : float
        Contrast scale in intensity units of the ``[0, 1]`` image (> 0).
    delta : float
        Constant added to the contrast term (>= 0), i.e. image-independent smoothing.
    connectivity : int, optional
        4 (default) or 8 in 2D, 6 (default) or 26 in 3D; diagonal edges are weighted by the
        inverse of their length (see the module docstring).
    seeds : np.ndarray, optional
        Integer hard constraints of shape ``prob.shape``: 1 foreground, 2 background, 0 none.
    spacing : sequence of float, optional
        Pixel/voxel spacing per axis, e.g. ``(dz, dy, dx)``; edges are weighted by the inverse of
        their length relative to the smallest spacing. None: isotropic.

    Returns
    -------
    np.ndarray
        bool array of shape ``prob.shape``, ``True`` = foreground.

    Raises
    ------
    ValueError
        On invalid shapes, dtypes, value ranges or parameters.
    """
    h, img, (gamma, sigma, delta), offsets, factors, sd = _prepare(
        prob, image, gamma, sigma, delta, connectivity, seeds, spacing
    )
    maxflow = _import_maxflow()
    shape = h.shape
    n_edges = h.size * len(offsets) if gamma > 0 else 0
    g = maxflow.GraphFloat(h.size, n_edges)
    nodeids = g.add_grid_nodes(shape)
    if gamma > 0:
        x = None
        if img is not None:
            x = img.take(slice(None)).reshape(shape + (img.flat.shape[1],))
        for d, f in zip(offsets, factors, strict=True):
            src, dst = _pair_slices(shape, d)
            w = np.zeros(shape, dtype=np.float32)
            n = int(np.prod([s.stop - s.start for s in src]))
            if n == 0:
                continue
            xa = None if x is None else x[src].reshape(n, -1)
            xb = None if x is None else x[dst].reshape(n, -1)
            w[src] = _pair_weights(xa, xb, n, gamma, sigma, delta, f).reshape(w[src].shape)
            structure = np.zeros((3,) * h.ndim, dtype=np.float64)
            structure[tuple(1 + di for di in d)] = 1.0
            g.add_grid_edges(nodeids, weights=w, structure=structure, symmetric=True)
            del w
    diff = 2.0 * h - 1.0  # cost(label 0) - cost(label 1) = h - (1 - h), exact in float32
    source, sink = _terminal_caps(diff, sd, _seed_capacity(gamma, delta, factors))
    g.add_grid_tedges(nodeids, source, sink)
    g.maxflow()
    return np.asarray(g.get_grid_segments(nodeids), dtype=bool)


def uncertain_band(
    prob: np.ndarray,
    band: tuple[float, float] = (0.05, 0.95),
    margin: int = 2,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """The voxels that :func:`graphcut_banded` puts into the graph (all others are fixed).

    Parameters
    ----------
    prob : np.ndarray
        Foreground probability ``(H, W)`` or ``(Z, H, W)``, values in ``[0, 1]``.
    band : tuple[float, float]
        ``(low, high)`` with ``0 <= low <= 0.5 <= high <= 1``; voxels with
        ``low <= prob <= high`` are uncertain.
    margin : int
        The uncertain voxels are dilated by ``margin`` (>= 0) voxels in every direction
        (chessboard distance: a ``(2 margin + 1)^ndim`` cube).
    seeds : np.ndarray, optional
        Seeds as in :func:`graphcut`; seeds that contradict ``prob > 0.5`` count as uncertain.

    Returns
    -------
    np.ndarray
        bool array of shape ``prob.shape``; ``mask.mean()`` is the band fraction.

    Raises
    ------
    ValueError
        On an invalid ``prob``, ``band``, ``margin`` or ``seeds``.
    """
    h = _check_prob(prob)
    lo, hi, margin = _check_band(band, margin)
    return _free_mask(h, lo, hi, margin, _check_seeds(seeds, h.shape))


def graphcut_banded(
    prob: np.ndarray,
    image: np.ndarray | None = None,
    gamma: float = 1.0,
    sigma: float = 0.1,
    delta: float = 0.0,
    connectivity: int | None = None,
    seeds: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    band: tuple[float, float] = (0.05, 0.95),
    margin: int = 2,
) -> np.ndarray:
    """Graph cut restricted to the uncertain band of the probability map (fast path for volumes).

    Voxels with ``prob < band[0]`` (background) or ``prob > band[1]`` (foreground) that are more
    than ``margin`` voxels (chessboard distance) away from every uncertain voxel
    (``band[0] <= prob <= band[1]``) are *fixed* to their thresholded label. Only the remaining
    *free* voxels are nodes of the graph. A pairwise term between a free voxel and a fixed
    neighbour depends on the free voxel's label only, so it is added to that voxel's unary cost
    (``w`` to the cost of the label that differs from the neighbour's): the result minimises
    ``E`` exactly over all labellings that agree with the fixed labels. It equals
    :func:`graphcut` whenever the unrestricted optimum agrees with the thresholded labels on the
    fixed voxels, which is the typical case for a confident network.

    The free voxels form a sparse graph (explicit node and edge lists built with NumPy, one
    vectorised ``add_edges`` call per neighbourhood offset) rather than a grid over the bounding
    box of the band: for an organ the band is a thin shell whose bounding box contains the whole
    organ, so the sparse graph is many times smaller.

    Seeds: a seeded voxel keeps its seed label. Seeds that contradict the thresholded label are
    treated as uncertain voxels (their neighbourhood enters the graph); other seeds outside the
    band are simply fixed.

    Parameters
    ----------
    prob, image, gamma, sigma, delta, connectivity, seeds, spacing
        As in :func:`graphcut`.
    band : tuple[float, float]
        ``(low, high)`` with ``0 <= low <= 0.5 <= high <= 1``: the uncertain probability range.
    margin : int
        Free voxels are the uncertain ones dilated by ``margin`` (>= 0) voxels in every direction.

    Returns
    -------
    np.ndarray
        bool array of shape ``prob.shape``, ``True`` = foreground.

    Raises
    ------
    ValueError
        On invalid arguments (as :func:`graphcut`) or an invalid ``band`` / ``margin``.
    """
    h, img, (gamma, sigma, delta), offsets, factors, sd = _prepare(
        prob, image, gamma, sigma, delta, connectivity, seeds, spacing
    )
    lo, hi, margin = _check_band(band, margin)
    if gamma == 0.0:  # no pairwise terms: every voxel is decided by its own unary (or seed)
        return _fixed_labels(h, sd)
    free = _free_mask(h, lo, hi, margin, sd)
    labels = _fixed_labels(h, sd)
    shape = h.shape
    flat = np.flatnonzero(free)
    del free
    nb = flat.size
    if nb == 0:
        return labels

    maxflow = _import_maxflow()
    idmap = np.full(h.size, -1, dtype=np.int32 if nb < 2**31 - 1 else np.int64)
    idmap[flat] = np.arange(nb, dtype=idmap.dtype)
    coords = [c.astype(np.int32) for c in np.unravel_index(flat, shape)]
    strides = np.cumprod((1,) + shape[:0:-1])[::-1]  # element strides of a C-ordered array
    lab_flat = labels.reshape(-1)
    x_free = None if img is None else img.take(flat)

    g = maxflow.GraphFloat(nb, nb * len(offsets))
    nodes = g.add_grid_nodes((nb,))
    extra0 = np.zeros(nb, dtype=np.float64)  # added cost of label 0 (fixed foreground neighbours)
    extra1 = np.zeros(nb, dtype=np.float64)  # added cost of label 1 (fixed background neighbours)
    for d, f in zip(offsets, factors, strict=True):
        for sign in (1, -1):
            dd = [sign * di for di in d]
            valid = np.ones(nb, dtype=bool)
            for ax, di in enumerate(dd):
                if di > 0:
                    valid &= coords[ax] < shape[ax] - di
                elif di < 0:
                    valid &= coords[ax] >= -di
            sel = np.flatnonzero(valid)
            del valid
            nflat = flat[sel] + int(np.dot(dd, strides))
            nid = idmap[nflat]
            xb = None if img is None else img.take(nflat)
            xa = None if x_free is None else x_free[sel]
            w = _pair_weights(xa, xb, sel.size, gamma, sigma, delta, f)
            del xa, xb
            is_free = nid >= 0
            if sign == 1:  # free-free edges once, from the positive offset
                wf = w[is_free].astype(np.float64)
                g.add_edges(nodes[sel[is_free]], nodes[nid[is_free]], wf, wf)
                del wf
            fixed = ~is_free
            fsel, fw = sel[fixed], w[fixed].astype(np.float64)
            nlab = lab_flat[nflat[fixed]]
            extra0 += np.bincount(fsel[nlab], weights=fw[nlab], minlength=nb)
            extra1 += np.bincount(fsel[~nlab], weights=fw[~nlab], minlength=nb)
            del sel, nflat, nid, w, is_free, fixed, fsel, fw, nlab
    del idmap, coords, x_free
    diff = (2.0 * h.reshape(-1)[flat] - 1.0).astype(np.float64) + (extra0 - extra1)
    del extra0, extra1
    seeds_free = None if sd is None else sd.reshape(-1)[flat]
    source, sink = _terminal_caps(diff, seeds_free, _seed_capacity(gamma, delta, factors))
    g.add_grid_tedges(nodes, source, sink)
    del source, sink, diff
    g.maxflow()
    lab_flat[flat] = np.asarray(g.get_grid_segments(nodes), dtype=bool)
    return labels


def _score(
    pred: np.ndarray, truth: np.ndarray, metric: str | Callable[[np.ndarray, np.ndarray], float]
) -> float:
    """IoU or Dice of two bool masks (1.0 when both are empty), or a user metric."""
    if callable(metric):
        return float(metric(pred, truth))
    inter = int(np.count_nonzero(pred & truth))
    n_p, n_t = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    if metric == "iou":
        union = n_p + n_t - inter
        return inter / union if union else 1.0
    return 2.0 * inter / (n_p + n_t) if n_p + n_t else 1.0


def search_parameters(
    prob: np.ndarray | Sequence[np.ndarray],
    image: np.ndarray | Sequence[np.ndarray] | None,
    truth: np.ndarray | Sequence[np.ndarray],
    gammas: Sequence[float],
    sigmas: Sequence[float],
    deltas: Sequence[float],
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "iou",
    *,
    connectivity: int | None = None,
    spacing: Sequence[float] | None = None,
    banded: bool = False,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Grid search of ``gamma``, ``sigma`` and ``delta`` on validation data.

    Parameters
    ----------
    prob : np.ndarray or sequence of np.ndarray
        One probability map ``(H, W)`` / ``(Z, H, W)`` or a list of them (one per validation case).
    image : np.ndarray or sequence of np.ndarray or None
        The matching image(s), or None (then ``sigma`` has no effect).
    truth : np.ndarray or sequence of np.ndarray
        The matching ground-truth masks (anything ``> 0`` is foreground).
    gammas, sigmas, deltas : sequence of float
        Candidate values; every combination is evaluated.
    metric : {"iou", "dice"} or callable
        Score to maximise, averaged over the cases; a callable gets ``(pred, truth)`` bool arrays
        and returns a float (higher is better).
    connectivity, spacing
        Passed to :func:`graphcut`.
    banded : bool
        Use :func:`graphcut_banded` (default band and margin) instead of :func:`graphcut`.

    Returns
    -------
    best : dict[str, float]
        ``{"gamma": ..., "sigma": ..., "delta": ..., "<metric>": best mean score}``; among equal
        scores the first combination in grid order (gammas outer, deltas inner) wins.
    table : pandas.DataFrame
        One row per combination in grid order: ``gamma, sigma, delta, <metric>`` (mean over the
        cases) and ``<metric>_min`` (worst case).

    Raises
    ------
    ValueError
        On empty candidate lists, mismatched case lists or shapes, or an unknown metric.
    """
    import pandas as pd

    if not callable(metric) and metric not in ("iou", "dice"):
        raise ValueError(f"metric must be 'iou', 'dice' or a callable, got {metric!r}")
    name = "score" if callable(metric) else metric
    grids = {"gammas": gammas, "sigmas": sigmas, "deltas": deltas}
    for key, values in grids.items():
        if len(values) == 0:
            raise ValueError(f"{key} must hold at least one candidate value")
    single = isinstance(prob, np.ndarray)
    probs = [prob] if single else list(prob)
    truths = [truth] if single else list(truth)
    if image is None:
        images: list[np.ndarray | None] = [None] * len(probs)
    else:
        images = [image] if single else list(image)
    if not probs:
        raise ValueError("prob must hold at least one validation case")
    if not (len(probs) == len(truths) == len(images)):
        raise ValueError(
            f"prob, image and truth must hold the same number of cases, got {len(probs)}, "
            f"{len(images)} and {len(truths)}"
        )
    masks = []
    for i, (p, t) in enumerate(zip(probs, truths, strict=True)):
        t = np.asarray(t)
        if t.shape != np.shape(p):
            raise ValueError(f"case {i}: truth shape {t.shape} differs from prob shape {np.shape(p)}")
        masks.append(t > 0)
    cut = graphcut_banded if banded else graphcut
    rows = []
    for gamma, sigma, delta in itertools.product(gammas, sigmas, deltas):
        scores = [
            _score(
                cut(p, im, gamma=gamma, sigma=sigma, delta=delta, connectivity=connectivity, spacing=spacing),
                t,
                metric,
            )
            for p, im, t in zip(probs, images, masks, strict=True)
        ]
        rows.append(
            {
                "gamma": float(gamma),
                "sigma": float(sigma),
                "delta": float(delta),
                name: float(np.mean(scores)),
                f"{name}_min": float(np.min(scores)),
            }
        )
    table = pd.DataFrame(rows)
    best_row = rows[int(np.argmax(table[name].to_numpy()))]
    best = {k: best_row[k] for k in ("gamma", "sigma", "delta", name)}
    return best, table
