"""Faults: bad input fails early with the file's name and leaves no partial output; CUDA
out-of-memory shrinks the batch instead of failing the job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import histoflow.train
from histoflow.models import build_model
from histoflow.tiling import predict_tiled
from histoflow.train import TrainConfig


def test_tiled_inference_halves_the_batch_on_oom():
    sizes = []

    def predictor(t: torch.Tensor) -> torch.Tensor:
        sizes.append(len(t))
        if len(t) > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return t + 1

    img = np.random.default_rng(0).random((3, 90, 70)).astype(np.float32)
    out = predict_tiled(predictor, img, tile=32, overlap=8, batch_size=8)
    np.testing.assert_allclose(out, img + 1, atol=1e-5)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2


def test_tiled_inference_oom_with_one_tile_names_the_setting():
    def predictor(t: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(RuntimeError, match="predict.tile"):
        predict_tiled(predictor, np.zeros((3, 40, 40), np.float32), tile=32, overlap=8, batch_size=2)


def test_training_restarts_with_half_batch_on_oom(monkeypatch, tmp_path):
    seen = []

    def fake_train_model(model, train, val, cfg, dev, checkpoint, run_key=None):
        seen.append(cfg.batch_size)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # a partial step that must be rolled back
        if cfg.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return {"history": [], "threshold": 0.5, "val_dice": 1.0}

    monkeypatch.setattr(histoflow.train, "train_model", fake_train_model)
    model = build_model("unet", base_width=4, depth=2)
    before = next(model.parameters()).detach().clone()
    cfg = TrainConfig(batch_size=8)
    histoflow.train.train_with_oom_fallback(model, {}, {}, cfg, torch.device("cpu"), tmp_path / "c.pt", {})
    assert seen == [8, 4, 2] and cfg.batch_size == 2
    torch.testing.assert_close(next(model.parameters()).detach(), before + 1.0)  # one step from the init


@pytest.mark.slow
def test_corrupt_image_fails_with_its_name_and_leaves_no_output(tmp_path):
    from test_workflow import TINY, smk, write_config

    from histoflow.io import write_image
    from histoflow.synthetic.fibres import make_fibre_image

    for d in ("imgs", "masks"):
        (tmp_path / d).mkdir()
    for stem in ("a", "b"):
        img, lab = make_fibre_image(0)
        write_image(tmp_path / "imgs" / f"{stem}.png", img)
        write_image(tmp_path / "masks" / f"{stem}.png", lab.astype(np.uint16))
    (tmp_path / "imgs" / "b.png").write_bytes(b"not a png")
    write_config(tmp_path, {**TINY, "datasets": {"mine": {"images": "imgs", "masks": "masks", "split": "auto"}},
                            "stain": {"method": "macenko", "target": "imgs/a.png"}})
    proc = smk(tmp_path, "results/normalized/mine", check=False)
    assert proc.returncode != 0
    # found from the file headers when the workflow is parsed, before any job (histoflow.datasets.check_sizes)
    out = proc.stdout + proc.stderr
    assert "imgs/b.png" in out and "cannot be read" in out
    assert not (tmp_path / "results" / "normalized" / "mine").exists()
    assert not (tmp_path / "results" / "logs").exists()  # no job ran
