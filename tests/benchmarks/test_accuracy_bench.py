"""benchmarks/accuracy.py on a fake finished run: which figures it records, from where, and which runs
it refuses (a subset of the test images, another recipe than the config's)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "benchmarks" / "accuracy.py")
accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(accuracy)

CONFIG = {
    "results": "res",
    "datasets": {
        "glas_train": {"images": "data/train/images", "masks": "data/train/labels", "split": "train"},
        "glas_testA": {"images": "data/testA/images", "masks": "data/testA/labels", "split": "test"},
    },
    "models": {
        "unet": {"arch": "unet", "params": {"base_width": 8, "depth": 2}, "train": {"epochs": 2}},
        "mdn": {"arch": "vgg16_mdn", "params": {"base_width": 4}, "pretrain": {"target": "boundaries", "epochs": 1},
                "train": {"target": "interiors", "epochs": 3}},
    },
    "ensembles": {"both": {"members": ["unet", "mdn"]}},
    "references": {"glas_testA": [{"method": "DCAN", "source": "Chen et al., CVPR 2016",
                                   "metrics": {"object_f1_pooled": 0.912}}]},
}
SUMMARY = {"n_images": 2, "object_f1_pooled": 0.8, "object_dice_pooled": 0.85, "object_hausdorff_pooled": 50.25,
           "aji_mean": 0.6, "pixel_f1_mean": 0.9, "object_f1_mean": 0.7, "object_dice_mean": 0.1}


def put(path: Path, content: str | dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def history(epochs: int) -> str:
    return "epoch\ttrain_loss\n" + "".join(f"{e}\t0.5\n" for e in range(1, epochs + 1))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A workdir with the config, its (empty) image files and a finished run's outputs."""
    for split, stems in (("train", ["t1", "t2"]), ("testA", ["a1", "a2"])):
        for sub in ("images", "labels"):
            for s in stems:
                put(tmp_path / "data" / split / sub / f"{s}.png", "")
    put(tmp_path / "cfg.yaml", yaml.safe_dump(CONFIG, sort_keys=False))
    r = tmp_path / "res"
    for m in ("unet", "mdn", "both"):
        put(r / "metrics" / m / "glas_testA_summary.json", SUMMARY | {"object_f1_pooled": {"unet": 0.8, "mdn": 0.75,
                                                                                           "both": 0.81}[m]})
    put(r / "models" / "unet" / "spec.json", {"arch": "unet", "train_seconds": 100.0, "device": "cuda",
                                              "kwargs": {"in_channels": 3, "out_channels": 1, "base_width": 8,
                                                         "depth": 2}})
    put(r / "models" / "unet" / "history.tsv", history(2))
    put(r / "models" / "mdn" / "spec.json", {"arch": "vgg16_mdn", "train_seconds": 30.0, "device": "cuda",
                                             "device_name": "NVIDIA H200",
                                             "kwargs": {"in_channels": 3, "out_channels": 1, "base_width": 4}})
    put(r / "models" / "mdn" / "history.tsv", history(3))
    put(r / "models" / "mdn" / "stage1" / "spec.json", {"arch": "vgg16_mdn", "train_seconds": 12.0})
    put(r / "models" / "mdn" / "stage1" / "history.tsv", history(1))
    put(r / "models" / "both" / "spec.json", {"members": ["unet", "mdn"], "threshold": 0.5})
    for m, s in (("unet", 7.5), ("mdn", 9.0)):
        put(r / "benchmarks" / "predict" / m / "glas_testA.tsv", f"s\th:m:s\n{s}\t0:00:07\n")
    return tmp_path


def record(run: Path, out: Path, *extra: str) -> int:
    return accuracy.main(["--config", str(run / "cfg.yaml"), "--workdir", str(run), "--out", str(out), *extra])


def test_records_the_official_figures_of_every_model(run, tmp_path, capsys):
    out = tmp_path / "accuracy.json"
    assert record(run, out, "--device-name", "NVIDIA H100 80GB HBM3") == 0
    data = json.loads(out.read_text())
    assert set(data) == {f"glas_testA_{k}" for k in ("object_f1", "object_dice", "object_hausdorff", "aji", "dice")}
    f1 = {e["model"]: e for e in data["glas_testA_object_f1"]}
    assert {m: e["value"] for m, e in f1.items()} == {"unet": 0.8, "mdn": 0.75, "both": 0.81}
    unet, mdn = f1["unet"], f1["mdn"]
    assert data["glas_testA_object_dice"][0]["value"] == 0.85  # the pooled figure, not the per-image mean
    assert unet["summary_key"] == "object_f1_pooled" and unet["n_images"] == 2 and unet["arch"] == "unet"
    assert unet["recipe"]["params"] == {"base_width": 8, "depth": 2} and unet["recipe"]["train"]["epochs"] == 2
    assert unet["recipe"]["train"]["batch_size"] == 8  # the validated block, defaults included
    assert (unet["train_seconds"], unet["predict_seconds"], unet["device"]) == (100.0, 7.5, "NVIDIA H100 80GB HBM3")
    assert (mdn["train_seconds"], mdn["device"]) == (42.0, "NVIDIA H200")  # both stages; the name the run recorded
    assert f1["both"]["train_seconds"] is None and f1["both"]["arch"] == "ensemble"
    assert unet["config"].endswith("cfg.yaml") and len(unet["date"]) == 10
    table = capsys.readouterr().out
    assert "| glas_testA_object_f1 | unet | 0.800 | DCAN 0.912 | NVIDIA H100 80GB HBM3 | 100 | 7.5 |" in table
    assert "| glas_testA_object_hausdorff | unet | 50.2 | – |" in table


def test_rerun_replaces_its_own_entries_and_keeps_the_others(run, tmp_path):
    out = tmp_path / "accuracy.json"
    other = {"model": "mask_rcnn", "config": "config/glas.yaml", "value": 0.9}
    out.write_text(json.dumps({"glas_testA_object_f1": [other], "monuseg_aji": [other]}))
    assert record(run, out) == 0
    assert record(run, out) == 0
    data = json.loads(out.read_text())
    assert data["monuseg_aji"] == [other]
    assert [e["model"] for e in data["glas_testA_object_f1"]].count("unet") == 1
    assert other in data["glas_testA_object_f1"] and len(data["glas_testA_object_f1"]) == 4
    unet = next(e for e in data["glas_testA_object_f1"] if e["model"] == "unet")
    assert unet["device"].startswith("cuda (GPU model not recorded")


def test_another_recipe_keeps_the_earlier_one_as_superseded(run, tmp_path):
    """Every recipe scored stays recorded: the config moved on (here: its post-processing, given as an overlay), so
    the earlier entry is kept and marked; rerunning the new recipe replaces only its own entry."""
    out = tmp_path / "accuracy.json"
    assert record(run, out) == 0
    put(run / "overlay.yaml", yaml.safe_dump({"postprocess": {"threshold": 0.6, "min_size": 2000}}))
    args = ["--config", str(run / "cfg.yaml"), str(run / "overlay.yaml"), "--workdir", str(run), "--out", str(out)]
    assert accuracy.main(args) == 0
    assert accuracy.main(args) == 0
    unet = [e for e in json.loads(out.read_text())["glas_testA_object_f1"] if e["model"] == "unet"]
    assert len(unet) == 2  # the cfg.yaml-only entry, and one (not two) of the overlay's
    old, new = sorted(unet, key=lambda e: e["config"])
    assert old["postprocess"]["threshold"] is None and "superseded" not in old  # another config: both current
    assert new["config"].endswith("cfg.yaml " + str(run / "overlay.yaml"))
    assert (new["postprocess"]["threshold"], new["postprocess"]["min_size"]) == (0.6, 2000)
    (run / "overlay.yaml").write_text(yaml.safe_dump({"postprocess": {"threshold": 0.5}}))
    changed = {"model": "unet", "config": new["config"], "recipe": new["recipe"],
               "postprocess": {**new["postprocess"], "threshold": 0.5}}
    merged = accuracy.merge({"k": [new]}, {"k": {"unet": changed}})
    assert merged["k"] == [{**new, "superseded": True}, changed]  # same model and config, another setting


def test_dry_run_writes_nothing(run, tmp_path):
    out = tmp_path / "accuracy.json"
    assert record(run, out, "--dry-run") == 0
    assert not out.exists()


@pytest.mark.parametrize("break_run, message", [
    (lambda r: put(r / "res/metrics/unet/glas_testA_summary.json", SUMMARY | {"n_images": 1}),
     "1 of the 2 test images"),
    (lambda r: put(r / "res/models/unet/spec.json", {"arch": "unet", "train_seconds": 1.0, "device": "cpu",
                                                     "kwargs": {"base_width": 4, "depth": 2}}),
     "not that config's run"),
    (lambda r: put(r / "res/models/mdn/stage1/history.tsv", history(2)), "2 epoch(s) trained"),
    (lambda r: (r / "res/metrics/mdn/glas_testA_summary.json").unlink(), "has not finished"),
])
def test_refuses_runs_that_are_not_the_configs_benchmark(run, tmp_path, capsys, break_run, message):
    out = tmp_path / "accuracy.json"
    break_run(run)
    assert record(run, out) == 1
    assert message in capsys.readouterr().err and not out.exists()


def test_figure_names():
    assert accuracy.figure_prefix("monuseg_test") == "monuseg" and accuracy.figure_prefix("glas_testB") == "glas_testB"
    assert accuracy.summary_figures({"pooled_mean_dice": 0.8, "pooled_dice_membrane": 0.7, "aji_mean": 0.1},
                                    ["membrane", "cell"]) == {"mean_dice": ("pooled_mean_dice", 0.8),
                                                              "membrane_dice": ("pooled_dice_membrane", 0.7)}


def test_a_cpu_run_records_the_cpu_threads_precision_and_backend(run, tmp_path):
    put(run / "res/models/mdn/spec.json", {"arch": "vgg16_mdn", "train_seconds": 30.0, "device": "cpu",
                                           "device_name": "AMD EPYC 9R14 (2 cores)", "threads": 2,
                                           "precision": "fp32",
                                           "kwargs": {"in_channels": 3, "out_channels": 1, "base_width": 4}})
    put(run / "res/predictions/mdn/glas_testA/backend.json", {"backend": "openvino", "precision": "fp32"})
    out = tmp_path / "accuracy.json"
    assert record(run, out) == 0
    f1 = {e["model"]: e for e in json.loads(out.read_text())["glas_testA_object_f1"]}
    mdn, both = f1["mdn"], f1["both"]
    assert (mdn["device"], mdn["threads"], mdn["train_precision"]) == ("AMD EPYC 9R14 (2 cores)", 2, "fp32")
    assert (mdn["inference_backend"], mdn["inference_precision"]) == ("openvino", "fp32")
    assert both["threads"] is None and both["inference_backend"] is None  # an ensemble: neither recorded


def test_validation_images_scored_as_a_test_dataset_are_not_recorded(run, tmp_path):
    # glas_val: one of the training images, scored as a test split to choose a CPU recipe (no summary needed:
    # it is skipped before its figures are looked for)
    cfg = {**CONFIG, "datasets": {**CONFIG["datasets"], "glas_val": {
        "images": "data/train/images", "masks": "data/train/labels", "split": "test", "stems": ["t2"]}}}
    put(run / "cfg.yaml", yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "accuracy.json"
    assert record(run, out) == 0
    assert all(k.startswith("glas_testA_") for k in json.loads(out.read_text()))


def test_the_held_out_test_part_of_a_split_auto_dataset_is_a_benchmark_figure():
    """ISBI 2012: one folder, split: auto holds out 6 slices as the test part; only the validation slices scored
    as a test split (made of training images) are left out. The test part shares the folder, not the images."""
    from types import SimpleNamespace

    images = {s: f"/data/em/{s}.png" for s in ("s1", "s2", "s3", "s4")}
    datasets = {"em": SimpleNamespace(images=images, train=["s1", "s2", "s3"], test=["s4"]),
                "em_val": SimpleNamespace(images=images, train=[], test=["s3"])}
    assert accuracy.validation_datasets(datasets) == {"em_val"}
