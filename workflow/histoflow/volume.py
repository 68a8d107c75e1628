"""Serial-section stacks: a synthetic organ generator, scribbles, stack I/O, summaries and views.

A *stack* is a set of aligned serial sections ``images uint8 (Z, H, W, 3)`` with optional binary
labels ``uint8 (Z, H, W)`` (1 = organ). Scribbles (seeds) follow :mod:`histoflow.graphcut`:
``0`` = none, ``1`` = foreground, ``2`` = background.

Synthetic organ stacks (:func:`make_organ_stack`)
    An organ-like, lobed, thick-walled 3-D structure (think of an embryonic heart: a myocardial wall
    around two chambers, inside embryonic mesenchyme) is rendered section by section with the
    Beer-Lambert H&E model of :mod:`histoflow.demo` (same stain vectors). The target is made hard
    on purpose:

    * *similar colour, different texture*: the organ wall is a fine, dense speckle of small nuclei
      in evenly pink cytoplasm; the surroundings are loose tissue with sparse, larger nuclei and a
      coarse, patchy matrix. The stain amounts of the surroundings are calibrated so that the mean
      colour of the two textures is the same (up to a few grey levels);
    * *ambiguous borders*: the texture changes over a few pixels (a soft, sigmoid transition), and
      on some stretches of the border (a random ``mimic_fraction`` of it) the surroundings take the
      organ's texture for several pixels although they are not organ; sections that cut the organ
      tangentially (its top and bottom) get wide, smeared borders;
    * *stain drift*: the H and E intensities vary smoothly and randomly along ``z`` (each within
      ``± stain_drift``), as between the slides of a real series;
    * *acquisition*: a per-slice illumination ramp, brightness jitter, a small optical blur and
      Gaussian noise of per-slice strength.

    Glass (white, label 0) may show in the corners, outside the embryo's outline; the chambers
    (lumen, pale with scattered blood cells) are label 0 as well.

The same seed and parameters give byte-identical arrays; the module has no import-time side effects.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit, ndtri

from .demo import _RESIDUAL_OD, EOSIN_OD, HEMATOXYLIN_OD, _bspline_matrix
from .graphcut import SEED_BACKGROUND, SEED_FOREGROUND
from .io import IMAGE_SUFFIXES, InputError, atomic_path, read_image, write_image

__all__ = [
    "make_organ_stack",
    "make_scribbles",
    "orthogonal_views",
    "read_scribbles",
    "read_stack",
    "stack_slice_names",
    "volume_summary",
    "write_stack",
    "write_tiff_stack",
]

PathLike = str | os.PathLike[str]

_MIN_SHAPE = (1, 32, 32)
_TIFF_SUFFIXES = (".tif", ".tiff")
_GEOJSON_SUFFIXES = (".geojson", ".json")
#: RGB scribbles: a channel must exceed both others by at least this much to mark a pixel
_RGB_DOMINANCE = 60
#: RGB scribbles: pixels whose channels differ by at most this much are "no scribble" (grey/black/white)
_RGB_NEUTRAL_SPREAD = 60
_SCRIBBLE_CONVENTION = (
    "Scribble files hold one value per pixel: 0 = no scribble, 1 = foreground, 2 = background "
    "(single-channel PNG/TIFF), or RGB with red strokes = foreground, blue strokes = background and "
    "black/white/grey elsewhere; or a QuPath GeoJSON with annotations classified 'Foreground'/'Background'."
)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_fraction(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def _smooth_noise_3d(
    rng: np.random.Generator, shape: tuple[int, int, int], scale: tuple[float, float, float]
) -> np.ndarray:
    """Smooth random field with correlation lengths ``scale`` (voxels, per axis).

    White noise on a coarse grid is interpolated with a separable cubic B-spline (three small matrix
    products; the 2-D generator of :mod:`histoflow.demo` does the same per image).

    Returns
    -------
    numpy.ndarray
        float32 ``shape``, zero mean and unit standard deviation.
    """
    mats = []
    for n, s in zip(shape, scale, strict=True):
        s = max(float(s), 1.0)
        n_coarse = int(math.ceil((n - 1) / s)) + 5
        mats.append(_bspline_matrix(n, n_coarse, s).astype(np.float32))
    field = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
    field = np.tensordot(mats[0], field, axes=(1, 0))  # (Z, cy, cx)
    field = np.tensordot(field, mats[1], axes=(1, 1))  # (Z, cx, H)
    field = np.tensordot(field, mats[2], axes=(1, 1))  # (Z, H, W)
    field -= field.mean()
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32)


def _smooth_noise_1d(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Smooth random curve of length ``n`` scaled to ``max |curve| = 1`` (float64 ``(n,)``)."""
    scale = max(float(scale), 1.0)
    n_coarse = int(math.ceil((n - 1) / scale)) + 5
    curve = _bspline_matrix(n, n_coarse, scale) @ rng.standard_normal(n_coarse)
    curve -= curve.mean() if n > 1 else 0.0
    peak = float(np.abs(curve).max())
    return curve / peak if peak > 0 else curve


def _unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _fine_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Per-slice (2-D) Gaussian-filtered white noise, unit standard deviation, float32 ``shape``."""
    field = ndi.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), (0.0, sigma, sigma), truncate=3.0
    )
    std = float(field.std())
    return field / np.float32(std if std > 0 else 1.0)


def _signed_distance(f: np.ndarray, min_grad: float) -> np.ndarray:
    """In-plane signed distance (pixels) to the zero level of a smooth implicit function ``f``.

    ``f / |grad_yx f|``: exact for planes, a good approximation near the surface. Where a section
    cuts the surface tangentially the in-plane gradient is small, the distance large and the
    rendered border wide and smeared (as in real tangential sections); ``min_grad`` bounds it.
    """
    gy = np.gradient(f, axis=1)
    gx = np.gradient(f, axis=2)
    return f / np.maximum(np.hypot(gy, gx), np.float32(min_grad))


def _render(
    c_h: np.ndarray, c_e: np.ndarray, h_vec: np.ndarray, e_vec: np.ndarray, c_r: np.ndarray | None = None
) -> np.ndarray:
    """Beer-Lambert transmission ``10^-(c_h h + c_e e + c_r r)`` as float32 ``(..., 3)``.

    ``r`` is the weak yellowish residual absorption of the tissue of :mod:`histoflow.demo`.
    """
    od = c_h[..., None] * h_vec.astype(np.float32) + c_e[..., None] * e_vec.astype(np.float32)
    if c_r is not None:
        od += c_r[..., None] * _unit(_RESIDUAL_OD).astype(np.float32)
    return np.power(np.float32(10.0), -od)


def _calibrate_surroundings(
    org: tuple[np.ndarray, np.ndarray],
    sur: tuple[np.ndarray, np.ndarray],
    h_vec: np.ndarray,
    e_vec: np.ndarray,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Scale factors ``(k_h, k_e)`` of the surroundings' H and E amounts matching the organ's mean RGB.

    Least squares on the three channel means of the rendered textures (Gauss-Newton on a random
    sample of voxels), so that the two tissues differ in texture but hardly in mean colour.
    """
    n = org[0].size
    pick = rng.choice(n, size=min(n, 40000), replace=False)
    oh, oe = org[0].ravel()[pick], org[1].ravel()[pick]
    sh, se = sur[0].ravel()[pick], sur[1].ravel()[pick]
    target = _render(oh, oe, h_vec, e_vec).mean(axis=0).astype(np.float64)
    k = np.array([1.0, 1.0])
    ln10 = math.log(10.0)
    for _ in range(6):
        t = _render(sh * np.float32(k[0]), se * np.float32(k[1]), h_vec, e_vec).astype(np.float64)
        resid = t.mean(axis=0) - target
        # d mean(T_c) / d k_h = -ln10 * mean(T_c * s_h) * h_c (and alike for E)
        jac = np.stack(
            [
                -ln10 * (t * sh[:, None]).mean(axis=0) * h_vec,
                -ln10 * (t * se[:, None]).mean(axis=0) * e_vec,
            ],
            axis=1,
        )
        step = np.linalg.lstsq(jac, -resid, rcond=None)[0]
        k = np.clip(k + step, 0.3, 3.0)
        if np.abs(step).max() < 1e-4:
            break
    return float(k[0]), float(k[1])


def _natural_key(name: str) -> list[Any]:
    """Sort key: digit runs compare as numbers (``slice_2`` < ``slice_10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: _natural_key(p.name),
    )


def _slice_name(index: int, n: int) -> str:
    return f"slice_{index:0{max(3, len(str(max(n - 1, 0))))}d}"


def _as_rgb_slice(arr: np.ndarray, path: Path) -> np.ndarray:
    from .stain import to_rgb_uint8

    try:
        return to_rgb_uint8(arr, name=str(path))
    except ValueError as exc:
        raise InputError(
            f"{path}: not a usable RGB section ({exc}). Save sections as 8-bit RGB PNG/TIFF."
        ) from exc


def _read_tiff_pages(path: Path) -> np.ndarray:
    """A (multi-page) TIFF as an array, with :class:`InputError` on failure."""
    import tifffile

    if not path.exists():
        raise InputError(f"{path}: file not found.")
    try:
        with tifffile.TiffFile(path) as tif:
            arr = tif.asarray()
            n_pages = len(tif.pages)
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes a clear input error
        raise InputError(
            f"{path}: cannot be read as a TIFF stack ({exc}). Re-export it as a multi-page TIFF."
        ) from exc
    arr = np.asarray(arr)
    if n_pages == 1 and arr.ndim in (2, 3):  # one page: (H, W) or (H, W, C) -> add Z
        if arr.ndim == 2 or arr.shape[-1] in (3, 4):
            arr = arr[None]
    return arr


# --------------------------------------------------------------------------------------------------
# synthetic organ stacks
# --------------------------------------------------------------------------------------------------


def make_organ_stack(
    seed: int,
    shape: tuple[int, int, int] = (40, 192, 192),
    *,
    stain_drift: float = 0.15,
    border_width: float = 1.5,
    mimic_fraction: float = 0.3,
    illumination: float = 0.12,
    noise: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a stack of aligned serial H&E sections through a synthetic organ.

    See the module docstring for what is rendered and why it is hard to segment.

    Parameters
    ----------
    seed : int
        Non-negative seed of ``np.random.default_rng``; the same seed and parameters give
        byte-identical outputs.
    shape : tuple of int
        ``(Z, H, W)``: number of sections and section size; at least ``(1, 32, 32)``. The organ
        spans about the middle 75 % of the sections and 60 % of each in-plane side.
    stain_drift : float
        Largest relative change of the H and of the E intensity along ``z``, in ``[0, 0.5]``
        (a smooth random curve per stain whose peak is ``stain_drift``).
    border_width : float
        Width (pixels, ``(0, 10]``) of the sigmoid texture transition at the organ border.
    mimic_fraction : float
        Fraction ``[0, 1]`` of the organ border along which the surroundings look like the organ
        for several pixels (label stays 0 there).
    illumination : float
        Amplitude of the per-slice illumination ramp, in ``[0, 0.5]``.
    noise : float
        Mean standard deviation of the Gaussian pixel noise (``[0, 1]`` intensity units), in
        ``[0, 0.2]``; each slice gets 0.6-1.4 times it.

    Returns
    -------
    images : numpy.ndarray
        uint8 ``(Z, H, W, 3)`` RGB sections.
    labels : numpy.ndarray
        uint8 ``(Z, H, W)``: 1 = organ (wall), 0 = surroundings, chambers and glass. The organ is
        one 6-connected 3-D component.

    Raises
    ------
    ValueError
        If ``seed`` or any parameter is invalid.
    """
    seed = _check_seed(seed)
    try:
        nz, h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"shape must be (Z, H, W) integers, got {shape!r}") from exc
    if len(tuple(shape)) != 3 or any(s < m for s, m in zip((nz, h, w), _MIN_SHAPE, strict=True)):
        raise ValueError(f"shape must be (Z, H, W) with Z >= 1 and H, W >= 32, got {shape!r}")
    stain_drift = _check_fraction("stain_drift", stain_drift, 0.0, 0.5)
    border_width = _check_fraction("border_width", border_width, 1e-3, 10.0)
    mimic_fraction = _check_fraction("mimic_fraction", mimic_fraction, 0.0, 1.0)
    illumination = _check_fraction("illumination", illumination, 0.0, 0.5)
    noise = _check_fraction("noise", noise, 0.0, 0.2)
    rng = np.random.default_rng(seed)
    shp = (nz, h, w)
    f32 = np.float32

    # ---- geometry: lobed ellipsoid wall around two chambers, inside the embryo's outline --------------
    cz = (nz - 1) / 2 + rng.uniform(-0.04, 0.04) * nz
    cy = (h - 1) / 2 + rng.uniform(-0.05, 0.05) * h
    cx = (w - 1) / 2 + rng.uniform(-0.05, 0.05) * w
    az = max(0.38 * nz, 0.75)
    ay, ax = rng.uniform(0.26, 0.31) * h, rng.uniform(0.26, 0.31) * w
    zz = ((np.arange(nz, dtype=f32) - f32(cz)) / f32(az))[:, None, None]
    yy = ((np.arange(h, dtype=f32) - f32(cy)) / f32(ay))[None, :, None]
    xx = ((np.arange(w, dtype=f32) - f32(cx)) / f32(ax))[None, None, :]
    corr = (0.45 * nz, 0.35 * h, 0.35 * w)
    lobes = _smooth_noise_3d(rng, shp, corr)
    outer = np.sqrt(zz * zz + yy * yy + xx * xx) * (1.0 + f32(0.11) * lobes) - f32(1.0)
    theta = rng.uniform(0, np.pi)
    off = rng.uniform(0.33, 0.38)
    lumen = None
    lobes2 = _smooth_noise_3d(rng, shp, corr)
    for sign in (-1.0, 1.0):
        dy, dx = sign * off * math.sin(theta), sign * off * math.cos(theta)
        rad = rng.uniform(0.27, 0.31)
        r = np.sqrt(
            (zz / f32(0.6)) ** 2 + ((yy - f32(dy)) / f32(rad)) ** 2 + ((xx - f32(dx)) / f32(rad)) ** 2
        )
        lumen = r if lumen is None else np.minimum(lumen, r)
    lumen = lumen * (1.0 + f32(0.08) * lobes2) - f32(1.0)
    ey = (np.arange(h, dtype=f32) - f32((h - 1) / 2)) / f32(0.62 * h)
    ex = (np.arange(w, dtype=f32) - f32((w - 1) / 2)) / f32(0.64 * w)
    embryo = np.sqrt(ey[None, :, None] ** 2 + ex[None, None, :] ** 2) * (
        1.0 + f32(0.06) * _smooth_noise_3d(rng, shp, (0.8 * nz, 0.4 * h, 0.4 * w))
    ) - f32(1.0)
    organ = (outer < 0) & (lumen >= 0)
    comp, n_comp = ndi.label(organ)
    if n_comp > 1:
        organ = comp == (int(np.argmax(np.bincount(comp.ravel())[1:])) + 1)
    labels = organ.astype(np.uint8)
    del comp

    # soft memberships (weights in [0, 1]) from approximate in-plane signed distances (pixels)
    sd_outer = _signed_distance(outer, 0.25 / max(ay, ax))
    sd_lumen = _signed_distance(lumen, 0.25 / max(ay, ax))
    sd_embryo = _signed_distance(embryo, 0.25 / max(h, w))
    a_organ = expit(-sd_outer / f32(border_width)).astype(f32)
    a_lumen = expit(-sd_lumen / f32(0.8)).astype(f32)
    a_tissue = expit(-sd_embryo / f32(1.5)).astype(f32)
    # stretches of the border where the surroundings take the organ's texture (still label 0); drawn
    # also for mimic_fraction = 0 so that the other random fields do not depend on it
    mimic = _smooth_noise_3d(rng, shp, (0.4 * nz, 0.12 * h, 0.12 * w))
    reach = f32(rng.uniform(6.0, 10.0))
    if mimic_fraction > 0:
        level = f32(ndtri(1.0 - mimic_fraction)) if mimic_fraction < 1 else f32(-np.inf)
        band = np.clip(1.0 - sd_outer / reach, 0.0, 1.0) * (sd_outer > 0)
        a_organ = np.maximum(a_organ, expit((mimic - level) / f32(0.25)).astype(f32) * band)
        del band
    del outer, mimic, lumen, embryo, sd_outer, sd_lumen, sd_embryo, lobes, lobes2

    # ---- textures: fine dense speckle (organ) vs loose, coarse, patchy (surroundings) --------------------
    # both tissues hold both kinds of nuclei, in different proportions, so that textures overlap
    fine_org = np.clip((_fine_field(rng, shp, 0.8) - f32(1.0)) / f32(0.5), 0.0, 1.0)
    big_org = np.clip((_fine_field(rng, shp, 1.5) - f32(2.1)) / f32(0.3), 0.0, 1.0)
    fine_sur = np.clip((_fine_field(rng, shp, 0.8) - f32(1.9)) / f32(0.5), 0.0, 1.0)
    big_sur = np.clip((_fine_field(rng, shp, 1.5) - f32(1.35)) / f32(0.3), 0.0, 1.0)
    nuc_org = np.maximum(f32(0.45) * fine_org, f32(0.6) * big_org)
    nuc_sur = np.maximum(f32(0.5) * fine_sur, f32(0.6) * big_sur)
    del fine_org, big_org, fine_sur, big_sur
    fibres = ndi.gaussian_filter(rng.standard_normal(shp, dtype=f32), (0.0, 0.5, 1.6), truncate=3.0)
    fibres /= f32(max(float(fibres.std()), 1e-6))
    org_h = f32(0.05) + nuc_org
    org_e = (
        f32(0.20)
        * (1.0 + f32(0.10) * fibres + f32(0.06) * _fine_field(rng, shp, 3.0))
        * (1.0 - f32(0.4) * nuc_org)
    )
    matrix = _fine_field(rng, shp, 3.0) + f32(0.3) * _fine_field(rng, shp, 1.0)
    sur_h = f32(0.05) + nuc_sur
    sur_e = f32(0.20) * np.clip(1.0 + f32(0.25) * matrix, 0.2, None) * (1.0 - f32(0.4) * nuc_sur)
    del nuc_org, nuc_sur, fibres, matrix

    h_vec = _unit(np.clip(_unit(HEMATOXYLIN_OD) + rng.normal(0, 0.03, 3), 0.02, None))
    e_vec = _unit(np.clip(_unit(EOSIN_OD) + rng.normal(0, 0.03, 3), 0.02, None))
    k_h, k_e = _calibrate_surroundings((org_h, org_e), (sur_h, sur_e), h_vec, e_vec, rng)
    sur_h *= f32(k_h)
    sur_e *= f32(k_e)

    # chambers: pale plasma with scattered blood cells
    rbc = np.clip((_fine_field(rng, shp, 1.0) - f32(1.6)) / f32(0.4), 0.0, 1.0)
    lum_h = f32(0.02) + f32(0.10) * rbc
    lum_e = f32(0.07) + f32(0.45) * rbc
    del rbc

    tex_h = a_organ * org_h + (1.0 - a_organ) * sur_h
    tex_e = a_organ * org_e + (1.0 - a_organ) * sur_e
    del org_h, org_e, sur_h, sur_e
    c_h = a_tissue * (a_lumen * lum_h + (1.0 - a_lumen) * tex_h)
    c_e = a_tissue * (a_lumen * lum_e + (1.0 - a_lumen) * tex_e) + (1.0 - a_tissue) * f32(0.01)
    c_r = f32(0.18) * a_tissue * (1.0 - f32(0.6) * a_lumen)
    del tex_h, tex_e, lum_h, lum_e, a_organ, a_lumen, a_tissue
    thickness = 1.0 + f32(0.06) * _smooth_noise_3d(rng, shp, (0.5 * nz, 0.3 * h, 0.3 * w))

    # ---- stain drift along z, Beer-Lambert rendering, acquisition ---------------------------------------
    drift_scale = max(nz / 4.0, 2.0)
    h_drift = 1.0 + stain_drift * rng.uniform(0.7, 1.0) * _smooth_noise_1d(rng, nz, drift_scale)
    e_drift = 1.0 + stain_drift * rng.uniform(0.7, 1.0) * _smooth_noise_1d(rng, nz, drift_scale)
    c_h *= thickness * h_drift.astype(f32)[:, None, None]
    c_e *= thickness * e_drift.astype(f32)[:, None, None]
    c_r *= thickness
    del thickness
    c_h = ndi.gaussian_filter(c_h, (0.0, 0.6, 0.6), truncate=3.0)
    c_e = ndi.gaussian_filter(c_e, (0.0, 0.6, 0.6), truncate=3.0)
    rgb = _render(c_h, c_e, h_vec, e_vec, c_r)
    del c_h, c_e, c_r
    white = f32(rng.uniform(0.93, 0.98)) * (1.0 + rng.normal(0, 0.008, 3)).astype(f32)
    angle = rng.uniform(0, 2 * np.pi, nz).astype(f32)[:, None, None]
    gy = ((np.arange(h, dtype=f32) - f32(h / 2)) / f32(h))[None, :, None]
    gx = ((np.arange(w, dtype=f32) - f32(w / 2)) / f32(w))[None, None, :]
    amp = (illumination * rng.uniform(0.3, 1.0, nz)).astype(f32)[:, None, None]
    bright = (1.0 + rng.normal(0, 0.015, nz)).astype(f32)[:, None, None]
    illum = bright * (1.0 - amp * (f32(0.5) + gy * np.sin(angle) + gx * np.cos(angle)))
    rgb *= (white * illum[..., None]).astype(f32)
    if noise > 0:
        sigma = (noise * rng.uniform(0.6, 1.4, nz)).astype(f32)[:, None, None, None]
        rgb += rng.standard_normal(rgb.shape, dtype=f32) * sigma
    images = np.clip(np.rint(rgb * f32(255.0)), 0, 255).astype(np.uint8)
    return images, labels


# --------------------------------------------------------------------------------------------------
# scribbles
# --------------------------------------------------------------------------------------------------


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _random_walk(
    rng: np.random.Generator, allowed: np.ndarray, start: tuple[int, int], length: int
) -> list[tuple[int, int]]:
    """A smooth random walk of up to ``length`` one-pixel steps that stays on ``allowed`` pixels."""
    h, w = allowed.shape
    y, x = float(start[0]), float(start[1])
    angle = rng.uniform(0, 2 * np.pi)
    points = [start]
    turns = np.array([0.0, 0.4, -0.4, 0.8, -0.8, 1.3, -1.3, 1.9, -1.9])
    for _ in range(length - 1):
        angle += rng.normal(0, 0.25)
        for turn in turns:
            ny, nx = y + math.sin(angle + turn), x + math.cos(angle + turn)
            iy, ix = int(round(ny)), int(round(nx))
            if 0 <= iy < h and 0 <= ix < w and allowed[iy, ix]:
                angle += turn
                y, x = ny, nx
                if (iy, ix) != points[-1]:
                    points.append((iy, ix))
                break
        else:
            break
    return points


def make_scribbles(
    labels: np.ndarray,
    every: int = 10,
    strokes_per_class: int = 2,
    width: int = 3,
    seed: int = 0,
    *,
    margin: int = 2,
) -> np.ndarray:
    """Simulated user scribbles: a few short strokes per class on every ``every``-th slice.

    On slices ``0, every, 2 every, ...`` each class gets ``strokes_per_class`` smooth random-walk
    strokes (15-40 px long, ``width`` px wide): foreground strokes inside the organ (label 1),
    background strokes inside label 0, preferably within 30 px of the organ (where a person would
    mark the surroundings). Every stroke pixel keeps a Euclidean distance of at least ``margin + 1``
    to the nearest pixel of the other class, i.e. at least ``margin`` pixels of its own class lie
    between a stroke and the border. A class with no room on a slice gets no stroke there.

    Parameters
    ----------
    labels : numpy.ndarray
        Binary labels ``(Z, H, W)`` or ``(H, W)`` (non-zero = organ), any integer or bool dtype.
    every : int
        Slice interval, ``>= 1``.
    strokes_per_class : int
        Strokes per class and scribbled slice, ``>= 0``.
    width : int
        Stroke width in pixels, ``>= 1`` (a disk of radius ``width // 2`` along the stroke).
    seed : int
        Non-negative seed; the same inputs give identical scribbles.
    margin : int
        Clearance in pixels to the class border, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        uint8, the shape of ``labels``: 0 none, 1 foreground, 2 background (see
        :mod:`histoflow.graphcut`); all other slices are 0.

    Raises
    ------
    ValueError
        On a bad argument.
    """
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3) or lab.size == 0:
        raise ValueError(f"labels must be a non-empty (Z, H, W) or (H, W) array, got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"labels must be integer or bool, got {lab.dtype}")
    for name, value, lo in (
        ("every", every, 1),
        ("strokes_per_class", strokes_per_class, 0),
        ("width", width, 1),
        ("margin", margin, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    seed = _check_seed(seed)
    squeeze = lab.ndim == 2
    lab3 = (lab[None] if squeeze else lab) != 0
    rng = np.random.default_rng(seed)
    radius = int(width) // 2
    footprint = _disk(radius)
    need = float(radius + margin + 1)  # centre-line clearance so every stroke pixel keeps margin + 1
    seeds = np.zeros(lab3.shape, dtype=np.uint8)
    for z in range(0, lab3.shape[0], int(every)):
        fg = lab3[z]
        for value, region in ((SEED_FOREGROUND, fg), (SEED_BACKGROUND, ~fg)):
            if not region.any():
                continue
            clearance = (
                ndi.distance_transform_edt(region) if not region.all() else np.full(region.shape, np.inf)
            )
            allowed = clearance >= need
            if not allowed.any():
                continue
            candidates = allowed
            if value == SEED_BACKGROUND and fg.any():
                near = allowed & (ndi.distance_transform_edt(~fg) <= 30.0)
                if near.any():
                    candidates = near
            flat = np.flatnonzero(candidates)
            stroke = np.zeros(region.shape, dtype=bool)
            for _ in range(int(strokes_per_class)):
                for _attempt in range(5):
                    start = np.unravel_index(flat[rng.integers(flat.size)], region.shape)
                    pts = _random_walk(
                        rng, allowed, (int(start[0]), int(start[1])), int(rng.integers(15, 41))
                    )
                    if len(pts) >= 8:
                        break
                py, px = np.array(pts).T
                stroke[py, px] = True
            if radius > 0:
                stroke = ndi.binary_dilation(stroke, structure=footprint)
            stroke &= clearance >= margin + 1
            seeds[z][stroke & (seeds[z] == 0)] = value
    return seeds[0] if squeeze else seeds


# --------------------------------------------------------------------------------------------------
# stack I/O
# --------------------------------------------------------------------------------------------------


def write_stack(folder: PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> list[Path]:
    """Write a stack as one PNG per slice (``slice_000.png`` ...; labels in ``labels/``).

    Each file is written atomically. Files ``slice_<digits>.png`` left in the folders from an
    earlier, longer stack are removed (and, when ``labels`` is None, the label slices of an earlier
    stack), so that :func:`read_stack` reads back exactly this stack.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created if missing).
    images : numpy.ndarray
        uint8 ``(Z, H, W, 3)``.
    labels : numpy.ndarray, optional
        ``(Z, H, W)`` integer labels with values in ``[0, 255]`` (written as uint8).

    Returns
    -------
    list of pathlib.Path
        The image files written, in slice order.

    Raises
    ------
    ValueError
        If the arrays have the wrong shape, dtype or values.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or images.shape[0] == 0:
        raise ValueError(f"images must be uint8 (Z, H, W, 3) with Z >= 1, got {images.dtype} {images.shape}")
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != images.shape[:3]:
            raise ValueError(f"labels must have shape {images.shape[:3]}, got {lab.shape}")
        if lab.dtype != bool and not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels must be integer or bool, got {lab.dtype}")
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise ValueError("labels must lie in [0, 255] to be written as 8-bit PNG")
        lab = lab.astype(np.uint8)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    names = [_slice_name(i, n) for i in range(n)]
    written = []
    for out_dir, arr in ((folder, images), (folder / "labels", lab)):
        keep = {f"{name}.png" for name in names} if arr is not None else set()
        if out_dir.is_dir():
            for old in out_dir.glob("slice_*.png"):
                if re.fullmatch(r"slice_\d+\.png", old.name) and old.name not in keep:
                    old.unlink()
            if arr is None and not any(out_dir.iterdir()):
                out_dir.rmdir()
        if arr is None:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, plane in zip(names, arr, strict=True):
            write_image(out_dir / f"{name}.png", plane)
            if out_dir == folder:
                written.append(out_dir / f"{name}.png")
    return written


def stack_slice_names(path: PathLike) -> list[str]:
    """File stems of a stack folder's slices in stack order (natural numeric order of the names).

    A multi-page TIFF has no slice names: ``slice_000`` ... are returned for its pages.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() in _TIFF_SUFFIXES:
        n = _read_tiff_pages(path).shape[0]
        return [_slice_name(i, n) for i in range(n)]
    if not path.is_dir():
        raise InputError(f"{path}: stack folder not found. Point the volume's path to a folder of slices.")
    return [p.stem for p in _image_files(path)]


def read_stack(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a stack written by :func:`write_stack`, any folder of slices, or a multi-page TIFF.

    Parameters
    ----------
    path : str or os.PathLike
        A folder of slice images (PNG/TIFF/JPEG ..., sorted in natural numeric order of the names:
        ``s2`` before ``s10``), with optional labels in ``<folder>/labels/`` under the same stems;
        or a multi-page TIFF file ``(Z, H, W)`` grey or ``(Z, H, W, 3|4)`` colour (no labels).

    Returns
    -------
    images : numpy.ndarray
        uint8 ``(Z, H, W, 3)`` (grey, RGBA and 16-bit slices are converted).
    labels : numpy.ndarray or None
        uint8 ``(Z, H, W)``, or None when there is no ``labels/`` folder.

    Raises
    ------
    InputError
        If the folder is missing or empty, a file cannot be read, a slice's size differs from the
        first slice's (the message names the odd file) or a label slice is missing or not 8-bit.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in _TIFF_SUFFIXES:
            raise InputError(f"{path}: a stack is a folder of slices or a multi-page TIFF (.tif/.tiff).")
        arr = _read_tiff_pages(path)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise InputError(
                f"{path}: expected pages of (H, W) or (H, W, 3) pixels, got array shape {arr.shape}."
            )
        return np.stack([_as_rgb_slice(page, path) for page in arr]), None
    if not path.is_dir():
        raise InputError(f"{path}: stack folder not found. Point the volume's path to a folder of slices.")
    files = _image_files(path)
    if not files:
        raise InputError(f"{path}: no slice images (PNG/TIFF/JPEG) found in the folder.")
    images = []
    for f in files:
        img = _as_rgb_slice(read_image(f), f)
        if images and img.shape != images[0].shape:
            raise InputError(
                f"{f}: size {img.shape[1]}x{img.shape[0]} differs from {files[0].name} "
                f"({images[0].shape[1]}x{images[0].shape[0]}); all slices of a stack must be aligned and "
                "of one size."
            )
        images.append(img)
    stack = np.stack(images)
    label_dir = path / "labels"
    if not label_dir.is_dir():
        return stack, None
    by_stem = {p.stem: p for p in _image_files(label_dir)}
    labels = np.zeros(stack.shape[:3], dtype=np.uint8)
    for z, f in enumerate(files):
        lf = by_stem.get(f.stem)
        if lf is None:
            raise InputError(
                f"{label_dir}: no label file for slice {f.name}; give every slice a label image."
            )
        lab = read_image(lf)
        if lab.ndim == 3 and lab.shape[-1] in (3, 4) and np.all(lab[..., :3] == lab[..., :1]):
            lab = lab[..., 0]
        if lab.shape != stack.shape[1:3]:
            raise InputError(f"{lf}: label shape {lab.shape} differs from its slice's {stack.shape[1:3]}.")
        if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool) or (lab.size and lab.max() > 255):
            raise InputError(f"{lf}: labels must be 8-bit integers (0 = background, 1 = organ).")
        labels[z] = lab
    return stack, labels


# --------------------------------------------------------------------------------------------------
# scribbles from files
# --------------------------------------------------------------------------------------------------


def _decode_scribble_plane(arr: np.ndarray, path: Path) -> np.ndarray:
    """One scribble plane (value-coded or RGB) as uint8 ``(H, W)`` with values 0/1/2."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"{path}: unsupported pixel type {arr.dtype}. {_SCRIBBLE_CONVENTION}")
        bad = ~np.isin(arr, (0, 1, 2))
        if bad.any():
            vals = np.unique(arr[bad])[:5].tolist()
            raise InputError(
                f"{path}: scribble values must be 0, 1 or 2, found {vals}. {_SCRIBBLE_CONVENTION}"
            )
        return arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if arr.dtype == np.uint16:
            arr = (arr // 257).astype(np.uint8)
        if arr.dtype != np.uint8:
            raise InputError(f"{path}: RGB scribbles must be 8-bit (got {arr.dtype}). {_SCRIBBLE_CONVENTION}")
        rgb = arr[..., :3].astype(np.int16)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        red = r - np.maximum(g, b) >= _RGB_DOMINANCE
        blue = b - np.maximum(r, g) >= _RGB_DOMINANCE
        neutral = rgb.max(axis=-1) - rgb.min(axis=-1) <= _RGB_NEUTRAL_SPREAD
        if arr.shape[-1] == 4:
            transparent = arr[..., 3] == 0
            red &= ~transparent
            blue &= ~transparent
            neutral |= transparent
        bad = ~(red | blue | neutral)
        if bad.any():
            y, x = (int(v[0]) for v in np.nonzero(bad))
            raise InputError(
                f"{path}: {int(bad.sum())} pixels are neither red, blue nor grey/black/white (e.g. RGB "
                f"{rgb[y, x].tolist()} at x={x}, y={y}). RGB scribbles: a stroke is red (foreground) or blue "
                f"(background) when that channel exceeds both others by >= {_RGB_DOMINANCE}; unmarked "
                f"pixels must be grey (channels within {_RGB_NEUTRAL_SPREAD}). Export the scribble layer on "
                f"its own, not painted over the section. {_SCRIBBLE_CONVENTION}"
            )
        out = np.zeros(arr.shape[:2], dtype=np.uint8)
        out[red] = SEED_FOREGROUND
        out[blue] = SEED_BACKGROUND
        return out
    raise InputError(
        f"{path}: expected a single-channel or RGB scribble image, got shape {arr.shape}. "
        f"{_SCRIBBLE_CONVENTION}"
    )


def _check_plane_shape(plane: np.ndarray, hw: tuple[int, int], path: Path) -> np.ndarray:
    if plane.shape != hw:
        raise InputError(f"{path}: scribbles of size {plane.shape} do not match the sections' {hw} (H, W).")
    return plane


def read_scribbles(path: PathLike, shape: tuple[int, ...], names: Sequence[str] | None = None) -> np.ndarray:
    """Read scribbles (seeds for :mod:`histoflow.graphcut`) from a file or folder.

    Accepted inputs:

    (a) a **folder** of per-slice PNG/TIFF images named like the stack's slices
        (``slice_007.png`` -> slice 7: the last number in the file stem is the slice index, or,
        when ``names`` is given, the stem is looked up in ``names``); slices without a file have
        no scribbles;
    (b) a **multi-page TIFF** ``(Z, H, W)`` (or ``(Z, H, W, 3|4)`` RGB);
    (c) a **single image** ``(H, W)`` / ``(H, W, 3|4)`` for a 2-D ``shape``;
    (d) a **QuPath GeoJSON** (``.geojson``/``.json``): annotations classified ``Foreground``/``fg``
        (1) or ``Background``/``bg`` (2), case-insensitive; lines are drawn 3 px wide, polygons
        filled; in 3-D each feature needs its plane's ``z`` (see :mod:`histoflow.qupath`).

    Pixel coding: single-channel 0 = none, 1 = foreground, 2 = background. RGB(A): a pixel is
    foreground when red exceeds both green and blue by at least 60, background when blue exceeds
    both others by at least 60, and none when it is grey/black/white (largest minus smallest
    channel at most 60) or fully transparent. This tolerates anti-aliased stroke edges (e.g. pink
    ``(255, 128, 128)`` is red); any other colour is an error.

    Parameters
    ----------
    path : str or os.PathLike
        The scribble file or folder.
    shape : tuple of int
        ``(Z, H, W)`` of the stack, or ``(H, W)`` for a single image.
    names : sequence of str, optional
        Stems of the stack's slices in order (:func:`stack_slice_names`), to match folder files by
        name instead of by number.

    Returns
    -------
    numpy.ndarray
        uint8 ``shape`` with values 0, 1, 2.

    Raises
    ------
    InputError
        Naming the file, for an unreadable file, a size that does not match ``shape``, a file
        whose slice cannot be determined, or pixel values outside the convention.
    ValueError
        If ``shape`` is not 2-D or 3-D.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (Z, H, W) or (H, W), got {shape}")
    path = Path(path)
    hw = shape[-2:]
    if path.is_dir():
        if len(shape) != 3:
            raise InputError(
                f"{path}: a folder of scribble slices needs a 3-D stack; give one image for 2-D."
            )
        files = _image_files(path)
        out = np.zeros(shape, dtype=np.uint8)
        index = {n: i for i, n in enumerate(names)} if names is not None else None
        seen: dict[int, Path] = {}
        for f in files:
            if index is not None:
                if f.stem not in index:
                    raise InputError(
                        f"{f}: no stack slice is named {f.stem!r}; name scribble files like the slices."
                    )
                z = index[f.stem]
            else:
                digits = re.findall(r"\d+", f.stem)
                if not digits:
                    raise InputError(
                        f"{f}: cannot tell the slice from the name; name it like the slices "
                        "(e.g. slice_007.png for slice 7)."
                    )
                z = int(digits[-1])
            if not 0 <= z < shape[0]:
                raise InputError(f"{f}: slice index {z} is outside the stack's 0..{shape[0] - 1}.")
            if z in seen:
                raise InputError(
                    f"{f}: slice {z} also has scribbles in {seen[z].name}; keep one file per slice."
                )
            seen[z] = f
            out[z] = _check_plane_shape(_decode_scribble_plane(read_image(f), f), hw, f)
        return out
    if path.suffix.lower() in _GEOJSON_SUFFIXES:
        from .qupath import SCRIBBLE_CLASSES, rasterize_annotations

        seeds = rasterize_annotations(path, shape, SCRIBBLE_CLASSES, width=3)
        return seeds.astype(np.uint8)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        arr = _read_tiff_pages(path)
        if len(shape) == 2:
            if arr.shape[0] != 1:
                raise InputError(f"{path}: {arr.shape[0]} pages for a single 2-D image; give one page.")
            return _check_plane_shape(_decode_scribble_plane(arr[0], path), hw, path)
        if arr.shape[0] != shape[0] or arr.ndim not in (3, 4):
            raise InputError(
                f"{path}: array of shape {arr.shape} does not match the stack's {shape} (Z, H, W); "
                "write one page per slice."
            )
        return np.stack([_check_plane_shape(_decode_scribble_plane(p, path), hw, path) for p in arr])
    if len(shape) == 3:
        raise InputError(
            f"{path}: a single image cannot hold scribbles for a {shape[0]}-slice stack; use a folder "
            "of per-slice images, a multi-page TIFF or a GeoJSON."
        )
    return _check_plane_shape(_decode_scribble_plane(read_image(path), path), hw, path)


# --------------------------------------------------------------------------------------------------
# summaries, views, TIFF
# --------------------------------------------------------------------------------------------------


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must be three numbers (dz, dy, dx), got {spacing!r}") from exc
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx), got {spacing!r}")
    return sp  # type: ignore[return-value]


def _check_mask3d(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"mask must be (Z, H, W), got shape {m.shape}")
    return m != 0


def volume_summary(mask: np.ndarray, spacing_um: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Size and extent of a binary volume.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(Z, H, W)``, non-zero = inside (bool or integer).
    spacing_um : tuple of float, optional
        Voxel size ``(dz, dy, dx)`` in micrometres (``dz``: section thickness / step).

    Returns
    -------
    dict
        JSON-ready (plain Python types):
        ``shape`` ``[Z, H, W]``; ``n_voxels`` (int); ``fraction`` of the volume;
        ``slice_areas_px`` (list of Z ints); ``n_slices_with_mask``;
        ``bbox``: ``{"z": [start, stop], "y": [...], "x": [...]}`` half-open index ranges, or None
        for an empty mask; ``spacing_um`` (list or None); ``voxel_volume_um3``, ``volume_um3``
        (float) and ``slice_areas_um2`` (list) when ``spacing_um`` is given, else None.

    Raises
    ------
    ValueError
        If ``mask`` is not 3-D or ``spacing_um`` is not three positive numbers.
    """
    m = _check_mask3d(mask)
    sp = _check_spacing(spacing_um)
    areas = m.reshape(m.shape[0], -1).sum(axis=1)
    n = int(areas.sum())
    bbox = None
    if n:
        bbox = {}
        for axis, key in enumerate(("z", "y", "x")):
            other = tuple(a for a in range(3) if a != axis)
            idx = np.flatnonzero(m.any(axis=other))
            bbox[key] = [int(idx[0]), int(idx[-1]) + 1]
    out: dict[str, Any] = {
        "shape": [int(s) for s in m.shape],
        "n_voxels": n,
        "fraction": float(n / m.size) if m.size else 0.0,
        "slice_areas_px": [int(a) for a in areas],
        "n_slices_with_mask": int((areas > 0).sum()),
        "bbox": bbox,
        "spacing_um": list(sp) if sp else None,
        "voxel_volume_um3": None,
        "volume_um3": None,
        "slice_areas_um2": None,
    }
    if sp:
        voxel = sp[0] * sp[1] * sp[2]
        out["voxel_volume_um3"] = voxel
        out["volume_um3"] = n * voxel
        out["slice_areas_um2"] = [float(a) * sp[1] * sp[2] for a in areas]
    return out


def orthogonal_views(
    volume_rgb: np.ndarray,
    mask: np.ndarray,
    path: PathLike,
    spacing: tuple[float, float, float] | None = None,
    dpi: int = 100,
    planes: tuple[int, int, int] | None = None,
) -> Path:
    """Save a PNG of three orthogonal planes (XY, XZ, YZ) with the mask outlined.

    Parameters
    ----------
    volume_rgb : numpy.ndarray
        uint8 ``(Z, H, W, 3)`` (or grey ``(Z, H, W)``).
    mask : numpy.ndarray
        ``(Z, H, W)``, non-zero = inside; outlined in green.
    path : str or os.PathLike
        Output PNG (written atomically).
    spacing : tuple of float, optional
        ``(dz, dy, dx)``; the XZ / YZ views are stretched along z by ``dz / dx`` / ``dz / dy``
        (isotropic when None).
    dpi : int
        Figure resolution.
    planes : tuple of int, optional
        ``(z, y, x)`` indices of the planes; default: the centre of the mask's bounding box (the
        middle of the volume for an empty mask).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        On mismatched shapes, bad spacing or plane indices.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vol = np.asarray(volume_rgb)
    m = _check_mask3d(mask)
    if vol.shape[:3] != m.shape or vol.ndim not in (3, 4):
        raise ValueError(f"volume_rgb {vol.shape} and mask {m.shape} must share (Z, H, W)")
    sp = _check_spacing(spacing) or (1.0, 1.0, 1.0)
    nz, h, w = m.shape
    if planes is None:
        summary = volume_summary(m)
        if summary["bbox"] is None:
            planes = (nz // 2, h // 2, w // 2)
        else:
            planes = tuple((lo + hi - 1) // 2 for lo, hi in summary["bbox"].values())  # type: ignore[assignment]
    pz, py, px = (int(p) for p in planes)  # type: ignore[misc]
    if not (0 <= pz < nz and 0 <= py < h and 0 <= px < w):
        raise ValueError(f"planes {planes} outside the volume {m.shape}")
    views = [
        (f"XY (z={pz})", vol[pz], m[pz], sp[1] / sp[2], "x", "y"),
        (f"XZ (y={py})", vol[:, py], m[:, py], sp[0] / sp[2], "x", "z"),
        (f"YZ (x={px})", vol[:, :, px], m[:, :, px], sp[0] / sp[1], "y", "z"),
    ]
    heights = [h * sp[1], nz * sp[0], nz * sp[0]]
    widths = [w * sp[2], w * sp[2], h * sp[1]]
    fig = Figure(figsize=(12, 4.5), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [wd / max(heights) for wd in widths]})
    for ax, (title, img, msk, aspect, xl, yl) in zip(axes, views, strict=True):
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", aspect=aspect, interpolation="nearest")
        if msk.any() and not msk.all():
            ax.contour(msk.astype(np.float32), levels=[0.5], colors=["lime"], linewidths=1.0)
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def write_tiff_stack(path: PathLike, mask: np.ndarray) -> Path:
    """Write ``(Z, H, W)`` values in ``[0, 255]`` as an 8-bit multi-page TIFF (zlib), atomically.

    Values are kept as they are (a binary mask stays 0/1, scribbles stay 0/1/2); bool becomes 0/1.
    Read it back with ``tifffile.imread`` or :func:`read_scribbles`.

    Raises
    ------
    ValueError
        If ``mask`` is not 3-D, not integer/bool or outside ``[0, 255]``.
    """
    import tifffile

    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"mask must be (Z, H, W), got shape {m.shape}")
    if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"mask must be integer or bool, got {m.dtype}")
    if m.size and (m.min() < 0 or m.max() > 255):
        raise ValueError("mask values must lie in [0, 255] for an 8-bit TIFF")
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, m.astype(np.uint8), compression="zlib", photometric="minisblack")
    return path
