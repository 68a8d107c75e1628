"""Known-answer tests for histoflow.tiling: tile placement, blend windows and tiled inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoflow.models import build_model
from histoflow.tiling import blend_window, iter_tiles, pad_mode, predict_tiled, tile_starts

# ---------------------------------------------------------------------------------------------
# tile_starts


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [
        (length, tile, overlap)
        for length in (17, 33, 64, 65, 100, 101, 257, 300, 301, 1000)
        for tile, overlap in ((16, 0), (16, 4), (32, 8), (32, 31), (64, 16), (7, 3))
        if length > tile
    ],
)
def test_tile_starts_cover_evenly_with_requested_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + tile == length
    assert starts == sorted(set(starts))  # strictly increasing
    gaps = np.diff(starts)
    # Consecutive tiles overlap by at least `overlap` (a gap of at most tile - overlap) ...
    assert gaps.max() <= tile - overlap
    # ... and are spaced as evenly as integers allow.
    assert gaps.max() - gaps.min() <= 1
    # No more tiles than needed: one fewer tile could not keep the overlap.
    n = len(starts)
    assert n == 1 + -(-(length - tile) // (tile - overlap))


def test_tile_starts_hand_values():
    # stride 12: ceil(24 / 12) + 1 = 3 tiles, spaced exactly 12 apart.
    assert tile_starts(40, 16, 4) == [0, 12, 24]
    # ceil(34 / 12) + 1 = 4 tiles over 34 pixels of travel: round(34 * i / 3).
    assert tile_starts(50, 16, 4) == [0, 11, 23, 34]
    assert tile_starts(96, 80, 32) == [0, 16]


@pytest.mark.parametrize("length", [0, 1, 5, 31, 32])
def test_tile_starts_single_tile_when_length_fits(length):
    assert tile_starts(length, 32, 8) == [0]


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (-3, 0), (16, -1), (16, 16), (16, 20)])
def test_tile_starts_rejects_bad_arguments(tile, overlap):
    with pytest.raises(ValueError, match="tile"):
        tile_starts(100, tile, overlap)


def test_iter_tiles_is_the_product_of_both_axes():
    assert list(iter_tiles(40, 28, 16, 4)) == [(y, x) for y in (0, 12, 24) for x in (0, 12)]


# ---------------------------------------------------------------------------------------------
# blend_window


@pytest.mark.parametrize("mode", ["gaussian", "cosine", "constant"])
@pytest.mark.parametrize("shape", [(16, 16), (17, 17), (8, 13), (1, 5)])
def test_blend_window_positive_symmetric_normalised(mode, shape):
    w = blend_window(shape, mode)
    assert w.shape == shape
    assert w.dtype == np.float32
    assert np.all(w >= 1e-3 - 1e-9)
    assert w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1, :], atol=1e-7)
    np.testing.assert_allclose(w, w[:, ::-1], atol=1e-7)
    if shape[0] == shape[1]:
        np.testing.assert_allclose(w, w.T, atol=1e-7)


def test_blend_window_modes_hand_values():
    np.testing.assert_array_equal(blend_window((4, 6), "constant"), np.ones((4, 6), np.float32))
    # Gaussian, odd size: centre is the maximum (1), a 1-pixel step away is exp(-0.5 / (0.125 * 9)^2).
    g = blend_window((9, 9), "gaussian")
    assert g[4, 4] == pytest.approx(1.0)
    assert g[4, 5] == pytest.approx(np.exp(-0.5 / (0.125 * 9) ** 2), rel=1e-6)
    # Far corners sit far beyond 3 sigma and are floored at 1e-3.
    assert blend_window((64, 64), "gaussian")[0, 0] == pytest.approx(1e-3)
    # Hann: cos^2(pi x / (n + 1)), separable; centre 1 for odd n.
    c = blend_window((5, 5), "cosine")
    one_d = np.cos(np.pi * (np.arange(5) - 2) / 6) ** 2
    np.testing.assert_allclose(c, np.maximum(np.outer(one_d, one_d), 1e-3), rtol=1e-6)
    # Monotone from the border towards the centre.
    assert np.all(np.diff(g[4, :5]) > 0) and np.all(np.diff(c[2, :3]) > 0)


def test_blend_window_unknown_mode():
    with pytest.raises(ValueError, match="blend mode"):
        blend_window((8, 8), "triangle")


# ---------------------------------------------------------------------------------------------
# predict_tiled with exact predictors


def _plus_one(t: torch.Tensor) -> torch.Tensor:
    return t + 1


@pytest.mark.parametrize("size", [(37, 53), (100, 7), (300, 301), (5, 9), (16, 16), (64, 65)])
@pytest.mark.parametrize(("tile", "overlap", "batch"), [(32, 8, 1), (32, 8, 4), (48, 16, 3), (64, 0, 2), (40, 30, 64)])
def test_predict_tiled_exact_predictor_is_exact(size, tile, overlap, batch):
    """Sizes larger and smaller than the tile in one or both dimensions (37x53 < 64, 100x7, 5x9)."""
    rng = np.random.default_rng(sum(size) + tile)
    image = rng.random((2, *size), dtype=np.float32)
    out = predict_tiled(_plus_one, image, tile=tile, overlap=overlap, batch_size=batch)
    assert out.shape == image.shape
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, image + 1, atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "cosine", "constant"])
@pytest.mark.parametrize("size", [(37, 53), (100, 7), (13, 11)])
def test_predict_tiled_exact_for_every_blend_mode(size, blend):
    rng = np.random.default_rng(7)
    image = rng.normal(size=(1, *size)).astype(np.float32)
    out = predict_tiled(_plus_one, image, tile=24, overlap=10, batch_size=5, blend=blend)
    np.testing.assert_allclose(out, image + 1, atol=1e-5)


def test_predict_tiled_accepts_tensor_input():
    image = torch.arange(3 * 20 * 30, dtype=torch.float32).reshape(3, 20, 30) / 100
    out = predict_tiled(_plus_one, image, tile=16, overlap=4)
    np.testing.assert_allclose(out, image.numpy() + 1, atol=1e-5)


def test_predict_tiled_channel_handling():
    rng = np.random.default_rng(1)
    image = rng.random((3, 45, 70), dtype=np.float32)

    def two_channels(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:, :1] * 2, t[:, 1:2] - 1], dim=1)

    out = predict_tiled(two_channels, image, tile=32, overlap=12, batch_size=3)
    assert out.shape == (2, 45, 70)
    np.testing.assert_allclose(out[0], image[0] * 2, atol=1e-5)
    np.testing.assert_allclose(out[1], image[1] - 1, atol=1e-5)


def test_predict_tiled_rejects_bad_input_and_size_changing_predictor():
    for bad in (np.zeros((10, 10), np.float32), np.zeros((1, 2, 10, 10), np.float32)):
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            predict_tiled(_plus_one, bad, tile=8, overlap=2)
    with pytest.raises(ValueError, match="tile size"):
        predict_tiled(lambda t: t[..., :-1, :-1], np.zeros((1, 20, 20), np.float32), tile=8, overlap=2)


# ---------------------------------------------------------------------------------------------
# predict_tiled with a real convolutional model


@pytest.fixture(scope="module")
def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", in_channels=3, out_channels=1, base_width=4, depth=2).eval()


@pytest.mark.parametrize("size", [32, 30])  # 30: not a multiple of 2**depth, padded inside the model
def test_predict_tiled_single_tile_equals_direct_forward(tiny_unet, size):
    torch.manual_seed(1)
    x = torch.rand(3, size, size)
    with torch.no_grad():
        direct = tiny_unet(x[None])[0].numpy()
    for blend in ("gaussian", "cosine", "constant"):
        out = predict_tiled(tiny_unet, x, tile=size, overlap=8, blend=blend, precision="fp32")
        np.testing.assert_allclose(out, direct, atol=1e-5)


def _receptive_radius(model: torch.nn.Module, size: int = 96) -> int:
    x = torch.rand(1, 3, size, size, requires_grad=True)
    model(x)[0, 0, size // 2, size // 2].backward()
    rows = np.nonzero(x.grad[0].abs().sum(0).sum(1).numpy())[0]
    return int(max(size // 2 - rows.min(), rows.max() - size // 2))


def _safe_mask(height: int, width: int, tile: int, overlap: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels every covering tile sees at least ``radius`` away from its internal (non-image) edges,
    and the number of tiles covering each pixel."""
    safe = np.ones((height, width), bool)
    cover = np.zeros((height, width), int)
    for y, x in iter_tiles(height, width, tile, overlap):
        ok = np.ones((tile, tile), bool)
        if y > 0:
            ok[:radius] = False
        if y + tile < height:
            ok[tile - radius :] = False
        if x > 0:
            ok[:, :radius] = False
        if x + tile < width:
            ok[:, tile - radius :] = False
        safe[y : y + tile, x : x + tile] &= ok
        cover[y : y + tile, x : x + tile] += 1
    return safe, cover


def test_predict_tiled_conv_model_exact_away_from_tile_seams(tiny_unet):
    """Blending cannot undo zero padding at tile seams, but it must not add error anywhere else.

    A pixel whose receptive field lies inside every tile that covers it gets the exact full-image
    value from each of those tiles, so any convex blend of them is exact too. Tile starts here are
    multiples of 2**depth, so the tiles' pooling grids align with the full image's.
    """
    torch.manual_seed(2)
    radius = _receptive_radius(tiny_unet)
    assert 10 <= radius <= 30  # sanity: a depth-2 U-Net sees about +-22 pixels
    x = torch.rand(3, 96, 96)
    with torch.no_grad():
        direct = tiny_unet(x[None])[0, 0].numpy()
    tile, overlap = 80, 32
    assert tile_starts(96, tile, overlap) == [0, 16]
    safe, cover = _safe_mask(96, 96, tile, overlap, radius + 1)
    assert safe[cover == 4].sum() >= 100  # the blended centre, covered by all four tiles, is checked
    assert (~safe).sum() > 0
    value_range = float(np.ptp(direct))
    errors = {}
    for blend in ("gaussian", "cosine", "constant"):
        out = predict_tiled(tiny_unet, x, tile=tile, overlap=overlap, batch_size=3, blend=blend, precision="fp32")[0]
        assert out.shape == (96, 96) and np.isfinite(out).all()
        np.testing.assert_allclose(out[safe], direct[safe], atol=1e-5)
        errors[blend] = np.abs(out - direct).mean() / value_range
    # Near the seams the tiles disagree with the full image (zero padding); tapering windows average
    # that down: the mean error over the whole image stays small, and below the constant window's.
    assert errors["gaussian"] < 0.02 and errors["cosine"] < 0.02
    assert errors["gaussian"] < errors["constant"] and errors["cosine"] < errors["constant"]


def test_context_tiles_are_aligned_and_exact():
    """With ``context``, the predictor sees c extra pixels per side and returns the centre only."""
    rng = np.random.default_rng(0)
    img = rng.random((2, 77, 90)).astype(np.float32)
    c = 12
    out = predict_tiled(lambda t: t[:, :, c:-c, c:-c] + 1, img, tile=32, overlap=8, context=c)
    np.testing.assert_allclose(out, img + 1, atol=1e-5)
    # A predictor that reads the pixel one row above proves the context is the true neighbourhood.
    up = predict_tiled(lambda t: t[:, :, c - 1 : -c - 1, c:-c], img, tile=32, overlap=8, context=c)
    np.testing.assert_allclose(up[:, 1:], img[:, :-1], atol=1e-5)
    np.testing.assert_allclose(up[:, 0], img[:, 1], atol=1e-5)  # reflect padding above the first row


def test_context_with_image_smaller_than_tile():
    img = np.random.default_rng(1).random((1, 20, 25)).astype(np.float32)
    out = predict_tiled(lambda t: t[:, :, 8:-8, 8:-8] * 2, img, tile=32, overlap=8, context=8)
    np.testing.assert_allclose(out, img * 2, atol=1e-5)


def test_pad_mode_reflects_only_where_every_pad_is_shorter_than_its_axis():
    assert pad_mode((3, 0), (4, 4)) == "reflect"  # 3 < 4: a mirror image of the last 3 rows exists
    assert pad_mode((4, 0), (4, 4)) == "replicate"  # 4 rows cannot mirror 4 (torch and numpy refuse)
    assert pad_mode((0, 5), (8, 2)) == "replicate"  # one axis too short is enough
    x = torch.arange(4.0).reshape(1, 1, 4)  # the rule is torch's own limit for reflection
    torch.nn.functional.pad(x, (0, 3), mode=pad_mode((3,), (4,)))
    with pytest.raises(RuntimeError):
        torch.nn.functional.pad(x, (0, 4), mode="reflect")
