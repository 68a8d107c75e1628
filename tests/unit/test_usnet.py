"""Tests for histoflow.models.usnet: anchors, box coding, matching, focal loss, η, the model's
branches, its losses and detections, and that a tiny US-Net learns to find disks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histoflow.detection import Detections, instance_labels
from histoflow.metrics import object_f1
from histoflow.models import available_models, build_model, load_model, save_model
from histoflow.models.usnet import (
    USNet,
    anchors,
    class_weights_from_segmentation,
    decode_boxes,
    encode_boxes,
    enlarge_boxes,
    focal_loss,
    match_anchors,
)
from histoflow.train import TrainConfig, make_optimizers

TINY = {"base_width": 4, "depth": 3, "min_size": 12, "max_size": 40, "head_width": 8, "refine_width": 4}


def tiny(**kw) -> USNet:
    torch.manual_seed(0)
    return build_model("usnet", **{**TINY, **kw})


def disks(rng: np.random.Generator, n: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy dark images with 2–4 bright, non-touching disks of radius 8–12 px, and their labels."""
    images = np.clip(0.15 + 0.05 * rng.standard_normal((n, 3, size, size)), 0, 1).astype(np.float32)
    labels = np.zeros((n, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size] + 0.5
    for i in range(n):
        placed: list[tuple[float, float, float]] = []
        for k in range(int(rng.integers(2, 5))):
            r = rng.uniform(8, 12)
            cy, cx = rng.uniform(r, size - r, 2)
            if any(math.hypot(cy - y, cx - x) <= r + q + 2 for y, x, q in placed):
                continue
            placed.append((cy, cx, r))
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            images[i][:, disk] = np.clip(0.8 + 0.05 * rng.standard_normal((3, int(disk.sum()))), 0, 1)
            labels[i][disk] = k + 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def two_objects(b: int = 2, h: int = 75, w: int = 61) -> torch.Tensor:
    labels = torch.zeros(b, h, w, dtype=torch.int64)
    labels[0, 10:25, 10:30] = 1
    labels[0, 40:62, 30:50] = 7
    return labels


# ---------------------------------------------------------------------------------------- anchors
def test_anchor_count_centres_sizes_and_ratios():
    ratios, scales = (1.0, 0.75), (0.8, 1.2)
    a = anchors([(3, 5), (2, 2)], [8, 16], [20.0, 40.0], ratios, scales)
    assert a.shape == ((3 * 5 + 2 * 2) * 4, 4)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    lvl0 = a[: 3 * 5 * 4].reshape(3, 5, 4, 4)  # row, column, anchor, xyxy
    for r in range(3):
        for c in range(5):
            ctr = (lvl0[r, c, :, :2] + lvl0[r, c, :, 2:]) / 2
            torch.testing.assert_close(ctr, torch.tensor([[(c + 0.5) * 8, (r + 0.5) * 8]] * 4))
    torch.testing.assert_close(cx[60:64], torch.full((4,), 8.0))  # level 1, first centre (0.5 · 16)
    torch.testing.assert_close(cy[60:64], torch.full((4,), 8.0))
    expect_size = torch.tensor([20 * s for _ in ratios for s in scales])
    expect_ratio = torch.tensor([r for r in ratios for _ in scales])
    torch.testing.assert_close(torch.sqrt(w * h)[:4], expect_size)
    torch.testing.assert_close(torch.sqrt(w * h)[-4:], 2 * expect_size)
    torch.testing.assert_close((w / h)[:4], expect_ratio)
    assert anchors([], [], [], ratios, scales).shape == (0, 4)
    with pytest.raises(ValueError, match="one stride and size per level"):
        anchors([(3, 5)], [8, 16], [20.0], ratios, scales)


def test_anchor_sizes_span_min_to_max_size_on_documented_strides():
    model = USNet(base_width=2, head_width=4, refine_width=2)  # default sizes: 20-128 px on strides 8, 16, 32
    assert model.strides == [8, 16, 32]
    smallest, largest = model.sizes[0] * model.scales[0], model.sizes[-1] * model.scales[-1]
    assert smallest == pytest.approx(20) and largest == pytest.approx(128)
    assert model.sizes[1] ** 2 == pytest.approx(model.sizes[0] * model.sizes[2])  # geometric
    assert tiny().strides == [2, 4, 8]  # depth 3 leaves at most strides 1..8
    assert tiny(depth=4).strides == [4, 8, 16]


# ------------------------------------------------------------------------------------ box coding
@pytest.mark.parametrize("variances", [(0.1, 0.2), (1.0, 1.0)])
def test_encode_decode_round_trip(variances):
    torch.manual_seed(0)
    xy = torch.rand(500, 2) * 200
    boxes = torch.cat([xy, xy + 2 + torch.rand(500, 2) * 100], 1)
    axy = torch.rand(500, 2) * 200
    anc = torch.cat([axy, axy + 5 + torch.rand(500, 2) * 60], 1)
    deltas = encode_boxes(boxes, anc, variances)
    torch.testing.assert_close(decode_boxes(deltas, anc, variances), boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(encode_boxes(anc, anc, variances), torch.zeros(500, 4))
    torch.testing.assert_close(decode_boxes(torch.zeros(500, 4), anc, variances), anc)


def test_encoding_values_and_decode_clip():
    anc = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[1.0, 2.0, 21.0, 22.0]])  # centre (11, 12) vs (5, 10); size 20 x 20 vs 10 x 20
    expect = torch.tensor([[6 / 10 / 0.1, 2 / 20 / 0.1, math.log(2) / 0.2, 0.0]])
    torch.testing.assert_close(encode_boxes(gt, anc), expect)
    huge = decode_boxes(torch.full((1, 4), 1e4), anc)
    assert torch.isfinite(huge).all()


def test_enlarge_boxes():
    out = enlarge_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), 0.25)
    torch.testing.assert_close(out, torch.tensor([[5.0, 10.0, 35.0, 70.0]]))


# -------------------------------------------------------------------------------------- matching
def test_match_anchors_thresholds_ignore_band_and_forced_best():
    anc = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # IoU 1 with gt 0 -> positive
        [0.0, 0.0, 10.0, 15.0],    # IoU 2/3 with gt 0 -> positive
        [0.0, 0.0, 10.0, 22.0],    # IoU 0.4545 -> ignored (between 0.4 and 0.5)
        [0.0, 0.0, 10.0, 40.0],    # IoU 0.25 -> negative
        [100.0, 100.0, 130.0, 130.0],  # IoU 0.111 with gt 1, its best anchor -> forced positive
        [200.0, 200.0, 210.0, 210.0],  # nowhere -> negative
    ])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [105.0, 105.0, 115.0, 115.0]])
    m = match_anchors(anc, gt, pos_iou=0.5, neg_iou=0.4)
    assert m.dtype == torch.int64
    assert m.tolist() == [0, 0, -2, -1, 1, -1]
    assert match_anchors(anc, torch.zeros(0, 4)).tolist() == [-1] * 6
    with pytest.raises(ValueError, match="neg_iou <= pos_iou"):
        match_anchors(anc, gt, pos_iou=0.3, neg_iou=0.4)


# ------------------------------------------------------------------------------------ focal loss
def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_focal_loss_is_the_papers_eta_weighted_form_by_default():
    """US-Net: L_conf = η (1 − ĉ)^γ log ĉ (a loss, so with the sign that makes it positive), no α_t."""
    logits = torch.tensor([_logit(0.9), _logit(0.9), _logit(0.2)])
    targets = torch.tensor([1.0, 0.0, 0.0])
    eta = torch.tensor([3.0, 1.2, 1.2])  # η_fg on the positive anchor, η_bg on the negatives
    got = focal_loss(logits, targets, gamma=2.0, weights=eta)
    expect = torch.tensor([
        3.0 * 0.1**2 * -math.log(0.9),    # ĉ = 0.9 for the true class
        1.2 * 0.9**2 * -math.log(0.1),    # a negative scored 0.9: ĉ (background) = 0.1
        1.2 * 0.2**2 * -math.log(0.8),
    ])
    torch.testing.assert_close(got, expect)
    assert tiny().focal_alpha is None  # the model's default is the paper's form


def test_focal_loss_hand_values_with_retinanet_alpha():
    logits = torch.tensor([_logit(0.9), _logit(0.9), _logit(0.2)])
    targets = torch.tensor([1.0, 0.0, 0.0])
    got = focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    expect = torch.tensor([
        0.25 * 0.1**2 * -math.log(0.9),   # easy positive: down-weighted 100x
        0.75 * 0.9**2 * -math.log(0.1),   # confident false positive
        0.75 * 0.2**2 * -math.log(0.8),
    ])
    torch.testing.assert_close(got, expect)
    weighted = focal_loss(logits, targets, 0.25, 2.0, weights=torch.tensor([2.0, 0.5, 0.0]))
    torch.testing.assert_close(weighted, expect * torch.tensor([2.0, 0.5, 0.0]))


def test_focal_loss_gamma0_alpha_half_is_half_bce_and_stays_finite():
    torch.manual_seed(0)
    logits = torch.randn(100) * 5
    targets = (torch.rand(100) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(focal_loss(logits, targets, alpha=0.5, gamma=0.0), 0.5 * bce)
    extreme = focal_loss(torch.tensor([-200.0, 200.0]), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(extreme).all() and (extreme > 10).all()
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(logits, targets, alpha=1.5)


# ------------------------------------------------------------------------------------------- eta
def test_class_weights_from_segmentation():
    prob = torch.zeros(3, 1, 10, 10)
    prob[0] = 0.5                  # undecided: both sqrt(2)
    prob[1, :, :1] = 1.0           # 10 % foreground
    eta = class_weights_from_segmentation(prob)  # prob[2]: empty prediction, clamped at 1 %
    assert eta.shape == (3, 2) and eta.dtype == torch.float32
    torch.testing.assert_close(eta[0], torch.full((2,), math.sqrt(2)))
    torch.testing.assert_close(eta[1], torch.tensor([math.sqrt(10 / 9), math.sqrt(10)]))
    torch.testing.assert_close(eta[2], torch.tensor([1.0, 10.0]))
    torch.testing.assert_close(class_weights_from_segmentation(prob[:, 0]), eta)  # (B, H, W) too
    p = torch.full((1, 4, 4), 0.3, requires_grad=True)
    assert not class_weights_from_segmentation(p).requires_grad


# ----------------------------------------------------------------------------------------- model
def test_registered_and_param_groups_disjoint_and_complete():
    assert "usnet" in available_models()
    model = tiny()
    assert isinstance(model, USNet) and model.instance_model
    groups = model.param_groups()
    assert set(groups) == {"segmentation", "detection", "refinement"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert all(groups.values())


@pytest.mark.parametrize("depth", [3, 4])
def test_forward_shapes_on_odd_sizes(depth):
    model = tiny(depth=depth).eval()
    x = torch.rand(2, 3, 75, 61)
    with torch.no_grad():
        out = model(x)
    # anchors only over the image, not its padding to a multiple of 2**depth: ceil(75 / s) x ceil(61 / s) per level
    n_anchors = sum(-(-75 // s) * -(-61 // s) * 4 for s in model.strides)
    assert out["seg"].shape == (2, 1, 75, 61)
    assert out["cls"].shape == (2, n_anchors)
    assert out["box"].shape == (2, n_anchors, 4)
    assert out["anchors"].shape == (n_anchors, 4)
    assert all(torch.isfinite(v).all() for v in out.values())
    # the class bias starts at the 0.01 prior
    assert torch.sigmoid(model.det_head.cls.bias).allclose(torch.tensor(0.01))


def test_instance_losses_finite_and_every_group_gets_gradients():
    model = tiny().train()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 75, 61)
    losses = model.instance_losses(x, two_objects())  # image 1 has no object
    assert set(losses) == {"conf", "loc", "seg", "refine"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loc"] > 0 and losses["refine"] > 0
    sum(losses.values()).backward()
    for name, group in model.param_groups().items():
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in group), name
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group), name


def p_t(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The probability the classifier gives the anchor's true class."""
    p = torch.sigmoid(logits.double())
    return torch.where(pos, p, 1 - p)


def test_conf_and_loc_are_eta_weighted_and_normalised_by_positives():
    model = tiny(refine_batch=1).train()
    torch.manual_seed(2)
    x, labels = torch.rand(2, 3, 75, 61), two_objects()
    labels[1, 50:70, 5:20] = 2
    with torch.no_grad():
        losses = model.instance_losses(x, labels)
        out = model(x)
    eta = class_weights_from_segmentation(torch.sigmoid(out["seg"]))
    conf, loc, n_pos = 0.0, 0.0, 0
    for i in range(2):
        gt = torch.stack([torch.tensor([10.0, 10, 30, 25]), torch.tensor([30.0, 40, 50, 62])]) if i == 0 \
            else torch.tensor([[5.0, 50, 20, 70]])
        m = match_anchors(out["anchors"], gt, 0.5, 0.4)
        pos = m >= 0
        w = torch.where(pos, eta[i, 1], eta[i, 0]) * (m != -2)
        conf += float((w * (1 - p_t(out["cls"][i], pos)) ** 2 * -torch.log(p_t(out["cls"][i], pos))).sum())
        target = encode_boxes(gt[m[pos]], out["anchors"][pos])
        loc += float(F.smooth_l1_loss(out["box"][i][pos], target, reduction="sum"))
        n_pos += int(pos.sum())
    assert n_pos >= 3
    assert float(losses["conf"]) == pytest.approx(conf / n_pos, rel=1e-5)
    assert float(losses["loc"]) == pytest.approx(loc / n_pos, rel=1e-5)  # alpha = 1
    assert torch.isfinite(losses["refine"])  # one crop of three (refine_batch=1)


def test_instance_losses_without_objects():
    model = tiny().train()
    x = torch.rand(2, 3, 40, 33)
    losses = model.instance_losses(x, torch.zeros(2, 40, 33, dtype=torch.int64))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loc"] == 0 and losses["refine"] == 0 and losses["conf"] > 0
    sum(losses.values()).backward()
    with pytest.raises(ValueError, match="labels"):
        model.instance_losses(x, torch.zeros(2, 40, 32, dtype=torch.int64))


def test_instance_losses_under_bf16_autocast():
    model = tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.instance_losses(torch.rand(2, 3, 48, 40), two_objects(2, 48, 40))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_detect_returns_consistent_detections():
    model = tiny(score_floor=0.0, max_detections=7).eval()
    x = torch.rand(2, 3, 75, 61)
    with torch.no_grad():
        dets = model.detect(x)
    assert len(dets) == 2
    for d in dets:
        assert isinstance(d, Detections) and len(d) == 7
        assert d.masks.shape == (7, 48, 48) and d.boxes.shape == (7, 4)
        assert (d.masks >= 0).all() and (d.masks <= 1).all()
        assert (np.diff(d.scores) <= 0).all()
        cx, cy = d.boxes[:, 0::2].mean(1), d.boxes[:, 1::2].mean(1)
        assert ((cx >= 0) & (cx < 61) & (cy >= 0) & (cy < 75)).all()
        assert instance_labels(d, (75, 61)).shape == (75, 61)
    none = tiny(score_floor=1.0).eval()
    with torch.no_grad():
        empty = none.detect(x)
    assert [len(d) for d in empty] == [0, 0] and empty[0].masks.shape == (0, 48, 48)


def test_detect_min_score_returns_the_thresholded_subset():
    model = tiny(score_floor=0.0, max_detections=500).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # an untrained head ties many scores, and NMS breaks ties arbitrarily
        for p in model.det_head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(2, 3, 75, 61, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.detect(x)
        t = float(np.median(np.concatenate([d.scores for d in full])))
        high = model.detect(x, min_score=t)
    for f, h in zip(full, high, strict=True):
        ref = f.select(np.flatnonzero(f.scores >= t))
        assert 0 < len(h) == len(ref) < len(f)
        h, ref = (d.select(np.lexsort((*d.boxes.T, -d.scores))) for d in (h, ref))  # equal scores: any order
        np.testing.assert_allclose(h.boxes, ref.boxes, atol=1e-5)
        np.testing.assert_allclose(h.masks, ref.masks, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    kwargs = {**TINY, "aspect_ratios": [1.0, 0.5], "scales": [1.0]}  # lists, as JSON gives them back
    model = tiny(**kwargs).eval()
    save_model(model, {"arch": "usnet", "kwargs": kwargs}, tmp_path)
    loaded, _ = load_model(tmp_path)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="det_levels"):
        build_model("usnet", depth=2, det_levels=4)
    with pytest.raises(ValueError, match="min_size"):
        build_model("usnet", min_size=50, max_size=40)
    with pytest.raises(ValueError, match="neg_iou"):
        build_model("usnet", pos_iou=0.3, neg_iou=0.4)


# ----------------------------------------------------------------------------------------- learns
def test_tiny_usnet_learns_to_find_disks():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("usnet", base_width=8, depth=4, min_size=12, max_size=40, head_width=16, refine_width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(100):
        x, y = disks(rng, 4)
        loss = sum(model.instance_losses(x, y).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = disks(np.random.default_rng(1), 8)
    with torch.no_grad():
        dets = model.detect(x)
    pred = [instance_labels(d.select(d.scores >= 0.5), (64, 64)) for d in dets]
    f1 = np.mean([object_f1(p, g.numpy()) for p, g in zip(pred, y, strict=True)])
    fg_p, fg_g = np.stack(pred) > 0, y.numpy() > 0
    dice = 2 * (fg_p & fg_g).sum() / (fg_p.sum() + fg_g.sum())
    assert f1 >= 0.8, f1
    assert dice >= 0.9, dice


def test_paper_layout_has_7620_anchors_on_300_pixels_and_a_four_layer_refinement():
    """US-Net: SSD heads on the 38 / 19 / 10 maps of a 300 x 300 input, 4 anchors per location (7,620 boxes), and
    a refinement network of four layers on 48 x 48 crops."""
    model = build_model("usnet", base_width=4, depth=6, min_size=20, max_size=128, head_width=8,
                        refine_arch="plain", refine_width=8).eval()
    assert model.strides == [8, 16, 32]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 300, 300))
    assert out["anchors"].shape == (7620, 4) == (4 * (38 * 38 + 19 * 19 + 10 * 10), 4)
    convs = [m for m in model.refine.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and convs[0].in_channels == 4 and convs[-1].out_channels == 1
    with torch.no_grad():
        logits = model.refine_logits(torch.rand(1, 4, 300, 300), torch.tensor([[10.0, 10, 60, 50]]), torch.tensor([0]))
    assert logits.shape == (1, 48, 48)
    with pytest.raises(ValueError, match="refine_arch"):
        build_model("usnet", refine_arch="resnet")


def test_ablation_switches_without_refinement_and_without_eta():
    torch.manual_seed(2)
    x, labels = torch.rand(2, 3, 75, 61), two_objects()
    plain = tiny(refinement=False, eta_weighting=False, score_floor=0.0, max_detections=5).eval()
    with torch.no_grad():
        losses = plain.instance_losses(x, labels)
        out = plain(x)
        dets = plain.detect(x, min_score=0.0)
    assert float(losses["refine"]) == 0.0  # no refine net to train
    # ... nor to build: no refinement branch among the parameter groups, none of its weights in the model
    assert plain.refine is None and set(plain.param_groups()) == {"segmentation", "detection"}
    with_refine = tiny(refinement=True)
    n_refine = sum(p.numel() for p in with_refine.refine.parameters())
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in with_refine.parameters()) - n_refine
    with pytest.raises(ValueError, match=r"branch_lr names \['refinement'\]"):
        make_optimizers(plain, TrainConfig(branch_lr={"refinement": 1e-3}), steps_per_epoch=1)
    # without η, the focal loss weighs every (non-ignored) anchor 1
    conf, n_pos = 0.0, 0
    for i in range(2):
        gt = torch.stack([torch.tensor([10.0, 10, 30, 25]), torch.tensor([30.0, 40, 50, 62])]) if i == 0 \
            else torch.zeros((0, 4))
        m = match_anchors(out["anchors"], gt, 0.5, 0.4)
        pos = m >= 0
        conf += float(((m != -2) * (1 - p_t(out["cls"][i], pos)) ** 2 * -torch.log(p_t(out["cls"][i], pos))).sum())
        n_pos += int(pos.sum())
    assert float(losses["conf"]) == pytest.approx(conf / max(n_pos, 1), rel=1e-5)
    # each mask is the segmentation probability inside its (enlarged) box
    seg = torch.sigmoid(out["seg"])
    d = dets[0]
    assert len(d) > 0
    crop = plain.crop_maps(seg, torch.from_numpy(d.boxes[:1]), torch.tensor([0]))[0, 0]
    np.testing.assert_allclose(d.masks[0], crop.numpy(), atol=1e-6)
