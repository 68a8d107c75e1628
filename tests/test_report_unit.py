"""Unit tests for histoflow.report's array and plotting helpers (the full report is tested by the workflow)."""

from __future__ import annotations

import numpy as np
import pytest

from histoflow.report import error_overlay, plot_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.full((12, 14, 3), 100, np.uint8)
    image[0, 0] = (10, 20, 30)
    gt = np.zeros((12, 14), np.int32)
    gt[2:8, 2:8] = 4
    pred = np.zeros((12, 14), np.int32)
    pred[2:8, 4:10] = 1  # TP cols 4-7, FP cols 8-9, FN cols 2-3
    return image, pred, gt


def test_error_overlay_colours(case):
    image, pred, gt = case
    a = 0.45
    out = error_overlay(image, pred, gt, alpha=a)
    assert out.shape == image.shape and out.dtype == np.uint8

    def blend(colour):
        return np.floor((1 - a) * 100.0 + a * np.array(colour, float))

    # False positive (inside the prediction, not on its outline): reddened.
    np.testing.assert_allclose(out[5, 8], blend((255, 0, 0)), atol=1)  # (169, 55, 55)
    assert out[5, 8, 0] > 150 and out[5, 8, 1] < 60 and out[5, 8, 2] < 60
    # False negative: bluish.
    np.testing.assert_allclose(out[5, 2], blend((0, 80, 255)), atol=1)  # (55, 91, 169)
    assert out[5, 2, 2] > out[5, 2, 1] > out[5, 2, 0]
    # True positive interior and true negative: unchanged.
    np.testing.assert_array_equal(out[5, 6], image[5, 6])
    np.testing.assert_array_equal(out[0, 0], image[0, 0])
    np.testing.assert_array_equal(out[11, 13], image[11, 13])
    # Predicted outlines (inner boundary of the prediction) are yellow, whatever lies below.
    outline = np.zeros(pred.shape, bool)
    outline[2:8, 4:10] = True
    outline[3:7, 5:9] = False
    assert np.all(out[outline] == (255, 230, 0))
    # Everything else is untouched by the outline colour.
    assert not np.any(np.all(out[~outline] == (255, 230, 0), axis=-1))
    # Error pixels are exactly the FP/FN pixels off the outline.
    changed = np.any(out != image, axis=-1) & ~outline
    np.testing.assert_array_equal(changed, ((pred > 0) != (gt > 0)) & ~outline)


def test_error_overlay_alpha_zero_changes_only_outlines(case):
    image, pred, gt = case
    out = error_overlay(image, pred, gt, alpha=0.0)
    inside = np.zeros(pred.shape, bool)
    inside[3:7, 5:9] = True
    off_outline = (pred == 0) | inside
    np.testing.assert_array_equal(out[off_outline], image[off_outline])


def test_error_overlay_shape_mismatch(case):
    image, pred, gt = case
    with pytest.raises(ValueError, match="shapes differ"):
        error_overlay(image, pred, gt[:-1])
    with pytest.raises(ValueError, match="shapes differ"):
        error_overlay(image[:, :-1], pred, gt)


def test_plot_history_writes_png(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_dice": 0.5 + 0.1 * e,
                "lr": 1e-3 * (0.5 ** e), "seconds": 0.1} for e in range(1, 5)]
    path = tmp_path / "sub" / "curves.png"
    plot_history(history, path, dpi=50)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    # 9 x 3.2 inches at 50 dpi: the IHDR chunk holds width and height.
    assert int.from_bytes(data[16:20], "big") == 450 and int.from_bytes(data[20:24], "big") == 160
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]

    no_val = [{"epoch": 1, "train_loss": 0.7, "lr": 1e-3}]
    plot_history(no_val, tmp_path / "b.png", dpi=50)
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC
