"""From QuPath annotations through Snakemake: synthetic slides + GeoJSON -> a trained model -> objects back on a slide.

The README example's data (:mod:`histoflow.synthetic.qupath_example`: nuclei on pyramidal TIFFs at 0.25 µm/px, each
slide's GeoJSON with two labelled regions) trains a small U-Net at 0.5 µm/px on slides 1 and 2; slide 3's regions
are scored like test images and the slide is predicted whole, its objects written as GeoJSON in level-0 pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_workflow import planned_jobs, smk, write_config

from histoflow.io import read_image, read_json
from histoflow.metrics import evaluate_instances
from histoflow.qupath import paint_geometry
from histoflow.synthetic.qupath_example import write_example

REPO = Path(__file__).resolve().parents[2]
SIZE = 768  # level-0 edge of each synthetic slide



def example_config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "qupath_example.yaml").read_text())
    cfg["results"] = "results"
    cfg["device"] = "cpu"
    cfg["models"]["unet"]["train"]["epochs"] = 6
    cfg["patches"]["per_image"] = 16
    return cfg


def test_bad_annotations_stop_the_dry_run(tmp_path):
    """A classification the dataset does not know stops Snakemake before any job, naming file, feature and fix."""
    write_example(tmp_path / "qupath_example", n_slides=2, size=256)
    path = tmp_path / "qupath_example" / "geojson" / "slide_2.geojson"
    fc = json.loads(path.read_text())
    fc["features"][0]["properties"]["classification"]["name"] = "Nuclues"
    path.write_text(json.dumps(fc))
    cfg = example_config()
    cfg["datasets"]["nuclei"]["split"] = "auto"
    write_config(tmp_path, cfg)
    proc = smk(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "annotated_images" not in proc.stdout
    assert "slide_2.geojson: feature 0 (id nucleus-" in out and "the classification 'Nuclues'" in out
    assert "the dataset knows classes ['Nucleus'] or regions matching 'Region*'" in out


@pytest.fixture(scope="module")
def qupath_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qupath")
    write_example(workdir / "qupath_example", n_slides=3, size=SIZE)
    write_config(workdir, example_config())
    smk(workdir)
    return workdir


@pytest.mark.slow
def test_regions_are_scored_as_test_images(qupath_run):
    summary = read_json(qupath_run / "results" / "metrics" / "unet" / "nuclei_summary.json")
    assert summary["n_images"] == 2  # slide 3's two regions
    assert summary["object_f1_pooled"] > 0.9 and summary["pixel_f1_mean"] > 0.85


@pytest.mark.slow
def test_slide_objects_match_the_slides_labels(qupath_run):
    """The test slide's GeoJSON, filled back at level 0, finds the slide's nuclei (those outside the regions too)."""
    fc = json.loads((qupath_run / "results" / "slides" / "slide_3" / "unet" / "objects.geojson").read_text())
    found = np.zeros((SIZE, SIZE), np.int32)
    for k, f in enumerate(fc["features"], start=1):
        paint_geometry(found, f["geometry"], k)
    truth = read_image(qupath_run / "qupath_example" / "truth" / "slide_3.tif").astype(np.int32)
    scores = evaluate_instances(found, truth)
    assert scores["object_f1"] > 0.9 and scores["pixel_f1"] > 0.85, scores


def _edit(path: Path, which: str) -> None:
    """Move the first nucleus (or the first region) of a GeoJSON 4 pixels right."""
    fc = json.loads(path.read_text())
    f = next(f for f in fc["features"] if f["properties"]["classification"]["name"] == which)
    f["geometry"]["coordinates"] = [[[x + 4, y] for x, y in ring] for ring in f["geometry"]["coordinates"]]
    path.write_text(json.dumps(fc))


@pytest.mark.slow
def test_editing_one_slides_geojson_reruns_what_depends_on_it(qupath_run):
    geo = qupath_run / "qupath_example" / "geojson"
    _edit(geo / "slide_3.geojson", "Nucleus")  # a test slide's object: its labels and the evaluation only
    jobs = planned_jobs(smk(qupath_run, "-n").stdout)
    assert "annotated_labels[dataset=nuclei, slide=slide_3]" in jobs
    assert "evaluate[model=unet, dataset=nuclei]" in jobs
    assert not [j for j in jobs if j.startswith(("annotated_images", "normalize_stain", "extract_patches",
                                                 "train_model", "predict_slide_region"))], jobs
    assert not [j for j in jobs if "slide_1" in j or "slide_2" in j], jobs

    _edit(geo / "slide_1.geojson", "Nucleus")  # a training slide's object: its labels, the patches, the model
    jobs = planned_jobs(smk(qupath_run, "-n").stdout)
    assert {"annotated_labels[dataset=nuclei, slide=slide_1]", "extract_patches", "train_model[model=unet]"} <= jobs
    assert "annotated_labels[dataset=nuclei, slide=slide_2]" not in jobs
    assert not [j for j in jobs if j.startswith("annotated_images")], jobs

    _edit(geo / "slide_3.geojson", "Region")  # a region: the pixels it covers are read again
    jobs = planned_jobs(smk(qupath_run, "-n").stdout)
    assert "annotated_images[dataset=nuclei, slide=slide_3]" in jobs
    assert not [j for j in jobs if j.startswith("annotated_images") and "slide_3" not in j], jobs
