"""Colour conversions shared by the normalizers.

Image input checks, optical density (Beer-Lambert), float32 CIE-LAB, the luminosity tissue mask and luminosity
standardization.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from skimage import color
from skimage.color import colorconv as _colorconv

from .checks import _real

logger = logging.getLogger(__name__)

#: Optical-density vectors (RGB rows) of hematoxylin, eosin and DAB after Ruifrok & Johnston (2001) as
#: scikit-image ships them (``skimage.color.rgb_from_hed``); normalise on use. The one copy that the
#: Vahadane initialisation, the stain augmentation and the synthetic H&E images share.
RGB_FROM_HED: np.ndarray = _colorconv.rgb_from_hed.copy()
RGB_FROM_HED.setflags(write=False)

_OD_SCALE = 256.0  # I0 = 255 plus the +1 offset: OD = -ln((I + 1) / 256)


_EPS = 1e-8


_EXPECTED_IMAGE = (
    "expected a grey (H, W) or (H, W, 1), RGB (H, W, 3) or RGBA (H, W, 4) array of dtype uint8, "
    "uint16, integers in [0, 255] or floats in [0, 1]"
)


BIT_DEPTHS = (8, 10, 12, 14, 16)


def bit_depth_of(max_value: int) -> int:
    """The smallest of :data:`BIT_DEPTHS` whose range ``0 .. 2**b - 1`` holds ``max_value``."""
    return next(b for b in BIT_DEPTHS if max_value <= 2**b - 1) if max_value < 2**16 else 16


def to_rgb_uint8(image: np.ndarray, *, name: str = "image", bit_depth: int | None = None) -> np.ndarray:
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
    bit_depth : int, optional
        For ``uint16``: the significant bits (e.g. 12 for camera data in ``0 .. 4095``), scaled so that
        ``2**bit_depth - 1`` becomes 255; default 16.

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
        full = float(2 ** (bit_depth or 16) - 1)
        if bit_depth and arr.size and arr.max() > full:
            raise ValueError(f"{name}: values up to {arr.max()} do not fit bit_depth {bit_depth} (at most "
                             f"{int(full)}); raise datasets.<name>.bit_depth or set it to auto")
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
    elif arr.dtype == np.uint16 and full == 65535.0:
        # round(x / 257); 257 is odd so no value sits exactly on a .5 tie
        out = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype == np.uint16:
        out = _unit_float_to_uint8(arr.astype(np.float64) / full)
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
    return _OD_LUT[to_rgb_uint8(image)]


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


#: OD of every 8-bit intensity, ``_OD_LUT[I] = -ln((I + 1) / 256)``: a table look-up replaces a logarithm
#: per pixel and channel (float64 for the estimates, float32 for the per-pixel transform)
_OD_LUT = -np.log((np.arange(256, dtype=np.float64) + 1.0) / _OD_SCALE)


_OD_LUT.setflags(write=False)


_OD_LUT32 = _OD_LUT.astype(np.float32)


_OD_LUT32.setflags(write=False)


def _od_threshold_intensity(beta: float) -> int:
    """Largest 8-bit intensity whose OD is ``>= beta`` (OD decreases with intensity), -1 if none."""
    return int(np.count_nonzero(_OD_LUT >= beta)) - 1


# ---- fast sRGB <-> CIE-LAB (D65, 2 degree observer), scikit-image's formulas in float32 ---------
# sRGB decoding of every 8-bit value is a table; the XYZ matrix and the white point are
# scikit-image's own. Agrees with skimage.color.rgb2lab / lab2rgb to float32 precision.
_SRGB_LINEAR = np.where(
    np.arange(256) / 255.0 > 0.04045,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
    np.arange(256) / 255.0 / 12.92,
).astype(np.float32)


_SRGB_LINEAR.setflags(write=False)


_WHITE = np.asarray(_colorconv.xyz_tristimulus_values(illuminant="D65", observer="2"), dtype=np.float64)


_XYZN_FROM_RGB = (_colorconv.xyz_from_rgb / _WHITE[:, np.newaxis]).astype(np.float32)  # white -> (1, 1, 1)


_RGB_FROM_XYZN = (_colorconv.rgb_from_xyz * _WHITE[np.newaxis, :]).astype(np.float32)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """CIE-LAB companding of a float32 temporary, in place."""
    small = t <= np.float32(0.008856)
    lin = t * np.float32(7.787) + np.float32(16.0 / 116.0)
    np.cbrt(t, out=t)
    np.copyto(t, lin, where=small)
    return t


def _lab_f_inv(f: np.ndarray) -> np.ndarray:
    """Inverse companding of a float32 temporary, in place."""
    small = f <= np.float32(0.2068966)
    lin = (f - np.float32(16.0 / 116.0)) * np.float32(1.0 / 7.787)
    np.power(f, 3, out=f)
    np.copyto(f, lin, where=small)
    return f


def _lab32(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 3)`` uint8 sRGB -> CIE-LAB ``(L, a, b)``, each ``(n,)`` float32."""
    lin = [_SRGB_LINEAR[pixels[:, c]] for c in range(3)]
    m = _XYZN_FROM_RGB
    f = [_lab_f(lin[0] * m[i, 0] + lin[1] * m[i, 1] + lin[2] * m[i, 2]) for i in range(3)]
    light = f[1] * np.float32(116.0) - np.float32(16.0)
    a = (f[0] - f[1]) * np.float32(500.0)
    b = (f[1] - f[2]) * np.float32(200.0)
    return light, a, b


def _lab32_to_rgb(light: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """CIE-LAB float32 temporaries ``(n,)`` -> sRGB uint8 written into ``out`` ``(n, 3)``.

    As scikit-image: negative ``z`` is clipped to 0, out-of-gamut RGB is clipped to [0, 1].
    """
    fy = (light + np.float32(16.0)) * np.float32(1.0 / 116.0)
    fx = a * np.float32(1.0 / 500.0) + fy
    fz = fy - b * np.float32(1.0 / 200.0)
    np.maximum(fz, 0.0, out=fz)
    xyz = [_lab_f_inv(fx), _lab_f_inv(fy), _lab_f_inv(fz)]
    m = _RGB_FROM_XYZN
    for c in range(3):
        v = xyz[0] * m[c, 0] + xyz[1] * m[c, 1] + xyz[2] * m[c, 2]
        small = v <= np.float32(0.0031308)
        lin = v * np.float32(12.92)
        np.maximum(v, np.float32(0.0031308), out=v)
        np.power(v, np.float32(1 / 2.4), out=v)
        v *= np.float32(1.055)
        v -= np.float32(0.055)
        np.copyto(v, lin, where=small)
        v *= np.float32(255.0)
        np.rint(v, out=v)
        np.clip(v, 0.0, 255.0, out=v)
        out[:, c] = v


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


def luminosity_tissue_mask(image: np.ndarray, luminosity_threshold: float = 0.8) -> np.ndarray:
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

