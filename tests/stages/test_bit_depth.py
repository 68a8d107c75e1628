"""12-bit (and 10-, 14-bit) camera data stored in uint16: read with its significant bits, not as nearly black
16-bit images; the depth is one per dataset, logged, written beside the normalized images, and declarable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoflow.io import write_image, write_json
from histoflow.stages.stain import dataset_bit_depth, run_normalize
from histoflow.stain import to_rgb_uint8
from histoflow.stain.colour import bit_depth_of


def test_bit_depth_by_hand():
    assert [bit_depth_of(v) for v in (255, 256, 1023, 1024, 4095, 4096, 16383, 65535)] == [8, 10, 10, 12, 12, 14,
                                                                                          14, 16]
    twelve = np.array([[0, 2048, 4095]], np.uint16)
    assert to_rgb_uint8(twelve, bit_depth=12)[0, :, 0].tolist() == [0, 128, 255]  # 2048 / 4095 * 255 = 127.5
    assert to_rgb_uint8(twelve)[0, :, 0].tolist() == [0, 8, 16]  # read as 16-bit: nearly black
    with pytest.raises(ValueError, match="do not fit bit_depth 10"):
        to_rgb_uint8(twelve, bit_depth=10)


def _images(tmp_path, top: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    out = {}
    for i, hi in enumerate((top // 2, top)):  # one dim and one bright image: one depth for both
        img = rng.integers(0, hi + 1, (16, 16, 3)).astype(np.uint16)
        img[0, 0] = hi
        write_image(tmp_path / f"im{i}.tif", img)
        out[f"im{i}"] = str(tmp_path / f"im{i}.tif")
    return out


def test_a_12_bit_dataset_is_normalized_from_its_own_range(tmp_path, caplog):
    images = _images(tmp_path, 4095)
    assert dataset_bit_depth(images)["bit_depth"] == 12 and dataset_bit_depth(images, 16)["bit_depth"] == 16
    write_json(tmp_path / "stain.json", {"method": "none"})
    with caplog.at_level("WARNING"):
        run_normalize(images, tmp_path / "stain.json", tmp_path / "norm")
    info = json.loads((tmp_path / "norm" / "bit_depth.json").read_text())
    assert info == {"dtype": "uint16", "max": 4095, "bit_depth": 12, "declared": "auto"}
    assert "read as 12-bit" in caplog.text
    from histoflow.io import read_rgb

    assert read_rgb(tmp_path / "norm" / "im1.png").max() == 255  # not 16 of 255
    eight = {"a": str(tmp_path / "a.png")}
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert dataset_bit_depth(eight)["bit_depth"] is None  # 8-bit images: nothing to decide


def test_the_report_shows_each_datasets_bit_depth(tmp_path):
    from histoflow.stages.report import bit_depth_rows

    write_json(tmp_path / "normalized" / "cam12" / "bit_depth.json",
               {"dtype": "uint16", "max": 4000, "bit_depth": 12, "declared": "auto"})
    write_json(tmp_path / "normalized" / "cam10" / "bit_depth.json",
               {"dtype": "uint16", "max": None, "bit_depth": 10, "declared": 10})
    (tmp_path / "normalized" / "rgb8").mkdir()  # 8-bit images: no file, no row
    assert bit_depth_rows(str(tmp_path)) == [
        ["cam10", "uint16", "10-bit", "0 … 1023 → 0 … 255", "declared (datasets.<name>.bit_depth)"],
        ["cam12", "uint16", "12-bit", "0 … 4095 → 0 … 255", "auto: brightest value 4000"],
    ]


def test_a_16_bit_colour_tiff_is_one_rgb_page(tmp_path):
    """write_image stores (H, W, 3) uint16 as one RGB page, as cameras do, so the header check at parse time
    (io.image_size) sees H x W and not a stack of H pages of W x 3."""
    from histoflow.io import image_size, read_image

    img = np.random.default_rng(0).integers(0, 4096, (40, 30, 3)).astype(np.uint16)
    write_image(tmp_path / "cam.tif", img)
    assert image_size(tmp_path / "cam.tif") == (40, 30)
    np.testing.assert_array_equal(read_image(tmp_path / "cam.tif"), img)
