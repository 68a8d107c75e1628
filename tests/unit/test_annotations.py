"""Tests of histoflow.annotations: QuPath GeoJSON on whole slides -> regions, windows, label tiles; bad annotations."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from skimage.segmentation import relabel_sequential

from histoflow.annotations import Window, load_slide_annotations, rasterize_window, region_windows
from histoflow.datasets import resolve_slide_dataset
from histoflow.io import InputError, read_image
from histoflow.patches import extract_patches
from histoflow.stages.data import run_annotated_images, run_annotated_labels
from histoflow.synthetic.slides import write_pyramid

CLASSES = {"Tumor": 1, "Stroma": 2}


def rect(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(geometry: dict, cls: str | None, **extra) -> dict:
    props = {"objectType": "annotation", **({"classification": {"name": cls, "color": [0, 0, 255]}} if cls else {})}
    return {"type": "Feature", "geometry": geometry, "properties": props, **extra}


def polygon(*rings) -> dict:
    return {"type": "Polygon", "coordinates": list(rings)}


def write(tmp_path, features, name="s.geojson", wrap=True):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features} if wrap else features))
    return path


def known_features(scale: float = 1.0) -> list[dict]:
    """A region, a Tumor square with a hole, a smaller Stroma square over it, a two-piece Tumor MultiPolygon.

    In level-0 pixels times ``scale`` (``scale`` 2 read with downsample 2 must give the same label image).
    """
    s = lambda ring: [[x * scale, y * scale] for x, y in ring]  # noqa: E731
    return [
        feature(polygon(s(rect(1, 1, 9, 9)), s(rect(3, 3, 5, 5))), "Tumor"),  # A: 64 - 4 = 60 px
        feature(polygon(s(rect(7, 6, 11, 9))), "Stroma"),  # B: 12 px, overlaps A
        feature({"type": "MultiPolygon", "coordinates": [[s(rect(12, 1, 13, 2))], [s(rect(12, 11, 16, 12))]]},
                "Tumor"),  # C: 1 + 4 px, the second piece below the region
        feature(polygon(s(rect(0, 0, 14, 10))), "Region"),
    ]


def expected_known() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label image of :func:`known_features` on a 12 x 16 slide, derived by hand.

    A pixel (row r, column c) is inside a polygon when its centre (c + 0.5, r + 0.5) is. The region x 0..14,
    y 0..10 covers rows 0-9, columns 0-13. Painted largest first, so the smaller wins: A (60 px) gets id 1, rows
    1-8 x columns 1-8 minus its hole rows 3-4 x columns 3-4; B (12 px) id 2, rows 6-8 x columns 7-10, over A;
    C (5 px) id 3: only its piece at row 1, column 12 - the piece in row 11 is outside the region.
    """
    labels = np.zeros((12, 16), np.int32)
    labels[1:9, 1:9] = 1
    labels[3:5, 3:5] = 0
    labels[6:9, 7:11] = 2
    labels[1, 12] = 3
    classes = np.array([0, 1, 2, 1], np.uint8)[labels]
    valid = np.zeros((12, 16), bool)
    valid[0:10, 0:14] = True
    return labels, classes, valid


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_rasterize_known_polygons(tmp_path, scale, caplog) -> None:
    size = (int(12 * scale), int(16 * scale))
    with caplog.at_level(logging.WARNING):
        ann = load_slide_annotations(write(tmp_path, known_features(scale)), size, CLASSES, "Region*", "s")
    assert "1 overlapping pair(s) of objects of different classes" in caplog.text  # A and B
    labels, classes, valid = rasterize_window(ann, Window("s_r1", 1, 0, 0, 12, 16), downsample=scale)
    want = expected_known()
    np.testing.assert_array_equal(labels, want[0])
    np.testing.assert_array_equal(classes, want[1])
    np.testing.assert_array_equal(valid, want[2])


def test_window_is_the_same_crop(tmp_path) -> None:
    """A window at an offset gives the crop of the whole-slide rasterisation (ids renumbered from 1)."""
    ann = load_slide_annotations(write(tmp_path, known_features()), (12, 16), CLASSES, "Region*", "s")
    labels, classes, valid = rasterize_window(ann, Window("s_r1", 1, 2, 4, 6, 8), downsample=1.0)
    want = expected_known()
    np.testing.assert_array_equal(labels, relabel_sequential(want[0][2:8, 4:12])[0])
    np.testing.assert_array_equal(classes, want[1][2:8, 4:12])
    np.testing.assert_array_equal(valid, want[2][2:8, 4:12])


def test_region_windows_split_large_regions(tmp_path) -> None:
    """Regions in reading order; a region's box (outer pixel edges) in near-equal parts of at most `tile`."""
    feats = [feature(polygon(rect(10.5, 300, 510, 401)), "Region 2"), feature(polygon(rect(0, 0, 60, 40)), "Region")]
    ann = load_slide_annotations(write(tmp_path, feats), (1000, 1000), CLASSES, "Region*", "s")
    wins = region_windows(ann, "s", downsample=2.0, shape=(500, 500), tile=100)
    assert wins[0] == Window("s_r1", 1, 0, 0, 20, 30)  # the region at the top first: 60 x 40 -> 30 x 20
    # x 10.5..510 -> columns 5..255 (250 px: 3 parts of 83/84), y 300..401 -> rows 150..201 (51 px: 1 part)
    assert [(w.stem, w.y, w.x, w.h, w.w) for w in wins[1:]] == [
        ("s_r2_1", 150, 5, 51, 83), ("s_r2_2", 150, 88, 51, 84), ("s_r2_3", 150, 172, 51, 83)]


def test_feature_and_list_formats(tmp_path) -> None:
    """QuPath writes a FeatureCollection, or (older versions, pretty-printed) a list or one Feature."""
    one = feature(polygon(rect(0, 0, 4, 4)), "Region")
    for path in (write(tmp_path, [one], "list.geojson", wrap=False), write(tmp_path, one, "one.geojson", wrap=False)):
        ann = load_slide_annotations(path, (8, 8), CLASSES, "Region*", "s")
        assert len(ann.regions) == 1 and not ann.objects


def test_self_intersecting_polygon_is_repaired(tmp_path, caplog) -> None:
    bowtie = [[0, 0], [8, 8], [8, 0], [0, 8], [0, 0]]  # two triangles meeting at (4, 4)
    path = write(tmp_path, [feature(polygon(bowtie), "Tumor", id="bow-1"), feature(polygon(rect(0, 0, 8, 8)),
                                                                                   "Region")])
    with caplog.at_level(logging.WARNING):
        ann = load_slide_annotations(path, (8, 8), CLASSES, "Region*", "s")
    assert "feature 0 (id bow-1) [Tumor] is not a valid polygon" in caplog.text and "make_valid" in caplog.text
    assert ann.objects[0][0].geom_type == "MultiPolygon" and ann.objects[0][0].area == pytest.approx(32)


def test_feature_partly_outside_is_clipped(tmp_path, caplog) -> None:
    path = write(tmp_path, [feature(polygon(rect(4, 4, 12, 6)), "Tumor"), feature(polygon(rect(0, 0, 8, 8)),
                                                                                 "Region")])
    with caplog.at_level(logging.WARNING):
        ann = load_slide_annotations(path, (8, 8), CLASSES, "Region*", "s")
    assert "reaches outside the slide; clipped" in caplog.text
    assert ann.objects[0][0].bounds == (4, 4, 8, 6)


@pytest.mark.parametrize("features, message", [
    ([feature(polygon(rect(20, 20, 30, 30)), "Tumor"), feature(polygon(rect(0, 0, 8, 8)), "Region")],
     r"feature 0 \[Tumor\] lies outside the slide 's' \(x 20..30, y 20..30; the slide is 10 x 8 pixels"),
    ([feature(polygon(rect(0, 0, 4, 4)), "Tumour")],
     r"feature 0 \[Tumour\] has the classification 'Tumour'; the dataset knows classes \['Stroma', 'Tumor'\] or "
     r"regions matching 'Region\*'"),
    ([feature(polygon(rect(0, 0, 4, 4)), None, id="u-1")], r"feature 0 \(id u-1\) \[unclassified\] has no "
                                                           r"classification"),
    ([], r"the slide 's' has no annotations"),
    ([feature(polygon(rect(0, 0, 4, 4)), "Tumor")], r"no region on slide 's': draw at least one annotation "
                                                    r"classified as 'Region\*'"),
])
def test_bad_annotations_name_file_and_feature(tmp_path, features, message) -> None:
    path = write(tmp_path, features)
    with pytest.raises(InputError, match=message) as err:
        load_slide_annotations(path, (8, 10), CLASSES, "Region*", "s")
    assert str(path) in str(err.value)


def test_missing_annotation_file(tmp_path) -> None:
    with pytest.raises(InputError, match=r"no annotations for slide 's'. Export its objects from QuPath"):
        load_slide_annotations(tmp_path / "s.geojson", (8, 8), CLASSES, "Region*", "s")


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 3-level pyramidal TIFF (0.25 µm/px at level 0) of a smooth random image, and that image."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 80, 3)).repeat(4, 0).repeat(4, 1).astype(np.uint8)  # 256 x 320
    path = write_pyramid(tmp_path_factory.mktemp("slide") / "p.tif", image, mpp=0.25, levels=3, tile=64)
    return path, image


def mean2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return np.rint(a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.float32).mean(axis=(1, 3))).astype(np.uint8)


@pytest.mark.parametrize("mpp, halvings", [(0.5, 1), (1.0, 2)])
def test_windows_read_at_mpp_equal_the_downsampled_crop(tmp_path, pyramid, mpp, halvings) -> None:
    """0.5 µm/px is level 1 as it is; 1.0 µm/px is level 2 (both are 2 x 2 means of the level above)."""
    path, image = pyramid
    down = image
    for _ in range(halvings):
        down = mean2(down)
    windows = [{"stem": "p_r1", "region": 1, "y": 3, "x": 5, "h": 17, "w": 29},
               {"stem": "p_r2", "region": 2, "y": 0, "x": 0, "h": down.shape[0], "w": down.shape[1]}]
    assert run_annotated_images(path, windows, mpp, None, tmp_path / "images") == 2
    np.testing.assert_array_equal(read_image(tmp_path / "images" / "p_r1.png"), down[3:20, 5:34])
    np.testing.assert_array_equal(read_image(tmp_path / "images" / "p_r2.png"), down)


def test_resolve_slide_dataset_splits_by_slide(tmp_path, pyramid) -> None:
    path, _ = pyramid
    (tmp_path / "geo").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.tif").symlink_to(path)
        feats = [feature(polygon(rect(0, 0, 100, 60)), "Region"), feature(polygon(rect(120, 100, 300, 250)),
                                                                          "Region B"),
                 feature(polygon(rect(10, 10, 30, 30)), "Tumor")]
        write(tmp_path / "geo", feats, f"{name}.geojson")
    cfg = {"slides": str(tmp_path / "*.tif"), "annotations": str(tmp_path / "geo"), "mpp": 0.5, "base_mpp": None,
           "classes": {"Tumor": 1}, "regions": "Region*", "tile": 64, "split": {"train": ["a", "c"], "test": ["b"]},
           "test_fraction": 0.25, "limit": None}
    d = resolve_slide_dataset("liver", cfg, {"results": "res", "seed": 0, "classes": []})
    assert d.train_slides == ["a", "c"] and d.test_slides == ["b"] and d.mask_type == "instance"
    # region 1: 100 x 60 level-0 px -> 50 x 30 at 0.5 µm/px (one window); region 2: 180 x 150 -> 90 x 75 (2 x 2)
    assert [w.stem for w in d.windows["b"]] == ["b_r1", "b_r2_1", "b_r2_2", "b_r2_3", "b_r2_4"]
    assert d.test == [w.stem for w in d.windows["b"]] and all(s.startswith(("a_", "c_")) for s in d.train)
    assert d.images["b_r1"] == "res/data/liver/images/b/b_r1.png"
    assert d.masks["b_r1"] == "res/data/liver/labels/b/b_r1.tif" and d.valid["b_r1"].endswith("b_r1_region.png")
    assert d.slide_of(["a_r1", "c_r2_3"]) == ["a", "c"] and d.downsample["a"] == pytest.approx(2.0)
    with pytest.raises(InputError, match=r"datasets.liver.split names slide\(s\) \['d'\] that are not among"):
        resolve_slide_dataset("liver", {**cfg, "split": {"train": ["a"], "test": ["d"]}}, {"results": "r", "seed": 0})
    with pytest.raises(InputError, match=r"datasets.liver.classes.Tumor: class value 3 must be 1..1"):
        resolve_slide_dataset("liver", {**cfg, "classes": {"Tumor": 3}}, {"results": "r", "seed": 0,
                                                                          "classes": ["bg", "tumour"]})


def test_labels_stage_writes_labels_and_regions(tmp_path) -> None:
    path = write(tmp_path, known_features())
    windows = [{"stem": "s_r1", "region": 1, "y": 0, "x": 0, "h": 12, "w": 16}]
    counts = run_annotated_labels(path, windows, CLASSES, "Region*", 1.0, (12, 16), False, tmp_path / "inst")
    assert counts == {"s_r1": 3}
    labels, _, valid = expected_known()
    np.testing.assert_array_equal(read_image(tmp_path / "inst" / "s_r1.tif"), labels)
    np.testing.assert_array_equal(read_image(tmp_path / "inst" / "s_r1_region.png"), valid * 255)
    run_annotated_labels(path, windows, CLASSES, "Region*", 1.0, (12, 16), True, tmp_path / "cls")
    np.testing.assert_array_equal(read_image(tmp_path / "cls" / "s_r1.png"), expected_known()[1])


def test_patches_ignore_pixels_outside_the_regions() -> None:
    """Every loss weight is 0 outside `valid`; the class balance counts only the pixels inside."""
    labels, _, valid = expected_known()
    image = np.zeros((*labels.shape, 3), np.uint8)
    (p,) = extract_patches(image, labels, "s", 16, mode="grid", valid=valid, weight_w0=0)
    arrays = p.arrays()
    for key in ("weights", "distance_weights", "balance_masks", "balance_boundaries", "balance_interiors"):
        assert not arrays[key][:12][~valid].any() and arrays[key][:12][valid].all(), key
    # the region's 10 x 14 = 140 pixels hold A's 60 (6 of them under B) + B's 12 + C's 1 = 67 object pixels:
    # balance N / (2 N_c) = 140 / 134 on them and 140 / 146 on the 73 background pixels
    fg = (labels > 0) & valid
    assert fg.sum() == 67
    assert arrays["balance_masks"][:12][fg] == pytest.approx(140 / 134)
    assert arrays["balance_masks"][:12][valid & ~fg] == pytest.approx(140 / 146)


def test_a_slide_without_pixel_size_names_the_datasets_keys(tmp_path):
    """A slide file with no µm/px stops the dry run naming datasets.<name>.base_mpp, not the slides: section's."""
    from histoflow.io import write_image

    write_image(tmp_path / "plain.png", np.full((64, 64, 3), 200, np.uint8))  # a PNG carries no pixel size
    (tmp_path / "geo").mkdir()
    write(tmp_path / "geo", [feature(polygon(rect(0, 0, 32, 32)), "Region")], "plain.geojson")
    cfg = {"slides": str(tmp_path / "plain.png"), "annotations": str(tmp_path / "geo"), "mpp": 0.5,
           "classes": ["Tumor"], "split": "train", "test_fraction": 0.25, "limit": None}
    with pytest.raises(InputError, match=r"so datasets.liver.mpp = 0.5 cannot be honoured. Set "
                                         r"datasets.liver.base_mpp to the scanner's µm/pixel at full resolution\.$"):
        resolve_slide_dataset("liver", cfg, {"results": "res", "seed": 0, "classes": []})
    d = resolve_slide_dataset("liver", {**cfg, "base_mpp": 0.25}, {"results": "res", "seed": 0, "classes": []})
    assert d.downsample["plain"] == pytest.approx(2.0) and [w.stem for w in d.windows["plain"]] == ["plain_r1"]
