"""The tiny workflow through ``profiles/slurm`` on a real SLURM, compared with a local run.

Needs a SLURM with an idle node: ``bash .ci/slurm.sh python -m pytest -m slurm tests/workflow/test_slurm.py``
starts a single-node one (partition ``ci``, one fake GPU) and stops it afterwards; without one these
tests are skipped (under .ci/slurm.sh, which sets ``HISTOFLOW_SLURM_REQUIRED=1``, they fail
instead). The SLURM run uses ``profiles/slurm`` as a facility would, plus the CI overlay
``.ci/profiles/slurm-ci`` (partition, memory, cores and threads, squeue status queries), merged
entry by entry so that everything else (GPU requests, ``--signal``, retries, groups) is the real
profile's.

Both runs train with 2 threads on CPU (``device: cpu``), so every output is compared for equality:
files byte for byte where they hold no timings, and with timings (``spec.json``'s ``train_seconds``,
``history.tsv``'s ``seconds`` and ``elapsed``) dropped otherwise; model weights tensor for tensor (``model.pt`` is
written under a temporary name that ends up in the archive, so its bytes differ).

The last test interrupts a running training job the way a cluster does (SIGUSR1 to the job's steps)
and checks that Snakemake's retry resumes it and ends with the same model as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
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
                nested = isinstance(v, dict) and isinstance(base[key].get(k), dict)
                merged[key][k] = {**base[key][k], **v} if nested else v
        else:
            merged[key] = value
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return dest


def require_slurm() -> None:
    """Skip without an idle SLURM node; fail instead under .ci/slurm.sh (HISTOFLOW_SLURM_REQUIRED=1)."""
    reason = idle_slurm_node()
    if reason and os.environ.get("HISTOFLOW_SLURM_REQUIRED") == "1":
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def slurm_smk_cmd(workdir: Path, overlay: Path, *targets: str) -> list[str]:
    """Snakemake as a facility runs it (no --cores: the profile's own settings must be enough), plus
    the CI overlay."""
    return [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--profile", str(REPO / "profiles" / "slurm"), "--profile", str(overlay),
            "--workflow-profile", "none", "--verbose", *targets]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(local results, SLURM results, SLURM run's Snakemake output): the tiny config run both ways."""
    require_slurm()
    local = tmp_path_factory.mktemp("local")
    write_config(local, TINY)
    smk(local)

    cluster = tmp_path_factory.mktemp("slurm")
    write_config(cluster, TINY)
    overlay = merged_overlay(tmp_path_factory.mktemp("profile") / "slurm-ci")
    cmd = slurm_smk_cmd(cluster, overlay)
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
    # predict for each of the 3 models + stage 1 of the two-stage one, each with its own SLURM job id
    assert len(submitted) == 9, submitted
    logs = list(submitted.values())
    for kind, n in (("/group_prepare_", 1), ("/group_finish_", 1), ("/rule_train_model/", 3), ("/rule_predict/", 3),
                    ("/rule_pretrain_model/", 1)):
        assert sum(kind in f for f in logs) == n, (kind, logs)
    assert (results / "report.html").exists()


def test_profile_reaches_sbatch(runs):
    """What profiles/slurm asks for is what sbatch got: GPU, CPUs per GPU, signal, partition, memory."""
    calls = sbatch_calls(runs[2])
    train = [c for c in calls if "rule_train_model" in c or "rule_pretrain_model" in c]
    predict = [c for c in calls if "rule_predict" in c]
    assert len(train) == 4 and len(predict) == 3, calls
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


def assert_same_model(local: Path, cluster: Path, m: str) -> None:
    """Model ``m`` in two results directories: weights equal tensor for tensor, ``spec.json`` and
    ``history.tsv`` equal but for their timings."""
    a = torch.load(local / f"models/{m}/model.pt", weights_only=True)
    b = torch.load(cluster / f"models/{m}/model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (m, k)
    sa, sb = (json.loads((r / f"models/{m}/spec.json").read_text()) for r in (local, cluster))
    sa.pop("train_seconds"), sb.pop("train_seconds")
    assert sa == sb
    ha, hb = (pd.read_csv(r / f"models/{m}/history.tsv", sep="\t").drop(columns=["seconds", "elapsed"])
              for r in (local, cluster))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)


def test_models_are_identical(runs):
    local, cluster, _ = runs
    for m in TINY["models"]:
        assert_same_model(local, cluster, m)


def test_predictions_instances_and_metrics_are_identical(runs):
    local, cluster, _ = runs
    for sub in ("predictions", "instances", "metrics"):
        assert same_files(local / sub, cluster / sub) == [], sub


# --- an interrupted training job, resubmitted by Snakemake, resumes to the same weights ---------
#
# What a signal to a training job's steps (`scancel --signal=USR1`, and `--signal=USR1@300` at the
# time limit: both signal every job step but not the batch shell) does under plugin 2.8, measured on
# the CI cluster (proctrack/linuxproc): step 0 runs the inner `python -m snakemake` (the task) with
# the training script's python as its child. Both get SIGUSR1. Snakemake has no handler and dies at
# once ("srun: error: localhost: task 0: User defined signal 1"); the training process, now an
# orphan, catches it, finishes the current step, writes the mid-epoch checkpoint and exits 1.
# slurmstepd ends the step only when that process has exited (it still holds the step's output), so
# the job is FAILED after the checkpoint exists and the retry cannot start too early.

# Model a only, wide and long enough (0.15-0.3 s an epoch on 2 cores) to be caught mid-training.
LONG = {k: v for k, v in TINY.items() if k != "ensembles"}
LONG["models"] = {"a": {**TINY["models"]["a"], "params": {"base_width": 16, "depth": 3},
                        "train": {**TINY["models"]["a"]["train"], "epochs": 120}}}
EPOCHS = LONG["models"]["a"]["train"]["epochs"]
MODEL = "results/models/a/model.pt"
STOPPED = re.compile(r"stopped by signal 10 (?:at epoch (\d+), step (\d+)|after epoch (\d+))")
RESUMING = re.compile(r"resuming from \S+ at epoch (\d+)/(\d+), step (\d+)")


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, every: float = 0.2):
    """``check()``'s first truthy value, polled; fails after ``timeout`` s or once ``proc`` has ended."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"Snakemake ended ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(every)
    return value


def job_state(jobid: str) -> str:
    """SLURM's state of a job, ended ones included (for MinJobAge); '' when squeue does not know it."""
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-j", jobid, "-o", "%T"],
                          capture_output=True, text=True, timeout=15)
    return proc.stdout.strip()


def train_jobs(out: Path) -> list[str]:
    """SLURM job ids of the train_model submissions in a Snakemake output, in order."""
    return [j for j, log in SUBMITTED.findall(out.read_text()) if "/rule_train_model/" in log]


def stop(proc: subprocess.Popen, out: Path) -> None:
    """End a Snakemake that is still running (its whole process group) and cancel its SLURM jobs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # the plugin can ignore SIGTERM (shared/notes/slurm-on-one-machine.md)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
    jobs = [j for j, _ in SUBMITTED.findall(out.read_text())]
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=15)


def test_training_interrupted_under_slurm_resumes_to_identical_weights(tmp_path):
    """SIGUSR1 sent to a running train_model job's steps, as a cluster does before the time limit,
    reaches the training process: it checkpoints mid-run and the job fails; Snakemake (retries: 1)
    submits attempt 2 as a new SLURM job, which resumes from exactly that checkpoint; the run succeeds
    and the model equals an uninterrupted local run's, weights tensor for tensor."""
    require_slurm()
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    for d in (local, cluster):
        d.mkdir()
        write_config(d, LONG)
    smk(local, MODEL)

    overlay = merged_overlay(tmp_path / "profile" / "slurm-ci")
    out = cluster / "snakemake.out"  # a file, read while Snakemake runs (a pipe could fill and block it)
    ckpt = cluster / "results/models/a/checkpoint.pt"
    with out.open("w") as sink:
        proc = subprocess.Popen(slurm_smk_cmd(cluster, overlay, MODEL), cwd=cluster, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = wait_for("the train_model submission", lambda: train_jobs(out)[:1], 300, proc)[0]
        wait_for(f"job {first} RUNNING with a checkpoint (>= 1 epoch done)",
                 lambda: job_state(first) == "RUNNING" and ckpt.exists(), 300, proc)
        subprocess.run(["scancel", "--signal=USR1", first], check=True, timeout=15)
        state = wait_for(f"job {first} to end",
                         lambda: (s := job_state(first)) not in ("RUNNING", "COMPLETING") and s, 120, proc)
        rc = proc.wait(timeout=400)
    finally:
        stop(proc, out)
    log = out.read_text()
    assert rc == 0, f"Snakemake failed ({rc}):\n{log[-6000:]}"
    jobs = train_jobs(out)
    assert len(jobs) == 2 and jobs[0] == first, jobs  # attempt 1, then the retry as a new SLURM job
    assert state == "FAILED", state
    # Attempt 1's rule log, printed by show-failed-logs before the retry: the training process itself
    # got the signal and checkpointed, inside epoch e after step s (or after epoch e).
    assert "received signal 10: checkpointing" in log, log[-6000:]
    stopped = STOPPED.search(log)
    assert stopped, log[-6000:]
    e, s, after = stopped.groups()
    where = (int(e), int(s)) if e else (int(after), 0)
    # Attempt 2's rule log (the same file, rewritten): it resumed from exactly there.
    train_log = (cluster / "results/logs/train_model/a.log").read_text()
    resumed = RESUMING.search(train_log)
    assert resumed, train_log[-3000:]
    epoch, total, step = map(int, resumed.groups())
    assert (epoch, step) == where and total == EPOCHS, (stopped.group(0), resumed.group(0))
    assert 0 < epoch < EPOCHS, resumed.group(0)  # really mid-training: >= 1 epoch done, more to come
    assert_same_model(local / "results", cluster / "results", "a")
