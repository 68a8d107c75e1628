"""The public-benchmark configs (config/glas.yaml, monuseg.yaml, isbi_em.yaml, their CPU recipes glas_cpu.yaml,
monuseg_cpu.yaml, isbi_em_cpu.yaml, and the seed configs) against the real data.

Always: each config validates against the schema and follows the benchmark protocol (test datasets
are only ever test, references name test datasets). With ``../shared/datasets/<set>`` beside the
repository (skipped cleanly without it): a dry run of each config as a user runs it, and a real run
end to end on CPU of each config on a few images (``datasets.*.limit``), 1 epoch of 2 steps and
tiny network widths, given as a second ``--configfile`` over the config's own recipe (marked slow).

The workflow runs in a temporary folder holding a link ``shared`` → the real ``../shared``, so the
configs' ``../shared/datasets/...`` paths resolve exactly as they do from the repository root.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config
from test_workflow import planned_jobs, smk

from histoflow.config import validate_config

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"

# config file -> (folder under shared/datasets, test datasets, models)
CONFIGS = {
    "glas.yaml": ("glas", ["glas_testA", "glas_testB"], ["unet", "vgg16_mdn"]),
    "glas_cpu.yaml": ("glas", ["glas_testA", "glas_testB"], ["unet"]),
    "monuseg.yaml": ("monuseg", ["monuseg_test"], ["mask_rcnn", "unet", "usnet"]),
    "monuseg_cpu.yaml": ("monuseg", ["monuseg_test"], ["unet"]),
    "isbi_em.yaml": ("isbi2012_em", ["isbi_em"], ["rescrnet", "unet"]),
    "isbi_em_cpu.yaml": ("isbi2012_em", ["isbi_em"], ["rescrnet", "unet"]),
    "seeds/usnet.yaml": ("monuseg", ["monuseg_test"], ["usnet"]),  # validated and dry-run; its full run is #22's
    "seeds/glas_unet_maskrcnn.yaml": ("glas", ["glas_testA", "glas_testB"], ["mask_rcnn", "unet"]),
    "seeds/rescrnet.yaml": ("isbi2012_em", ["isbi_em"], ["rescrnet", "resunet"]),
}

# Run end to end on a few images in CI: the CPU recipes, which CI shrinks to tiny networks, stand in for
# config/glas.yaml and config/isbi_em.yaml (same models; glas.yaml's vgg16_mdn two-stage path runs in
# tests/workflow/test_workflow.py); monuseg.yaml runs as well for its two instance models and their vote.
REAL_RUNS = ["glas_cpu.yaml", "isbi_em_cpu.yaml", "monuseg.yaml", "monuseg_cpu.yaml"]

TINY_TRAIN = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 4, "warmup_epochs": 0}
TINY_PREDICT = {"tile": 256, "overlap": 32, "batch_size": 4}
# What each real run changes in its config: a few images, 1 epoch of 2 steps, tiny widths, CPU.
OVERRIDES = {
    "glas.yaml": {
        "datasets": {"glas_train": {"limit": 3}, "glas_testA": {"limit": 1}, "glas_testB": {"limit": 1}},
        "patches": {"size": 128, "per_image": 2},
        "models": {
            "unet": {"params": {"base_width": 4, "depth": 2}, "train": TINY_TRAIN, "predict": TINY_PREDICT},
            "vgg16_mdn": {"params": {"base_width": 4, "decoder_width": 4}, "pretrain": TINY_TRAIN,
                          "train": TINY_TRAIN, "predict": TINY_PREDICT},
        },
    },
    "glas_cpu.yaml": {
        # glas_val: the first of its 17 stems (train_14), not among the 3 training images kept here
        "datasets": {"glas_train": {"limit": 3}, "glas_val": {"limit": 1}, "glas_testA": {"limit": 1},
                     "glas_testB": {"limit": 1}},
        "patches": {"size": 128, "per_image": 2},  # at the recipe's half resolution
        "models": {"unet": {"params": {"base_width": 4, "depth": 2}, "train": TINY_TRAIN, "predict": TINY_PREDICT}},
    },
    "monuseg.yaml": {
        "datasets": {"monuseg_train": {"limit": 3}, "monuseg_test": {"limit": 1}},
        "patches": {"size": 256, "per_image": 4, "overlap": 0},  # 16 validation patches per image (128 px: 121)
        # 5 epochs of 4 steps: enough to predict nuclei apart, not one image-sized object (whose object
        # Hausdorff against the test image's ~600 nuclei alone takes a minute)
        "models": {"unet": {"params": {"base_width": 4, "depth": 2}, "train": {**TINY_TRAIN, "epochs": 5},
                            "predict": TINY_PREDICT},
                   # instance models: a fixed score threshold keeps an untrained detector's few junk boxes
                   "usnet": {"params": {"base_width": 4, "depth": 3}, "train": TINY_TRAIN,
                             "predict": {**TINY_PREDICT, "score_threshold": 0.5}},
                   "mask_rcnn": {"params": {"backbone": "resnet18", "detections_per_image": 30},
                                 "train": {**TINY_TRAIN, "batch_size": 2, "lr": 0.001},
                                 "predict": {**TINY_PREDICT, "score_threshold": 0.5}}},
    },
    "monuseg_cpu.yaml": {
        # monuseg_val: its first stem only (TCGA-21-5786, also one of the 3 training images kept here)
        "datasets": {"monuseg_train": {"limit": 3}, "monuseg_val": {"limit": 1}, "monuseg_test": {"limit": 1}},
        "patches": {"size": 256, "per_image": 4, "overlap": 0},
        "models": {"unet": {"params": {"base_width": 4, "depth": 2}, "train": {**TINY_TRAIN, "epochs": 5},
                            "predict": TINY_PREDICT}},
    },
    "isbi_em_cpu.yaml": {
        # isbi_val: slice_06 only, not among the 4 slices kept here
        "datasets": {"isbi_em": {"limit": 4, "test_fraction": 0.25}, "isbi_val": {"limit": 1}},
        "patches": {"size": 128, "per_image": 2},
        "models": {
            "rescrnet": {"params": {"filters": 4, "n_conv": 1, "n_lstm": 1, "lstm_hidden": 2},
                         "train": TINY_TRAIN, "predict": TINY_PREDICT},
            "unet": {"params": {"base_width": 4, "depth": 2}, "train": TINY_TRAIN, "predict": TINY_PREDICT},
        },
    },
    "isbi_em.yaml": {
        "datasets": {"isbi_em": {"limit": 4, "test_fraction": 0.25}},
        "patches": {"size": 128, "per_image": 2},
        "models": {
            "rescrnet": {"params": {"filters": 4, "n_conv": 1, "n_lstm": 1, "lstm_hidden": 2},
                         "train": TINY_TRAIN, "predict": TINY_PREDICT},
            "unet": {"params": {"base_width": 4, "depth": 2}, "train": TINY_TRAIN, "predict": TINY_PREDICT},
        },
    },
    "seeds/usnet.yaml": {
        "datasets": {"monuseg_train": {"limit": 3}, "monuseg_test": {"limit": 1}},
        "models": {"usnet": {"params": {"base_width": 4}, "train": TINY_TRAIN, "predict": TINY_PREDICT}},
    },
    "seeds/glas_unet_maskrcnn.yaml": {
        "datasets": {"glas_train": {"limit": 3}, "glas_testA": {"limit": 1}, "glas_testB": {"limit": 1}},
        "models": {"unet": {"params": {"base_width": 4, "depth": 2}, "train": TINY_TRAIN, "predict": TINY_PREDICT},
                   "mask_rcnn": {"params": {"backbone": "resnet18"}, "train": {**TINY_TRAIN, "batch_size": 2},
                                 "predict": TINY_PREDICT}},
    },
    "seeds/rescrnet.yaml": {
        "datasets": {"isbi_em": {"limit": 4, "test_fraction": 0.25}},
        "models": {"rescrnet": {"params": {"filters": 4, "n_conv": 1}, "train": TINY_TRAIN, "predict": TINY_PREDICT}},
    },
}


def tiny_run(name: str) -> dict:
    """The overrides of a real run: :data:`OVERRIDES` on CPU, with a 3-threshold per-object sweep."""
    return {"device": "cpu", "evaluate": {"thresholds": [0.3, 0.5, 0.7]}, **copy.deepcopy(OVERRIDES[name])}


def load(name: str) -> dict:
    return load_file(f"config/{name}")


def skip_without_data(name: str) -> None:
    folder = SHARED / "datasets" / CONFIGS[name][0]
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (the public datasets sit beside the repository, in ../shared)")


def workdir_beside_shared(tmp_path: Path) -> Path:
    """A run folder whose ``../shared`` is the real one, as the repository root's is."""
    (tmp_path / "shared").symlink_to(SHARED.resolve(), target_is_directory=True)
    workdir = tmp_path / "run"
    workdir.mkdir()
    return workdir


def run_config(workdir: Path, name: str, *args: str, overrides: dict | None = None):
    files = [str(REPO / "config" / name)]
    if overrides is not None:
        (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides, sort_keys=False))
        files.append("overrides.yaml")
    return smk(workdir, "--configfile", *files, "--replace-workflow-config", *args)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_validates_and_follows_the_protocol(name):
    folder, tests, models = CONFIGS[name]
    cfg = validate_config(load(name))
    assert sorted(cfg["models"]) == models
    assert cfg["results"] != "results"  # a benchmark never overwrites the demo's results
    for dname, d in cfg["datasets"].items():
        assert d["images"].startswith(f"../shared/datasets/{folder}/") and d["limit"] is None, dname
        if dname in tests and d["split"] != "auto":
            assert d["split"] == "test", dname
    assert set(cfg["references"]) <= set(tests)
    check_postprocess_chosen_on_validation(name, cfg, tests)
    merged = load(name)
    update_config(merged, copy.deepcopy(OVERRIDES[name]))  # merged as Snakemake merges a second --configfile
    assert validate_config(merged)["models"].keys() == cfg["models"].keys()


def check_postprocess_chosen_on_validation(name: str, cfg: dict, tests: list[str]) -> None:
    """The threshold is the model's own (chosen on the validation patches), or a setting the post-processing sweep
    chose on validation images: ``benchmarks/results/postprocess_<config>_validation.json`` records it."""
    pp = cfg["postprocess"]
    if pp["threshold"] is None:
        return
    record = REPO / "benchmarks" / "results" / f"postprocess_{Path(name).stem}_validation.json"
    assert record.exists(), f"{name}: postprocess.threshold is set by hand, but no validation sweep chose it ({record})"
    sweep = json.loads(record.read_text())
    assert sweep["dataset"] not in tests and sweep["dataset"] in cfg["datasets"]
    assert sweep["chosen"] == {k: pp[k] for k in sweep["chosen"]}, f"{name}: the config is not what {record} chose"


@pytest.mark.parametrize("overlay", sorted(p.name for p in (REPO / "config" / "ablations").glob("*.yaml")))
def test_ablation_overlays_validate_over_the_config_they_name(overlay):
    """Each ``config/ablations/*.yaml`` says in its header the command that runs it; the files it names merge (as
    Snakemake merges them) into a valid config with its own results folder."""
    header = (REPO / "config" / "ablations" / overlay).read_text()
    command = next(line for line in header.splitlines() if "--configfile" in line)
    files = command.split("--configfile", 1)[1].split("--")[0].replace("\\", " ").split()
    assert files[-1] == f"config/ablations/{overlay}", command
    merged: dict = {}
    for f in files:
        update_config(merged, yaml.safe_load((REPO / f).read_text()))
    cfg = validate_config(merged)
    assert cfg["results"] not in {"results", *(validate_config(load_file(f))["results"] for f in files[:-1])}


def load_file(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dry_run_on_the_shared_data(name, tmp_path):
    skip_without_data(name)
    _, tests, models = CONFIGS[name]
    jobs = planned_jobs(run_config(workdir_beside_shared(tmp_path), name, "-n").stdout)
    for m in models:
        assert f"train_model[model={m}]" in jobs
    for m in models + sorted(validate_config(load(name))["ensembles"]):
        for d in tests:
            assert f"evaluate[model={m}, dataset={d}]" in jobs
    assert not any(j.startswith("evaluate[") and "train" in j.split("dataset=")[1] for j in jobs)


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("name", REAL_RUNS)
def test_real_run_on_a_few_images(name, tmp_path):
    skip_without_data(name)
    _, tests, models = CONFIGS[name]
    workdir = workdir_beside_shared(tmp_path)
    run_config(workdir, name, overrides=tiny_run(name))
    cfg = validate_config(load(name))
    results = workdir / cfg["results"]
    html = (results / "report.html").read_text()
    for m in models + sorted(cfg["ensembles"]):
        for d in tests:
            summary = json.loads((results / "metrics" / m / f"{d}_summary.json").read_text())
            assert summary["n_images"] == 1
            if not cfg["classes"]:
                for key in ("object_f1_pooled", "object_dice_pooled", "object_hausdorff_pooled", "aji_mean"):
                    assert key in summary, key
    # glands, nuclei, EM classes: no per-fibre sweep (evaluate.per_fibre: false), in the run or in its report
    assert cfg["classes"] or not cfg["evaluate"]["per_fibre"]
    assert not list((results / "metrics").rglob("*_fibres.json")) and "Per-fibre precision" not in html
    if cfg["references"]:
        assert "Against published results" in html
        for refs in cfg["references"].values():
            assert all(r["method"] in html for r in refs)
    again = run_config(workdir, name, "-n", overrides=tiny_run(name))
    assert "Nothing to be done" in again.stdout + again.stderr
