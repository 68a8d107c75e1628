"""The figures (histoflow.figures) and the report stage's tables; the whole report is tested by the workflow."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from histoflow.figures import error_overlay, plot_history
from histoflow.stages.report import model_timing, reference_section, reference_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.full((12, 14, 3), 100, np.uint8)
    image[0, 0] = (10, 20, 30)
    gt = np.zeros((12, 14), np.int32)
    gt[2:8, 2:8] = 4
    pred = np.zeros((12, 14), np.int32)
    pred[2:8, 4:10] = 1  # TP cols 4-7, FP cols 8-9, FN cols 2-3
    return image, pred, gt


def test_error_overlay_colours(case):
    image, pred, gt = case
    a = 0.45
    out = error_overlay(image, pred, gt, alpha=a)
    assert out.shape == image.shape and out.dtype == np.uint8

    def blend(colour):
        return np.floor((1 - a) * 100.0 + a * np.array(colour, float))

    # False positive (inside the prediction, not on its outline): reddened.
    np.testing.assert_allclose(out[5, 8], blend((255, 0, 0)), atol=1)  # (169, 55, 55)
    assert out[5, 8, 0] > 150 and out[5, 8, 1] < 60 and out[5, 8, 2] < 60
    # False negative: bluish.
    np.testing.assert_allclose(out[5, 2], blend((0, 80, 255)), atol=1)  # (55, 91, 169)
    assert out[5, 2, 2] > out[5, 2, 1] > out[5, 2, 0]
    # True positive interior and true negative: unchanged.
    np.testing.assert_array_equal(out[5, 6], image[5, 6])
    np.testing.assert_array_equal(out[0, 0], image[0, 0])
    np.testing.assert_array_equal(out[11, 13], image[11, 13])
    # Predicted outlines (inner boundary of the prediction) are yellow, whatever lies below.
    outline = np.zeros(pred.shape, bool)
    outline[2:8, 4:10] = True
    outline[3:7, 5:9] = False
    assert np.all(out[outline] == (255, 230, 0))
    # Everything else is untouched by the outline colour.
    assert not np.any(np.all(out[~outline] == (255, 230, 0), axis=-1))
    # Error pixels are exactly the FP/FN pixels off the outline.
    changed = np.any(out != image, axis=-1) & ~outline
    np.testing.assert_array_equal(changed, ((pred > 0) != (gt > 0)) & ~outline)


def test_error_overlay_alpha_zero_changes_only_outlines(case):
    image, pred, gt = case
    out = error_overlay(image, pred, gt, alpha=0.0)
    inside = np.zeros(pred.shape, bool)
    inside[3:7, 5:9] = True
    off_outline = (pred == 0) | inside
    np.testing.assert_array_equal(out[off_outline], image[off_outline])


def test_error_overlay_shape_mismatch(case):
    image, pred, gt = case
    with pytest.raises(ValueError, match="shapes differ"):
        error_overlay(image, pred, gt[:-1])
    with pytest.raises(ValueError, match="shapes differ"):
        error_overlay(image[:, :-1], pred, gt)


def test_plot_history_writes_png(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_dice": 0.5 + 0.1 * e,
                "lr": 1e-3 * (0.5 ** e), "seconds": 0.1} for e in range(1, 5)]
    path = tmp_path / "sub" / "curves.png"
    plot_history(history, path, dpi=50)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    # 9 x 3.2 inches at 50 dpi: the IHDR chunk holds width and height.
    assert int.from_bytes(data[16:20], "big") == 450 and int.from_bytes(data[20:24], "big") == 160
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]

    no_val = [{"epoch": 1, "train_loss": 0.7, "lr": 1e-3}]
    plot_history(no_val, tmp_path / "b.png", dpi=50)
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC


REFERENCES = {
    "glas_testA": [
        {"method": "DCAN", "source": "Chen et al., CVPR 2016",  # keys sorted, as the validated config has them
         "metrics": {"object_dice_pooled": 0.897, "object_f1_pooled": 0.912, "object_hausdorff_pooled": 45.4}},
        {"method": "plain", "source": "issue 11", "note": "4,000 steps", "metrics": {"object_f1_pooled": 0.864}},
    ],
}


def _finished_run(root) -> None:
    """A results tree as a finished run leaves it: summaries, specs (one two-stage model, one
    ensemble) and the predict job's benchmark file."""
    def put(rel: str, obj) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))

    put("metrics/unet/glas_testA_summary.json", {"n_images": 2, "object_f1_pooled": 0.8, "object_dice_pooled": 0.85,
                                                  "object_hausdorff_pooled": 61.26, "object_f1_mean": 0.7})
    put("metrics/ens/glas_testA_summary.json", {"n_images": 2, "object_f1_pooled": 0.81})
    put("models/unet/spec.json", {"arch": "unet", "train_seconds": 100.0, "device": "cuda",
                                  "device_name": "NVIDIA H100 80GB HBM3"})
    put("models/unet/stage1/spec.json", {"arch": "unet", "train_seconds": 20.0, "device": "cuda"})
    put("models/ens/spec.json", {"members": ["unet", "unet"], "threshold": 0.5})
    put("benchmarks/predict/unet/glas_testA.tsv", "s\th:m:s\tmax_rss\n12.34\t0:00:12\t900\n")


def test_reference_table_puts_published_and_our_figures_in_the_same_columns(tmp_path):
    _finished_run(tmp_path)
    assert model_timing(str(tmp_path), "unet", "glas_testA") == {
        "train_seconds": 120.0, "predict_seconds": 12.34, "device": "NVIDIA H100 80GB HBM3"}
    assert model_timing(str(tmp_path), "ens", "glas_testA") == {
        "train_seconds": None, "predict_seconds": None, "device": None}
    table = reference_table(str(tmp_path), ["unet", "ens"], "glas_testA", REFERENCES["glas_testA"])
    rows = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(<td>.*?)</tr>", table)]
    assert "<th>object F1</th><th>object Dice</th><th>object Hausdorff (px)</th><th>training (s)</th>" in table
    assert rows[0][:5] == ["DCAN", "Chen et al., CVPR 2016", "0.912", "0.897", "45.4"]
    assert rows[1][:5] == ["plain", "issue 11 — 4,000 steps", "0.864", "–", "–"]  # a figure not published
    assert rows[2] == ["histoflow: unet", "this run", "0.800", "0.850", "61.3", "120", "12.3", "NVIDIA H100 80GB HBM3"]
    assert rows[3] == ["histoflow: ens", "this run", "0.810", "–", "–", "–", "–", "–"]


def test_reference_table_reads_the_per_fibre_summary_for_ft_and_dt_columns(tmp_path):
    # the VGG16 fibre paper's Table 1 columns live in <dataset>_fibres.json, not in the evaluation summary
    (tmp_path / "metrics" / "vgg").mkdir(parents=True)
    (tmp_path / "metrics" / "vgg" / "fibres_summary.json").write_text(json.dumps({"n_images": 3, "aji_mean": 0.7}))
    (tmp_path / "metrics" / "vgg" / "fibres_fibres.json").write_text(json.dumps(
        {"n_images": 3, "ft_f1_mean": 0.812, "dt_f1_mean": 0.845, "ft_threshold": 0.4}))
    paper = [{"method": "VGG16 MDN", "source": "Table 1", "note": "their 500 muscle images",
              "metrics": {"dt_f1_mean": 0.89, "ft_f1_mean": 0.86}}]
    table = reference_table(str(tmp_path), ["vgg"], "fibres", paper)
    rows = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(<td>.*?)</tr>", table)]
    assert "<th>F (FT)</th><th>F (DT)</th>" in table  # the usual order, not the config's
    assert rows[0][:4] == ["VGG16 MDN", "Table 1 — their 500 muscle images", "0.860", "0.890"]
    assert rows[1][:4] == ["histoflow: vgg", "this run", "0.812", "0.845"]


def test_reference_section_only_for_datasets_with_references(tmp_path):
    _finished_run(tmp_path)
    assert reference_section(str(tmp_path), ["unet"], {}, ["glas_testA"]) == []
    assert reference_section(str(tmp_path), ["unet"], REFERENCES, ["glas_testB"]) == []
    parts = reference_section(str(tmp_path), ["unet"], REFERENCES, ["glas_testA", "glas_testB"])
    html = "".join(parts)
    assert "Against published results" in html and "<h3>glas_testA</h3>" in html and "glas_testB" not in html
