"""Synthetic serial-section stacks of an organ-like structure, with known labels.

Synthetic organ stacks (:func:`make_organ_stack`)
    An organ-like, lobed, thick-walled 3-D structure (think of an embryonic heart: a myocardial wall
    around two chambers, inside embryonic mesenchyme) is rendered section by section with the
    Beer-Lambert H&E model of :mod:`histoflow.synthetic.fibres` (same stain vectors). The target is made hard
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

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit, ndtri

from ..stain.colour import RGB_FROM_HED
from ..volume import MIN_SHAPE, check_fraction, check_seed
from .noise import RESIDUAL_OD, smooth_noise_1d, smooth_noise_3d, unit


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

    ``r`` is the weak yellowish residual absorption of the tissue of :mod:`histoflow.synthetic.fibres`.
    """
    od = c_h[..., None] * h_vec.astype(np.float32) + c_e[..., None] * e_vec.astype(np.float32)
    if c_r is not None:
        od += c_r[..., None] * unit(RESIDUAL_OD).astype(np.float32)
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
    seed = check_seed(seed)
    try:
        nz, h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"shape must be (Z, H, W) integers, got {shape!r}") from exc
    if len(tuple(shape)) != 3 or any(s < m for s, m in zip((nz, h, w), MIN_SHAPE, strict=True)):
        raise ValueError(f"shape must be (Z, H, W) with Z >= 1 and H, W >= 32, got {shape!r}")
    stain_drift = check_fraction("stain_drift", stain_drift, 0.0, 0.5)
    border_width = check_fraction("border_width", border_width, 1e-3, 10.0)
    mimic_fraction = check_fraction("mimic_fraction", mimic_fraction, 0.0, 1.0)
    illumination = check_fraction("illumination", illumination, 0.0, 0.5)
    noise = check_fraction("noise", noise, 0.0, 0.2)
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
    lobes = smooth_noise_3d(rng, shp, corr)
    outer = np.sqrt(zz * zz + yy * yy + xx * xx) * (1.0 + f32(0.11) * lobes) - f32(1.0)
    theta = rng.uniform(0, np.pi)
    off = rng.uniform(0.33, 0.38)
    lumen = None
    lobes2 = smooth_noise_3d(rng, shp, corr)
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
        1.0 + f32(0.06) * smooth_noise_3d(rng, shp, (0.8 * nz, 0.4 * h, 0.4 * w))
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
    mimic = smooth_noise_3d(rng, shp, (0.4 * nz, 0.12 * h, 0.12 * w))
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

    h_vec = unit(np.clip(unit(RGB_FROM_HED[0]) + rng.normal(0, 0.03, 3), 0.02, None))
    e_vec = unit(np.clip(unit(RGB_FROM_HED[1]) + rng.normal(0, 0.03, 3), 0.02, None))
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
    thickness = 1.0 + f32(0.06) * smooth_noise_3d(rng, shp, (0.5 * nz, 0.3 * h, 0.3 * w))

    # ---- stain drift along z, Beer-Lambert rendering, acquisition ---------------------------------------
    drift_scale = max(nz / 4.0, 2.0)
    h_drift = 1.0 + stain_drift * rng.uniform(0.7, 1.0) * smooth_noise_1d(rng, nz, drift_scale)
    e_drift = 1.0 + stain_drift * rng.uniform(0.7, 1.0) * smooth_noise_1d(rng, nz, drift_scale)
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

