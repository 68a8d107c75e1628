"""Mask R-CNN behind the instance-model interface, and the training loop shared by instance models
(optimizers per branch, step schedule, validation-chosen score threshold, resumption)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_detection import exact_detector
from torch import nn

from histoflow.detection import Detections
from histoflow.models import build_model
from histoflow.train import TrainConfig, make_optimizers, train_instances

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_rcnn():
    torch.manual_seed(0)
    return build_model("mask_rcnn", backbone="resnet18", anchor_sizes=[8, 16, 32, 64, 128], detections_per_image=20,
                       rpn_batch_size=32, box_batch_size=64)


def two_patches(h=64, w=80):
    x = torch.rand(2, 3, h, w)
    lab = torch.zeros(2, h, w, dtype=torch.int64)
    lab[0, 5:20, 8:25] = 4
    lab[0, 30:50, 40:60] = 9  # the second patch has no object at all
    return x, lab


def test_mask_rcnn_losses_are_finite_with_and_without_objects(small_rcnn):
    x, lab = two_patches()
    small_rcnn.train()
    losses = small_rcnn.instance_losses(x, lab)
    assert set(losses) == {"classifier", "box_reg", "mask", "objectness", "rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in small_rcnn.net.roi_heads.parameters())
    small_rcnn.zero_grad(set_to_none=True)


def test_mask_rcnn_keeps_the_native_scale_and_returns_box_frame_masks(small_rcnn):
    small_rcnn.eval()
    x = torch.rand(2, 3, 72, 88)
    il, _ = small_rcnn.net.transform(list(x))
    assert il.image_sizes == [(72, 88), (72, 88)]  # torchvision would have resized to 800 px
    with torch.no_grad():
        found = small_rcnn.detect(x)
    assert len(found) == 2 and all(isinstance(d, Detections) for d in found)
    for d in found:
        assert d.masks.shape[1:] == (28, 28) and len(d) <= 20
        assert (d.scores >= 0.05).all() and (d.masks >= 0).all() and (d.masks <= 1).all()


def test_mask_rcnn_min_score_only_skips_what_a_threshold_would_drop(small_rcnn):
    """detect(min_score=t) runs the mask head on fewer boxes but returns exactly the detections
    scoring at least t, with the same boxes and masks as an unrestricted call."""
    small_rcnn.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = small_rcnn.detect(x)
        t = float(np.median(np.concatenate([d.scores for d in full])))
        high = small_rcnn.detect(x, min_score=t)
    assert sum(len(d) for d in high) < sum(len(d) for d in full)
    for f, h in zip(full, high, strict=True):
        ref = f.select(np.flatnonzero(f.scores >= t))
        assert len(h) == len(ref) and (h.scores >= t).all()
        np.testing.assert_allclose(h.boxes, ref.boxes, atol=1e-4)
        np.testing.assert_allclose(h.masks, ref.masks, atol=1e-5)


def test_mask_rcnn_rejects_bad_parameters():
    with pytest.raises(ValueError, match="backbone"):
        build_model("mask_rcnn", backbone="vgg16")
    with pytest.raises(ValueError, match="one size per FPN level"):
        build_model("mask_rcnn", anchor_sizes=[16, 32])
    with pytest.raises(ValueError, match="RGB"):
        build_model("mask_rcnn", in_channels=1)


def test_mask_rcnn_loads_a_local_resnet_or_rcnn_file_and_names_a_wrong_one(tmp_path, small_rcnn):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    res = resnet18(weights=None).state_dict()
    torch.save(res, tmp_path / "resnet18.pth")
    model = build_model("mask_rcnn", backbone="resnet18")
    model.load_pretrained(tmp_path / "resnet18.pth")
    torch.testing.assert_close(model.net.backbone.body.layer1[0].conv1.weight, res["layer1.0.conv1.weight"])
    # a Mask R-CNN checkpoint with another class count: the mismatching predictor tensors are skipped
    state = small_rcnn.net.state_dict()
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(91, 1024)
    torch.save(state, tmp_path / "rcnn.pth")
    model.load_pretrained(tmp_path / "rcnn.pth")
    torch.testing.assert_close(model.net.rpn.head.conv[0][0].weight, state["rpn.head.conv.0.0.weight"])
    assert model.net.roi_heads.box_predictor.cls_score.weight.shape == (2, 1024)
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth"):
        model.load_pretrained(tmp_path / "other.pth")


class ExactInstanceModel(nn.Module):
    """Detects the components of channel 0 with a learnable score: sigmoid(w · intensity + b).
    Its loss pulls scores of real objects (channel 0 = 0.8) up and of decoys (0.3) down, so the
    training loop, the per-branch optimizers and the score-threshold choice have a known answer."""

    instance_model = True

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.b = nn.Parameter(torch.zeros(1))

    def param_groups(self):
        return {"weight": [self.w], "bias": [self.b]}

    def _score(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w * (v - 0.55) * 10 + self.b)

    def instance_losses(self, images, labels):
        real = self._score(torch.tensor(0.8))
        decoy = self._score(torch.tensor(0.3))
        return {"conf": -(torch.log(real) + torch.log(1 - decoy)).sum() + 0 * labels.float().sum()}

    def detect(self, images, min_score=0.0):
        found = exact_detector(16, channel=1, score=self._score)(images)
        return [d.select(np.flatnonzero(d.scores >= min_score)) for d in found]


def exact_data(n=8, size=32, seed=0):
    """Patches with one real object (labelled) and one decoy (unlabelled) each."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    labels = np.zeros((n, size, size), np.int32)
    for i in range(n):
        y, x = rng.integers(2, 8, 2)
        images[i, y : y + 8, x : x + 8] = (204, 255, 0)  # real: channel 0 = 0.8
        labels[i, y : y + 8, x : x + 8] = 1
        images[i, 20:28, 20:28] = (77, 255, 0)  # decoy: channel 0 = 0.3
    return {"images": images, "labels": labels}


def test_train_instances_learns_and_chooses_the_score_threshold_on_validation(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.5, augment=False, warmup_epochs=0)
    model = ExactInstanceModel()
    result = train_instances(model, exact_data(), exact_data(4, seed=1), cfg, CPU, tmp_path / "c.pt", progress=False)
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert result["val_aji"] == pytest.approx(1.0)  # real objects kept, decoys dropped
    assert result["val_dice"] == pytest.approx(1.0)
    assert result["score_threshold"] in (0.3, 0.4, 0.5, 0.6, 0.7)


def test_train_instances_resumes_from_its_checkpoint_bitwise(tmp_path, monkeypatch):
    import histoflow.train as train_mod

    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.1, augment="dihedral", warmup_epochs=0, optimizer="sgd",
                      schedule="step", lr_steps=[2])
    ref = ExactInstanceModel()
    expected = train_instances(ref, exact_data(), None, cfg, CPU, tmp_path / "ref.pt", run_key="m", progress=False)

    class Killed(Exception):
        pass

    original = train_mod.save_checkpoint

    def save_then_die(path, state):
        original(path, state)
        if state["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_instances(ExactInstanceModel(), exact_data(), None, cfg, CPU, tmp_path / "c.pt", run_key="m",
                        progress=False)
    state = torch.load(tmp_path / "c.pt", weights_only=False)
    assert state["epoch"] == 1 and len(state["optimizers"]) == len(state["schedulers"]) == 2  # one per branch
    monkeypatch.setattr(train_mod, "save_checkpoint", original)
    resumed = ExactInstanceModel()
    with torch.no_grad():
        resumed.w.fill_(5.0)  # other initial weights: the checkpoint must replace them
    got = train_instances(resumed, exact_data(), None, cfg, CPU, tmp_path / "c.pt", run_key="m", progress=False)
    assert [h["train_loss"] for h in got["history"]] == [h["train_loss"] for h in expected["history"]]
    assert torch.equal(resumed.w, ref.w) and torch.equal(resumed.b, ref.b)


def test_make_optimizers_one_per_branch_with_branch_lr_and_step_schedule():
    model = ExactInstanceModel()
    cfg = TrainConfig(epochs=4, optimizer="sgd", momentum=0.8, schedule="step", lr_steps=[2, 3], lr_gamma=0.5,
                      lr=0.1, branch_lr={"bias": 0.02}, warmup_epochs=1)
    opts, scheds = make_optimizers(model, cfg, steps_per_epoch=10)
    assert [type(o).__name__ for o in opts] == ["SGD", "SGD"]
    assert opts[0].param_groups[0]["momentum"] == 0.8
    lrs = []
    for _ in range(40):
        lrs.append((opts[0].param_groups[0]["lr"], opts[1].param_groups[0]["lr"]))
        for o, s in zip(opts, scheds, strict=True):
            o.step()
            s.step()
    assert lrs[0] == pytest.approx((0.01, 0.002))  # warm-up: 1/10 of the rate in the first step
    assert lrs[15] == pytest.approx((0.1, 0.02))
    assert lrs[25] == pytest.approx((0.05, 0.01))  # after epoch 2: × 0.5
    assert lrs[35] == pytest.approx((0.025, 0.005))  # after epoch 3: × 0.25
    with pytest.raises(ValueError, match="branches"):
        make_optimizers(model, TrainConfig(branch_lr={"detection": 0.1}), 10)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_branch_optimizer_types_pair_adam_and_sgd_like_usnet():
    """US-Net's paper: Adam (lr 1e-3) for the detector, SGD (lr 1e-4, momentum 0.9, weight decay 1e-4) for the U-Net."""
    model = build_model("usnet", base_width=4, depth=3, head_width=8, refine_width=4)
    cfg = TrainConfig(optimizer="sgd", weight_decay=1e-4, branch_optimizer={"detection": "adam", "refinement": "adamw"},
                      branch_lr={"segmentation": 1e-4, "detection": 1e-3}, warmup_epochs=0)
    opts, _ = make_optimizers(model, cfg, steps_per_epoch=5)
    kinds = {type(o).__name__: o.param_groups[0] for o in opts}
    assert set(kinds) == {"SGD", "Adam", "AdamW"}  # segmentation keeps the default sgd
    assert kinds["SGD"]["lr"] == pytest.approx(1e-4) and kinds["SGD"]["momentum"] == 0.9
    assert kinds["Adam"]["lr"] == pytest.approx(1e-3) and kinds["AdamW"]["lr"] == cfg.lr
    groups = model.param_groups()
    assert {id(p) for p in opts[1].param_groups[0]["params"]} == {id(p) for p in groups["detection"]}
    with pytest.raises(ValueError, match="branch_optimizer.detection"):
        TrainConfig(branch_optimizer={"detection": "rmsprop"})
    with pytest.raises(ValueError, match="branches"):
        make_optimizers(model, TrainConfig(branch_optimizer={"rpn": "adam"}), 5)


def test_a_diverging_run_stops_at_once_naming_the_fix(tmp_path):
    class Diverging(ExactInstanceModel):
        def instance_losses(self, images, labels):
            return {"conf": self.w.sum() * float("nan")}

    cfg = TrainConfig(epochs=2, batch_size=4, augment=False)
    with pytest.raises(FloatingPointError, match="train.lr"):
        train_instances(Diverging(), exact_data(), None, cfg, CPU, tmp_path / "c.pt", progress=False)


def test_grad_clip_bounds_the_step(tmp_path):
    from histoflow.train import run_epochs

    model = ExactInstanceModel()

    def huge(idx, gen):
        return (model.w * 1e6).sum() + (model.b * 1e6).sum()

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1.0, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                      warmup_epochs=0, augment=False, grad_clip=1.0, schedule="step")
    run_epochs(model, huge, 8, cfg, CPU, tmp_path / "c.pt", progress=False)
    step = torch.cat([model.w.detach(), model.b.detach()])
    assert float(step.norm()) == pytest.approx(1.0, rel=1e-5)  # one step of lr 1 on a unit-norm gradient
