"""The whole-slide stage through its pipeline functions and through Snakemake.

A synthetic pyramidal TIFF slide (JPEG tiles via imagecodecs, 3 levels, pixel size in the resolution
tags) goes through slide_tissue -> predict_slide_region (2 regions) -> merge_slide -> slide_outputs;
the OME-TIFFs are read back with tifffile (levels, shapes, OME pixel size) and OpenSlide (when
installed), the GeoJSON is validated against a FeatureCollection schema. The Snakemake run is marked
slow (it trains the tiny model first).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from test_workflow import TINY, planned_jobs, smk, write_config

from histoflow import wsi
from histoflow.config import validate_config
from histoflow.models import build_model, save_model
from histoflow.stages.wsi import (
    run_merge_slide,
    run_predict_slide_region,
    run_slide_outputs,
    run_slide_tissue,
)
from histoflow.synthetic.slides import write_synthetic_slide
from support import GEOJSON_SCHEMA

SLIDE_SHAPE = (900, 700)
SLIDES = {
    "images": {"syn": "syn.tif"}, "mpp": 1.0, "tile": 96, "overlap": 24, "regions": 2, "workers": 0,
    "batch_size": 4, "model": "a", "tissue": {"thumbnail_size": 256, "min_object": 20},
    "instances": {"block": 160, "margin": 48},
}


def make_slide(path: Path) -> Path:
    return write_synthetic_slide(path, *SLIDE_SHAPE, mpp=0.5, levels=3, tile=128, texture_size=128,
                                     n_textures=2)


def slides_config(**changes) -> dict:
    cfg = validate_config({"slides": {**SLIDES, **changes}})
    return cfg


def check_ngff(store: Path, axes: list[str], mpp: float) -> list:
    """The store opens in ome-zarr as an NGFF image (a label image for labels) with nothing foreign inside."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(store)))())
    node = nodes[-1] if axes == ["y", "x"] else nodes[0]  # a label image's source image is read first
    assert any(isinstance(s, Label if axes == ["y", "x"] else Multiscales) for s in node.specs)
    assert [a["name"] for a in node.metadata["axes"]] == axes
    assert node.metadata["coordinateTransformations"][0][0]["scale"][-2:] == [mpp, mpp]
    assert all(p.name in ("zarr.json", ".zgroup", ".zattrs") or p.name.isdigit() for p in store.iterdir()), \
        sorted(p.name for p in store.iterdir())  # no .snakemake_timestamp: the rules name the store by its root file
    return node.data


def check_outputs(folder: Path, shape: tuple[int, int], mpp: float, downsample: float) -> dict:
    """Read every output of slide_outputs back; returns the summary."""
    import jsonschema

    summary = json.loads((folder / "summary.json").read_text())
    prob_levels = check_ngff(folder / "probability.zarr", ["c", "y", "x"], mpp)
    prob = np.asarray(prob_levels[0][0])
    assert prob.shape == shape and prob.dtype == np.float32
    with tifffile.TiffFile(folder / "probability.ome.tif") as tf:
        assert tf.is_ome and tf.pages[0].is_tiled
        levels = tf.series[0].levels
        assert levels[0].shape == shape and levels[0].dtype == np.uint8
        assert [lv.shape for lv in levels] == [tuple(s) for s in summary["probability"]["levels"]]
        np.testing.assert_array_equal(levels[0].asarray(), np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8))
        pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
        assert float(pixels["PhysicalSizeX"]) == pytest.approx(mpp) and pixels["PhysicalSizeXUnit"] == "µm"
    label_levels = check_ngff(folder / "labels.zarr", ["y", "x"], mpp)
    labels = np.asarray(label_levels[0])
    with tifffile.TiffFile(folder / "labels.ome.tif") as tf:
        assert len(tf.series[0].levels) == len(label_levels)
        np.testing.assert_array_equal(tf.series[0].levels[0].asarray(), labels)
    try:
        import openslide
    except ImportError:
        pass
    else:
        osr = openslide.OpenSlide(str(folder / "probability.ome.tif"))
        assert osr.dimensions == (shape[1], shape[0])
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(mpp)
        got = np.asarray(osr.read_region((0, 0), 0, (shape[1], shape[0])))[..., 0]
        np.testing.assert_array_equal(got, np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8))
    doc = json.loads((folder / "objects.geojson").read_text())
    jsonschema.validate(doc, GEOJSON_SCHEMA)
    assert len(doc["features"]) == summary["instances"]["objects"] == labels.max()
    for f in doc["features"]:
        xy = np.array([p for ring in (f["geometry"]["coordinates"] if f["geometry"]["type"] == "Polygon"
                                      else [r for poly in f["geometry"]["coordinates"] for r in poly]) for p in ring])
        assert xy.min() >= 0 and (xy[:, 0] <= shape[1] * downsample).all() and (xy[:, 1] <= shape[0] * downsample).all()
    return summary



def test_slide_staining_from_tiles_equals_the_assembled_slide_and_flows_into_tissue_json(tmp_path):
    """stain_source: tiles streams the tissue tiles through fit_source_from_tiles: the estimate is the one
    on the assembled slide (same pixels sampled by position), and it is what slide_tissue records."""
    from histoflow.stages.wsi import slide_normalizer, slide_stain_from_tiles
    from histoflow.stain import get_normalizer, save_normalizer

    slide = wsi.open_slide(make_slide(tmp_path / "syn.tif"), mpp=1.0)
    norm = get_normalizer("macenko").fit(slide.read_region(0, 0, 225, 175))
    whole = slide.read_region(0, 0, *slide.shape)
    # 96 does not divide 450 x 350: the last row and column of tiles are partial.
    got = slide_stain_from_tiles(norm, slide, wsi.TissueMask.everywhere(slide.shape), 96)
    want = norm.fit_source(whole)
    assert got == want

    save_normalizer(norm, tmp_path / "stain.json")
    sources = {}
    for where in ("thumbnail", "tiles"):
        slides = slides_config(stain_source=where)["slides"]
        info = run_slide_tissue(tmp_path / "syn.tif", slides, tmp_path / "stain.json", tmp_path / f"{where}/t.json",
                                tmp_path / f"{where}/t.png", tmp_path / f"{where}/thumb.png")
        sources[where] = info["stain_source"]
    assert slide_normalizer(tmp_path / "stain.json") is not None
    assert sources["tiles"] != sources["thumbnail"]  # a thumbnail is blurred and resampled: another estimate

def test_pipeline_functions_regions_merge_to_the_single_job(tmp_path):
    """slide_tissue -> 2 regions -> merge -> outputs, without Snakemake; equal to one region."""
    slide = make_slide(tmp_path / "syn.tif")
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, out_channels=1, base_width=4, depth=2)
    with torch.no_grad():
        model.head.bias.fill_(2.0)  # an untrained net that still finds objects above 0.5
    save_model(model, {"arch": "unet", "kwargs": {"in_channels": 3, "out_channels": 1, "base_width": 4,
                                                  "depth": 2}, "threshold": 0.5}, tmp_path / "model")
    from histoflow.stain import get_normalizer, save_normalizer

    save_normalizer(get_normalizer("macenko").fit(wsi.open_slide(slide, mpp=2.0).read_region(0, 0, 225, 175)),
                    tmp_path / "stain.json")
    cfg = slides_config()
    slides = cfg["slides"]
    info = run_slide_tissue(slide, slides, tmp_path / "stain.json", tmp_path / "t/tissue.json",
                            tmp_path / "t/tissue.png", tmp_path / "t/thumbnail.png")
    assert info["slide"]["shape"] == [450, 350] and info["slide"]["level"] == 1
    assert 0 < info["grid"]["tiles_tissue"] < info["grid"]["tiles_total"]
    assert info["stain_source"]["tissue"] is True
    perf = {"batch_size": 3, "workers": 0, "compile": False}
    stores = []
    for r in range(2):
        stores.append(tmp_path / f"regions/{r}.zarr")
        run_predict_slide_region(slide, tmp_path / "t/tissue.json", tmp_path / "model", tmp_path / "stain.json",
                                 slides, {"tta": "none"}, r, "cpu", perf, stores[-1])
    out = tmp_path / "out"
    run_merge_slide(stores, out / "probability.zarr" / wsi.root_file())
    one = {**slides, "regions": 1}
    run_predict_slide_region(slide, tmp_path / "t/tissue.json", tmp_path / "model", tmp_path / "stain.json",
                             one, {"tta": "none"}, 0, "cpu", perf, tmp_path / "single.zarr")
    merged = np.asarray(wsi.open_group(out / "probability.zarr")[wsi.LEVEL0][:])
    np.testing.assert_array_equal(merged, np.asarray(wsi.open_group(tmp_path / "single.zarr")["prob"][:]))
    files = {k: out / v for k, v in (("probability", "probability.ome.tif"), ("labels", "labels.ome.tif"),
                                     ("labels_zarr", f"labels.zarr/{wsi.root_file()}"), ("objects", "objects.geojson"),
                                     ("summary", "summary.json"))}
    run_slide_outputs(out / "probability.zarr" / wsi.root_file(), tmp_path / "model/spec.json", cfg["postprocess"],
                      slides, "Fibre", files)
    summary = check_outputs(out, (450, 350), 1.0, 2.0)
    assert summary["instances"]["objects"] > 0 and summary["processed_area_mm2"] > 0


def test_an_instance_model_runs_on_a_slide_through_its_merge_map(tmp_path):
    """US-Net on slide tiles: its detections' merge map is blended like a probability map, then
    thresholded and split into objects (the merge rule); the detections are its own, so the map
    is the seed's clipped sum of masks (values in [0, 1]) and zero where nothing was kept."""
    slide = make_slide(tmp_path / "syn.tif")
    kwargs = {"in_channels": 3, "out_channels": 1, "base_width": 4, "depth": 3, "min_size": 12, "max_size": 40,
              "head_width": 8, "refine_width": 4, "score_floor": 0.0, "max_detections": 5}
    torch.manual_seed(0)
    save_model(build_model("usnet", **kwargs), {"arch": "usnet", "kwargs": kwargs, "threshold": 0.5,
                                                "instances": True, "score_threshold": 0.0}, tmp_path / "model")
    cfg = slides_config(stain=False)
    slides = cfg["slides"]
    run_slide_tissue(slide, slides, None, tmp_path / "t/tissue.json", tmp_path / "t/tissue.png",
                     tmp_path / "t/thumbnail.png")
    predict = {"tta": "none", "score_threshold": None, "nms_iou": 0.5, "mask_threshold": 0.3}
    run_predict_slide_region(slide, tmp_path / "t/tissue.json", tmp_path / "model", None, {**slides, "regions": 1},
                             predict, 0, "cpu", {"batch_size": 2, "workers": 0, "compile": False},
                             tmp_path / "r.zarr")
    run_merge_slide([tmp_path / "r.zarr"], tmp_path / "out/probability.zarr" / wsi.root_file())
    prob = np.asarray(wsi.open_group(tmp_path / "out/probability.zarr")[wsi.LEVEL0][:])
    assert 0 <= prob.min() and prob.max() <= 1 and prob.max() > 0.3  # 5 detections a tile, masks about 0.5
    files = {k: tmp_path / "out" / v for k, v in (("probability", "probability.ome.tif"), ("labels", "labels.ome.tif"),
                                                 ("labels_zarr", f"labels.zarr/{wsi.root_file()}"),
                                                 ("objects", "objects.geojson"), ("summary", "summary.json"))}
    run_slide_outputs(tmp_path / "out/probability.zarr" / wsi.root_file(), tmp_path / "model/spec.json",
                      cfg["postprocess"], slides, "Nucleus", files)
    check_outputs(tmp_path / "out", (450, 350), 1.0, 2.0)
    with pytest.raises(ValueError, match="tta: none"):
        run_predict_slide_region(slide, tmp_path / "t/tissue.json", tmp_path / "model", None, slides,
                                 {**predict, "tta": "flips"}, 0, "cpu", {"batch_size": 2}, tmp_path / "x.zarr")


# ---------------------------------------------------------------------------------------------
# Snakemake: dry runs and configuration errors (fast)


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wsi_wf")
    make_slide(d / "syn.tif")
    return d


def _config(workdir: Path, **slides) -> None:
    write_config(workdir, {**TINY, "slides": {**SLIDES, **slides}})


def test_dry_run_plans_the_slide_jobs(slide_dir):
    _config(slide_dir, regions=3)
    jobs = planned_jobs(smk(slide_dir, "-n").stdout)
    slide_jobs = {j for j in jobs if "slide" in j}
    assert slide_jobs == {
        "slide_tissue[slide=syn]", "merge_slide[slide=syn, model=a]", "slide_outputs[slide=syn, model=a]",
        *(f"predict_slide_region[slide=syn, model=a, region={r}]" for r in range(3)),
    }
    assert "train_model[model=a]" in jobs


@pytest.mark.parametrize(
    ("slides", "message"),
    [({"mpp": 1.0, "level": 1}, "slides: give mpp or level, not both"),
     ({"model": "zzz"}, "slides.model: 'zzz' is not a trained model"),
     ({"images": {"syn": "missing.svs"}}, "missing.svs: slide not found"),
     ({"tile": 64, "overlap": 64}, "slides.overlap: must be smaller than slides.tile"),
     ({"regions": 0}, "slides.regions")],
)
def test_slide_config_errors_stop_before_any_job(slide_dir, slides, message):
    _config(slide_dir, **slides)
    proc = smk(slide_dir, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# Snakemake: a real run on CPU (slow)


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wsi_run")
    make_slide(workdir / "syn.tif")
    cfg = {**TINY, "models": {"a": TINY["models"]["a"]}, "ensembles": {}, "slides": SLIDES}
    write_config(workdir, cfg)
    smk(workdir, "results/slides/syn/a/summary.json")
    return workdir


@pytest.mark.slow
def test_slide_workflow_outputs_read_back(slide_run):
    folder = slide_run / "results/slides/syn/a"
    summary = check_outputs(folder, (450, 350), 1.0, 2.0)
    assert summary["slide"]["level"] == 1 and summary["slide"]["mpp"] == pytest.approx(1.0)
    assert len(summary["inference"]["seconds_per_region"]) == 2
    for r in range(2):
        assert (slide_run / f"results/logs/predict_slide_region/a/syn/{r}.log").read_text().strip()
        assert (slide_run / f"results/benchmarks/predict_slide_region/a/syn/{r}.tsv").exists()
    tissue = json.loads((slide_run / "results/slides/syn/tissue.json").read_text())
    assert 0 < tissue["grid"]["tiles_tissue"] < tissue["grid"]["tiles_total"]
    # the merged regions equal one job over the whole slide with the trained model
    from histoflow.stages.wsi import run_predict_slide_region as single

    slides = validate_config(yaml.safe_load((slide_run / "config.yaml").read_text()))["slides"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as the rule ran (threads: workflow.cores): CPU kernels round by thread count
    try:
        single(slide_run / "syn.tif", slide_run / "results/slides/syn/tissue.json", slide_run / "results/models/a",
               slide_run / "results/stain/target.json", {**slides, "regions": 1}, {"tta": "none"}, 0, "cpu",
               {"batch_size": slides["batch_size"], "workers": 1}, slide_run / "single.zarr")
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(np.asarray(wsi.open_group(folder / "probability.zarr")[wsi.LEVEL0][:]),
                                  np.asarray(wsi.open_group(slide_run / "single.zarr")["prob"][:]))


def _jobs_after(workdir: Path, **slides) -> set[str]:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    original = yaml.safe_dump(cfg, sort_keys=False)
    cfg["slides"] = {**cfg["slides"], **slides}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        return planned_jobs(smk(workdir, "-n", "results/slides/syn/a/summary.json").stdout)
    finally:
        (workdir / "config.yaml").write_text(original)


@pytest.mark.slow
def test_slide_reruns(slide_run):
    assert _jobs_after(slide_run) == set()
    # speed-only settings rerun nothing
    assert _jobs_after(slide_run, batch_size=16, workers=2, compile=True) == set()
    # more regions: the region jobs, the merge and the outputs, not the tissue or the model
    assert _jobs_after(slide_run, regions=3) == {
        "merge_slide[slide=syn, model=a]", "slide_outputs[slide=syn, model=a]",
        *(f"predict_slide_region[slide=syn, model=a, region={r}]" for r in range(3)),
    }
    # output settings rerun only the outputs
    assert _jobs_after(slide_run, outputs={"prob_dtype": "float32"}) == {"slide_outputs[slide=syn, model=a]"}
