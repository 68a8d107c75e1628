"""rule evaluate_fibres: fibres from the network's raw output (the VGG16 paper) or the configured
post-processing, with the per-fibre figures and the object F1 that counts spurious fibres."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histoflow.io import write_image, write_json
from histoflow.stages.evaluate import run_evaluate_fibres


def _case(tmp: Path) -> dict:
    """Two 20 x 20 ground-truth fibres; the network finds both exactly plus a 3 x 3 speck on background."""
    gt = np.zeros((64, 64), np.uint16)
    gt[5:25, 5:25] = 1
    gt[30:50, 30:50] = 2
    prob = (gt > 0).astype(np.float32) * 0.9
    prob[55:58, 5:8] = 0.8  # 9 px, no ground truth under it
    write_image(tmp / "gt" / "a.png", gt)
    write_image(tmp / "pred" / "a.tif", prob)
    write_json(tmp / "spec.json", {"arch": "vgg16_mdn", "target": "masks", "threshold": 0.5})
    return {"test": ["a"], "masks": {"a": str(tmp / "gt" / "a.png")}, "mask_type": "instance"}


@pytest.mark.parametrize(("fibres_from", "object_f1"), [
    ("raw", 2 * 2 / (2 * 2 + 1 + 0)),  # the speck is a third predicted fibre: TP 2, FP 1, FN 0
    ("postprocess", 1.0),              # min_size 30 removes it
])
def test_per_fibre_and_object_f1_from_raw_output_or_postprocessing(tmp_path, fibres_from, object_f1):
    dataset = _case(tmp_path)
    pp = {"min_size": 30, "max_hole": 0, "split": "watershed"}
    s = run_evaluate_fibres(tmp_path / "pred", tmp_path / "spec.json", pp, dataset, [0.5, 0.85], tmp_path / "t.tsv",
                            tmp_path / "s.json", fibres_from=fibres_from)
    # both fibres are found exactly: per-fibre P = R = 1 whatever happens to the speck (it overlaps no fibre)
    assert s["ft_threshold"] == 0.5 and s["ft_f1_mean"] == 1.0 and s["dt_recall_mean"] == 1.0
    assert s["ft_object_f1_mean"] == pytest.approx(object_f1)
    assert s["fibres_from"] == fibres_from
    assert json.loads((tmp_path / "s.json").read_text())["ft_object_f1_mean"] == pytest.approx(object_f1)
    # at 0.85 the speck (0.8) is gone in both modes
    header, *rows = [line.split("\t") for line in (tmp_path / "t.tsv").read_text().splitlines()]
    by_threshold = {float(r[header.index("threshold")]): float(r[header.index("object_f1")]) for r in rows}
    assert by_threshold == pytest.approx({0.5: object_f1, 0.85: 1.0})


def test_unknown_fibre_source_is_refused(tmp_path):
    dataset = _case(tmp_path)
    with pytest.raises(ValueError, match="fibres_from"):
        run_evaluate_fibres(tmp_path / "pred", tmp_path / "spec.json", {}, dataset, [0.5], tmp_path / "t.tsv",
                            tmp_path / "s.json", fibres_from="smoothed")
