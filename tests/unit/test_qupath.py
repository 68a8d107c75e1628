"""Tests of histoflow.qupath: instance labels -> QuPath GeoJSON -> rasterised back."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from histoflow.io import InputError
from histoflow.qupath import (
    SCRIBBLE_CLASSES,
    geometry_mask,
    instances_to_geojson,
    iter_features,
    rasterize_annotations,
    read_annotations,
)
from histoflow.synthetic.fibres import make_fibre_image


@pytest.fixture(scope="module")
def fibres() -> np.ndarray:
    return make_fibre_image(5)[1]


@pytest.fixture()
def shapes() -> np.ndarray:
    """Hand-made instances: hole, two-piece object, diagonal touch, border object, single pixel."""
    lab = np.zeros((60, 70), np.int32)
    lab[5:30, 5:30] = 1
    lab[12:20, 12:20] = 0  # hole
    lab[35:40, 5:10] = 2
    lab[45:50, 15:20] = 2  # second piece of object 2
    lab[40, 40] = lab[41, 41] = lab[42, 42] = 3  # diagonal chain (8-connected)
    lab[0:10, 60:70] = 4  # touches the image border
    lab[55, 55] = 5
    yy, xx = np.mgrid[:60, :70]
    lab[(yy - 45) ** 2 + (xx - 50) ** 2 <= 36] = 6
    return lab


def _write(tmp_path, fc: dict, name: str = "a.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps(fc))
    return path


def _feature(geometry: dict, cls: str | None = "Foreground", **props) -> dict:
    properties = {"objectType": "annotation", **props}
    if cls is not None:
        properties["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def test_round_trip_fibres(tmp_path, fibres: np.ndarray) -> None:
    path = tmp_path / "fibres.geojson"
    n = instances_to_geojson(fibres, path)
    ids = np.unique(fibres[fibres > 0])
    assert n == ids.size
    data = json.loads(path.read_text())  # valid JSON
    assert data["type"] == "FeatureCollection" and len(data["features"]) == ids.size
    for feature in data["features"]:
        props = feature["properties"]
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "Nucleus"
        assert len(props["classification"]["color"]) == 3 and props["measurements"] == {}
        assert "plane" not in feature["geometry"] and "plane" not in props
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        k = int(props["metadata"]["label"])
        mask, truth = geometry_mask(feature["geometry"], fibres.shape), fibres == k
        assert (mask & truth).sum() / (mask | truth).sum() > 0.9
        assert np.array_equal(mask, truth)  # lossless simplification: exactly the object
    filled = rasterize_annotations(path, fibres.shape, {"nucleus": 7})
    assert np.array_equal(filled, np.where(fibres > 0, 7, 0))


def test_simplified_polygons_still_match(tmp_path, fibres: np.ndarray) -> None:
    feats = list(iter_features(fibres, tolerance=0.5))
    plain = list(iter_features(fibres))
    assert sum(len(f["geometry"]["coordinates"][0]) for f in feats) < sum(
        len(f["geometry"]["coordinates"][0]) for f in plain
    )
    for f in feats:
        k = int(f["properties"]["metadata"]["label"])
        truth = fibres == k
        if truth.sum() >= 20:
            mask = geometry_mask(f["geometry"], fibres.shape)
            assert (mask & truth).sum() / (mask | truth).sum() > 0.9


def test_holes_multipolygons_and_small_objects(shapes: np.ndarray) -> None:
    feats = {int(f["properties"]["metadata"]["label"]): f for f in iter_features(shapes)}
    assert sorted(feats) == [1, 2, 3, 4, 5, 6]
    assert feats[1]["geometry"]["type"] == "Polygon" and len(feats[1]["geometry"]["coordinates"]) == 2
    assert feats[2]["geometry"]["type"] == "MultiPolygon" and len(feats[2]["geometry"]["coordinates"]) == 2
    assert feats[3]["geometry"]["type"] == "Polygon"  # a diagonal chain is one 8-connected object
    for k, f in feats.items():
        assert np.array_equal(geometry_mask(f["geometry"], shapes.shape), shapes == k), k
    # rings: exterior counter-clockwise in (x, y) numbers, holes clockwise
    ext, hole = (np.array(r) for r in feats[1]["geometry"]["coordinates"])

    def area(r: np.ndarray) -> float:
        return 0.5 * float(np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[1:, 0], r[:-1, 1]))

    assert area(ext) > 0 > area(hole)
    no_holes = next(iter_features(shapes == 1, holes=False))
    assert len(no_holes["geometry"]["coordinates"]) == 1


def test_measurements_plane_offset_and_options(tmp_path, shapes: np.ndarray) -> None:
    meas = {1: {"Area": 561.0, "Eccentricity": 0.1, "bad": float("nan")}, 6: {"Area": 113}}
    path = tmp_path / "m.geojson"
    instances_to_geojson(
        shapes, path, classification="Tumor", object_type="annotation", measurements=meas, z=3
    )
    feats = {int(f["properties"]["metadata"]["label"]): f for f in read_annotations(path)}
    assert feats[1]["properties"]["measurements"] == {"Area": 561.0, "Eccentricity": 0.1}
    assert feats[6]["properties"]["measurements"] == {"Area": 113.0}
    assert feats[2]["properties"]["measurements"] == {}
    assert feats[1]["properties"]["objectType"] == "annotation"
    assert feats[1]["properties"]["classification"]["name"] == "Tumor"
    for f in feats.values():
        assert f["geometry"]["plane"] == f["properties"]["plane"] == {"c": -1, "z": 3, "t": 0}
    # offset (x, y) shifts every coordinate
    a = next(iter_features(shapes == 1))
    b = next(iter_features(shapes == 1, offset=(100, 50.5)))
    ra, rb = np.array(a["geometry"]["coordinates"][0]), np.array(b["geometry"]["coordinates"][0])
    assert np.allclose(rb - ra, [100, 50.5])
    with pytest.raises(ValueError, match="tolerance"):
        next(iter_features(shapes, tolerance=2))


def test_writer_streams_and_is_atomic(tmp_path, shapes: np.ndarray) -> None:
    path = tmp_path / "s.geojson"
    n = instances_to_geojson(shapes, path)
    lines = path.read_text().splitlines()
    assert len(lines) == n + 2  # header, one feature per line, footer
    assert lines[0].startswith('{"type": "FeatureCollection"')
    # a failure after some features were written leaves the old file untouched and no temp file
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not a number"):
        instances_to_geojson(shapes, path, measurements={6: {"Area": "big"}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.geojson"]
    assert instances_to_geojson(np.zeros((5, 5), int), tmp_path / "empty.geojson") == 0
    assert json.loads((tmp_path / "empty.geojson").read_text())["features"] == []


def test_lines_points_and_polygons_rasterized(tmp_path) -> None:
    fc = {
        "type": "FeatureCollection",
        "features": [
            _feature({"type": "LineString", "coordinates": [[10.5, 20.5], [40.5, 20.5]]}, "fg"),
            _feature({"type": "MultiLineString", "coordinates": [[[50.5, 5.5], [50.5, 30.5]]]}, "BACKGROUND"),
            _feature(
                {"type": "Polygon", "coordinates": [[[10, 40], [20, 40], [20, 50], [10, 50], [10, 40]]]}, "fg"
            ),
            _feature({"type": "Point", "coordinates": [60.5, 50.5]}, "bg"),
        ],
    }
    path = _write(tmp_path, fc)
    out = rasterize_annotations(path, (60, 70), SCRIBBLE_CLASSES, width=3)
    assert out.dtype == np.int32
    assert np.flatnonzero(out[:, 25] == 1).tolist() == [19, 20, 21]  # horizontal line, 3 px thick
    assert np.flatnonzero(out[15, :] == 2).tolist() == [49, 50, 51]  # vertical line, 3 px thick
    assert (out[40:50, 10:20] == 1).all() and (out == 1).sum() == 3 * 33 + 100  # filled 10 x 10
    assert (out[49:52, 59:62] == 2).all()
    for width in (1, 2, 5):
        m = geometry_mask(fc["features"][0]["geometry"], (60, 70), width=width)
        assert m[:, 25].sum() == width
    diag = geometry_mask({"type": "LineString", "coordinates": [[5.5, 5.5], [25.5, 25.5]]}, (40, 40), width=3)
    assert diag[15, 15] and diag[14, 16] and not diag[10, 20]


def test_plane_handling_3d(tmp_path) -> None:
    line = {"type": "LineString", "coordinates": [[2.5, 2.5], [8.5, 2.5]]}
    fc = {
        "type": "FeatureCollection",
        "features": [
            _feature({**line, "plane": {"c": -1, "z": 2, "t": 0}}),  # QuPath: plane in the geometry
            {
                **_feature(line, "Background"),
                "properties": {
                    **_feature(line, "Background")["properties"],
                    "plane": {"c": -1, "z": 4, "t": 0},
                },
            },
            _feature(line, "fg", z=1),  # fallback: properties.z
        ],
    }
    out = rasterize_annotations(_write(tmp_path, fc), (5, 12, 12), SCRIBBLE_CLASSES)
    per_slice = [set(np.unique(out[z]).tolist()) for z in range(5)]
    assert per_slice == [{0}, {0, 1}, {0, 1}, {0}, {0, 2}]
    # in 2-D the plane is ignored
    assert set(np.unique(rasterize_annotations(_write(tmp_path, fc), (12, 12), SCRIBBLE_CLASSES))) == {0, 1}
    no_z = {"type": "FeatureCollection", "features": [_feature(line)]}
    with pytest.raises(InputError, match=r"noz\.geojson.*no z plane"):
        rasterize_annotations(_write(tmp_path, no_z, "noz.geojson"), (5, 12, 12), SCRIBBLE_CLASSES)
    far = {"type": "FeatureCollection", "features": [_feature(line, z=9)]}
    with pytest.raises(InputError, match="outside"):
        rasterize_annotations(_write(tmp_path, far, "far.geojson"), (5, 12, 12), SCRIBBLE_CLASSES)


def test_unknown_classes_are_ignored_with_warning(tmp_path, caplog) -> None:
    line = {"type": "LineString", "coordinates": [[2.5, 2.5], [8.5, 2.5]]}
    fc = [
        _feature(line, "Stroma"),
        _feature(line, None),
        _feature(line, "foreGROUND"),
        {
            "type": "Feature",
            "geometry": line,
            "properties": {"classification": {"names": ["Tumor", "Positive"]}},
        },
    ]
    path = _write(tmp_path, fc)  # QuPath's "array of features" export
    with caplog.at_level(logging.WARNING, logger="histoflow.qupath"):
        out = rasterize_annotations(path, (12, 12), {"Foreground": 1})
    assert (out == 1).sum() > 0
    text = caplog.text
    assert "Stroma" in text and "<unclassified>" in text and "Tumor: Positive" in text and "ignored 3" in text


def test_bad_files(tmp_path) -> None:
    with pytest.raises(InputError, match="missing.geojson"):
        read_annotations(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.geojson.*not valid JSON"):
        read_annotations(bad)
    with pytest.raises(InputError, match="FeatureCollection"):
        read_annotations(_write(tmp_path, {"type": "Polygon", "coordinates": []}, "geom.geojson"))
    with pytest.raises(InputError, match="geometry"):
        read_annotations(
            _write(
                tmp_path,
                {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": 3}]},
                "g.geojson",
            )
        )
    broken = {
        "type": "FeatureCollection",
        "features": [_feature({"type": "LineString", "coordinates": [[1, "a"]]})],
    }
    with pytest.raises(InputError, match=r"broken\.geojson.*feature 0"):
        rasterize_annotations(_write(tmp_path, broken, "broken.geojson"), (5, 5), SCRIBBLE_CLASSES)
    odd = {"type": "FeatureCollection", "features": [_feature({"type": "Circle", "coordinates": [1, 1]})]}
    with pytest.raises(InputError, match="Circle"):
        rasterize_annotations(_write(tmp_path, odd, "odd.geojson"), (5, 5), SCRIBBLE_CLASSES)
    with pytest.raises(ValueError):
        rasterize_annotations(_write(tmp_path, odd, "odd.geojson"), (5, 5), {"fg": "one"})
