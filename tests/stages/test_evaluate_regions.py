"""Evaluation of annotated slide windows scores only their labelled part (the regions); outside it nothing counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoflow.io import write_image, write_labels
from histoflow.stages.evaluate import run_evaluate


@pytest.fixture()
def window(tmp_path):
    """A 12 x 16 window labelled in its left 8 columns: one object there; a second, predicted, object outside."""
    truth = np.zeros((12, 16), np.int32)
    truth[2:6, 2:6] = 1
    pred = truth.copy()
    pred[4:8, 10:14] = 2  # a false positive - but outside the region, where nothing is labelled
    valid = np.zeros((12, 16), bool)
    valid[:, :8] = True
    write_labels(tmp_path / "truth" / "w.tif", truth)
    write_image(tmp_path / "truth" / "w_region.png", valid.astype(np.uint8) * 255)
    write_labels(tmp_path / "inst" / "w.tif", pred)
    dataset = {"test": ["w"], "masks": {"w": str(tmp_path / "truth" / "w.tif")}, "mask_type": "instance",
               "valid": {"w": str(tmp_path / "truth" / "w_region.png")}}
    return tmp_path, dataset, pred, valid


def test_objects_outside_the_region_are_not_scored(window):
    tmp, dataset, _, _ = window
    s = run_evaluate(tmp / "inst", dataset, tmp / "m.tsv", tmp / "s.json")
    assert s["object_f1_pooled"] == 1.0 and s["pixel_f1_mean"] == 1.0
    s = run_evaluate(tmp / "inst", {**dataset, "valid": {}}, tmp / "m2.tsv", tmp / "s2.json")
    assert s["object_f1_pooled"] == pytest.approx(2 / 3)  # without the region: 1 TP, 1 FP -> 2 / (2 + 1)


def test_class_scores_and_soft_scores_count_the_region_only(window):
    tmp, dataset, pred, valid = window
    classes = ["background", "object"]
    cls_pred = (pred > 0).astype(np.uint8)
    write_image(tmp / "cls" / "w.tif", cls_pred)
    prob = np.stack([1.0 - cls_pred, cls_pred]).astype(np.float32)  # one-hot: right inside, wrong outside
    write_image(tmp / "prob" / "w.tif", prob)
    cdataset = {**dataset, "mask_type": "classes", "masks": {"w": str(tmp / "truth" / "w_cls.png")}}
    write_image(tmp / "truth" / "w_cls.png", (np.asarray(pred == 1)).astype(np.uint8))
    s = run_evaluate(tmp / "cls", cdataset, tmp / "c.tsv", tmp / "c.json", predictions_dir=tmp / "prob",
                     classes=classes)
    assert s["pooled_mean_dice"] == 1.0 and s["pooled_mean_tanimoto"] == pytest.approx(1.0)
    assert sum(map(sum, json.loads((tmp / "c.json").read_text())["confusion"])) == valid.sum()


def test_per_fibre_sweep_counts_the_region_only(window):
    from histoflow.io import write_json
    from histoflow.stages.evaluate import run_evaluate_fibres

    tmp, dataset, pred, _ = window
    write_image(tmp / "prob" / "w.tif", (pred > 0).astype(np.float32) * 0.9)
    write_json(tmp / "spec.json", {"arch": "unet", "threshold": 0.5, "target": "masks"})
    args = (tmp / "prob", tmp / "spec.json", {"min_size": 0})
    s = run_evaluate_fibres(*args, dataset, [0.5], tmp / "f.tsv", tmp / "f.json")
    assert s["ft_object_f1_mean"] == 1.0  # the false positive lies outside the labelled region
    s = run_evaluate_fibres(*args, {**dataset, "valid": {}}, [0.5], tmp / "f2.tsv", tmp / "f2.json")
    assert s["ft_object_f1_mean"] == pytest.approx(2 / 3)  # without the region: 1 TP, 1 FP
