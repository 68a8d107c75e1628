"""Tests of histoflow.volume (stack I/O, summaries, views), histoflow.scribbles and the synthetic organ stacks."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from histoflow.io import InputError
from histoflow.scribbles import make_scribbles, read_scribbles
from histoflow.synthetic.organs import make_organ_stack
from histoflow.volume import (
    orthogonal_views,
    read_stack,
    stack_slice_names,
    volume_summary,
    write_stack,
    write_tiff_stack,
)

SMALL = (12, 96, 96)


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    """The default 40 x 192 x 192 stack (generated once)."""
    return make_organ_stack(0)


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return make_organ_stack(3, SMALL)


def _regions(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Organ core (>= 5 px inside) and a ring of surrounding tissue 12-40 px outside the organ."""
    organ = labels == 1
    filled = np.stack([ndi.binary_fill_holes(o) for o in organ])  # chambers are not "surroundings"
    d_out = np.stack([ndi.distance_transform_edt(~f) if f.any() else np.full(f.shape, 1e3) for f in filled])
    d_in = np.stack([ndi.distance_transform_edt(o) for o in organ])
    grey = images.astype(np.float32).mean(-1)
    tissue = ndi.uniform_filter(grey, (0, 9, 9)) < 225  # not glass
    return d_in > 5, (d_out > 12) & (d_out < 40) & tissue


def _local_std(grey: np.ndarray, size: int = 5) -> np.ndarray:
    m = ndi.uniform_filter(grey, (0, size, size))
    return np.sqrt(np.maximum(ndi.uniform_filter(grey * grey, (0, size, size)) - m * m, 0))


# --------------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------------


def test_shapes_and_dtypes(stack: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = stack
    assert images.shape == (40, 192, 192, 3) and images.dtype == np.uint8
    assert labels.shape == (40, 192, 192) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 1}


def test_deterministic_and_seed_dependent(small: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = make_organ_stack(3, SMALL)
    assert images.tobytes() == small[0].tobytes()
    assert labels.tobytes() == small[1].tobytes()
    other, _ = make_organ_stack(4, SMALL)
    assert not np.array_equal(other, images)


def test_organ_fraction_and_connectivity(stack: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = stack
    assert 0.05 <= labels.mean() <= 0.40
    _, n = ndi.label(labels)
    assert n == 1
    areas = labels.reshape(len(labels), -1).sum(1)
    assert areas[20] > 0 and areas[0] == 0  # the organ lies inside the stack, not cut by its ends


def test_texture_differs_but_mean_colour_is_similar(stack: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = stack
    core, ring = _regions(images, labels)
    grey = images.astype(np.float32).mean(-1)
    ls = _local_std(grey)
    organ_std, sur_std = np.median(ls[core]), np.median(ls[ring])
    assert organ_std > 1.3 * sur_std, (organ_std, sur_std)  # fine dense speckle vs loose tissue
    diff = np.abs(images[core].mean(0) - images[ring].mean(0))
    assert diff.max() < 8.0, diff  # ... but about the same colour on average


def test_mimic_borders_make_surroundings_look_like_organ() -> None:
    kw = dict(illumination=0.0, noise=0.0)
    img0, lab = make_organ_stack(7, SMALL, mimic_fraction=0.0, **kw)
    img1, _ = make_organ_stack(7, SMALL, mimic_fraction=0.8, **kw)
    filled = np.stack([ndi.binary_fill_holes(o) for o in lab == 1])
    d_out = np.stack([ndi.distance_transform_edt(~f) if f.any() else np.full(f.shape, 1e3) for f in filled])
    band = (d_out > 2) & (d_out < 6)
    s0 = np.median(_local_std(img0.astype(np.float32).mean(-1))[band])
    s1 = np.median(_local_std(img1.astype(np.float32).mean(-1))[band])
    assert s1 > 1.1 * s0, (s0, s1)


def test_stain_drift_along_z() -> None:
    kw = dict(illumination=0.0, noise=0.0)
    flat, lab = make_organ_stack(11, SMALL, stain_drift=0.0, **kw)
    drift, _ = make_organ_stack(11, SMALL, stain_drift=0.15, **kw)
    tissue = ndi.uniform_filter(flat.astype(np.float32).mean(-1), (0, 9, 9)) < 225

    def od_per_slice(img: np.ndarray) -> np.ndarray:
        od = -np.log10(np.maximum(img.astype(np.float64), 1) / 255.0)
        return np.array([od[z][tissue[z]].mean(0) for z in range(len(img))])  # (Z, 3)

    f, d = od_per_slice(flat), od_per_slice(drift)
    rel = (d - f) / f  # relative change of the optical density per slice and channel
    assert np.abs(rel).max() > 0.04  # drift is present ...
    assert np.abs(rel).max() < 0.2  # ... within about +-15 %
    assert np.abs(np.diff(rel, axis=0)).max() < 0.6 * np.ptp(rel, axis=0).max()  # and smooth along z


def test_generator_validation() -> None:
    with pytest.raises(ValueError, match="seed"):
        make_organ_stack(-1, SMALL)
    with pytest.raises(ValueError, match="shape"):
        make_organ_stack(0, (4, 16, 16))
    with pytest.raises(ValueError, match="stain_drift"):
        make_organ_stack(0, SMALL, stain_drift=0.9)


# --------------------------------------------------------------------------------------------------
# scribbles
# --------------------------------------------------------------------------------------------------


def test_scribbles_on_every_nth_slice_inside_classes(stack: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = stack
    seeds = make_scribbles(labels, every=10, strokes_per_class=2, width=3, seed=1)
    assert seeds.shape == labels.shape and seeds.dtype == np.uint8
    assert set(np.unique(seeds).tolist()) <= {0, 1, 2}
    marked = np.flatnonzero(seeds.reshape(len(seeds), -1).max(1))
    assert set(marked.tolist()) <= {0, 10, 20, 30}
    for z in (0, 10, 20, 30):
        assert (seeds[z] == 2).sum() > 20
    assert (seeds[20] == 1).sum() > 20 and (seeds[10] == 1).sum() > 0
    for z in (0, 10, 20, 30):
        organ = labels[z] == 1
        fg, bg = seeds[z] == 1, seeds[z] == 2
        assert organ[fg].all() and not organ[bg].any()
        if fg.any():  # >= 2 organ pixels between a stroke and the border
            assert ndi.distance_transform_edt(organ)[fg].min() >= 3
        assert ndi.distance_transform_edt(~organ)[bg].min() >= 3
    again = make_scribbles(labels, every=10, strokes_per_class=2, width=3, seed=1)
    assert np.array_equal(seeds, again)


def test_scribbles_2d_and_validation() -> None:
    lab = np.zeros((80, 80), np.uint8)
    lab[20:60, 20:60] = 1
    seeds = make_scribbles(lab, strokes_per_class=1, width=1)
    assert seeds.shape == (80, 80) and (seeds == 1).any() and (seeds == 2).any()
    with pytest.raises(ValueError, match="every"):
        make_scribbles(lab, every=0)


# --------------------------------------------------------------------------------------------------
# stack I/O
# --------------------------------------------------------------------------------------------------


def test_write_read_stack_round_trip(tmp_path, small) -> None:
    images, labels = small
    files = write_stack(tmp_path / "s", images, labels)
    assert [f.name for f in files][:2] == ["slice_000.png", "slice_001.png"]
    assert (tmp_path / "s" / "labels" / "slice_011.png").is_file()
    im2, lab2 = read_stack(tmp_path / "s")
    assert np.array_equal(im2, images) and np.array_equal(lab2, labels)
    assert stack_slice_names(tmp_path / "s")[-1] == "slice_011"
    # a shorter stack written over it leaves no stale slices behind
    write_stack(tmp_path / "s", images[:5])
    im3, lab3 = read_stack(tmp_path / "s")
    assert im3.shape[0] == 5
    assert lab3 is None  # the old labels do not belong to the new images
    write_stack(tmp_path / "t", images[:5])
    assert read_stack(tmp_path / "t")[1] is None


def test_read_stack_natural_order_and_errors(tmp_path) -> None:
    d = tmp_path / "nat"
    d.mkdir()
    for i in (1, 2, 10):
        iio.imwrite(d / f"s{i}.png", np.full((8, 8, 3), i, np.uint8))
    images, labels = read_stack(d)
    assert images[:, 0, 0, 0].tolist() == [1, 2, 10] and labels is None
    iio.imwrite(d / "s11.png", np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(InputError, match="s11.png"):
        read_stack(d)
    with pytest.raises(InputError, match="not found"):
        read_stack(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no slice images"):
        read_stack(empty)


def test_read_stack_multipage_tiff(tmp_path, small) -> None:
    images, _ = small
    tifffile.imwrite(tmp_path / "st.tif", images, photometric="rgb")
    im2, lab2 = read_stack(tmp_path / "st.tif")
    assert np.array_equal(im2, images) and lab2 is None
    grey = images[..., 0]
    tifffile.imwrite(tmp_path / "grey.tif", grey, photometric="minisblack")
    assert np.array_equal(read_stack(tmp_path / "grey.tif")[0][..., 1], grey)


def test_write_tiff_stack_round_trip(tmp_path) -> None:
    m = np.random.default_rng(0).integers(0, 3, (4, 10, 3)).astype(np.uint8)  # W = 3 must not be RGB
    path = write_tiff_stack(tmp_path / "m.tif", m)
    back = tifffile.imread(path)
    assert back.dtype == np.uint8 and np.array_equal(back, m)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4
    with pytest.raises(ValueError):
        write_tiff_stack(tmp_path / "bad.tif", np.full((2, 3, 3), 300))


# --------------------------------------------------------------------------------------------------
# read_scribbles
# --------------------------------------------------------------------------------------------------


def test_read_scribbles_folder_tiff_and_single(tmp_path) -> None:
    shape = (6, 16, 20)
    seeds = np.zeros(shape, np.uint8)
    seeds[0, 2:4, 2:9] = 1
    seeds[3, 10:12, 5:15] = 2
    # (a) folder, missing slices = none
    d = tmp_path / "scr"
    d.mkdir()
    iio.imwrite(d / "slice_000.png", seeds[0])
    iio.imwrite(d / "slice_003.png", seeds[3])
    assert np.array_equal(read_scribbles(d, shape), seeds)
    # ... matched by name when the stack's names are given
    names = [f"sec_{10 * i}" for i in range(6)]
    d2 = tmp_path / "named"
    d2.mkdir()
    iio.imwrite(d2 / "sec_30.png", seeds[3])
    assert np.array_equal(read_scribbles(d2, shape, names=names)[3], seeds[3])
    # (b) multi-page TIFF
    write_tiff_stack(tmp_path / "s.tif", seeds)
    assert np.array_equal(read_scribbles(tmp_path / "s.tif", shape), seeds)
    # (c) single value-coded image for 2-D
    iio.imwrite(tmp_path / "one.png", seeds[3])
    assert np.array_equal(read_scribbles(tmp_path / "one.png", shape[1:]), seeds[3])
    with pytest.raises(InputError, match="single image"):
        read_scribbles(tmp_path / "one.png", shape)
    with pytest.raises(InputError, match="do not match"):
        read_scribbles(tmp_path / "one.png", (17, 20))


def test_read_scribbles_rgb(tmp_path) -> None:
    rgb = np.full((10, 12, 3), 255, np.uint8)  # white = none
    rgb[1, 1:5] = (255, 0, 0)
    rgb[2, 1:5] = (255, 128, 128)  # anti-aliased red edge on white
    rgb[5, 2:6] = (0, 0, 255)
    rgb[6, 2:6] = (20, 40, 200)
    rgb[8, :] = (0, 0, 0)  # black = none
    iio.imwrite(tmp_path / "rgb.png", rgb)
    out = read_scribbles(tmp_path / "rgb.png", (10, 12))
    assert out.dtype == np.uint8
    assert (out[1:3, 1:5] == 1).all() and (out[5:7, 2:6] == 2).all()
    assert (out == 1).sum() == 8 and (out == 2).sum() == 8
    rgb[0, 0] = (0, 255, 0)  # green is not part of the convention
    iio.imwrite(tmp_path / "green.png", rgb)
    with pytest.raises(InputError, match=r"green\.png.*red.*blue"):
        read_scribbles(tmp_path / "green.png", (10, 12))


def test_read_scribbles_bad_values(tmp_path) -> None:
    bad = np.zeros((8, 8), np.uint8)
    bad[2, 2] = 255
    iio.imwrite(tmp_path / "bad.png", bad)
    with pytest.raises(InputError, match=r"bad\.png.*0, 1 or 2"):
        read_scribbles(tmp_path / "bad.png", (8, 8))
    d = tmp_path / "nonum"
    d.mkdir()
    iio.imwrite(d / "first.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="first.png"):
        read_scribbles(d, (2, 8, 8))


def test_read_scribbles_geojson(tmp_path) -> None:
    def feature(cls: str, coords: list, z: int) -> dict:
        return {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": coords, "plane": {"c": -1, "z": z, "t": 0}},
            "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [255, 0, 0]}},
        }

    fc = {
        "type": "FeatureCollection",
        "features": [
            feature("Foreground", [[5.5, 5.5], [15.5, 5.5]], 1),
            feature("bg", [[5.5, 20.5], [15.5, 20.5]], 2),
            feature("Other", [[1.5, 1.5], [3.5, 1.5]], 0),
        ],
    }
    path = tmp_path / "scr.geojson"
    path.write_text(json.dumps(fc))
    seeds = read_scribbles(path, (3, 30, 30))
    assert seeds.dtype == np.uint8
    assert (seeds[1, 4:7, 5:16] == 1).all() and (seeds[1] == 1).sum() == 3 * 13
    assert (seeds[2, 19:22, 5:16] == 2).all() and not seeds[0].any()


# --------------------------------------------------------------------------------------------------
# summary and views
# --------------------------------------------------------------------------------------------------


def test_volume_summary_cube() -> None:
    mask = np.zeros((10, 20, 30), bool)
    mask[2:5, 3:9, 4:14] = True
    s = volume_summary(mask, (2.0, 0.5, 0.25))
    assert s["n_voxels"] == 180 and s["shape"] == [10, 20, 30]
    assert s["bbox"] == {"z": [2, 5], "y": [3, 9], "x": [4, 14]}
    assert s["slice_areas_px"] == [0, 0, 60, 60, 60, 0, 0, 0, 0, 0] and s["n_slices_with_mask"] == 3
    assert s["voxel_volume_um3"] == pytest.approx(0.25)
    assert s["volume_um3"] == pytest.approx(45.0)
    assert s["slice_areas_um2"][2] == pytest.approx(7.5)
    json.dumps(s)  # JSON-ready
    empty = volume_summary(np.zeros((2, 3, 4), np.uint8), None)
    assert empty["n_voxels"] == 0 and empty["bbox"] is None and empty["volume_um3"] is None
    with pytest.raises(ValueError):
        volume_summary(mask, (1.0, -1.0, 1.0))


def test_orthogonal_views_png(tmp_path, small) -> None:
    images, labels = small
    out = orthogonal_views(images, labels, tmp_path / "views.png", spacing=(5.0, 1.0, 1.0), dpi=50)
    png = iio.imread(out)
    assert png.ndim == 3 and png.shape[0] > 50 and png.shape[1] > 150
    assert not list(tmp_path.glob(".*tmp*"))
