"""The tiny workflow through ``profiles/slurm`` on a real SLURM, compared with a local run.

Needs a SLURM with an idle node: ``bash .ci/slurm.sh python -m pytest -m slurm tests/test_slurm.py``
starts a single-node one (partition ``ci``, one fake GPU) and stops it afterwards; without one these
tests are skipped (under .ci/slurm.sh, which sets ``HISTOFLOW_SLURM_REQUIRED=1``, they fail
instead). The SLURM run uses ``profiles/slurm`` as a facility would, plus the CI overlay
``.ci/profiles/slurm-ci`` (partition, memory, cores and threads, squeue status queries), merged
entry by entry so that everything else (GPU requests, ``--signal``, retries, groups) is the real
profile's.

Both runs train with 2 threads on CPU (``device: cpu``), so every output is compared for equality:
files byte for byte where they hold no timings, and with timings (``spec.json``'s ``train_seconds``,
``history.tsv``'s ``seconds``) dropped otherwise; model weights tensor for tensor (``model.pt`` is
written under a temporary name that ends up in the archive, so its bytes differ).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from test_workflow import REPO, SNAKEMAKE, TINY, smk, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CI_OVERLAY = REPO / ".ci" / "profiles" / "slurm-ci" / "config.yaml"
SUBMITTED = re.compile(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def idle_slurm_node() -> str | None:
    """None when ``sinfo`` answers with an idle node, else why not (the skip reason)."""
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH (run through .ci/slurm.sh)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo did not answer: {exc}"
    if proc.returncode != 0 or "idle" not in proc.stdout.split():
        answer = (proc.stdout + proc.stderr).strip().splitlines()
        return f"no idle SLURM node (sinfo: {answer[0] if answer else 'no answer'}; run through .ci/slurm.sh)"
    return None


def merged_overlay(dest: Path) -> Path:
    """``.ci/profiles/slurm-ci`` with each of its keys merged into profiles/slurm's entry for that key.

    Snakemake gives the later of two ``--profile``s whole top-level keys, so a plain overlay
    re-declaring ``set-resources`` would drop the real profile's GPU requests and ``--signal``.
    """
    base = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    overlay = yaml.safe_load(CI_OVERLAY.read_text())
    merged = {}
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = dict(base[key])
            for k, v in value.items():
                merged[key][k] = {**base[key][k], **v} if isinstance(v, dict) and isinstance(base[key].get(k), dict) else v
        else:
            merged[key] = value
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(local results, SLURM results, SLURM run's Snakemake output): the tiny config run both ways."""
    reason = idle_slurm_node()
    if reason and os.environ.get("HISTOFLOW_SLURM_REQUIRED") == "1":  # set by .ci/slurm.sh
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    local = tmp_path_factory.mktemp("local")
    write_config(local, TINY)
    smk(local)

    cluster = tmp_path_factory.mktemp("slurm")
    write_config(cluster, TINY)
    overlay = merged_overlay(tmp_path_factory.mktemp("profile") / "slurm-ci")
    # As a facility runs it (no --cores: the profile's own settings must be enough), plus the overlay.
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(cluster),
           "--profile", str(REPO / "profiles" / "slurm"), "--profile", str(overlay),
           "--workflow-profile", "none", "--verbose"]
    proc = subprocess.run(cmd, cwd=cluster, capture_output=True, text=True, timeout=600)
    (cluster / "snakemake.out").write_text(proc.stdout + proc.stderr)  # to look at when a test fails
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return local / "results", cluster / "results", proc.stdout + proc.stderr


def sbatch_calls(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("sbatch call:")]


def test_jobs_went_through_sbatch(runs):
    _, results, log = runs
    submitted = dict(SUBMITTED.findall(log))  # SLURM job id -> its log file
    # 2 group jobs (the small CPU rules before training and after inference) + train_model and
    # predict for each of the 2 models, each with its own SLURM job id
    assert len(submitted) == 6, submitted
    logs = list(submitted.values())
    for kind, n in (("/group_prepare_", 1), ("/group_finish_", 1), ("/rule_train_model/", 2), ("/rule_predict/", 2)):
        assert sum(kind in f for f in logs) == n, (kind, logs)
    assert (results / "report.html").exists()


def test_profile_reaches_sbatch(runs):
    """What profiles/slurm asks for is what sbatch got: GPU, CPUs per GPU, signal, partition, memory."""
    calls = sbatch_calls(runs[2])
    train = [c for c in calls if "rule_train_model" in c]
    predict = [c for c in calls if "rule_predict" in c]
    assert len(train) == 2 and len(predict) == 2, calls
    for c in train + predict:
        assert "--gpus=1" in c and "--cpus-per-gpu=2" in c and "-p ci" in c, c
        assert "--mem 3000" in c, c
    for c in train:
        assert "--signal=USR1@300" in c and "-t 480" in c, c
    for c in predict:
        assert "--signal" not in c and "-t 120" in c, c
    groups = [c for c in calls if "group_" in c]
    assert len(groups) == 2 and all("--gpus" not in c for c in groups), groups


def same_files(a: Path, b: Path, pattern: str = "*") -> list[str]:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob(pattern) if p.is_file())
    assert names, f"nothing under {a}"
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob(pattern) if p.is_file())
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


def test_data_and_stain_outputs_are_byte_identical(runs):
    local, cluster, _ = runs
    for sub in ("data/demo", "normalized/demo", "stain", "patches"):
        differ = same_files(local / sub, cluster / sub)
        if sub == "patches":  # HDF5 may differ in metadata (object times): its datasets are compared below
            differ = [n for n in differ if n != "patches.h5"]
        assert differ == [], (sub, differ)
    with h5py.File(local / "patches/patches.h5") as fa, h5py.File(cluster / "patches/patches.h5") as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        assert names
        for n in names:
            assert np.array_equal(fa[n][()], fb[n][()]), n


def test_models_are_identical(runs):
    local, cluster, _ = runs
    for m in TINY["models"]:
        a = torch.load(local / f"models/{m}/model.pt", weights_only=True)
        b = torch.load(cluster / f"models/{m}/model.pt", weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (m, k)
        sa, sb = (json.loads((r / f"models/{m}/spec.json").read_text()) for r in (local, cluster))
        sa.pop("train_seconds"), sb.pop("train_seconds")
        assert sa == sb
        ha, hb = (pd.read_csv(r / f"models/{m}/history.tsv", sep="\t").drop(columns="seconds")
                  for r in (local, cluster))
        pd.testing.assert_frame_equal(ha, hb, check_exact=True)


def test_predictions_instances_and_metrics_are_identical(runs):
    local, cluster, _ = runs
    for sub in ("predictions", "instances", "metrics"):
        assert same_files(local / sub, cluster / sub) == [], sub
