"""Tests for histoflow.train: the loss, augmentation, schedule, threshold choice, training and resuming."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.draw import disk

import histoflow.train as train_mod
from histoflow.models import build_model
from histoflow.train import (
    TrainConfig,
    choose_threshold,
    images_to_tensor,
    lr_lambda,
    segmentation_loss,
    soft_dice_loss,
    train_model,
)

CPU = torch.device("cpu")




# ---------------------------------------------------------------------------------------------
# loss


def test_loss_at_zero_logits_is_ln2_plus_known_dice():
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2] = 1  # 16 of 32 pixels foreground
    logits = torch.zeros_like(target)
    bce_only = segmentation_loss(logits, target, bce_weight=1.0, dice_weight=0.0)
    assert float(bce_only) == pytest.approx(math.log(2), rel=1e-6)
    # Soft Dice with p = 0.5 everywhere: inter = 8, sum(p) = 16, sum(t) = 16 -> 1 - 17/33.
    dice_only = segmentation_loss(logits, target, bce_weight=0.0, dice_weight=1.0)
    assert float(dice_only) == pytest.approx(1 - 17 / 33, rel=1e-6)
    both = segmentation_loss(logits, target, bce_weight=2.0, dice_weight=0.5)
    assert float(both) == pytest.approx(2 * math.log(2) + 0.5 * (1 - 17 / 33), rel=1e-6)


def test_loss_of_perfect_confident_logits_is_near_zero():
    target = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    logits = (target * 2 - 1) * 30
    assert float(segmentation_loss(logits, target)) < 1e-6
    # Confidently wrong is expensive: BCE ~ 30 per pixel.
    assert float(segmentation_loss(-logits, target, dice_weight=0.0)) == pytest.approx(30, rel=1e-3)


def test_loss_ignores_zero_weight_pixels_and_normalises_by_weight():
    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(1, 1, 6, 6, generator=gen) > 0.5).float()
    logits = torch.randn(1, 1, 6, 6, generator=gen)
    weights = torch.ones_like(target)
    weights[..., :, 4:] = 0  # two padded columns
    base = segmentation_loss(logits, target, weights)
    changed = logits.clone()
    changed[..., :, 4:] = torch.randn(1, 1, 6, 2, generator=gen) * 50
    assert float(segmentation_loss(changed, target, weights)) == pytest.approx(float(base), rel=1e-6)
    flipped = target.clone()
    flipped[..., :, 4:] = 1 - flipped[..., :, 4:]
    assert float(segmentation_loss(logits, flipped, weights)) == pytest.approx(float(base), rel=1e-6)
    # Scaling all weights changes nothing (BCE is divided by the summed weights) ...
    assert float(segmentation_loss(logits, target, weights * 3.5)) == pytest.approx(float(base), rel=1e-6)
    # ... and the valid part equals the unweighted loss on the cropped arrays.
    crop = segmentation_loss(logits[..., :, :4], target[..., :, :4])
    assert float(base) == pytest.approx(float(crop), rel=1e-6)


def test_soft_dice_hand_value():
    logits = torch.tensor([[[[100.0, -100.0], [100.0, -100.0]]]])  # p = 1, 0, 1, 0
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # inter = 1, sum p = 2, sum t = 2 -> 1 - (2 + 1) / (4 + 1)
    assert float(soft_dice_loss(logits, target, torch.ones_like(target))) == pytest.approx(0.4, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# schedule and threshold


def test_lr_lambda_warmup_and_cosine_endpoints():
    total, warmup = 100, 10
    assert lr_lambda(0, total, warmup) == pytest.approx(0.1)
    assert lr_lambda(4, total, warmup) == pytest.approx(0.5)
    assert lr_lambda(9, total, warmup) == pytest.approx(1.0)
    assert lr_lambda(10, total, warmup) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_lambda(55, total, warmup) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way
    assert lr_lambda(100, total, warmup) == pytest.approx(0.01)  # ends at 1 % of the base rate
    assert lr_lambda(1000, total, warmup) == pytest.approx(0.01)  # and stays there
    assert lr_lambda(0, total, 0) == pytest.approx(1.0)  # no warm-up
    values = [lr_lambda(s, total, warmup) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_choose_threshold_known_best():
    prob = np.array([0.9, 0.8, 0.6, 0.55, 0.2, 0.1, 0.62, 0.65])
    target = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    valid = np.array([True] * 6 + [False] * 2)  # the 0.62 and 0.65 false positives are padding
    # 0.5: 4 predicted, 3 TP -> 6/7; 0.58: exactly the 3 positives -> 1; 0.7: 2 TP -> 4/5; 0.85: 2/4.
    th, dice = choose_threshold(prob, target, valid, [0.5, 0.58, 0.7, 0.85])
    assert th == 0.58 and dice == pytest.approx(1.0)
    # Counting the padding: 0.5 -> 6/9, 0.58 -> 6/8, 0.7 -> 4/5, 0.85 -> 2/4.
    th, dice = choose_threshold(prob, target, np.ones(8, bool), [0.5, 0.58, 0.7, 0.85])
    assert th == 0.7 and dice == pytest.approx(0.8)
    # Ties keep the first (lowest listed) threshold.
    th, dice = choose_threshold(np.array([0.9, 0.4]), np.array([1, 0]), np.ones(2, bool), [0.3, 0.5, 0.6])
    assert th == 0.5 and dice == pytest.approx(1.0)
    th, dice = choose_threshold(prob, target, valid, [0.7, 0.85])
    assert th == 0.7 and dice == pytest.approx(0.8)
    # Nothing to find and nothing predicted counts as perfect.
    assert choose_threshold(np.array([0.1, 0.2]), np.array([0, 0]), np.ones(2, bool), [0.5]) == (0.5, 1.0)


def test_train_config_validation():
    with pytest.raises(ValueError, match="target"):
        TrainConfig(target="labels")
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}):
        with pytest.raises(ValueError, match="epochs"):
            TrainConfig(**bad)


def test_images_to_tensor():
    img = np.zeros((1, 2, 3, 3), np.uint8)
    img[0, 1, 2] = (255, 0, 51)
    t = images_to_tensor(img)
    assert t.shape == (1, 3, 2, 3) and t.dtype == torch.float32
    assert t[0, :, 1, 2].tolist() == pytest.approx([1.0, 0.0, 0.2])


# ---------------------------------------------------------------------------------------------
# training


def disk_patches(n: int, seed: int, size: int = 32) -> dict[str, np.ndarray]:
    """Bright noisy disks on a dark noisy background; the label is the disk."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r = int(rng.integers(5, 10))
        centre = tuple(int(c) for c in rng.integers(r, size - r, size=2))
        m = np.zeros((size, size), bool)
        m[disk(centre, r, shape=(size, size))] = True
        img = np.where(m, 190.0, 50.0)[..., None] + rng.normal(0, 15, (size, size, 3))
        images[i] = np.clip(img, 0, 255)
        masks[i] = m
    return {"images": images, "masks": masks, "boundaries": np.zeros_like(masks),
            "weights": np.ones((n, size, size), np.float32)}


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return disk_patches(16, seed=0), disk_patches(6, seed=1)


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", base_width=4, depth=2)


def test_train_model_learns_disks(data, tmp_path):
    train, val = data
    cfg = TrainConfig(epochs=10, batch_size=4, lr=0.03, warmup_epochs=1, seed=0)
    model = tiny_unet()
    result = train_model(model, train, val, cfg, CPU, tmp_path / "ckpt.pt", progress=False)
    hist = result["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 11))
    assert {"train_loss", "val_loss", "val_dice", "lr", "seconds"} <= set(hist[0])
    assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert hist[-1]["val_dice"] > 0.8
    assert result["val_dice"] > 0.8 and result["threshold"] in cfg.thresholds
    # The cosine schedule ended at 1 % of the base rate.
    assert hist[-1]["lr"] == pytest.approx(0.01 * cfg.lr)
    assert (tmp_path / "ckpt.pt").exists()
    # The returned model is the trained one: it segments an unseen patch.
    test = disk_patches(2, seed=9)
    with torch.no_grad():
        pred = model.eval()(images_to_tensor(test["images"]))[:, 0].numpy() > 0
    inter = (pred & (test["masks"] > 0)).sum()
    assert 2 * inter / (pred.sum() + test["masks"].sum()) > 0.8


def test_train_model_without_validation_and_targets(data, tmp_path):
    train, _ = data
    train = dict(train, boundaries=train["masks"])
    cfg = TrainConfig(epochs=1, batch_size=8, augment=False, use_weight_map=False, target="boundaries",
                      max_steps_per_epoch=1)
    result = train_model(tiny_unet(), train, None, cfg, CPU, tmp_path / "c.pt", progress=False)
    assert result["threshold"] == 0.5 and math.isnan(result["val_dice"])
    assert len(result["history"]) == 1 and "val_dice" not in result["history"][0]
    empty = {k: v[:0] for k, v in train.items()}
    with pytest.raises(ValueError, match="no training patches"):
        train_model(tiny_unet(), empty, None, cfg, CPU, tmp_path / "d.pt", progress=False)


class Interrupted(Exception):
    pass


def _comparable(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "elapsed")} for h in history]


def test_resume_after_interruption_equals_uninterrupted_run(data, tmp_path, monkeypatch):
    train, val = data
    cfg = TrainConfig(epochs=4, batch_size=4, lr=0.02, warmup_epochs=1, seed=5)
    reference = tiny_unet()
    ref = train_model(reference, train, val, cfg, CPU, tmp_path / "ref.pt", run_key="m", progress=False)

    # Same run, killed right after the epoch-2 checkpoint was written.
    original = train_mod.save_checkpoint

    def save_then_die(path, state):
        original(path, state)
        if state["epoch"] == 2:
            raise Interrupted

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        train_model(tiny_unet(), train, val, cfg, CPU, ckpt, run_key="m", progress=False)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2

    saved_epochs = []

    def save_and_record(path, state):
        original(path, state)
        saved_epochs.append(state["epoch"])

    monkeypatch.setattr(train_mod, "save_checkpoint", save_and_record)
    # A fresh process would build a fresh model (other initial weights) and call train_model again.
    torch.manual_seed(123)
    resumed = build_model("unet", base_width=4, depth=2)
    res = train_model(resumed, train, val, cfg, CPU, ckpt, run_key="m", progress=False)
    assert saved_epochs == [3, 4]  # only the missing epochs were trained
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4]
    assert _comparable(res["history"]) == _comparable(ref["history"])
    # the training time counts both jobs: the resumed epochs' elapsed continues from the checkpoint's
    elapsed = [h["elapsed"] for h in res["history"]]
    assert elapsed == sorted(elapsed) and elapsed[2] >= elapsed[1] + res["history"][2]["seconds"] * 0.99
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert ref_state.keys() == res_state.keys()
    for k in ref_state:
        torch.testing.assert_close(res_state[k], ref_state[k], atol=1e-6, rtol=0, msg=k)
    assert res["threshold"] == ref["threshold"] and res["val_dice"] == pytest.approx(ref["val_dice"])

    # Calling again once finished trains nothing more and returns the same result.
    before = {k: v.clone() for k, v in resumed.state_dict().items()}
    again = train_model(resumed, train, val, cfg, CPU, ckpt, run_key="m", progress=False)
    assert saved_epochs == [3, 4]
    assert _comparable(again["history"]) == _comparable(res["history"])
    assert all(torch.equal(before[k], v) for k, v in resumed.state_dict().items())


def test_checkpoint_from_other_settings_is_ignored(data, tmp_path):
    train, val = data
    cfg4 = TrainConfig(epochs=4, batch_size=4, lr=0.02, seed=5)
    reference = tiny_unet()
    ref = train_model(reference, train, val, cfg4, CPU, tmp_path / "ref.pt", run_key="m", progress=False)

    # A finished 2-epoch run: its LR schedule differs from a 4-epoch run's, so it cannot be resumed.
    ckpt = tmp_path / "run.pt"
    cfg2 = TrainConfig(epochs=2, batch_size=4, lr=0.02, seed=5)
    train_model(tiny_unet(), train, val, cfg2, CPU, ckpt, run_key="m", progress=False)
    model = tiny_unet()
    res = train_model(model, train, val, cfg4, CPU, ckpt, run_key="m", progress=False)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4]  # started over
    assert _comparable(res["history"]) == _comparable(ref["history"])
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0, msg=k)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 4  # and overwritten

    # Same hyper-parameters, other run key (e.g. another model config): ignored as well.
    other = train_model(tiny_unet(), train, val, cfg4, CPU, ckpt, run_key="other", progress=False)
    assert [h["epoch"] for h in other["history"]] == [1, 2, 3, 4]


def test_centre_crop_for_models_that_predict_the_centre():
    from histoflow.train import centre_crop

    t = torch.arange(36).reshape(1, 6, 6)
    assert torch.equal(centre_crop(t, (2, 2)), torch.tensor([[[14, 15], [20, 21]]]))
    assert centre_crop(np.zeros((8, 8)), (8, 8)).shape == (8, 8)
    with pytest.raises(ValueError):
        centre_crop(t, (3, 3))  # odd margin: not centred


def test_batchnorm_recalibration_gives_the_exact_statistics_of_the_data():
    from histoflow.train import recalibrate_batchnorm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    bn = torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(conv, bn, torch.nn.Dropout2d(0.5))
    bn.running_mean.fill_(100.0)  # stale statistics
    bn.running_var.fill_(1e-3)
    x = torch.rand(12, 3, 8, 8)
    assert recalibrate_batchnorm(model, x, torch.device("cpu"), batch_size=4, precision="fp32") == 1
    with torch.no_grad():
        feats = conv(x)
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # the cumulative average of the three batches' unbiased variances
    var = torch.stack([feats[i : i + 4].var((0, 2, 3), unbiased=True) for i in (0, 4, 8)]).mean(0)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert not model.training and bn.momentum == 0.1
    assert recalibrate_batchnorm(torch.nn.Conv2d(1, 1, 1), x, torch.device("cpu"), 4) == 0
