"""Preemption-safe training: kill a training process mid-run, rerun it, get the same weights.

A real subprocess is interrupted the two ways a cluster does it: SIGUSR1/SIGTERM (SLURM's warning
before the time limit, preemption, scancel; the job checkpoints mid-epoch and exits non-zero) and
SIGKILL (no chance to react; the job resumes from the last end-of-epoch checkpoint). Either way the
rerun must end bit-identical to an uninterrupted run on CPU.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from histoflow.patches import Patch, write_patch_store

REPO = Path(__file__).resolve().parents[2]

TRAIN = """
import sys, torch
sys.path.insert(0, {workflow!r})
torch.set_num_threads(1)
from histoflow.stages.train import run_train
cfg = {{"arch": "unet", "params": {{"base_width": 4, "depth": 2}},
        "train": {{"epochs": 12, "batch_size": 2, "lr": 0.01}}}}
run_train({store!r}, cfg, seed=0, device="cpu", out_dir={out!r})
"""


def make_store(path: Path, n: int = 16, size: int = 48) -> None:
    rng = np.random.default_rng(0)
    patches = []
    for i in range(n):
        img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        labels = (img[..., 0] > 128).astype(np.int32)
        patches.append(Patch(img, labels, labels.astype(np.uint8), np.ones((size, size), np.float32), f"p{i}", (0, 0)))
    write_patch_store(path, {"train": patches[:12], "val": patches[12:]}, size)


def start(store: Path, out: Path) -> subprocess.Popen:
    code = TRAIN.format(workflow=str(REPO / "workflow"), store=str(store), out=str(out))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(ckpt: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not ckpt.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before its first checkpoint:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.05)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    make_store(tmp / "p.h5")
    proc = start(tmp / "p.h5", tmp / "out")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    return tmp / "p.h5", weights(tmp / "out")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_training_resumes_to_identical_weights(reference, tmp_path, sig):
    store, ref = reference
    out = tmp_path / "out"
    proc = start(store, out)
    wait_for_checkpoint(out / "checkpoint.pt", proc)
    proc.send_signal(sig)  # lands inside epoch 2 (each epoch takes ~0.2 s)
    rc = proc.wait(timeout=120)
    log = proc.stdout.read()
    assert rc != 0, f"the job must fail so that Snakemake does not take it as done:\n{log}"
    assert not (out / "model.pt").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert 1 <= state["epoch"] < 12
    if sig != signal.SIGKILL:
        assert "checkpoint" in log and "rerun the job to resume" in log
    rerun = start(store, out)
    assert rerun.wait(timeout=300) == 0, rerun.stdout.read()
    got = weights(out)
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
