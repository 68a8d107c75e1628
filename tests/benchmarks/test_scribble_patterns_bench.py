"""benchmarks/scribble_patterns.py on a fabricated volume run: patterns x annotated slices, scored and plotted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scribble_patterns  # noqa: E402

from histoflow.volume import write_stack  # noqa: E402


def fake_run(tmp_path: Path) -> Path:
    """A finished run's products: target stack with labels, M-Unet-like features that carry the labels, parameters."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:6, :32, :32]
    labels = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 100 - 6 * (zz - 3) ** 2).astype(np.uint8)
    images = np.repeat((80 + 100 * labels + rng.normal(0, 5, labels.shape)).clip(0, 255).astype(np.uint8)[..., None],
                       3, axis=-1)
    base = tmp_path / "res" / "volumes" / "v"
    write_stack(base / "data" / "target", images, labels)

    def features(lab):
        return np.stack([lab + rng.normal(0, 0.3, lab.shape), 1 - lab + rng.normal(0, 0.3, lab.shape),
                         rng.normal(0, 1, lab.shape)], axis=-1).astype(np.float16)

    with h5py.File(base / "features.h5", "w") as h5:
        h5["target/features"] = features(labels)
        h5["train/features"] = features(labels[:2])
        h5["train/labels"] = labels[:2]
    (base / "graphcut_params.json").write_text(json.dumps({"best": {"gamma": 1.0, "sigma": 0.1, "delta": 0.0}}))
    cfg = {"results": str(tmp_path / "res"),
           "volumes": {"v": {"generator": "organ_stack", "n_slices": 6, "size": 64, "scribble_every": 2,
                             "spacing_um": [2.0, 1.0, 1.0]}},
           "ddml": {"steps": 30, "train_pixels": 500, "dims": [4, 2]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_patterns_by_annotated_slices(tmp_path):
    config = fake_run(tmp_path)
    result = scribble_patterns.main(["--config", str(config), "--patterns", "2", "--slices", "1", "3",
                                     "--out-dir", str(tmp_path / "out")])
    assert [(r["n_slices"], r["pattern"], len(r["slices"])) for r in result["rows"]] == [
        (1, 0, 1), (1, 1, 1), (3, 0, 3), (3, 1, 3)]
    assert all(set(r["slices"]) <= {0, 2, 4} for r in result["rows"])  # every 2nd slice of 6
    assert [s["n_slices"] for s in result["summary"]] == [1, 3] and result["summary"][0]["patterns"] == 2
    assert min(r["graphcut_iou"] for r in result["rows"]) > 0.8  # the features carry the labels
    assert (tmp_path / "out" / "scribble_patterns_v.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "scribble_patterns_v.json").read_text())["every"] == 2


def test_more_slices_than_candidates_is_refused():
    with pytest.raises(ValueError, match="every 5-th slice gives only 2; lower --every"):
        scribble_patterns.pattern_scribbles(np.ones((10, 8, 8), np.uint8), 3, 5, 0)
