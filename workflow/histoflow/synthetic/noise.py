"""Shared by the generators: smooth random fields, unit vectors, and the stain vectors of the synthetic H&E.

The smooth random fields are cubic B-spline interpolated white noise in 1-D, 2-D and 3-D; the stain vectors
are those of the synthetic H&E rendering.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

#: Weak, yellowish residual absorption of the tissue (section / mounting medium), normalised on use.
RESIDUAL_OD: tuple[float, float, float] = (0.12, 0.32, 0.94)


def bspline_matrix(n_out: int, n_coarse: int, scale: float) -> np.ndarray:
    """Cubic B-spline interpolation weights from a coarse grid of spacing ``scale`` to ``n_out`` pixels.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_out, n_coarse)``; coarse node ``j`` sits at pixel ``(j - 2) * scale``.
    """
    t = np.abs(np.arange(n_out)[:, None] / scale + 2.0 - np.arange(n_coarse)[None, :])
    return np.where(
        t < 1.0, (4.0 - 6.0 * t**2 + 3.0 * t**3) / 6.0, np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0)
    )


def smooth_noise_2d(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field with correlation length ~``scale`` pixels.

    For ``scale <= 6`` white noise is Gaussian-filtered (sigma ``scale / 2``); otherwise white noise on
    a grid of spacing ``scale`` is interpolated with a separable cubic B-spline (two small matrix
    products, much faster than a large Gaussian filter).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    shape : tuple of int
        Output shape ``(H, W)``.
    scale : float
        Correlation length in pixels, ``>= 1``.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(H, W)``, zero mean and unit standard deviation.
    """
    scale = max(float(scale), 1.0)
    if scale <= 6.0:  # short correlation: a small Gaussian filter is cheapest
        field = ndi.gaussian_filter(rng.standard_normal(shape), 0.5 * scale, mode="wrap", truncate=3.0)
        field -= field.mean()
        std = field.std()
        return (field / std if std > 0 else field).astype(np.float32)
    n_y = int(math.ceil((shape[0] - 1) / scale)) + 5
    n_x = int(math.ceil((shape[1] - 1) / scale)) + 5
    coarse = rng.standard_normal((n_y, n_x))
    field = bspline_matrix(shape[0], n_y, scale) @ coarse @ bspline_matrix(shape[1], n_x, scale).T
    field -= field.mean()
    std = field.std()
    if std > 0:
        field /= std
    return field.astype(np.float32)


def smooth_noise_3d(
    rng: np.random.Generator, shape: tuple[int, int, int], scale: tuple[float, float, float]
) -> np.ndarray:
    """Smooth random field with correlation lengths ``scale`` (voxels, per axis).

    White noise on a coarse grid is interpolated with a separable cubic B-spline (three small matrix
    products; the 2-D generator of :mod:`histoflow.synthetic.fibres` does the same per image).

    Returns
    -------
    numpy.ndarray
        float32 ``shape``, zero mean and unit standard deviation.
    """
    mats = []
    for n, s in zip(shape, scale, strict=True):
        s = max(float(s), 1.0)
        n_coarse = int(math.ceil((n - 1) / s)) + 5
        mats.append(bspline_matrix(n, n_coarse, s).astype(np.float32))
    field = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
    field = np.tensordot(mats[0], field, axes=(1, 0))  # (Z, cy, cx)
    field = np.tensordot(field, mats[1], axes=(1, 1))  # (Z, cx, H)
    field = np.tensordot(field, mats[2], axes=(1, 1))  # (Z, H, W)
    field -= field.mean()
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32)


def smooth_noise_1d(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Smooth random curve of length ``n`` scaled to ``max |curve| = 1`` (float64 ``(n,)``)."""
    scale = max(float(scale), 1.0)
    n_coarse = int(math.ceil((n - 1) / scale)) + 5
    curve = bspline_matrix(n, n_coarse, scale) @ rng.standard_normal(n_coarse)
    curve -= curve.mean() if n > 1 else 0.0
    peak = float(np.abs(curve).max())
    return curve / peak if peak > 0 else curve


def unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)

