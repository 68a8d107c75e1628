"""A multi-class (semantic) workflow end to end: 3-class demo masks → patches with class maps →
Res-CR-Net and U-Net (Tanimoto loss, softmax) → tiled softmax inference → argmax with per-class
cleanup → per-class metrics, confusion matrix and class maps in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from test_workflow import planned_jobs, smk, write_config

CLASSES = ["gap", "cytoplasm", "boundary"]
MULTI = {
    "results": "results",
    "device": "cpu",
    "seed": 0,
    "classes": CLASSES,
    "demo": {"n_images": 5, "size": 64, "fibre_diameter": 20, "seed": 2},
    "datasets": {"demo": {"generator": "muscle_fibres", "mask_type": "classes", "test_fraction": 0.4}},
    "stain": {"method": "macenko"},
    "patches": {"size": 48, "per_image": 3, "val_fraction": 0.34},
    "models": {
        "r": {"arch": "rescrnet", "params": {"filters": 4, "n_conv": 1, "n_lstm": 1, "lstm_hidden": 2},
              "train": {"loss": "tanimoto", "epochs": 1, "batch_size": 3}, "predict": {"tile": 48, "overlap": 8}},
        "u": {"arch": "unet", "params": {"base_width": 4, "depth": 2},
              "train": {"loss": "cross_entropy", "epochs": 1, "batch_size": 3}, "predict": {"tile": 48, "overlap": 8}},
    },
    "ensembles": {"ru": {"members": ["r", "u"]}},
    "postprocess": {"min_size": 4},
    "report": {"n_overlays": 1},
}


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multi")
    write_config(workdir, MULTI)
    smk(workdir)
    return workdir


@pytest.mark.slow
def test_multiclass_workflow_end_to_end(multi_run):
    r = multi_run / "results"
    spec = json.loads((r / "models" / "r" / "spec.json").read_text())
    assert spec["classes"] == CLASSES and spec["target"] == "classes" and spec["kwargs"]["out_channels"] == 3
    prob = tifffile.imread(next((r / "predictions" / "r" / "demo").glob("*.tif")))
    assert prob.shape[0] == 3 and prob.shape[1:] == (64, 64)
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-4)  # softmax, averaged across overlaps
    cls = tifffile.imread(next((r / "instances" / "r" / "demo").glob("*.tif")))
    assert cls.dtype == np.uint8 and cls.shape == (64, 64) and cls.max() <= 2
    for m in ("r", "u", "ru"):
        s = json.loads((r / "metrics" / m / "demo_summary.json").read_text())
        assert s["classes"] == CLASSES and np.array(s["confusion"]).shape == (3, 3)
        assert np.array(s["confusion"]).sum() == 2 * 64 * 64  # every test pixel counted once
        for key in ("pooled_mean_dice", "pooled_pixel_accuracy", "pooled_dice_boundary", "mean_dice_mean",
                    "pooled_f1_gap", "pooled_jaccard_cytoplasm", "pooled_precision_boundary", "pooled_recall_gap",
                    "pooled_mean_tanimoto", "pooled_tanimoto_gap", "pooled_mean_soft_dice", "pooled_f1_of_mean_pr",
                    "pooled_jaccard_of_mean_pr", "mean_tanimoto_mean"):
            assert 0 <= s[key] <= 1, key
    html = (r / "report.html").read_text()
    assert "mean over classes" in html and "Dice (= F1)" in html and "Class maps" in html and "Tanimoto" in html
    assert not (r / "objects").exists()  # no instances in a multi-class workflow
    with __import__("h5py").File(r / "patches" / "patches.h5") as f:
        c = f["train/classes"][...]
        assert set(np.unique(c)) <= {0, 1, 2} and (c == 2).any()


@pytest.mark.slow
def test_multiclass_second_dry_run_has_nothing_to_do(multi_run):
    assert planned_jobs(smk(multi_run, "-n").stdout) == set()


def test_class_masks_without_classes_are_refused(tmp_path):
    cfg = json.loads(json.dumps(MULTI))
    cfg["classes"] = []
    write_config(tmp_path, cfg)
    proc = smk(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "datasets.demo.mask_type is 'classes'" in proc.stdout + proc.stderr
    cfg["classes"] = CLASSES
    cfg["datasets"]["demo"]["mask_type"] = "instance"
    write_config(tmp_path, cfg)
    proc = smk(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "set mask_type: classes" in proc.stdout + proc.stderr
