"""Stain normalization of serial-section stacks (the M-Unet paper colour-normalizes each volume with Vahadane's
method): a stack whose slices differ only by the strength of each stain comes out as one slice repeated."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from histoflow.stages.volumes import run_normalize_volume
from histoflow.stain import od_to_rgb
from histoflow.volume import read_stack, write_stack

# Ruifrok & Johnston's haematoxylin and eosin optical-density vectors, unit length
H = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def drifting_stack(n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """``n`` slices of the same tissue; slice k has its haematoxylin x (1 + 0.3 sin k) and eosin x (1 - 0.25 cos k)."""
    rng = np.random.default_rng(0)

    def field() -> np.ndarray:
        f = gaussian_filter(rng.random((64, 64)), 3)
        return (f - f.min()) / (f.max() - f.min())

    c_h, c_e = field() * 1.2, field() * 0.8
    c_h[:, :10] = c_e[:, :10] = 0  # a strip of glass
    images = np.stack([od_to_rgb((c_h * (1 + 0.3 * np.sin(k)))[..., None] * H
                                 + (c_e * (1 - 0.25 * np.cos(k)))[..., None] * E) for k in range(n)])
    labels = np.zeros(images.shape[:3], np.uint8)
    labels[:, 20:40, 20:40] = 1
    return images, labels


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_stain_drift_along_z_is_removed(tmp_path, method):
    images, labels = drifting_stack()
    for part in ("train", "target"):
        write_stack(tmp_path / part, images, labels)
    done = run_normalize_volume({"train": str(tmp_path / "train"), "target": str(tmp_path / "target")},
                                tmp_path / "norm", method)
    assert done == {"method": method, "reference_slice": 3}  # the middle of 7 training slices
    out, out_labels = read_stack(tmp_path / "norm" / "target")
    np.testing.assert_array_equal(out_labels, labels)

    def gap(stack: np.ndarray, k: int) -> float:  # mean absolute difference from the reference slice, grey levels
        return float(np.abs(stack[k].astype(float) - stack[3]).mean())

    before = [gap(images, k) for k in range(7)]
    after = [gap(out, k) for k in range(7)]
    # before: up to 18 grey levels apart (slice 5: eosin x 0.93, haematoxylin x 0.71); after: within 3.5
    assert max(before) > 15 and max(after) < 3.5
    assert all(a < 0.3 * b for a, b in zip(after, before, strict=True) if b > 5)
    assert (tmp_path / "norm" / "stain.json").exists()
