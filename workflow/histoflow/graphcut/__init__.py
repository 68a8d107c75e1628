r"""Binary graph-cut refinement of a foreground probability map (2D images and 3D stacks).

Given a foreground probability map ``h`` (values in ``[0, 1]``) and, optionally, the image ``x``,
:func:`graphcut` returns the binary labelling ``l`` (``True`` = foreground) that minimises

.. math::

    E(l) = \sum_v |l_v - h_v|
           + \gamma \sum_{(v, v')} [l_v \ne l_{v'}] \, f_{v v'}
             \left(\exp(-\lVert x_v - x_{v'} \rVert^2 / \sigma^2) + \delta\right)

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

Modules: ``graph`` (checks, edge weights, capacities, :func:`energy`), ``solve`` (:func:`graphcut`,
:func:`graphcut_banded`), ``search`` (:func:`search_parameters`).
"""

from .graph import (
    SEED_BACKGROUND,
    SEED_FOREGROUND,
    SEED_NONE,
    energy,
    neighbourhood_offsets,
    seeds_from_masks,
)
from .search import search_parameters
from .solve import graphcut, graphcut_banded, uncertain_band

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
