"""Morphometry on shapes whose measurements are known."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from histoflow.morphometry import measure_objects, min_feret_diameter


def test_min_feret_of_rectangles_and_rotated_bar():
    rect = np.argwhere(np.ones((10, 4), bool))
    assert min_feret_diameter(rect) == pytest.approx(4.0)
    assert min_feret_diameter(np.array([[5, 5]])) == pytest.approx(1.0)
    # a diagonal bar one pixel wide: width = sqrt(2) (corners of a staircase)
    diag = np.array([[i, i] for i in range(20)])
    assert min_feret_diameter(diag) == pytest.approx(np.sqrt(2), rel=1e-6)


def test_measure_disk_in_micrometres():
    labels = np.zeros((101, 101), np.int32)
    labels[disk((50, 50), 20)] = 7
    m = measure_objects(labels, pixel_size_um=0.5)[7]
    assert m["area_um2"] == pytest.approx((labels == 7).sum() * 0.25)
    assert m["equivalent_diameter_um"] == pytest.approx(20.0, rel=0.02)  # 40 px disk -> 20 µm
    assert m["min_feret_um"] == pytest.approx(19.5, abs=0.3)  # the disk spans 39 pixel squares (rows 31-69)
    assert m["eccentricity"] < 0.05 and m["solidity"] > 0.97


def test_measure_units_and_intensity():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:12] = 1
    image = np.zeros((20, 20, 3), np.uint8)
    image[labels == 1] = (30, 60, 90)
    m = measure_objects(labels, image)[1]
    assert m["area_px2"] == 40 and m["min_feret_px"] == pytest.approx(4.0) and m["mean_intensity"] == 60
    with pytest.raises(ValueError):
        measure_objects(np.zeros((2, 2, 2), np.int32))
