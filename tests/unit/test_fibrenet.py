"""The VGG16 multi-decoder fibre network, its weighted loss, two-stage targets and the per-fibre
FT/DT evaluation: shapes on odd sizes, each loss term on hand-made cases, threshold selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn

from histoflow.metrics import fixed_and_dynamic_thresholds, per_fibre_precision_recall
from histoflow.models import build_model, load_model, save_model
from histoflow.patches import (
    FIELDS,
    boundary_map,
    class_balance_map,
    distance_weight_map,
    extract_patches,
    read_patch_group,
    read_store_attrs,
    write_patch_store,
)
from histoflow.postprocess import PostprocessConfig, grow_instances, postprocess
from histoflow.train import (
    TrainConfig,
    loss_fields,
    loss_weights,
    reliability_mask,
    training_loss,
    weighted_bce_loss,
)


def tiny(**kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg16_mdn", **{"base_width": 4, "decoder_width": 4, **kw})


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 64), (129, 17), (31, 16)])
def test_every_decoder_and_the_fusion_give_input_size(size):
    m = tiny(out_channels=2)
    x = torch.rand(2, 3, *size)
    fused, sides = m.train()(x)
    assert fused.shape == (2, 2, *size)
    assert len(sides) == 5 and all(s.shape == (2, 2, *size) for s in sides)
    assert m.eval()(x).shape == (2, 2, *size)  # eval: the fused logits only


def test_decoders_enlarge_step_by_step_from_before_each_pooling_stage():
    m = tiny()
    # decoder k sits at stride 2**k and climbs back with k learnable 2x deconvolutions
    for k, dec in enumerate(m.decoders):
        ups = [layer for layer in dec.modules() if isinstance(layer, nn.ConvTranspose2d)]
        assert len(ups) == k and all(u.stride == (2, 2) and u.kernel_size == (2, 2) for u in ups)
    convs = [layer for layer in m.features if isinstance(layer, nn.Conv2d)]
    pools = [layer for layer in m.features if isinstance(layer, nn.MaxPool2d)]
    assert len(convs) == 13 and len(pools) == 4  # VGG16's 13 convolutions; pool5 unused
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    assert m.fuse.in_channels == 5 and m.fuse.kernel_size == (1, 1)


@pytest.mark.parametrize("size", [(37, 53), (31, 16)])
def test_cross_decoders_read_the_finer_decoders_same_scale_maps(size):
    torch.manual_seed(0)
    m = tiny().train()  # the default: the paper's connected decoders
    fused, sides = m(torch.rand(1, 3, *size))
    assert fused.shape[-2:] == size and all(s.shape[-2:] == size for s in sides)
    # decoder k's i-th step reads decoder k - 1's map of the same scale: twice the width into its 3x3 conv
    width = m.decoders[0].head.in_channels
    for k, dec in enumerate(m.decoders):
        assert len(dec.ups) == k and all(c[0].in_channels == 2 * width for c in dec.convs)
    # the coarsest decoder's output now depends on the finest decoder's weights, through the chain of partners
    sides[4].sum().backward()
    assert m.decoders[0].first[0].weight.grad.abs().sum() > 0
    independent = tiny(cross_decoders=False).train()
    independent(torch.rand(1, 3, *size))[1][4].sum().backward()
    assert independent.decoders[0][0].weight.grad is None  # independent decoders: no such path


def test_fusion_is_a_1x1_convolution_of_the_side_outputs():
    m = tiny().eval()
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        sides = m.side_outputs(x)
        expected = m.fuse(torch.cat(sides, 1))
        torch.testing.assert_close(m(x), expected)


def test_gradient_reaches_every_decoder_and_the_encoder():
    m = tiny().train()
    fused, sides = m(torch.rand(2, 3, 32, 32))
    cfg = TrainConfig(loss="weighted_bce")
    loss = training_loss((fused, sides), torch.ones_like(fused), torch.ones_like(fused), cfg)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _vgg16_features_file(tmp_path, batch_norm: bool):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"], batch_norm=batch_norm).state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier: ignored
    path = tmp_path / ("vgg16_bn.pth" if batch_norm else "vgg16.pth")
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("batch_norm", [False, True])
def test_encoder_loads_a_local_torchvision_vgg16_file(tmp_path, batch_norm):
    path, state = _vgg16_features_file(tmp_path, batch_norm)
    m = build_model("vgg16_mdn", base_width=64, batch_norm=batch_norm, decoder_width=4)
    n = m.load_pretrained(path)
    ours = m.features.state_dict()
    assert n == len(ours)
    assert all(torch.equal(ours[k], state[f"features.{k}"]) for k in ours)


def test_mismatched_weight_file_names_the_setting_to_change(tmp_path):
    path, _ = _vgg16_features_file(tmp_path, batch_norm=True)
    m = build_model("vgg16_mdn", base_width=64, batch_norm=False, decoder_width=4)
    with pytest.raises(ValueError, match=r"vgg16_bn\.pth.*VGG16-BN.*batch_norm: true"):
        m.load_pretrained(path)
    small = tiny(batch_norm=True)
    with pytest.raises(ValueError, match="base_width: 64"):
        small.load_pretrained(path)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="features"):
        small.load_pretrained(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        small.load_pretrained(tmp_path / "missing.pth")


def test_saved_model_round_trips_through_the_registry(tmp_path):
    m = tiny().eval()
    save_model(m, {"arch": "vgg16_mdn", "kwargs": {"base_width": 4, "decoder_width": 4}}, tmp_path)
    again, _ = load_model(tmp_path)
    x = torch.rand(1, 3, 21, 19)
    with torch.no_grad():
        torch.testing.assert_close(again(x), m(x))


# --------------------------------------------------------------------------------------------------
# loss terms
# --------------------------------------------------------------------------------------------------


def test_class_balance_gives_each_class_half_the_weight():
    t = np.array([[1, 0], [0, 0]])
    w = class_balance_map(t)
    np.testing.assert_allclose(w, [[2.0, 2 / 3], [2 / 3, 2 / 3]], rtol=1e-6)  # N / (2 N_c)
    assert w[t == 1].sum() == pytest.approx(w[t == 0].sum())
    np.testing.assert_array_equal(class_balance_map(np.zeros((3, 3))), np.ones((3, 3)))
    rare = np.zeros((100, 100))
    rare[0, 0] = 1
    assert class_balance_map(rare)[0, 0] == pytest.approx(10.0)  # clipped


def test_boundary_term_is_w0_on_boundaries_and_decays_to_one():
    b = np.zeros((21, 5), np.uint8)
    b[10] = 1
    w = distance_weight_map(b, w0=10.0, sigma=3.0)
    for d in range(11):
        assert w[10 + d, 2] == pytest.approx(1 + 9 * math.exp(-(d**2) / 18), rel=1e-6)
        assert w[10 - d, 2] == pytest.approx(w[10 + d, 2])
    assert w[10, 0] == pytest.approx(10.0) and w.min() > 1.0
    np.testing.assert_array_equal(distance_weight_map(np.zeros((4, 4)), 10, 3), np.ones((4, 4)))
    np.testing.assert_array_equal(distance_weight_map(b, 1.0, 3), np.ones(b.shape))


def test_reliability_switch_forgives_confident_contradictions_only():
    p = torch.tensor([0.99, 0.99, 0.6, 0.02, 0.02, 0.97])
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    logits = torch.logit(p).view(1, 1, 1, 6)
    r = reliability_mask(logits, y.view(1, 1, 1, 6), 0.95).flatten()
    # contrary prob: .99 (off), .01, .6, .98 (off), .02, .97 (off)
    assert r.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_weighted_bce_on_hand_made_values():
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5: BCE = ln 2 whatever the label
    y = torch.tensor([[[[1.0, 0.0]]]])
    w = torch.tensor([[[[1.0, 3.0]]]])
    assert float(weighted_bce_loss(logits, y, w)) == pytest.approx(math.log(2))
    # p = sigmoid(2) on a positive: -log(sigmoid(2)); on a negative: -log(1 - sigmoid(2))
    logits = torch.full((1, 1, 1, 2), 2.0)
    expected = (1 * -math.log(1 / (1 + math.exp(-2))) + 3 * -math.log(1 - 1 / (1 + math.exp(-2)))) / 4
    assert float(weighted_bce_loss(logits, y, w)) == pytest.approx(expected, rel=1e-6)
    # padding (weight 0) contributes nothing
    w0 = torch.tensor([[[[1.0, 0.0]]]])
    assert float(weighted_bce_loss(logits, y, w0)) == pytest.approx(-math.log(1 / (1 + math.exp(-2))), rel=1e-6)


def test_switched_off_pixels_stay_in_the_forward_pass_but_send_no_gradient():
    logits = torch.tensor([[[[5.0, -1.0]]]], requires_grad=True)  # p(first) = 0.993 on a negative label
    y = torch.zeros(1, 1, 1, 2)
    w = torch.ones(1, 1, 1, 2)
    loss = weighted_bce_loss(logits, y, w, reliability=0.95)
    loss.backward()
    assert logits.grad[0, 0, 0, 0] == 0 and logits.grad[0, 0, 0, 1] != 0
    # the switched-off pixel keeps its share of the normaliser: loss = BCE(second) / 2
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) / 2, rel=1e-6)
    assert weighted_bce_loss(logits, y, w).item() > loss.item()


def test_loss_weights_combine_the_precomputed_terms():
    data = {"weights": np.array([[[2.0, 0.0, 1.0]]], np.float32),
            "balance_interiors": np.array([[[3.0, 3.0, 0.5]]], np.float32),
            "distance_weights": np.array([[[4.0, 4.0, 1.0]]], np.float32)}
    cfg = TrainConfig(loss="weighted_bce", target="interiors")
    np.testing.assert_allclose(loss_weights(data, cfg), [[[12.0, 0.0, 0.5]]])  # valid x balance x distance
    np.testing.assert_allclose(loss_weights(data, TrainConfig(loss="weighted_bce", target="interiors",
                                                              class_balance=False)), [[[4.0, 0.0, 1.0]]])
    np.testing.assert_allclose(loss_weights(data, TrainConfig()), data["weights"])  # bce_dice: U-Net map
    np.testing.assert_allclose(loss_weights(data, TrainConfig(use_weight_map=False)), [[[1.0, 0.0, 1.0]]])
    assert set(loss_fields(cfg)) == {"images", "interiors", "weights", "balance_interiors", "distance_weights"}


def test_deep_supervision_sums_weighted_side_losses():
    torch.manual_seed(0)
    y = (torch.rand(1, 1, 8, 8) > 0.5).float()
    w = torch.ones_like(y)
    fused, sides = torch.randn(1, 1, 8, 8), [torch.randn(1, 1, 8, 8) for _ in range(5)]
    cfg = TrainConfig(loss="weighted_bce", fuse_weight=2.0, side_weights=[1, 0, 0.5, 0, 0])
    expected = (2 * weighted_bce_loss(fused, y, w) + weighted_bce_loss(sides[0], y, w)
                + 0.5 * weighted_bce_loss(sides[2], y, w))
    assert float(training_loss((fused, sides), y, w, cfg)) == pytest.approx(float(expected), rel=1e-6)
    # a plain output (eval mode, or a model without side outputs): the loss of that output alone
    assert float(training_loss(fused, y, w, cfg)) == pytest.approx(float(weighted_bce_loss(fused, y, w)))
    with pytest.raises(ValueError, match="side_weights"):
        training_loss((fused, sides[:2]), y, w, cfg)


def test_config_rejects_unknown_loss_and_bad_reliability():
    with pytest.raises(ValueError, match="train.loss"):
        TrainConfig(loss="focal")
    with pytest.raises(ValueError, match="reliability"):
        TrainConfig(reliability=0.3)


# --------------------------------------------------------------------------------------------------
# patch store: the two-stage targets and the precomputed weight terms
# --------------------------------------------------------------------------------------------------


def two_touching_squares() -> np.ndarray:
    labels = np.zeros((24, 30), np.int32)
    labels[4:16, 3:13] = 1
    labels[4:16, 13:25] = 2
    return labels


def test_store_holds_interiors_and_the_weight_terms(tmp_path):
    labels = two_touching_squares()
    image = np.full((*labels.shape, 3), 128, np.uint8)
    patches = list(extract_patches(image, labels, "s", 32, mode="grid", boundary_width=1, distance_w0=5,
                                   distance_sigma=2))
    write_patch_store(tmp_path / "p.h5", {"train": patches}, 32, attrs={"boundary_width": 1})
    got = read_patch_group(tmp_path / "p.h5", "train")
    assert set(FIELDS) <= set(got)
    assert read_store_attrs(tmp_path / "p.h5")["boundary_width"] == 1
    lab, inter = got["labels"][0], got["interiors"][0]
    np.testing.assert_array_equal(inter, (lab > 0) & (got["boundaries"][0] == 0))
    # touching objects stay apart in the interiors target
    assert not (inter[:, 12] | inter[:, 13]).any() and inter[8, 11] and inter[8, 14]
    valid = got["weights"][0] > 0  # padded to 32: padding has weight 0 in every term
    assert not valid[24:].any() and valid[:24, :30].all()
    for f in ("distance_weights", "balance_masks", "balance_boundaries", "balance_interiors"):
        assert (got[f][0][~valid] == 0).all() and (got[f][0][valid] > 0).all(), f
    assert got["distance_weights"][0][8, 12] == pytest.approx(5.0)  # on the shared boundary


# --------------------------------------------------------------------------------------------------
# instances from interiors: boundary-aware growth
# --------------------------------------------------------------------------------------------------


def test_interiors_grown_back_give_the_touching_objects_exactly():
    labels = two_touching_squares()
    inner = (labels > 0) & (boundary_map(labels, 1) == 0)  # the stage-2 target
    prob = np.where(inner, 0.9, 0.1).astype(np.float32)
    got = postprocess(prob, PostprocessConfig(min_size=5, split="components"), 0.5, grow=1)
    assert got.max() == 2
    cross = ndi.generate_binary_structure(2, 1)
    for k in (1, 2):
        ids = np.unique(got[got > 0][(labels == k)[got > 0]])
        assert len(ids) == 1
        # exact up to the opening by the band's diamond: a rectangle loses its 4 corner pixels only
        np.testing.assert_array_equal(got == ids[0], ndi.binary_opening(labels == k, cross))
        assert (labels == k).sum() - (got == ids[0]).sum() == 4


def test_growth_follows_the_probability_valley():
    # two markers; the ridge of low probability sits at column 7, not halfway (column 5)
    prob = np.ones((5, 12), np.float32)
    prob[:, 7] = 0.0
    markers = np.zeros((5, 12), np.int32)
    markers[:, 0], markers[:, 11] = 1, 2
    grown = grow_instances(markers, prob, grow=20)
    assert (grown[:, :7] == 1).all() and (grown[:, 8:] == 2).all()
    assert (grow_instances(markers, prob, 0) == markers).all()


# --------------------------------------------------------------------------------------------------
# per-fibre precision / recall and the FT / DT threshold selection
# --------------------------------------------------------------------------------------------------


def test_per_fibre_precision_recall_on_hand_made_cases():
    gt = np.zeros((10, 20), np.int32)
    gt[0:10, 0:10], gt[0:10, 10:20] = 1, 2
    assert per_fibre_precision_recall(gt, gt) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n_gt": 2}
    merged = (gt > 0).astype(np.int32)  # one segment over both: precision 100/200 each, recall 1
    r = per_fibre_precision_recall(merged, gt)
    assert (r["precision"], r["recall"]) == (0.5, 1.0) and r["f1"] == pytest.approx(2 / 3)
    split = gt.copy()
    split[0:5, 0:10] = 3  # fibre 1 split in halves: its best segment covers 50 of its 100 px
    r = per_fibre_precision_recall(split, gt)
    assert (r["precision"], r["recall"]) == (1.0, 0.75)
    missed = np.where(gt == 2, 2, 0)  # fibre 1 missed: P = R = 0 for it
    r = per_fibre_precision_recall(missed, gt)
    assert (r["precision"], r["recall"]) == (0.5, 0.5)
    r = per_fibre_precision_recall(gt, np.zeros_like(gt))
    assert r["n_gt"] == 0 and math.isnan(r["f1"])


def test_fixed_and_dynamic_thresholds_on_a_hand_made_table():
    th = [0.3, 0.5, 0.7]
    f1 = np.array([[0.6, 0.8, 0.7],   # image 1: best at 0.5
                   [0.9, 0.5, 0.4],   # image 2: best at 0.3
                   [0.5, 0.7, 0.7]])  # image 3: tie 0.5 / 0.7 -> the lower
    pr = np.stack([f1 - 0.1, f1 + 0.1, f1], axis=-1)  # (precision, recall, f1)
    s = fixed_and_dynamic_thresholds(pr, th)
    # mean F1 per threshold: 0.667, 0.667, 0.6 -> tie, the lower threshold wins
    assert s["ft_threshold"] == 0.3 and s["n_images"] == 3
    assert s["ft_f1_mean"] == pytest.approx((0.6 + 0.9 + 0.5) / 3)
    assert s["dt_thresholds"] == [0.5, 0.3, 0.5]
    assert s["dt_f1_mean"] == pytest.approx((0.8 + 0.9 + 0.7) / 3)
    assert s["dt_f1_sd"] == pytest.approx(np.std([0.8, 0.9, 0.7], ddof=1))
    assert s["dt_precision_mean"] == pytest.approx((0.7 + 0.8 + 0.6) / 3)
    assert s["dt_f1_mean"] >= s["ft_f1_mean"]  # per-image choice can only do better


def test_threshold_selection_skips_images_without_fibres_and_checks_shapes():
    scores = np.full((2, 2, 3), np.nan)
    scores[0] = [[0.5, 0.5, 0.5], [0.9, 0.9, 0.9]]
    s = fixed_and_dynamic_thresholds(scores, [0.4, 0.6])
    assert s["n_images"] == 1 and s["ft_threshold"] == 0.6 and s["ft_f1_sd"] == 0.0
    assert fixed_and_dynamic_thresholds(np.full((1, 2, 3), np.nan), [0.4, 0.6])["n_images"] == 0
    with pytest.raises(ValueError, match="scores must be"):
        fixed_and_dynamic_thresholds(np.zeros((2, 3, 3)), [0.4, 0.6])
