"""Per-object measurements of instance label maps (the biomarkers users count and plot).

Area, perimeter, equivalent diameter, minimum and maximum Feret diameters, eccentricity, solidity
and mean intensity, in pixels or — with a pixel size — in µm / µm². The minimum Feret diameter
(the narrowest caliper width; robust to oblique sectioning of fibres) is computed exactly from the
convex hull by rotating calipers.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import regionprops


def min_feret_diameter(coords: np.ndarray) -> float:
    """Narrowest caliper width of a pixel set ``(N, 2)`` (row, col), pixels as unit squares.

    The hull of the pixel *corners* is used, so a single pixel has width 1 and a 1×n bar width 1.
    For a convex polygon the minimum width is attained with one caliper flush with an edge, so
    checking every hull edge's direction is exact.
    """
    from scipy.spatial import ConvexHull, QhullError

    corners = (coords[:, None, :] + np.array([[0, 0], [0, 1], [1, 0], [1, 1]])[None]).reshape(-1, 2).astype(float)
    corners = np.unique(corners, axis=0)
    try:
        hull = corners[ConvexHull(corners).vertices]
    except QhullError:  # degenerate (collinear) sets
        extent = corners.max(0) - corners.min(0)
        return float(min(extent.max(), 1.0) if extent.min() == 0 else extent.min())
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([-edges[:, 1], edges[:, 0]], 1) / np.linalg.norm(edges, axis=1, keepdims=True)
    proj = hull @ normals.T  # (n_vertices, n_edges)
    return float((proj.max(0) - proj.min(0)).min())


def measure_objects(
    labels: np.ndarray, image: np.ndarray | None = None, pixel_size_um: float | None = None
) -> dict[int, dict[str, float]]:
    """Measurements per object id of ``labels`` ``int (H, W)``.

    ``image`` ``(H, W[, C])`` adds the mean intensity (grey: mean of channels). Units: µm and µm² when
    ``pixel_size_um`` is given, else px.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    s = pixel_size_um or 1.0
    unit = "um" if pixel_size_um else "px"
    grey = None
    if image is not None:
        grey = image.mean(axis=-1) if image.ndim == 3 else image
    out: dict[int, dict[str, float]] = {}
    for r in regionprops(labels.astype(np.int64), intensity_image=grey):
        m = {
            f"area_{unit}2": float(r.area) * s * s,
            f"perimeter_{unit}": float(r.perimeter) * s,
            f"equivalent_diameter_{unit}": float(r.equivalent_diameter_area) * s,
            f"min_feret_{unit}": min_feret_diameter(r.coords) * s,
            f"max_feret_{unit}": float(r.feret_diameter_max) * s,
            "eccentricity": float(r.eccentricity),
            "solidity": float(r.solidity),
        }
        if grey is not None:
            m["mean_intensity"] = float(r.intensity_mean)
        out[int(r.label)] = m
    return out
