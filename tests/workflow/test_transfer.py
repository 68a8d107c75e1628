"""Transfer learning from a local VGG16 file, as the VGG16 muscle paper trains: ImageNet VGG16 → fibre
boundaries (stage 1) → fibre masks (stage 2). The file here is fabricated (torchvision's VGG16 layout with
random values; nothing is downloaded), so the test checks the plumbing, not ImageNet features.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from test_workflow import TINY, planned_jobs, smk, write_config

torchvision = pytest.importorskip("torchvision")


def fabricated_vgg16(path: Path, batch_norm: bool = False) -> dict[str, torch.Tensor]:
    """A torchvision VGG16(-BN) state dict of random values, its ``features.*`` tensors as torchvision names them.

    The classifier (120 M parameters, 480 MB) is left out: the encoder ignores it in a real file too.
    """
    torch.manual_seed(0)
    net = torchvision.models.vgg16_bn(weights=None) if batch_norm else torchvision.models.vgg16(weights=None)
    state = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
    torch.save(state, path)
    return state


def transfer_config(weights: Path) -> dict:
    cfg = {**TINY, "stain": {"method": "none"}, "ensembles": {},
           "patches": {"size": 64, "per_image": 2, "val_fraction": 0.25}}
    cfg["models"] = {"v": {
        "arch": "vgg16_mdn", "weights": str(weights),
        "params": {"base_width": 64, "batch_norm": False, "decoder_width": 4},
        "pretrain": {"target": "boundaries", "loss": "weighted_bce", "epochs": 1, "max_steps_per_epoch": 1,
                     "batch_size": 2, "lr": 1e-5, "warmup_epochs": 0},
        "train": {"target": "interiors", "loss": "weighted_bce", "epochs": 1, "max_steps_per_epoch": 1,
                  "batch_size": 2, "lr": 1e-5, "warmup_epochs": 0},
        "predict": {"tile": 64, "overlap": 16}}}
    return cfg


@pytest.mark.slow
def test_two_stage_transfer_from_a_local_vgg16_file(tmp_path):
    weights = tmp_path / "vgg16-fabricated.pth"
    state = fabricated_vgg16(weights)
    write_config(tmp_path, transfer_config(weights))
    smk(tmp_path, "results/models/v/model.pt")
    log = (tmp_path / "results/logs/pretrain_model/v.log").read_text()
    assert f"encoder initialised from {weights} (26 tensors)" in log  # 13 convolutions, weight + bias
    # stage 1 starts from the file and stage 2 from stage 1: after one step at lr 1e-5 each, the first
    # convolution is the file's to within 1e-3 (a fresh initialisation differs by ~0.1)
    for stage in ("stage1/model.pt", "model.pt"):
        got = torch.load(tmp_path / "results/models/v" / stage, weights_only=True)["features.0.weight"]
        assert (got - state["features.0.weight"]).abs().max() < 1e-3, stage
    # the weight file is an input of stage 1: a replaced file retrains both stages, nothing else moves
    later = time.time() + 10  # newer than every output of the run
    os.utime(weights, (later, later))
    jobs = planned_jobs(smk(tmp_path, "-n", "results/models/v/model.pt").stdout)
    assert {"pretrain_model[model=v]", "train_model[model=v]"} <= jobs
    assert not any(j.startswith("extract_patches") for j in jobs)


def test_a_missing_weight_file_stops_the_run_before_any_job(tmp_path):
    write_config(tmp_path, transfer_config(tmp_path / "nowhere" / "vgg16.pth"))
    proc = smk(tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "nowhere/vgg16.pth" in out
    assert not (tmp_path / "results").exists()


def test_a_vgg16_bn_file_for_a_plain_encoder_names_the_setting(tmp_path):
    from histoflow.models import build_model, load_initial_weights

    path = tmp_path / "vgg16_bn.pth"
    fabricated_vgg16(path, batch_norm=True)
    model = build_model("vgg16_mdn", base_width=64, batch_norm=False, decoder_width=4)
    with pytest.raises(ValueError, match="The file is VGG16-BN: set params.batch_norm: true"):
        load_initial_weights(model, path)
    model = build_model("vgg16_mdn", base_width=64, batch_norm=True, decoder_width=4)
    load_initial_weights(model, path)  # the matching layout loads
