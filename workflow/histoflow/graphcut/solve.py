"""The minimum cut, on the whole image or volume (:func:`graphcut`) or on the uncertain band only.

:func:`graphcut_banded` cuts the uncertain band only (:func:`uncertain_band`), the fast path for large volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass
from .graph import (
    _check_band,
    _check_prob,
    _check_seeds,
    _fixed_labels,
    _free_mask,
    _import_maxflow,
    _pair_slices,
    _pair_weights,
    _prepare,
    _seed_capacity,
    _terminal_caps,
)


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

