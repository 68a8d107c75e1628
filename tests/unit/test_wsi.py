"""Whole-slide stage (histoflow.wsi): slide reading, tissue detection, streaming inference against
whole-image inference, region split/merge, pyramidal OME-TIFF and GeoJSON outputs, read back."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from histoflow import wsi
from histoflow.io import InputError, write_image
from histoflow.models import build_model
from histoflow.synthetic.slides import write_synthetic_slide
from histoflow.tiling import predict_tiled
from support import GEOJSON_SCHEMA

MPP = 0.5


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """A 600 x 440 synthetic H&E slide, JPEG tiles, 3 levels (downsample 1, 2, 4), 0.5 µm/px."""
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    return write_synthetic_slide(path, 600, 440, mpp=MPP, levels=3, tile=128, texture_size=128, n_textures=2)


@pytest.fixture(scope="module")
def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", in_channels=3, out_channels=1, base_width=4, depth=2).eval()


def _plus_one(t: torch.Tensor) -> torch.Tensor:
    return t + 1


def _read_prob(path, key: str = "prob") -> np.ndarray:
    """A region store's ``prob`` (a merged store's level 0: ``key=wsi.LEVEL0``)."""
    return np.asarray(wsi.open_group(path)[key][:])


def _whole(slide: wsi.Slide) -> np.ndarray:
    return slide.read_region(0, 0, *slide.shape)


def _as_input(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------------------------------------
# reading


def test_tifffile_backend_levels_mpp_and_pixels(slide_path):
    s = wsi.open_slide(slide_path, backend="tifffile")
    assert s.shape == (600, 440) and s.mpp == pytest.approx(MPP) and s.level == 0
    assert [(lv.height, lv.width, lv.downsample) for lv in s.levels] == [(600, 440, 1), (300, 220, 2), (150, 110, 4)]
    with tifffile.TiffFile(slide_path) as tf:
        level1 = tf.series[0].levels[1].asarray()
    np.testing.assert_array_equal(s.backend.read(1, 10, 20, 50, 60), level1[10:60, 20:80])
    region = s.read_region(100, 50, 64, 80)
    assert region.dtype == np.uint8 and region.shape == (64, 80, 3)


def test_openslide_backend_agrees_with_tifffile(slide_path):
    pytest.importorskip("openslide")
    a = wsi.open_slide(slide_path, backend="tifffile", mpp=1.0)
    b = wsi.open_slide(slide_path, backend="openslide", mpp=1.0)
    assert b.backend.name == "openslide" and b.mpp == pytest.approx(1.0)
    assert [lv.height for lv in b.levels] == [600, 300, 150]
    np.testing.assert_array_equal(_whole(a), _whole(b))


@pytest.mark.parametrize(
    ("mpp", "level", "factor", "shape"),
    [(0.5, 0, 1.0, (600, 440)), (0.51, 0, 1.0, (600, 440)), (1.0, 1, 1.0, (300, 220)),
     (1.5, 1, 1.5, (200, 146)), (2.0, 2, 1.0, (150, 110)), (3.0, 2, 1.5, (100, 73))],
)
def test_resolution_by_mpp_picks_the_coarsest_level_at_or_finer(slide_path, mpp, level, factor, shape):
    s = wsi.open_slide(slide_path, mpp=mpp)
    assert (s.level, s.factor, s.shape) == (level, factor, shape)
    assert s.mpp == pytest.approx(MPP * 2**level * factor)
    assert s.downsample == pytest.approx(2**level * factor)


def test_resolution_by_level(slide_path):
    s = wsi.open_slide(slide_path, level=2)
    assert s.shape == (150, 110) and s.mpp == pytest.approx(2.0)


def test_area_resampling_is_the_block_mean_and_tiles_agree(slide_path):
    s = wsi.open_slide(slide_path)
    half = wsi.Slide(s.backend, 0, 2.0)  # level 0 averaged 2x2 (the file's level 1 is JPEG-decoded)
    full = _whole(s).astype(np.float32)
    mean = (full[0::2, 0::2] + full[1::2, 0::2] + full[0::2, 1::2] + full[1::2, 1::2]) / 4
    np.testing.assert_array_equal(_whole(half), np.rint(mean).astype(np.uint8))
    odd = wsi.open_slide(slide_path, mpp=1.5)  # non-integer factor: pieces equal the whole
    whole = _whole(odd)
    pieces = np.concatenate([np.concatenate([odd.read_region(y, x, 50, 73) for x in (0, 73)], 1)
                             for y in range(0, 200, 50)])
    np.testing.assert_array_equal(pieces, whole)


def test_regions_outside_the_slide_are_white(slide_path):
    s = wsi.open_slide(slide_path)
    r = s.read_region(-10, 430, 30, 20)
    assert (r[:10] == 255).all() and (r[:, 10:] == 255).all()
    np.testing.assert_array_equal(r[10:, :10], s.read_region(0, 430, 20, 10))


def test_thumbnail_is_read_from_a_coarse_level(slide_path):
    s = wsi.open_slide(slide_path)
    thumb, scale = s.thumbnail(100)
    assert max(thumb.shape[:2]) <= 100 and scale == pytest.approx(6.0)  # level 2 (x4) averaged x1.5
    assert thumb.shape[:2] == (100, 73)


def test_slide_pickles_without_its_file_handle(slide_path):
    s = wsi.open_slide(slide_path)
    before = s.read_region(5, 5, 10, 10)
    clone = pickle.loads(pickle.dumps(s))
    assert clone.backend._handle is None
    np.testing.assert_array_equal(clone.read_region(5, 5, 10, 10), before)


def test_plain_image_and_array_slides(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (37, 41, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", img)
    s = wsi.open_slide(tmp_path / "a.png")
    assert s.backend.name == "image" and s.mpp is None
    np.testing.assert_array_equal(_whole(s), img)
    np.testing.assert_array_equal(_whole(wsi.Slide.from_array(img)), img)
    with pytest.raises(InputError, match="base_mpp"):
        wsi.open_slide(tmp_path / "a.png", mpp=1.0)
    s2 = wsi.open_slide(tmp_path / "a.png", mpp=0.5, base_mpp=0.25)
    assert s2.shape == (18, 20) and s2.mpp == pytest.approx(0.5)


def test_clear_errors(slide_path, tmp_path):
    with pytest.raises(InputError, match=r"nope\.svs: slide not found"):
        wsi.open_slide(tmp_path / "nope.svs")
    (tmp_path / "x.czi").write_bytes(b"0")
    with pytest.raises(InputError, match="unsupported slide format '.czi'"):
        wsi.open_slide(tmp_path / "x.czi")
    with pytest.raises(InputError, match=r"finer than the slide's full resolution \(0.5000"):
        wsi.open_slide(slide_path, mpp=0.25)
    with pytest.raises(InputError, match=r"level 3 does not exist; the slide has levels 0\.\.2"):
        wsi.open_slide(slide_path, level=3)
    with pytest.raises(ValueError, match="mpp or level, not both"):
        wsi.open_slide(slide_path, mpp=1.0, level=1)
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="bad.tif"):
        wsi.open_slide(tmp_path / "bad.tif", backend="tifffile")


def test_a_truncated_slide_names_the_file_and_the_fix(slide_path, tmp_path):
    """Headers intact, tiles cut off (an interrupted copy): the slide opens, decoding its pixels fails clearly."""
    data = Path(slide_path).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    try:
        slide = wsi.open_slide(cut, backend="tifffile")
    except InputError as exc:  # the cut reached the headers: also a clear error
        assert "cut.tif" in str(exc)
        return
    with pytest.raises(InputError, match=r"cut.tif: cannot decode level .* damaged or truncated"):
        slide.read_region(0, 0, slide.shape[0], slide.shape[1])


def test_missing_openslide_is_a_clear_error(slide_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    with pytest.raises(InputError, match="pip install openslide-python openslide-bin") as err:
        wsi.open_slide(slide_path, backend="openslide")
    assert "slide.tif" in str(err.value)


def test_find_slides(tmp_path, slide_path):
    (tmp_path / "d").mkdir()
    for name in ("a.svs", "b.ome.tif", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    assert wsi.find_slides(["d"], tmp_path) == {"a": tmp_path / "d" / "a.svs", "b": tmp_path / "d" / "b.ome.tif"}
    assert set(wsi.find_slides(["d/*.svs"], tmp_path)) == {"a"}
    assert wsi.find_slides({"s1": "d/a.svs"}, tmp_path) == {"s1": tmp_path / "d" / "a.svs"}
    with pytest.raises(InputError, match="slides.images.s2"):
        wsi.find_slides({"s2": "d/zzz.svs"}, tmp_path)
    (tmp_path / "d" / "x.czi").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported slide format '.czi'"):
        wsi.find_slides({"x": "d/x.czi"}, tmp_path)
    with pytest.raises(InputError, match="no slide matches"):
        wsi.find_slides(["d/*.ndpi"], tmp_path)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.tif").write_bytes(b"x")
    with pytest.raises(InputError, match="two slides are named 'a'"):
        wsi.find_slides(["d", "e"], tmp_path)


# ---------------------------------------------------------------------------------------------
# tissue


def test_tissue_detection_on_the_synthetic_slide(slide_path):
    s = wsi.open_slide(slide_path)
    tissue, thumb = wsi.tissue_mask(s, thumbnail_size=150)
    truth = np.abs(thumb.astype(int) - 242).max(axis=2) > 12  # glass is (242, 242, 242) + JPEG noise
    assert tissue.mask.shape == thumb.shape[:2]
    agree = (tissue.mask == truth).mean()
    assert agree > 0.97 and 0.2 < tissue.mask.mean() < 0.8


@pytest.mark.parametrize("method", ["saturation", "od", "both"])
def test_tissue_detection_degenerate_images(method):
    glass = np.full((64, 64, 3), 240, np.uint8)
    glass += np.random.default_rng(0).integers(0, 3, glass.shape, dtype=np.uint8)  # sensor noise
    assert not wsi.detect_tissue(glass, method).any()
    tissue = np.zeros((64, 64, 3), np.uint8)
    tissue[...] = (180, 90, 160)
    tissue[::2] = (150, 60, 140)
    assert wsi.detect_tissue(tissue, method).all()


def test_tissue_cleanup_fills_holes_and_drops_specks():
    img = np.full((80, 80, 3), 245, np.uint8)
    img[10:60, 10:60] = (170, 80, 150)
    img[30:34, 30:34] = 245  # a 16-pixel hole
    img[70:72, 70:72] = (170, 80, 150)  # a 4-pixel speck
    mask = wsi.detect_tissue(img, "saturation", closing=0, min_object=10, max_hole=20)
    assert mask[30:34, 30:34].all() and not mask[70:72, 70:72].any()
    assert mask.sum() == 50 * 50


def test_tissue_fraction_hand_values():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    t = wsi.TissueMask(mask, 10.0)
    assert t.fraction(0, 0, 20, 20) == 1.0
    assert t.fraction(0, 0, 40, 40) == 0.25
    assert t.fraction(15, 15, 10, 10) == 0.25  # touches 4 mask pixels, one is tissue
    assert t.fraction(30, 30, 10, 10) == 0.0
    assert t.fraction(35, 35, 100, 100) == 0.0  # clipped to the mask


# ---------------------------------------------------------------------------------------------
# streaming inference == whole-image inference


@pytest.mark.parametrize("size", [(37, 53), (301, 257), (100, 7), (64, 64)])
@pytest.mark.parametrize(("tile", "overlap", "batch"), [(32, 8, 1), (48, 16, 5), (64, 0, 2), (40, 30, 64)])
def test_exact_predictor_equals_predict_tiled_bitwise(tmp_path, size, tile, overlap, batch):
    rng = np.random.default_rng(sum(size) + tile)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    x = _as_input(img)
    wsi.predict_slide(img, _plus_one, tmp_path / "p.zarr", tile=tile, overlap=overlap, batch_size=batch,
                      out_channels=3, progress=False)
    out = _read_prob(tmp_path / "p.zarr")
    ref = predict_tiled(_plus_one, x, tile=tile, overlap=overlap, batch_size=3)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(out, x.numpy() + 1, atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "cosine", "constant"])
@pytest.mark.parametrize(("context", "size"), [(8, (77, 90)), (12, (20, 25)), (4, (130, 61))])
def test_context_and_blend_modes_equal_predict_tiled(tmp_path, blend, context, size):
    img = np.random.default_rng(context).integers(0, 256, (*size, 3), dtype=np.uint8)
    c = context

    def crop_up(t: torch.Tensor) -> torch.Tensor:  # reads the pixel one row above: true neighbourhood
        return t[:, :, c - 1 : -c - 1, c:-c] * 2

    wsi.predict_slide(img, crop_up, tmp_path / "p.zarr", tile=32, overlap=8, batch_size=3, blend=blend,
                      context=c, out_channels=3, progress=False)
    ref = predict_tiled(crop_up, _as_input(img), tile=32, overlap=8, blend=blend, context=c)
    np.testing.assert_array_equal(_read_prob(tmp_path / "p.zarr"), ref)


@pytest.mark.parametrize(("tile", "overlap"), [(96, 24), (64, 40), (128, 16)])
def test_conv_model_on_the_slide_equals_predict_tiled(tmp_path, slide_path, tiny_unet, tile, overlap):
    s = wsi.open_slide(slide_path, mpp=1.5)  # 200 x 146, resampled: odd sizes

    def f(t):
        return torch.sigmoid(tiny_unet(t))

    wsi.predict_slide(s, f, tmp_path / "p.zarr", tile=tile, overlap=overlap, batch_size=1, progress=False)
    wsi.predict_slide(s, f, tmp_path / "q.zarr", tile=tile, overlap=overlap, batch_size=4, progress=False)
    ref = predict_tiled(f, _as_input(_whole(s)), tile=tile, overlap=overlap, batch_size=1)
    np.testing.assert_array_equal(_read_prob(tmp_path / "p.zarr"), ref)  # same forward passes: bit for bit
    # other batches: convolution kernels may round differently by batch size (1 ulp)
    np.testing.assert_allclose(_read_prob(tmp_path / "q.zarr"), ref, rtol=0, atol=1e-6)


def test_single_tile_equals_the_direct_forward(tmp_path, tiny_unet):
    img = np.random.default_rng(3).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    with torch.no_grad():
        direct = tiny_unet(_as_input(img)[None])[0].numpy()
    wsi.predict_slide(img, tiny_unet, tmp_path / "p.zarr", tile=30, overlap=8, progress=False, precision="fp32")
    np.testing.assert_allclose(_read_prob(tmp_path / "p.zarr"), direct, atol=1e-6)


def test_matches_monai_sliding_window_for_an_exact_model(tmp_path):
    inferers = pytest.importorskip("monai.inferers")
    img = np.random.default_rng(5).integers(0, 256, (131, 97, 3), dtype=np.uint8)
    x = _as_input(img)
    ref = inferers.sliding_window_inference(x[None], (48, 48), 4, _plus_one, overlap=0.25, mode="gaussian")[0]
    wsi.predict_slide(img, _plus_one, tmp_path / "p.zarr", tile=48, overlap=12, out_channels=3, progress=False)
    np.testing.assert_allclose(_read_prob(tmp_path / "p.zarr"), ref.numpy(), atol=1e-5)


def test_background_tiles_are_skipped_and_get_zero(tmp_path, slide_path):
    s = wsi.open_slide(slide_path, mpp=1.0)
    tissue, _ = wsi.tissue_mask(s, thumbnail_size=150)
    seen = []

    def spy(t):
        seen.append(t.shape[0])
        return t[:, :1] + 1

    stats = wsi.predict_slide(s, spy, tmp_path / "p.zarr", tile=48, overlap=12, tissue=tissue,
                              min_tissue_fraction=0.05, progress=False)
    grid = wsi.plan_grid(s.shape, 48, 12, tissue, 0.05)
    assert stats["tiles"] == grid.n_tiles == sum(seen) < grid.keep.size
    out = _read_prob(tmp_path / "p.zarr")[0]
    covered = np.zeros(s.shape, bool)
    for i, y in enumerate(grid.ys):
        for j, x in enumerate(grid.xs):
            covered[y : y + 48, x : x + 48] |= grid.keep[i, j]
    assert (out[~covered] == 0).all()
    np.testing.assert_allclose(out[covered], _as_input(_whole(s))[0].numpy()[covered] + 1, atol=1e-5)
    assert stats["pixels"] == covered.sum()


def test_a_slide_without_tissue_runs_no_tile(tmp_path):
    img = np.full((300, 200, 3), 240, np.uint8)
    tissue = wsi.TissueMask(np.zeros((30, 20), bool), 10.0)
    stats = wsi.predict_slide(img, lambda t: 1 / 0, tmp_path / "p.zarr", tile=64, overlap=16, tissue=tissue,
                              progress=False)
    assert stats["tiles"] == 0 and stats["pixels"] == 0
    assert (_read_prob(tmp_path / "p.zarr") == 0).all()


def test_stain_normalized_tiles_equal_the_normalized_whole_image(tmp_path, slide_path):
    from histoflow.stain import get_normalizer

    s = wsi.open_slide(slide_path, mpp=1.0)
    whole = _whole(s)
    norm = get_normalizer("macenko").fit(np.ascontiguousarray(whole[::-1, ::-1]))
    thumb, _ = s.thumbnail(100)
    source = norm.fit_source(thumb)
    wsi.predict_slide(s, _plus_one, tmp_path / "p.zarr", tile=64, overlap=16, out_channels=3, normalizer=norm,
                      stain_source=source, progress=False)
    ref = predict_tiled(_plus_one, _as_input(norm.transform(whole, source_params=source)), tile=64, overlap=16)
    np.testing.assert_array_equal(_read_prob(tmp_path / "p.zarr"), ref)


def test_worker_processes_give_the_same_result(tmp_path, slide_path, tiny_unet):
    s = wsi.open_slide(slide_path, mpp=1.0)
    s.read_region(0, 0, 8, 8)  # a handle opened before the workers fork must not be shared

    def f(t):
        return torch.sigmoid(tiny_unet(t))

    wsi.predict_slide(s, f, tmp_path / "a.zarr", tile=64, overlap=16, batch_size=4, progress=False)
    wsi.predict_slide(s, f, tmp_path / "b.zarr", tile=64, overlap=16, batch_size=4, num_workers=2, progress=False)
    np.testing.assert_array_equal(_read_prob(tmp_path / "a.zarr"), _read_prob(tmp_path / "b.zarr"))


def test_store_layout_and_attributes(tmp_path):
    img = np.zeros((2500, 40, 3), np.uint8)  # taller than two chunks: rows are written chunk by chunk
    wsi.predict_slide(img, lambda t: t[:, :2] + 1, tmp_path / "p.zarr", tile=256, overlap=32, out_channels=2,
                      progress=False, attrs={"model": "m"})
    g = wsi.open_group(tmp_path / "p.zarr")
    assert g["prob"].shape == (2, 2500, 40) and g["prob"].chunks == (1, wsi.CHUNK, 40)
    assert g["prob"].dtype == np.float32
    assert (np.asarray(g["prob"][:]) == 1).all()
    attrs = dict(g.attrs)
    # 12 tiles = 1 + ceil(2244 / 224)
    assert attrs["model"] == "m" and attrs["rows"] == [0, 2500] and attrs["stats"]["tiles"] == 12


def test_limit_malloc_retention_runs():
    import platform
    import subprocess

    code = "from histoflow.wsi import limit_malloc_retention as f; print(f())"  # process-wide: not in this one
    env = {**os.environ, "PYTHONPATH": str(Path(wsi.__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env).stdout.strip()
    assert out == str(platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_wrong_output_shape_is_reported(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"expected \(B, 1, 32, 32\)"):
        wsi.predict_slide(img, lambda t: t, tmp_path / "p.zarr", tile=32, overlap=8, progress=False)


# ---------------------------------------------------------------------------------------------
# regions


@pytest.mark.parametrize(("height", "tile", "overlap"), [(600, 96, 24), (1000, 64, 40), (300, 100, 0), (50, 64, 8)])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_regions_cover_every_row_once_with_their_halo(height, tile, overlap, n):
    grid = wsi.plan_grid((height, 90), tile, overlap)
    regions = wsi.split_regions(grid, n)
    assert len(regions) == n and regions[0].rows[0] == 0 and regions[-1].rows[1] == height
    for a, b in zip(regions, regions[1:], strict=False):
        assert a.rows[1] == b.rows[0]
    for r in regions:
        # every tile row that touches the region's rows is run, and only those plus its own
        touching = [i for i, y in enumerate(grid.ys) if y < r.rows[1] and y + tile > r.rows[0]]
        if r.rows[1] > r.rows[0]:
            assert list(range(*r.tile_rows)) == touching


def test_regions_are_balanced_by_tissue_tiles():
    grid = wsi.plan_grid((1000, 500), 100, 0)
    keep = grid.keep.copy()
    keep[:5] = False  # tissue only in the lower half
    grid = wsi.TileGrid(grid.height, grid.width, grid.tile, grid.overlap, grid.ys, grid.xs, keep)
    regions = wsi.split_regions(grid, 2)
    assert regions[0].rows == (0, 700) and regions[1].rows == (700, 1000)


@pytest.mark.parametrize("n", [2, 3, 11])
def test_merged_regions_equal_the_single_job_exactly(tmp_path, slide_path, tiny_unet, n):
    s = wsi.open_slide(slide_path, mpp=1.0)
    tissue, _ = wsi.tissue_mask(s, thumbnail_size=150)
    grid = wsi.plan_grid(s.shape, 64, 24, tissue, 0.02)

    def f(t):
        return torch.sigmoid(tiny_unet(t))

    kw = {"tile": 64, "overlap": 24, "batch_size": 3, "grid": grid, "progress": False}
    wsi.predict_slide(s, f, tmp_path / "single.zarr", **kw)
    stores = []
    for r in wsi.split_regions(grid, n):
        stores.append(tmp_path / f"r{r.index}.zarr")
        wsi.predict_slide(s, f, stores[-1], region=r, **kw)
    wsi.merge_regions(stores[::-1], tmp_path / "merged.zarr")
    merged = _read_prob(tmp_path / "merged.zarr", wsi.LEVEL0)
    np.testing.assert_array_equal(merged, _read_prob(tmp_path / "single.zarr"))


def test_merge_rejects_gaps(tmp_path):
    img = np.zeros((300, 20, 3), np.uint8)
    grid = wsi.plan_grid((300, 20), 64, 16)
    regions = wsi.split_regions(grid, 3)
    for r in regions:
        wsi.predict_slide(img, lambda t: t[:, :1], tmp_path / f"r{r.index}.zarr", tile=64, overlap=16, region=r,
                          grid=grid, progress=False)
    with pytest.raises(ValueError, match="do not tile the rows"):
        wsi.merge_regions([tmp_path / "r0.zarr", tmp_path / "r2.zarr"], tmp_path / "m.zarr")


# ---------------------------------------------------------------------------------------------
# outputs: OME-TIFF pyramids and GeoJSON


def _ome_pixels(path) -> dict:
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome
        image = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
        return (image[0] if isinstance(image, list) else image)["Pixels"]


def test_probability_pyramid_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    prob = rng.random((1, 700, 500)).astype(np.float32)
    path = tmp_path / "p.ome.tif"
    shapes = wsi.write_ome_pyramid(prob[0], path, kind="prob", mpp=0.5, tile=128, min_size=200)
    assert shapes == [(700, 500), (350, 250), (175, 125)]
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        assert [lv.shape for lv in series.levels] == shapes and series.dtype == np.uint8
        assert tf.pages[0].is_tiled and tf.pages[0].tilewidth == 128
        level0, level1 = series.levels[0].asarray(), series.levels[1].asarray()
        assert tf.pages[0].resolution[0] == pytest.approx(2e4) and tf.pages[0].resolutionunit == 3
    np.testing.assert_array_equal(level0, np.rint(prob[0] * 255).astype(np.uint8))
    p = prob[0]
    mean = (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) * np.float32(0.25)
    np.testing.assert_array_equal(level1, np.rint(mean * 255).astype(np.uint8))
    pixels = _ome_pixels(path)
    assert float(pixels["PhysicalSizeX"]) == 0.5 and pixels["PhysicalSizeXUnit"] == "µm"
    assert (int(pixels["SizeX"]), int(pixels["SizeY"])) == (500, 700)


def test_probability_pyramid_opens_in_openslide(tmp_path):
    openslide = pytest.importorskip("openslide")
    prob = np.random.default_rng(1).random((300, 260)).astype(np.float32)
    path = tmp_path / "p.ome.tif"
    wsi.write_ome_pyramid(prob, path, mpp=0.25, tile=128, min_size=100)
    osr = openslide.OpenSlide(str(path))
    assert osr.dimensions == (260, 300)
    # OpenSlide sees level 0 only, not the SubIFD pyramid (3 levels here): what the README says it sees
    assert osr.level_count == 1
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    region = np.asarray(osr.read_region((10, 20), 0, (50, 40)))[..., 0]
    np.testing.assert_array_equal(region, np.rint(prob[20:60, 10:60] * 255).astype(np.uint8))


def test_label_and_multichannel_pyramids(tmp_path):
    labels = np.arange(300 * 200, dtype=np.uint32).reshape(300, 200)
    wsi.write_ome_pyramid(labels, tmp_path / "l.ome.tif", kind="labels", tile=64, min_size=80)
    with tifffile.TiffFile(tmp_path / "l.ome.tif") as tf:
        levels = [lv.asarray() for lv in tf.series[0].levels]
    assert levels[0].dtype == np.uint32
    np.testing.assert_array_equal(levels[0], labels)
    np.testing.assert_array_equal(levels[2], labels[::4, ::4])
    two = np.random.default_rng(2).random((2, 90, 70)).astype(np.float32)
    wsi.write_ome_pyramid(two, tmp_path / "c.ome.tif", dtype=np.float32, tile=32, min_size=40,
                          channel_names=["a", "b"])
    with tifffile.TiffFile(tmp_path / "c.ome.tif") as tf:
        assert tf.series[0].axes == "CYX" and tf.series[0].levels[1].shape == (2, 45, 35)
        np.testing.assert_array_equal(tf.series[0].asarray(), two)


def _blobs(shape=(300, 400), n=40, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    prob = np.zeros(shape, np.float32)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(4, 11)
        prob = np.maximum(prob, np.clip(1.2 - np.hypot(yy - cy, xx - cx) / r, 0, 1))
    return prob


def test_blockwise_instances_equal_whole_image_postprocessing(tmp_path):
    import jsonschema
    import zarr

    from histoflow.postprocess import PostprocessConfig, postprocess

    prob = _blobs()
    pp = PostprocessConfig(min_size=10, max_hole=20)
    whole = postprocess(prob, pp, 0.5)
    store = zarr.open_group(str(tmp_path / "l.zarr"), mode="w")
    labels = wsi.create_array(store, "labels", prob.shape, (64, 64), np.uint32)
    stats = wsi.slide_instances(prob[None], labels, tmp_path / "o.geojson", threshold=0.5, postprocess_cfg=pp,
                                block=96, margin=40, mpp=0.5, downsample=2.0, classification="Nucleus",
                                progress=False)
    got = np.asarray(labels[:])
    assert stats["objects"] == whole.max() == len(np.unique(got)) - 1 and stats["truncated"] == 0
    # the same partition of the pixels into objects (ids differ: raster order of the blocks)
    pairs = np.unique(np.stack([whole.ravel(), got.ravel()]), axis=1)
    assert pairs.shape[1] == whole.max() + 1 and ((pairs[0] == 0) == (pairs[1] == 0)).all()
    doc = json.loads((tmp_path / "o.geojson").read_text())
    jsonschema.validate(doc, GEOJSON_SCHEMA)
    feats = doc["features"]
    assert len(feats) == stats["objects"]
    assert sorted(int(f["properties"]["metadata"]["label"]) for f in feats) == list(range(1, stats["objects"] + 1))
    assert "area_um2" in feats[0]["properties"]["measurements"]
    # coordinates are level-0 pixels (x2 here): halved, each polygon refills exactly its object
    from histoflow.qupath import geometry_mask

    for f in feats[:10]:
        lab = int(f["properties"]["metadata"]["label"])
        geom = {**f["geometry"], "coordinates": wsi.outputs._scale_coords(f["geometry"]["coordinates"], 0.5)}
        np.testing.assert_array_equal(geometry_mask(geom, prob.shape), got == lab)


def test_write_features_is_atomic(tmp_path):
    from histoflow.qupath import write_features

    def broken():
        yield {"type": "Feature", "geometry": None, "properties": {}}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_features(tmp_path / "x.geojson", broken())
    assert not (tmp_path / "x.geojson").exists() and not list(tmp_path.iterdir())
