"""Workflow tests: lint, dry runs, a real run of a tiny config, reruns after config edits, --report.

The real run is marked ``slow`` (about a minute on 2 cores). The rerun tests build on its outputs and
check that ``snakemake -n`` lists exactly the jobs an edit should trigger.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = {
    "results": "results",
    "device": "cpu",
    "seed": 0,
    "demo": {"n_images": 6, "size": 96, "fibre_diameter": 24, "seed": 1},
    "datasets": {"demo": {"generator": "muscle_fibres", "split": "auto", "test_fraction": 0.34}},
    "stain": {"method": "macenko"},
    "patches": {"size": 64, "per_image": 4, "val_fraction": 0.25},
    "models": {
        "a": {"arch": "unet", "params": {"base_width": 4, "depth": 2}, "train": {"epochs": 2, "batch_size": 4},
              "predict": {"tile": 64, "overlap": 16}},
        "b": {"arch": "unet", "params": {"base_width": 4, "depth": 2}, "train": {"epochs": 1, "batch_size": 4},
              "predict": {"tile": 64, "overlap": 16}},
        # two-stage fibre network: boundaries (stage 1), then interiors fine-tuned from it (stage 2)
        "f": {"arch": "vgg16_mdn", "params": {"base_width": 4, "decoder_width": 4},
              "pretrain": {"target": "boundaries", "loss": "weighted_bce", "epochs": 1, "batch_size": 4},
              "train": {"target": "interiors", "loss": "weighted_bce", "reliability": 0.95, "epochs": 1,
                        "batch_size": 4, "lr": 0.0005},
              "predict": {"tile": 64, "overlap": 16}},
    },
    "ensembles": {"ab": {"members": ["a", "b"]}},
    "report": {"n_overlays": 1},
}


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def planned_jobs(output: str) -> set[str]:
    """``rule[wildcards]`` for every job a dry run lists."""
    jobs = set()
    for block in re.split(r"\n(?=\[.*?\]\n)|\n\n", output):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m:
            continue
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        jobs.add(f"{m.group(1)}[{wc.group(1)}]" if wc else m.group(1))
    return jobs


def write_config(workdir: Path, cfg: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def tiny_config() -> dict:
    return yaml.safe_load(yaml.safe_dump(TINY, sort_keys=False))


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "good condition" in proc.stdout + proc.stderr


def test_default_config_dry_run(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    jobs = planned_jobs(smk(tmp_path, "-n").stdout)
    for rule in ("demo_data", "fit_stain", "normalize_stain", "extract_patches", "report"):
        assert any(j.startswith(rule) for j in jobs), (rule, jobs)
    assert "train_model[model=unet]" in jobs
    assert "evaluate[model=unet, dataset=demo]" in jobs


def test_config_error_names_key_path(tmp_path):
    bad = {**TINY, "models": {"a": {"arch": "unet", "train": {"epochs": "ten"}}}}
    write_config(tmp_path, bad)
    proc = smk(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "models.a.train.epochs" in proc.stdout + proc.stderr


def test_missing_mask_is_reported_before_any_job(tmp_path):
    import numpy as np

    from histoflow.io import write_image

    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "imgs" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_config(tmp_path, {**TINY, "datasets": {"mine": {"images": "imgs", "masks": "masks"}}})
    proc = smk(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "imgs/a.png" in out and "no mask" in out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    write_config(workdir, TINY)
    smk(workdir)
    return workdir


@pytest.mark.slow
def test_tiny_run_produces_everything(tiny_run):
    r = tiny_run / "results"
    html = (r / "report.html").read_text()
    for text in ("object F1", "Training", "Runtimes", "Stain normalization", "data:image/png;base64"):
        assert text in html
    for m in ("a", "b", "ab"):
        table = (r / "metrics" / m / "demo.tsv").read_text().splitlines()
        assert table[0].startswith("image\t") and len(table) == 1 + 2  # 2 test images of 6
    ens = json.loads((r / "models" / "ab" / "spec.json").read_text())
    specs = [json.loads((r / "models" / m / "spec.json").read_text()) for m in ("a", "b")]
    assert ens["threshold"] == pytest.approx((specs[0]["threshold"] + specs[1]["threshold"]) / 2)
    pa, pb, pab = (tifffile.imread(next((r / "predictions" / m / "demo").glob("*.tif"))) for m in ("a", "b", "ab"))
    np.testing.assert_allclose(pab, (pa + pb) / 2, atol=1e-6)
    for m in ("a", "b"):
        assert (r / "models" / m / "model.pt").exists()
        assert (r / "models" / m / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (r / "models" / m / "augmented.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((r / "report_figures").glob("*.png"))
    geo = json.loads(next((r / "objects" / "a" / "demo").glob("*.geojson")).read_text())
    assert geo["type"] == "FeatureCollection" and geo["features"]
    props = geo["features"][0]["properties"]
    assert props["objectType"] == "detection" and "min_feret_px" in props["measurements"]
    assert (r / "objects" / "a" / "demo" / "morphometry.tsv").read_text().startswith("image\tobject\t")
    assert "Morphometry" in html
    assert (r / "logs" / "train_model" / "a.log").read_text().strip()
    assert (r / "benchmarks" / "train_model" / "a.tsv").exists()
    # two-stage training: stage 1 on boundaries, stage 2 on interiors initialised from it
    s1 = json.loads((r / "models" / "f" / "stage1" / "spec.json").read_text())
    s2 = json.loads((r / "models" / "f" / "spec.json").read_text())
    assert (s1["target"], s1["stage"], s2["target"], s2["stage"]) == ("boundaries", "pretrain", "interiors", "train")
    assert "initialised from" in (r / "logs" / "train_model" / "f.log").read_text()
    assert not (r / "models" / "f" / "checkpoint.pt").exists()  # removed once the model is saved
    fib = json.loads((r / "metrics" / "f" / "demo_fibres.json").read_text())
    assert fib["n_images"] == 2 and 0 <= fib["ft_f1_mean"] <= fib["dt_f1_mean"] <= 1
    assert "fibre_f1_mean" in json.loads((r / "metrics" / "a" / "demo_summary.json").read_text())
    assert "Per-fibre precision and recall" in html and "F1 (DT)" in html and "Stage 1" in html


@pytest.mark.slow
def test_second_dry_run_has_nothing_to_do(tiny_run):
    proc = smk(tiny_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_snakemake_report(tiny_run):
    smk(tiny_run, "--report", "smk_report.html")
    assert (tiny_run / "smk_report.html").stat().st_size > 10_000


def _jobs_after_edit(workdir: Path, edit) -> set[str]:
    cfg = tiny_config()
    edit(cfg)
    write_config(workdir, cfg)
    try:
        return planned_jobs(smk(workdir, "-n").stdout)
    finally:
        write_config(workdir, TINY)


@pytest.mark.slow
def test_reordering_config_keys_reruns_nothing(tiny_run):
    def reorder(c: dict) -> None:
        items = list(c.items())[::-1]
        c.clear()
        c.update(items)
        c["demo"] = dict(reversed(list(c["demo"].items())))

    assert _jobs_after_edit(tiny_run, reorder) == set()


@pytest.mark.slow
def test_model_edit_reruns_only_that_model(tiny_run):
    jobs = _jobs_after_edit(tiny_run, lambda c: c["models"]["b"]["train"].update(lr=0.01))
    assert jobs == {
        "train_model[model=b]", "predict[model=b, dataset=demo]", *downstream_of_predictions("b"), "report", "all",
        # the ensemble that contains b, and nothing of a
        "ensemble_spec[model=ab]", "ensemble_predict[model=ab, dataset=demo]", *downstream_of_predictions("ab"),
    }


@pytest.mark.slow
def test_predict_edit_repredicts_without_retraining(tiny_run):
    # inference settings are read by the predict rules only: the trained weights (both stages of f) are kept
    def edit(c: dict) -> None:
        c["models"]["b"]["predict"]["overlap"] = 8
        c["models"]["f"]["predict"]["overlap"] = 8

    jobs = _jobs_after_edit(tiny_run, edit)
    assert {"predict[model=b, dataset=demo]", "predict[model=f, dataset=demo]"} <= jobs
    assert not any(j.startswith(("train_model", "pretrain_model")) for j in jobs), jobs
    assert "predict[model=a, dataset=demo]" not in jobs


@pytest.mark.slow
def test_turning_the_per_fibre_sweep_off_reruns_only_the_report(tiny_run):
    jobs = _jobs_after_edit(tiny_run, lambda c: c.setdefault("evaluate", {}).update(per_fibre=False))
    assert jobs == {"report", "all"}  # the sweeps are no longer the report's inputs; nothing else changes


def test_no_per_fibre_sweep_is_planned_when_it_is_off(tmp_path):
    write_config(tmp_path, {**TINY, "evaluate": {"per_fibre": False}})
    jobs = planned_jobs(smk(tmp_path, "-n").stdout)
    assert "evaluate[model=a, dataset=demo]" in jobs
    assert not any(j.startswith("evaluate_fibres") for j in jobs), jobs


def downstream_of_predictions(model: str) -> set[str]:
    return {f"{rule}[model={model}, dataset=demo]"
            for rule in ("postprocess", "evaluate", "evaluate_fibres", "export_objects")}


@pytest.mark.slow
def test_stage2_edit_does_not_rerun_stage1(tiny_run):
    jobs = _jobs_after_edit(tiny_run, lambda c: c["models"]["f"]["train"].update(lr=0.001, reliability=0.9))
    assert jobs == {"train_model[model=f]", "predict[model=f, dataset=demo]", *downstream_of_predictions("f"),
                    "report", "all"}


@pytest.mark.slow
def test_stage1_edit_reruns_both_stages(tiny_run):
    jobs = _jobs_after_edit(tiny_run, lambda c: c["models"]["f"]["pretrain"].update(lr=0.002))
    assert jobs == {"pretrain_model[model=f]", "train_model[model=f]", "predict[model=f, dataset=demo]",
                    *downstream_of_predictions("f"), "report", "all"}


@pytest.mark.slow
def test_stain_edit_reruns_everything_downstream(tiny_run):
    jobs = _jobs_after_edit(tiny_run, lambda c: c["stain"].update(method="reinhard"))
    expected = {"fit_stain", "normalize_stain[dataset=demo]", "extract_patches", "report", "all",
                "ensemble_spec[model=ab]", "ensemble_predict[model=ab, dataset=demo]", "pretrain_model[model=f]"}
    for m in ("a", "b", "f"):
        expected |= {f"train_model[model={m}]", f"predict[model={m}, dataset=demo]"}
    for m in ("a", "b", "ab", "f"):
        expected |= downstream_of_predictions(m)
    assert jobs == expected


@pytest.mark.slow
def test_report_edit_reruns_only_the_report(tiny_run):
    jobs = _jobs_after_edit(tiny_run, lambda c: c["report"].update(n_overlays=2, overlay_alpha=0.3))
    assert jobs == {"report", "all"}


@pytest.mark.slow
def test_postprocess_edit_reruns_postprocess_evaluate_and_report(tiny_run):
    jobs = _jobs_after_edit(tiny_run, lambda c: c.setdefault("postprocess", {}).update(graphcut=True))
    expected = {"report", "all"}
    for m in ("a", "b", "ab", "f"):
        expected |= downstream_of_predictions(m)
    assert jobs == expected
