"""Known-answer tests for histoflow.patches: boundary and U-Net weight maps, patch extraction, the HDF5 store."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from histoflow.patches import (
    FIELDS,
    boundary_map,
    extract_patches,
    read_patch_group,
    split_stems,
    unet_weight_map,
    write_patch_store,
)


def two_touching_squares() -> np.ndarray:
    """12 x 16 map: 5x5 square id 1 at rows 3-7, cols 3-7 and id 2 right next to it at cols 8-12."""
    labels = np.zeros((12, 16), np.int32)
    labels[3:8, 3:8] = 1
    labels[3:8, 8:13] = 2
    return labels


def two_bars() -> np.ndarray:
    """20 x 21 map: two 10 x 6 bars (cols 2-7 and 11-16) with a 3-pixel gap (cols 8-10) between them."""
    labels = np.zeros((20, 21), np.int32)
    labels[5:15, 2:8] = 1
    labels[5:15, 11:17] = 2
    return labels


# ---------------------------------------------------------------------------------------------
# boundary_map


def test_boundary_map_two_touching_squares():
    labels = two_touching_squares()
    b = boundary_map(labels)
    assert b.dtype == np.uint8 and b.shape == labels.shape
    # Each 5x5 square contributes its 16-pixel ring (the contact column is on both rings); the 3x3
    # interiors and the background stay 0.
    assert b.sum() == 32
    assert np.all(b[labels == 0] == 0)
    assert np.all(b[4:7, 4:7] == 0) and np.all(b[4:7, 9:12] == 0)
    assert np.all(b[3:8, 7] == 1) and np.all(b[3:8, 8] == 1)  # both sides of the contact
    # Width 2 grows the rings one pixel inwards: 24 pixels per square, only the centres stay 0.
    b2 = boundary_map(labels, width=2)
    assert b2.sum() == 48
    assert b2[5, 5] == 0 and b2[5, 10] == 0
    assert np.all(b2[labels == 0] == 0)


def test_boundary_map_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        boundary_map(np.zeros((2, 4, 4), np.int32))


# ---------------------------------------------------------------------------------------------
# unet_weight_map


def test_unet_weight_map_known_values():
    labels = two_bars()
    n, n_fg = labels.size, int((labels > 0).sum())
    assert (n, n_fg) == (420, 120)
    w_fg, w_bg = n / (2 * n_fg), n / (2 * (n - n_fg))  # 1.75 and 0.7
    w0, sigma = 10.0, 2.0
    w = unet_weight_map(labels, w0=w0, sigma=sigma)
    assert w.dtype == np.float32 and w.shape == labels.shape
    # Every object pixel gets the foreground class weight only.
    np.testing.assert_allclose(w[labels > 0], w_fg, rtol=1e-6)
    # (10, 9) is 2 pixels from bar 1 (col 7) and 2 from bar 2 (col 11): d1 + d2 = 4.
    assert w[10, 9] == pytest.approx(w_bg + w0 * math.exp(-16 / (2 * sigma**2)), rel=1e-5)
    # (10, 8) touches bar 1 (d1 = 1) and is 3 from bar 2: still d1 + d2 = 4.
    assert w[10, 8] == pytest.approx(w[10, 9], rel=1e-6)
    # (0, 0): d1 = sqrt(5^2 + 2^2), d2 = sqrt(5^2 + 11^2): exp(-(17.5)^2 / 8) ~ 1e-17, i.e. just w_c.
    assert w[0, 0] == pytest.approx(w_bg, abs=1e-6)
    assert w[19, 20] == pytest.approx(w_bg, abs=1e-6)
    # The border term is largest in the gap.
    assert w.max() == pytest.approx(w[10, 9])


def test_unet_weight_map_one_object_has_no_border_term():
    labels = np.zeros((15, 15), np.int32)
    labels[5:10, 5:10] = 3
    w = unet_weight_map(labels, w0=10.0, sigma=5.0)
    # A single object has no second-nearest object: only class weights (225 / (2 * 25), 225 / 400).
    np.testing.assert_allclose(w[labels > 0], 4.5, rtol=1e-6)
    np.testing.assert_allclose(w[labels == 0], 225 / 400, rtol=1e-6)


def test_unet_weight_map_w0_zero_and_no_class_balance():
    labels = two_bars()
    w = unet_weight_map(labels, w0=0.0, sigma=2.0)
    np.testing.assert_allclose(w, np.where(labels > 0, 1.75, 0.7), rtol=1e-6)
    w = unet_weight_map(labels, w0=10.0, sigma=2.0, class_balance=False)
    assert np.all(w[labels > 0] == 1.0)
    assert w[10, 9] == pytest.approx(1 + 10 * math.exp(-2), rel=1e-5)
    assert w[0, 0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(unet_weight_map(labels, w0=0.0, class_balance=False), np.ones_like(w))


def test_unet_weight_map_class_weights_are_clipped_and_empty_maps_are_ones():
    labels = np.zeros((100, 100), np.int32)
    labels[0, 0] = 1  # one foreground pixel in 10^4: N / (2 * 1) = 5000 -> clipped to 10
    w = unet_weight_map(labels, w0=0.0)
    assert w[0, 0] == pytest.approx(10.0)
    assert w[50, 50] == pytest.approx(1e4 / (2 * 9999), rel=1e-6)
    np.testing.assert_array_equal(unet_weight_map(np.zeros((6, 6), np.int32)), np.ones((6, 6), np.float32))


# ---------------------------------------------------------------------------------------------
# extract_patches


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    labels = np.zeros((40, 50), np.int32)
    labels[4:14, 5:20] = 1
    labels[4:14, 21:30] = 2
    labels[25:37, 30:46] = 7
    return image, labels


KW = {"boundary_width": 2, "weight_w0": 10.0, "weight_sigma": 3.0}


def _check_crops(patches, image, labels, size):
    bounds = boundary_map(labels, KW["boundary_width"])
    weights = unet_weight_map(labels, KW["weight_w0"], KW["weight_sigma"])
    for p in patches:
        y, x = p.origin
        sl = (slice(y, y + size), slice(x, x + size))
        assert p.image.shape == (size, size, 3) and p.labels.shape == (size, size)
        assert p.boundaries.shape == p.weights.shape == (size, size)
        np.testing.assert_array_equal(p.image, image[sl])
        np.testing.assert_array_equal(p.labels, labels[sl])
        np.testing.assert_array_equal(p.mask, (labels[sl] > 0).astype(np.uint8))
        # Targets are crops of the whole-image targets, not recomputed per patch.
        np.testing.assert_array_equal(p.boundaries, bounds[sl])
        np.testing.assert_array_equal(p.weights, weights[sl])


def test_extract_patches_grid(scene):
    image, labels = scene
    patches = list(extract_patches(image, labels, "s1", 16, mode="grid", overlap=4, **KW))
    # rows: tile_starts(40, 16, 4) = [0, 12, 24]; cols: tile_starts(50, 16, 4) = [0, 11, 23, 34]
    assert [p.origin for p in patches] == [(y, x) for y in (0, 12, 24) for x in (0, 11, 23, 34)]
    assert all(p.stem == "s1" for p in patches)
    _check_crops(patches, image, labels, 16)
    # The boundary between objects 1 and 2 is in the targets even where a patch edge cuts it.
    assert patches[1].boundaries.sum() > 0


def test_extract_patches_random(scene):
    image, labels = scene
    patches = list(extract_patches(image, labels, "s1", 16, mode="random", n_random=7,
                                   rng=np.random.default_rng(5), **KW))
    assert len(patches) == 7
    assert all(0 <= y <= 40 - 16 and 0 <= x <= 50 - 16 for y, x in (p.origin for p in patches))
    _check_crops(patches, image, labels, 16)
    again = list(extract_patches(image, labels, "s1", 16, mode="random", n_random=7,
                                 rng=np.random.default_rng(5), **KW))
    assert [p.origin for p in again] == [p.origin for p in patches]
    # Default generator is seeded (0): reproducible without passing one.
    a = [p.origin for p in extract_patches(image, labels, "s1", 16, n_random=5)]
    b = [p.origin for p in extract_patches(image, labels, "s1", 16, n_random=5)]
    assert a == b


@pytest.mark.parametrize("shape", [(10, 12), (5, 20), (30, 9)])
def test_extract_patches_pads_small_images_with_zero_weight(shape):
    h, w = shape
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = np.zeros(shape, np.int32)
    labels[1:4, 1:4] = 1
    size = 16
    patches = list(extract_patches(image, labels, "small", size, mode="grid", overlap=0, **KW))
    ys = [0] if h <= size else [0, h - size]  # tile_starts(h, 16, 0) for h <= 32
    xs = [0] if w <= size else [0, w - size]
    assert [p.origin for p in patches] == [(y, x) for y in ys for x in xs]
    for p in patches:
        y, x = p.origin
        hh, ww = min(h - y, size), min(w - x, size)
        assert p.image.shape == (size, size, 3)
        np.testing.assert_array_equal(p.image[:hh, :ww], image[y : y + hh, x : x + ww])
        valid = np.zeros((size, size), bool)
        valid[:hh, :ww] = True
        # Padding: weight 0 (ignored by the loss), no labels, no boundaries; real pixels keep weight > 0.
        assert np.all(p.weights[~valid] == 0)
        assert np.all(p.labels[~valid] == 0) and np.all(p.boundaries[~valid] == 0)
        assert np.all(p.weights[valid] > 0)


def test_extract_patches_errors(scene):
    image, labels = scene
    with pytest.raises(ValueError, match="differ in size"):
        list(extract_patches(image, labels[:-1], "s", 16))
    with pytest.raises(ValueError, match="patch mode"):
        list(extract_patches(image, labels, "s", 16, mode="tiles"))


# ---------------------------------------------------------------------------------------------
# split_stems


def test_split_stems_deterministic_disjoint_complete():
    stems = [f"img{i:02d}" for i in range(10)]
    train, val = split_stems(stems, 0.3, seed=4)
    assert (train, val) == split_stems(stems, 0.3, seed=4)
    assert len(val) == 3 and len(train) == 7
    assert set(train).isdisjoint(val) and sorted(train + val) == stems
    assert train == sorted(train) and val == sorted(val)
    others = {tuple(split_stems(stems, 0.3, seed=s)[1]) for s in range(10)}
    assert len(others) > 1  # the seed matters


def test_split_stems_at_least_one_of_each():
    # 0.1 * 3 rounds to 0 validation images; with >= 2 images one is held out anyway.
    train, val = split_stems(["a", "b", "c"], 0.1, seed=0)
    assert len(val) == 1 and len(train) == 2
    train, val = split_stems(["a", "b"], 0.9, seed=0)
    assert len(val) == 1 and len(train) == 1
    assert split_stems(["a", "b", "c"], 0.0, seed=0) == (["a", "b", "c"], [])
    assert split_stems(["only"], 0.5, seed=0) == (["only"], [])  # round(0.5) = 0; one image stays in train
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            split_stems(["a", "b"], bad, seed=0)


# ---------------------------------------------------------------------------------------------
# HDF5 patch store


def test_patch_store_round_trip(tmp_path, scene):
    image, labels = scene
    size = 16
    train = list(extract_patches(image, labels, "a", size, mode="grid", overlap=4, **KW))
    val = list(extract_patches(image[::-1].copy(), labels[::-1].copy(), "b", size, n_random=3, **KW))
    path = tmp_path / "patches.h5"
    counts = write_patch_store(path, {"train": iter(train), "val": val, "empty": []}, size)
    assert counts == {"train": 12, "val": 3, "empty": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patches.h5"]  # no temporary file left behind

    for name, patches in (("train", train), ("val", val)):
        got = read_patch_group(path, name)
        assert set(got) == {*FIELDS, "stems", "origins"}
        np.testing.assert_array_equal(got["images"], np.stack([p.image for p in patches]))
        np.testing.assert_array_equal(got["masks"], np.stack([p.mask for p in patches]))
        np.testing.assert_array_equal(got["labels"], np.stack([p.labels for p in patches]))
        np.testing.assert_array_equal(got["boundaries"], np.stack([p.boundaries for p in patches]))
        np.testing.assert_array_equal(got["weights"], np.stack([p.weights for p in patches]))
        assert got["stems"].tolist() == [p.stem for p in patches]
        np.testing.assert_array_equal(got["origins"], np.array([p.origin for p in patches]))
        assert got["images"].dtype == np.uint8 and got["labels"].dtype == np.int32
        assert got["weights"].dtype == np.float32

    empty = read_patch_group(path, "empty")
    assert empty["images"].shape == (0, size, size, 3) and empty["stems"].shape == (0,)
    sub = read_patch_group(path, "val", fields=("images",))
    assert set(sub) == {"images", "stems", "origins"}
    with pytest.raises(KeyError, match="test"):
        read_patch_group(path, "test")


def test_patch_store_is_chunked_and_compressed(tmp_path, scene):
    image, labels = scene
    path = tmp_path / "p.h5"
    write_patch_store(path, {"train": extract_patches(image, labels, "a", 16, n_random=2, **KW)}, 16)
    with h5py.File(path, "r") as f:
        assert f.attrs["patch_size"] == 16
        g = f["train"]
        for name, shape in (("images", (16, 16, 3)), ("masks", (16, 16)), ("labels", (16, 16)),
                            ("boundaries", (16, 16)), ("weights", (16, 16))):
            ds = g[name]
            assert ds.shape == (2, *shape)
            assert ds.chunks == (1, *shape)  # one patch per chunk
            assert ds.compression == "gzip"
            assert ds.shuffle
            assert ds.maxshape[0] is None


def test_patch_store_failed_write_leaves_nothing(tmp_path, scene):
    image, labels = scene

    def broken():
        yield from extract_patches(image, labels, "a", 16, n_random=2, **KW)
        raise RuntimeError("disk on fire")

    path = tmp_path / "p.h5"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_patch_store(path, {"train": broken()}, 16)
    assert list(tmp_path.iterdir()) == []


def test_a_patch_store_that_cannot_fit_stops_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from histoflow.io import InputError
    from histoflow.patches import check_free_space, count_patches, patch_bytes

    # per pixel: image 3 B, masks / boundaries / interiors / classes 1 B each, labels (int32) 4 B, and five float32
    # maps (weights, distance_weights, three balances) 4 B each: 3 + 4 + 4 + 20 = 31 B
    assert patch_bytes(10) == 100 * 31
    assert count_patches([(100, 100), (50, 60)], {"size": 64, "per_image": 5, "overlap": 0}, "random") == 10
    assert count_patches([(100, 100)], {"size": 64, "per_image": 5, "overlap": 0}, "grid") == 4
    usage = namedtuple("usage", "total used free")
    need = 1000 * patch_bytes(64)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, need // 3))
    with pytest.raises(InputError, match=r"p.h5: 1000 patches of 64 px need .* GB free. Free some space"):
        check_free_space(tmp_path / "out" / "p.h5", 1000, 64)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, need * 2))
    check_free_space(tmp_path / "out" / "p.h5", 1000, 64)


def test_a_full_disk_while_writing_is_named(tmp_path, monkeypatch):
    import h5py

    from histoflow.io import InputError
    from histoflow.patches import write_patch_store

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py, "File", full)
    with pytest.raises(InputError, match=r"p.h5: the disk filled up .* nothing was kept"):
        write_patch_store(tmp_path / "p.h5", {"train": []}, 32)
    assert not list(tmp_path.iterdir())  # no partial store a rerun could take as finished
