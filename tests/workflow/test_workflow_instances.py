"""Instance models through the workflow: Mask R-CNN and US-Net trained from the patch store's instance labels,
tiled detection, the two merge rules, QuPath export, metrics, ensembles with a U-Net (mean and
instance vote), the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from test_workflow import planned_jobs, smk, write_config

from histoflow.postprocess import vote_instances

RCNN = {"arch": "mask_rcnn",
        "params": {"backbone": "resnet18", "anchor_sizes": [8, 16, 32, 64, 128], "detections_per_image": 40,
                   "rpn_batch_size": 64, "box_batch_size": 64},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "optimizer": "sgd", "lr": 0.005,
                  "weight_decay": 0.0005, "schedule": "step", "lr_steps": [1]},
        "predict": {"tile": 64, "overlap": 32, "batch_size": 2}}
INSTANCES = {
    "results": "results",
    "device": "cpu",
    "seed": 0,
    "demo": {"n_images": 5, "size": 96, "fibre_diameter": 24, "seed": 1},
    "datasets": {"demo": {"generator": "muscle_fibres", "split": "auto", "test_fraction": 0.4}},
    "stain": {"method": "macenko"},
    "patches": {"size": 64, "per_image": 3, "val_fraction": 0.34},
    "models": {
        "rcnn": RCNN,
        "us": {"arch": "usnet", "params": {"base_width": 4, "depth": 3, "min_size": 8, "max_size": 32},
               "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 3, "lr": 0.003,
                         "branch_lr": {"refinement": 0.001}},
               "predict": {"tile": 64, "overlap": 32, "batch_size": 2}},
        "u": {"arch": "unet", "params": {"base_width": 4, "depth": 2}, "train": {"epochs": 1, "batch_size": 4},
              "predict": {"tile": 64, "overlap": 16}},
    },
    "ensembles": {"ur": {"members": ["u", "rcnn"]},
                  "vote": {"members": ["u", "rcnn", "us"], "combine": "vote"}},
    "postprocess": {"detections": "preserve", "min_size": 10},
    "report": {"n_overlays": 1},
}


@pytest.fixture(scope="module")
def instance_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("instances")
    write_config(workdir, INSTANCES)
    smk(workdir)
    return workdir


@pytest.mark.slow
def test_instance_model_workflow_end_to_end(instance_run):
    r = instance_run / "results"
    spec = json.loads((r / "models" / "rcnn" / "spec.json").read_text())
    assert spec["arch"] == "mask_rcnn" and spec["target"] == "instances" and spec["instances"] is True
    assert spec["score_threshold"] in (0.3, 0.4, 0.5, 0.6, 0.7)  # chosen on the validation patches
    stems = sorted(p.stem for p in (r / "predictions" / "rcnn" / "demo").glob("*.tif"))
    assert len(stems) == 2
    for stem in stems:
        prob = tifffile.imread(r / "predictions" / "rcnn" / "demo" / f"{stem}.tif")
        own = tifffile.imread(r / "predictions" / "rcnn" / "demo" / "instances" / f"{stem}.tif")
        assert prob.shape == own.shape == (96, 96) and prob.dtype == np.float32
        assert 0 <= prob.min() and prob.max() <= 1
        final = tifffile.imread(r / "instances" / "rcnn" / "demo" / f"{stem}.tif")
        # preserve: the model's own objects (minus those under min_size), renumbered 1..N
        kept = [i for i in np.unique(own[own > 0]) if (own == i).sum() >= 10]
        assert final.max() == len(kept) and ((final > 0) == np.isin(own, kept)).all()
        geo = json.loads((r / "objects" / "rcnn" / "demo" / f"{stem}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == final.max()
    summary = json.loads((r / "metrics" / "rcnn" / "demo_summary.json").read_text())
    for key in ("aji_mean", "pq_mean", "object_f1_mean", "pixel_f1_mean", "ap50_pooled", "box_ap50_pooled"):
        assert key in summary
    assert (r / "metrics" / "ur" / "demo_summary.json").exists()  # U-Net + Mask R-CNN averaged
    # U-Net + Mask R-CNN + US-Net voting on their instances: objects where 2 of 3 agree
    vote = json.loads((r / "models" / "vote" / "spec.json").read_text())
    assert vote["combine"] == "vote" and vote["instances"] is True
    for stem in stems:
        members = [tifffile.imread(r / "instances" / m / "demo" / f"{stem}.tif") for m in ("u", "rcnn", "us")]
        votes = tifffile.imread(r / "predictions" / "vote" / "demo" / f"{stem}.tif")
        np.testing.assert_allclose(votes, sum((m > 0).astype(float) for m in members) / 3, atol=1e-6)
        voted = tifffile.imread(r / "predictions" / "vote" / "demo" / "instances" / f"{stem}.tif")
        np.testing.assert_array_equal(voted, vote_instances(members)[0])
    assert (r / "metrics" / "vote" / "demo_summary.json").exists()
    us = json.loads((r / "models" / "us" / "spec.json").read_text())
    assert us["arch"] == "usnet" and us["instances"] is True
    own = tifffile.imread(next((r / "predictions" / "us" / "demo" / "instances").glob("*.tif")))
    assert own.shape == (96, 96)
    assert (r / "metrics" / "us" / "demo_summary.json").exists()
    html = (r / "report.html").read_text()
    assert "rcnn" in html and "ur" in html


@pytest.mark.slow
def test_switching_the_merge_rule_reruns_postprocessing_only(instance_run):
    cfg = json.loads(json.dumps(INSTANCES))
    cfg["postprocess"]["detections"] = "merge"
    write_config(instance_run, cfg)
    jobs = planned_jobs(smk(instance_run, "-n").stdout)
    assert not any(j.startswith(("train_model", "predict[")) for j in jobs), jobs
    assert {"postprocess[model=rcnn, dataset=demo]", "evaluate[model=rcnn, dataset=demo]"} <= jobs
    write_config(instance_run, INSTANCES)
