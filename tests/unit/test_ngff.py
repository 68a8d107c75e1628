"""Slide stores as OME-NGFF images (histoflow.wsi.ngff): levels, metadata, and what NGFF readers see.

The stores are read back with ``ome-zarr`` (the reader napari's plugin uses) and validated with
``ome-zarr-models`` (the pydantic models of the specification), both in the ``dev`` extra.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from histoflow import wsi
from histoflow.wsi import ngff


def _prob_store(path, mpp=0.5, min_size=200):
    """A (2, 700, 500) probability store: levels 700x500, 350x250, 175x125 (halved until <= 200 px)."""
    group = wsi.open_group(path, "w")
    prob = np.random.default_rng(0).random((2, 700, 500)).astype(np.float32)
    wsi.create_array(group, ngff.LEVEL0, prob.shape, (1, 512, 512), np.float32, ("c", "y", "x"))[:] = prob
    levels = ngff.write_ngff(group, kind="prob", mpp=mpp, name="case1 probability",
                             channel_names=["probability 0", "probability 1"], min_size=min_size)
    return prob, levels


def _label_store(path, source=None):
    group = wsi.open_group(path, "w")
    labels = np.zeros((700, 500), np.uint32)
    labels[100:201, 51:150] = 7  # odd bounds: the top-left sample keeps it on even rows/columns
    labels[400:402, 300:302] = 9  # 2x2 at rows/columns divisible by 4: one pixel at levels 1 and 2
    wsi.create_array(group, ngff.LEVEL0, labels.shape, (512, 512), np.uint32, ("y", "x"))[:] = labels
    levels = ngff.write_ngff(group, kind="labels", mpp=0.5, name="case1 instances", source=source, min_size=200)
    return labels, levels


def test_levels_halve_by_mean_for_probabilities_and_by_sampling_for_labels(tmp_path):
    prob, levels = _prob_store(tmp_path / "p.zarr")
    assert [a.shape for a in levels] == [(2, 700, 500), (2, 350, 250), (2, 175, 125)]
    p = prob
    mean = (p[:, 0::2, 0::2] + p[:, 1::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 1::2]) * np.float32(0.25)
    np.testing.assert_array_equal(np.asarray(levels[1][:]), mean)
    labels, lv = _label_store(tmp_path / "l.zarr")
    np.testing.assert_array_equal(np.asarray(lv[1][:]), labels[::2, ::2])
    np.testing.assert_array_equal(np.asarray(lv[2][:]), labels[::4, ::4])
    assert lv[1].dtype == np.uint32 and set(np.unique(lv[2][:])) == {0, 7, 9}  # ids stay ids: no 3.5


def test_ome_zarr_reads_the_probability_store_as_a_multiscale_image(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    _prob_store(tmp_path / "p.zarr", mpp=0.25)
    (node,) = list(Reader(parse_url(str(tmp_path / "p.zarr")))())
    assert any(isinstance(s, Multiscales) for s in node.specs)
    assert [d.shape for d in node.data] == [(2, 700, 500), (2, 350, 250), (2, 175, 125)]
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert node.metadata["axes"][1]["unit"] == "micrometer"
    # level n's pixels are 2**n times level 0's 0.25 µm; channels are not scaled
    assert node.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": [1.0, s, s]}]
                                                          for s in (0.25, 0.5, 1.0)]
    assert node.metadata["channel_names"] == ["probability 0", "probability 1"]
    assert sorted(p.name for p in (tmp_path / "p.zarr").iterdir()) == ["0", "1", "2", "zarr.json"]


def test_the_label_store_is_an_ngff_label_image_of_the_probability_image(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    _prob_store(tmp_path / "p.zarr")
    labels, _ = _label_store(tmp_path / "l.zarr", source="../p.zarr")
    nodes = list(Reader(parse_url(str(tmp_path / "l.zarr")))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    np.testing.assert_array_equal(np.asarray(label.data[0]), labels)
    assert [a["name"] for a in label.metadata["axes"]] == ["y", "x"]
    # the source image is found and opened beside the labels, as napari shows them
    assert any(n.data[0].shape == (2, 700, 500) for n in nodes if n is not label)


def test_stores_validate_against_the_ngff_models(tmp_path):
    import zarr
    from ome_zarr_models import open_ome_zarr

    _prob_store(tmp_path / "p.zarr")
    _label_store(tmp_path / "l.zarr", source="../p.zarr")
    assert type(open_ome_zarr(zarr.open_group(str(tmp_path / "p.zarr"), mode="r"))).__name__ == "Image"
    assert type(open_ome_zarr(zarr.open_group(str(tmp_path / "l.zarr"), mode="r"))).__name__ == "ImageLabel"


def test_ngff_0_4_metadata_for_zarr_2_stores():
    """Zarr 2 stores carry NGFF 0.4: the metadata at the top level, versions inside each part."""
    attrs = ngff.ngff_attrs(2, kind="labels", mpp=None, name="x", source="../p.zarr", major=2)
    assert attrs["multiscales"][0]["version"] == "0.4" and attrs["image-label"]["version"] == "0.4"
    assert attrs["image-label"]["source"] == {"image": "../p.zarr"}
    # without a pixel size the scale is in pixels and the axes carry no unit
    assert attrs["multiscales"][0]["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]] == [[1.0, 1.0],
                                                                                                       [2.0, 2.0]]
    v05 = ngff.ngff_attrs(2, kind="prob", mpp=0.5, name="x", major=3)
    assert set(v05) == {"ome"} and v05["ome"]["version"] == "0.5" and "omero" not in v05["ome"]


def test_the_tiff_pyramid_reuses_the_store_levels(tmp_path):
    prob, levels = _prob_store(tmp_path / "p.zarr")
    a, b = tmp_path / "from_levels.ome.tif", tmp_path / "built.ome.tif"
    assert wsi.write_ome_pyramid(levels[0], a, mpp=0.5, min_size=200, levels=levels) == [(700, 500), (350, 250),
                                                                                         (175, 125)]
    wsi.write_ome_pyramid(prob, b, mpp=0.5, min_size=200)
    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        for la, lb in zip(ta.series[0].levels, tb.series[0].levels, strict=True):
            np.testing.assert_array_equal(la.asarray(), lb.asarray())
    with pytest.raises(ValueError, match="not the halvings"):
        wsi.write_ome_pyramid(levels[0], a, mpp=0.5, min_size=100, levels=levels)


def test_a_rule_names_a_store_by_its_root_file():
    from pathlib import Path

    assert wsi.root_file() == "zarr.json"  # zarr 3, as pyproject asks on Python >= 3.11
    assert wsi.store_of("results/slides/s/m/labels.zarr/zarr.json") == Path("results/slides/s/m/labels.zarr")
    with pytest.raises(ValueError, match="not a zarr store's root file"):
        wsi.store_of("results/slides/s/m/labels.zarr")
