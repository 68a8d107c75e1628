"""Stain normalization of brightfield (H&E-like) RGB images.

The interface follows TIAToolbox: a normalizer is ``fit`` to one *target* image and then
``transform`` maps any *source* image to the target's colour appearance. Every normalizer is a
:class:`StainNormalizer` and is built by name with :func:`get_normalizer`:

``"macenko"``   :class:`MacenkoNormalizer`  stain separation after Macenko et al., ISBI 2009
``"vahadane"``  :class:`VahadaneNormalizer` sparse non-negative stain separation after Vahadane
                et al., IEEE TMI 2016
``"reinhard"``  :class:`ReinhardNormalizer` CIE-LAB mean/std transfer after Reinhard et al., 2001
``"none"``      :class:`IdentityNormalizer` no-op, so a workflow can switch normalization off

Whole slides are normalized tile by tile. Estimating the source statistics on every tile gives
visible seams, so :func:`fit_source_from_tiles` (or :meth:`StainNormalizer.fit_source` on the
whole image or a thumbnail) estimates them once and ``transform(tile, source_params=...)``
reuses that estimate for every tile. Estimates are made through an accumulator that takes the
image tile by tile, and the stain-matrix methods sample pixels by a hash of their position, so
the tiled estimate equals the one-piece estimate and tiled output equals one-piece output.
Fitted parameters and source estimates are plain JSON-serialisable dicts
(:meth:`StainNormalizer.to_dict`, :func:`save_normalizer`, :func:`load_normalizer`).

The per-pixel transform is vectorised float32 NumPy, threaded over the CPU cores; Macenko and
Vahadane also have a torch backend (``backend="torch"``, used by default when a CUDA GPU is
visible) that agrees with NumPy within one grey level. :func:`augment_stain` perturbs H&E
concentrations for training (Tellez et al. 2018).

Images that hold (almost) no tissue -- background-only tiles, empty arrays -- are passed through
unchanged with a logged warning; a *target* without tissue is an error, because it cannot define
a stain appearance.

Optical density convention
--------------------------
Beer--Lambert with incident intensity ``I0 = 255`` and a +1 offset so that black pixels stay
finite: ``OD = -ln((I + 1) / 256)`` for 8-bit intensities ``I``. White (255) has ``OD = 0``, black
(0) has ``OD = ln 256 ~ 5.55``. The inverse is ``I = 256 * exp(-OD) - 1`` (:func:`rgb_to_od`,
:func:`od_to_rgb`). Natural logarithms are used throughout; the base only scales OD and
concentrations and cancels in the normalization.

Adding a method
---------------
Subclass :class:`StainMatrixNormalizer` and implement ``_estimate_stain_matrix`` (and, for
other concentrations, ``_concentrations`` and ``_pixel_map``), or subclass
:class:`StainNormalizer` and implement ``_accumulator``/``_apply``/``get_params`` plus the
``_STAT_SHAPES`` class attribute; decorate the class with :func:`register_normalizer`.


Modules
-------
``colour``    input checks, optical density, CIE-LAB, the luminosity tissue mask
``sampling``  tile-invariant (position-hashed) bottom-k pixel sampling
``kernels``   the per-pixel NumPy / torch transforms of the stain-matrix methods
``base``      :class:`StainNormalizer` and the method registry; ``checks`` parameter validation
``matrix``    Macenko and Vahadane;  ``reinhard``  Reinhard and the identity
``tiles``     :func:`fit_source_from_tiles`;  ``augment``  :func:`augment_stain`
``registry``  :func:`get_normalizer`, :func:`save_normalizer`, :func:`load_normalizer`
"""

from .augment import augment_stain
from .base import FORMAT_VERSION, NotFittedError, StainNormalizer, available_normalizers, register_normalizer
from .colour import luminosity_tissue_mask, od_to_rgb, rgb_to_od, standardize_luminosity, to_rgb_uint8
from .matrix import MacenkoNormalizer, StainMatrixNormalizer, VahadaneNormalizer
from .registry import get_normalizer, load_normalizer, save_normalizer
from .reinhard import IdentityNormalizer, ReinhardNormalizer
from .tiles import fit_source_from_tiles

__all__ = [
    "FORMAT_VERSION",
    "IdentityNormalizer",
    "MacenkoNormalizer",
    "NotFittedError",
    "ReinhardNormalizer",
    "StainMatrixNormalizer",
    "StainNormalizer",
    "VahadaneNormalizer",
    "augment_stain",
    "available_normalizers",
    "fit_source_from_tiles",
    "get_normalizer",
    "load_normalizer",
    "luminosity_tissue_mask",
    "od_to_rgb",
    "register_normalizer",
    "rgb_to_od",
    "save_normalizer",
    "standardize_luminosity",
    "to_rgb_uint8",
]
