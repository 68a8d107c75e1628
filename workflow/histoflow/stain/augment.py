"""Stain augmentation for training: H&E concentration perturbation (Tellez et al. 2018)."""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np

from .base import _NoTissueError
from .checks import _real
from .colour import _OD_LUT, _OD_SCALE, _od_threshold_intensity, od_to_rgb, to_rgb_uint8
from .kernels import _mul
from .registry import get_normalizer

logger = logging.getLogger(__name__)

def augment_stain(
    image: np.ndarray,
    rng: np.random.Generator | int | None = None,
    sigma_alpha: float = 0.2,
    sigma_beta: float = 0.2,
    *,
    stain_matrix: np.ndarray | None = None,
    method: str = "macenko",
    beta: float = 0.15,
) -> np.ndarray:
    """Random H&E stain augmentation for training (Tellez et al., SPIE Medical Imaging 2018).

    Tellez et al., "H and E stain augmentation improves generalization of convolutional networks for
    histopathological mitosis detection", SPIE Medical Imaging 2018.

    The image is unmixed into hematoxylin and eosin concentrations ``c`` (least squares against
    its stain matrix); per stain ``c' = c * alpha + beta`` with ``alpha ~ U(1 - sigma_alpha,
    1 + sigma_alpha)`` and ``beta ~ U(-sigma_beta, sigma_beta)`` (OD units), drawn once per call;
    the change ``(c' - c) S`` is added to the pixel's OD, so the residual off the stain plane is
    kept and zero sigmas give the input back exactly. Only stained pixels (OD >= ``beta`` in some
    channel) are changed: background stays background.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB (anything :func:`to_rgb_uint8` accepts).
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for ``numpy.random.default_rng``.
    sigma_alpha, sigma_beta : float
        Half-widths of the uniform factor and offset ranges, ``sigma_alpha`` in ``[0, 1]``,
        ``sigma_beta >= 0``.
    stain_matrix : np.ndarray, optional
        ``(2, 3)`` stain vectors (H, E) of the image; default: estimated with ``method``.
    method : str
        Stain-matrix method used when ``stain_matrix`` is None (``"macenko"`` or ``"vahadane"``).
    beta : float
        OD threshold of stained pixels.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8. An image whose stain matrix cannot be estimated (too little tissue)
        is returned unchanged (a copy; logged at debug level, as training draws many such patches).
    """
    sa = _real("sigma_alpha", sigma_alpha, lo=0.0, hi=1.0)
    sb = _real("sigma_beta", sigma_beta, lo=0.0)
    b = _real("beta", beta, lo=0.0, hi=math.log(_OD_SCALE), hi_open=True)
    if rng is None or isinstance(rng, numbers.Integral):
        rng = np.random.default_rng(rng)
    elif not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
    rgb = to_rgb_uint8(image)
    if (sa == 0.0 and sb == 0.0) or rgb.size == 0:
        return rgb.copy()
    alpha = rng.uniform(1.0 - sa, 1.0 + sa, size=2)
    shift = rng.uniform(-sb, sb, size=2)
    if stain_matrix is None:
        if method not in ("macenko", "vahadane"):
            raise ValueError(f"method must be 'macenko' or 'vahadane', got {method!r}")
        norm = get_normalizer(method, beta=b, backend="numpy")
        try:
            stains = norm._estimate(rgb)["stain_matrix"]
        except _NoTissueError as exc:
            logger.debug("augment_stain: no usable tissue (%s); image returned unchanged", exc)
            return rgb.copy()
    else:
        stains = np.array(stain_matrix, dtype=np.float64)
        if stains.shape != (2, 3) or not np.all(np.isfinite(stains)):
            raise ValueError(f"stain_matrix must be a finite (2, 3) array, got shape {stains.shape}")
        if abs(np.linalg.det(stains @ stains.T)) < 1e-12:
            raise ValueError("stain_matrix: the two stain vectors are (nearly) parallel")
    flat = rgb.reshape(-1, 3)
    stained = flat.min(axis=1) <= _od_threshold_intensity(b)
    od = _OD_LUT[flat[stained]]
    conc = _mul(od, np.linalg.pinv(stains))
    od += _mul(conc * (alpha - 1.0) + shift, stains)
    out = flat.copy()
    out[stained] = od_to_rgb(od)
    return out.reshape(rgb.shape)

