"""Res-CR-Net, its ConvLSTM cell, the Tanimoto loss and the multi-class helpers, on shapes and
hand-made values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoflow.io import InputError, write_image
from histoflow.models import build_model
from histoflow.models.rescrnet import ConvLSTMCell, ConvResBlock, GroupedConvLSTM, LSTMResBlock, ScoreLSTMResBlock
from histoflow.semantic import (
    class_instances,
    class_metrics,
    cleanup_classes,
    confusion_matrix,
    read_class_mask,
    scores_of_mean_precision_recall,
    soft_overlap_sums,
    soft_scores,
    tanimoto_loss,
)

# --------------------------------------------------------------------------------------------------
# ConvLSTM
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims,spatial", [(1, (7,)), (2, (5, 6))])
def test_convlstm_cell_shapes_and_zero_initial_state(dims, spatial):
    cell = ConvLSTMCell(3, 4, kernel_size=3, dims=dims)
    x = torch.rand(2, 3, *spatial)
    h, c = cell(x)
    assert h.shape == c.shape == (2, 4, *spatial)
    z = torch.zeros(2, 4, *spatial)
    h2, c2 = cell(x, (z, z))
    torch.testing.assert_close(h, h2)
    assert (h.abs() < 1).all()  # h = o * tanh(c)


def test_convlstm_rejects_even_kernels_and_bad_dims():
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMCell(1, 1, kernel_size=2)
    with pytest.raises(ValueError, match="dims"):
        ConvLSTMCell(1, 1, dims=3)


def test_convlstm_learns_to_remember_the_first_frame():
    """A tiny sequence task only a recurrent memory solves: at every step output frame 0."""
    torch.manual_seed(0)
    cell = ConvLSTMCell(1, 6, kernel_size=3, dims=1)
    readout = torch.nn.Conv1d(6, 1, 1)
    opt = torch.optim.Adam([*cell.parameters(), *readout.parameters()], lr=0.03)

    def batch(n=32, steps=5, width=8):
        seq = (torch.rand(n, steps, 1, width) > 0.5).float()
        return seq, seq[:, 0]

    def loss_of(seq, first):
        state, loss = None, 0.0
        for t in range(seq.shape[1]):
            state = cell(seq[:, t], state)
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(readout(state[0]), first)
        return loss / seq.shape[1]

    seq, first = batch()
    with torch.no_grad():
        start = float(loss_of(seq, first))
    for _ in range(150):
        seq, first = batch()
        loss = loss_of(seq, first)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seq, first = batch(n=64)
    with torch.no_grad():
        state, correct = None, []
        for t in range(seq.shape[1]):
            state = cell(seq[:, t], state)
            correct.append(((readout(state[0]) > 0).float() == first).float().mean())
    with torch.no_grad():
        assert float(loss_of(seq, first)) < 0.3 * start
    assert float(correct[-1]) > 0.95  # still remembers frame 0 four steps later


def test_grouped_lstm_equals_independent_cells():
    torch.manual_seed(0)
    grouped = GroupedConvLSTM(3, 4, kernel_size=3, groups=4)
    cells = []
    for g in range(4):  # each group's slice of the grouped weights, as a plain cell
        cell = ConvLSTMCell(3, 4, kernel_size=3, dims=1)
        rows = slice(g * 16, (g + 1) * 16)
        cell.conv.weight.data.copy_(grouped.conv.weight.data[rows])
        cell.conv.bias.data.copy_(grouped.conv.bias.data[rows])
        cells.append(cell)
    seq = torch.rand(2, 5, 4, 3, 7)
    out = grouped(seq)
    sub = grouped(seq[:, :, 2:], 2, 4)  # a subset of the groups (non-square maps)
    for g, cell in enumerate(cells):
        state, ref = None, []
        for t in range(5):
            state = cell(seq[:, t, g], state)
            ref.append(state[0])
        torch.testing.assert_close(out[:, :, g], torch.stack(ref, 1))
        if g >= 2:
            torch.testing.assert_close(sub[:, :, g - 2], torch.stack(ref, 1))
    with pytest.raises(ValueError, match="groups"):
        grouped(seq, 0, 2)


def test_grouped_2d_lstm_equals_independent_2d_cells():
    torch.manual_seed(0)
    grouped = GroupedConvLSTM(1, 1, kernel_size=3, groups=2, dims=2)
    seq = torch.rand(2, 4, 2, 1, 3, 5)  # (N, T, groups, channels, classes, width)
    out = grouped(seq, 0, 2)
    for g in range(2):
        cell = ConvLSTMCell(1, 1, kernel_size=3, dims=2)
        cell.conv.weight.data.copy_(grouped.conv.weight.data[g * 4:(g + 1) * 4])
        cell.conv.bias.data.copy_(grouped.conv.bias.data[g * 4:(g + 1) * 4])
        state, ref = None, []
        for t in range(4):
            state = cell(seq[:, t, g], state)
            ref.append(state[0])
        torch.testing.assert_close(out[:, :, g], torch.stack(ref, 1))


@pytest.mark.parametrize("size", [(6, 6), (5, 8)])
def test_score_lstm_block_as_the_paper_places_it(size):
    """On C class-score maps: one 3 x 3 filter per direction over (columns x classes), summed, plus the shortcut."""
    torch.manual_seed(0)
    block = ScoreLSTMResBlock().eval()
    # four directional ConvLSTM2Ds, each one filter: gates (4) x inputs (x and h, one channel each) x 3 x 3 + biases
    assert sum(p.numel() for p in block.parameters()) == 4 * (4 * 2 * 9 + 4)
    x = torch.rand(1, 3, *size)
    y = x.clone()
    y[0, 2, -1, -1] += 1.0  # last class, last pixel
    with torch.no_grad():
        out, d = block(x), (block(x) - block(y)).abs()
    assert out.shape == x.shape
    assert d[0, :, 0, -1].sum() > 0 and d[0, :, -1, 0].sum() > 0  # reaches the first row and the first column
    assert d[0, 0, 0, -1] > 0  # and other classes: the 3 x 3 filter spans neighbouring classes


def test_rescrnet_lstm_runs_on_class_scores_by_default():
    seen = []
    m = build_model("rescrnet", out_channels=3, filters=8, n_conv=1).eval()
    m.lstm_blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    with torch.no_grad():
        assert m(torch.rand(1, 3, 9, 7)).shape == (1, 3, 9, 7)
    assert m.lstm_on == "scores" and seen == [3]  # the head's 3 class scores, not the 8 features
    f = build_model("rescrnet", out_channels=3, filters=8, n_conv=1, lstm_on="features").eval()
    assert isinstance(f.lstm_blocks[0], LSTMResBlock)
    with pytest.raises(ValueError, match="lstm_on"):
        build_model("rescrnet", lstm_on="logits")


@pytest.mark.parametrize("size", [(6, 6), (6, 9)])
def test_lstm_block_is_bidirectional(size):
    torch.manual_seed(0)
    block = LSTMResBlock(2, 3, kernel=3, slope=0.1).eval()
    x = torch.rand(1, 2, *size)
    y = x.clone()
    y[0, :, -1, -1] += 1.0  # change only the last row's last pixel
    with torch.no_grad():
        d = (block(x) - block(y)).abs().sum(1)[0]
    assert d[0, -1] > 0 and d[-1, 0] > 0  # reaches the first row (backward row scan) and first column


def test_square_and_rectangular_paths_agree():
    torch.manual_seed(0)
    block = LSTMResBlock(2, 3, kernel=3, slope=0.1).eval()
    x = torch.rand(1, 2, 7, 7)
    with torch.no_grad():
        square = block(x)
        # the rectangular path on the same data: run rows and columns separately
        rows, cols = x.permute(0, 2, 1, 3), x.permute(0, 3, 1, 2)
        r = block.lstm(torch.stack([rows, rows.flip(1)], 2), 0, 2)
        c = block.lstm(torch.stack([cols, cols.flip(1)], 2), 2, 4)
        r = (r[:, :, 0] + r[:, :, 1].flip(1)).permute(0, 2, 1, 3)
        c = (c[:, :, 0] + c[:, :, 1].flip(1)).permute(0, 2, 3, 1)
        torch.testing.assert_close(square, block.act(x + block.project(r + c)))


def test_lstm_block_propagates_along_rows_and_columns():
    torch.manual_seed(0)
    block = LSTMResBlock(2, 3, kernel=3, slope=0.1).eval()
    x = torch.rand(1, 2, 9, 11)
    y = x.clone()
    y[0, :, 4, 5] += 1.0
    with torch.no_grad():
        d = (block(x) - block(y)).abs().sum(1)[0]
    assert d[0, 5] > 0 and d[8, 5] > 0  # far along the column (row scan steps over rows)
    assert d[4, 0] > 0 and d[4, 10] > 0  # far along the row (column scan)


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (32, 9)])
def test_rescrnet_keeps_any_size(size):
    m = build_model("rescrnet", in_channels=3, out_channels=3, filters=8, n_conv=2, n_lstm=1, lstm_hidden=4).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, *size)).shape == (2, 3, *size)


@pytest.mark.parametrize("merge", ["concat", "add"])
def test_conv_res_block_shapes_on_odd_sizes(merge):
    block = ConvResBlock(6, 3, (1, 3, 5), merge, 0.1, 0.2).eval()
    x = torch.rand(2, 6, 13, 7)
    assert block(x).shape == x.shape
    assert len(block.branches) == 3
    dil = [b[0][0].dilation for b in block.branches]
    assert dil == [(1, 1), (3, 3), (5, 5)] and all(b[0][0].groups == 6 for b in block.branches)  # separable
    with pytest.raises(ValueError, match="merge"):
        ConvResBlock(6, 3, (1,), "mean", 0.1, 0.0)


def test_rescrnet_defaults_follow_the_seed():
    m = build_model("rescrnet", out_channels=2)
    assert len(m.conv_blocks) == 6 and len(m.lstm_blocks) == 1
    assert not any(isinstance(x, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for x in m.modules())
    assert any(isinstance(x, torch.nn.LeakyReLU) for x in m.modules())
    assert any(isinstance(x, torch.nn.Dropout2d) for x in m.modules())


# --------------------------------------------------------------------------------------------------
# Tanimoto loss
# --------------------------------------------------------------------------------------------------


def test_tanimoto_is_zero_for_a_perfect_prediction():
    y = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 50
    assert float(tanimoto_loss(logits, y)) == pytest.approx(0.0, abs=1e-6)


def test_tanimoto_on_hand_made_values():
    # binary, C = 1: p = 0.5 on two pixels, labels (1, 0)
    logits = torch.zeros(1, 1, 1, 2)
    y = torch.tensor([[[[1.0, 0.0]]]])
    # T(p, y) = 0.5 / (0.5 + 1 - 0.5) = 0.5; complement identical by symmetry -> loss 0.5
    assert float(tanimoto_loss(logits, y, smooth=0.0)) == pytest.approx(0.5)
    # one pixel, p = 0.5, y = 1: T(p,y) = 0.5 / (0.25 + 1 - 0.5) = 2/3; T(1-p, 1-y) = 0 / 0.25 = 0
    one = tanimoto_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), smooth=0.0)
    assert float(one) == pytest.approx(1 - (2 / 3 + 0) / 2)
    # pixel weights: a zero-weight pixel is ignored entirely
    w = torch.tensor([[[[1.0, 0.0]]]])
    got = tanimoto_loss(torch.tensor([[[[0.0, 9.0]]]]), y, weights=w, smooth=0.0)
    assert float(got) == pytest.approx(float(one))


def test_tanimoto_class_weights():
    y = torch.tensor([[[0, 1]]])
    logits = torch.tensor([[[[5.0, 5.0]], [[-5.0, 5.0]]]]).permute(0, 1, 2, 3)  # class 0 right on pixel 0 only
    logits = logits.reshape(1, 2, 1, 2)
    per_class = [float(1 - tanimoto_loss(logits, y, class_weights=k)) for k in ([1, 0], [0, 1])]
    mixed = float(1 - tanimoto_loss(logits, y, class_weights=[3, 1]))
    assert mixed == pytest.approx((3 * per_class[0] + per_class[1]) / 4)
    with pytest.raises(ValueError, match="class_weights"):
        tanimoto_loss(logits, y, class_weights=[1, 2, 3])


def test_tanimoto_gradient_points_to_the_label():
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    y = torch.tensor([[[2, 2], [2, 2]]])
    tanimoto_loss(logits, y).backward()
    assert (logits.grad[:, 2] < 0).all() and (logits.grad[:, :2] > 0).all()


# --------------------------------------------------------------------------------------------------
# class masks, cleanup, metrics
# --------------------------------------------------------------------------------------------------


def test_read_class_mask_values_and_palette(tmp_path):
    write_image(tmp_path / "g.png", np.array([[0, 255], [255, 0]], np.uint8))
    np.testing.assert_array_equal(read_class_mask(tmp_path / "g.png", 2, class_values=[0, 255]), [[0, 1], [1, 0]])
    with pytest.raises(InputError, match=r"g\.png.*\[255\].*class_values"):
        read_class_mask(tmp_path / "g.png", 2)  # values would have to be 0 and 1
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 1] = (0, 0, 255)
    write_image(tmp_path / "c.png", rgb)
    pal = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    np.testing.assert_array_equal(read_class_mask(tmp_path / "c.png", 3, palette=pal), [[0, 1], [0, 2]])
    with pytest.raises(InputError, match="palette"):
        read_class_mask(tmp_path / "c.png", 3)
    with pytest.raises(InputError, match=r"RGB\(0, 0, 255\)"):
        read_class_mask(tmp_path / "c.png", 2, palette=pal[:2])


def test_class_instances_separate_classes_not_touching_objects():
    c = np.array([[1, 1, 2, 0, 1]])
    inst = class_instances(c)
    assert inst[0, 0] == inst[0, 1] != inst[0, 2] and inst[0, 3] == 0 and inst[0, 4] not in (0, inst[0, 0])


def test_cleanup_hands_small_regions_to_their_surroundings():
    c = np.zeros((7, 7), np.uint8)
    c[1:6, 1:6] = 1
    c[3, 3] = 2  # a one-pixel speck of class 2 inside class 1
    c[0, 6] = 2  # and one in the background corner
    out = cleanup_classes(c, min_size=2)
    assert out[3, 3] == 1 and out[0, 6] == 0
    assert (out[1:6, 1:6] == 1).all()
    np.testing.assert_array_equal(cleanup_classes(c, 0), c)


def test_confusion_matrix_and_class_metrics_by_hand():
    gt = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(pred, gt, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    m = class_metrics(cm, ["bg", "a", "b"])
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["dice_bg"] == pytest.approx(2 * 1 / (2 + 1 + 1))  # tp 1, fp 1, fn 1
    assert m["jaccard_a"] == pytest.approx(2 / 3) and m["precision_a"] == pytest.approx(2 / 3)
    assert m["recall_a"] == 1.0 and m["recall_b"] == 0.5 and m["precision_b"] == 1.0
    assert m["f1_b"] == m["dice_b"] == pytest.approx(2 / 3)
    assert m["mean_dice"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    # a class absent from truth and prediction is not a failure
    assert class_metrics(confusion_matrix(np.zeros(3, int), np.zeros(3, int), 2))["dice_1"] == 1.0
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_soft_scores_by_hand():
    """Two classes, four pixels; truth [0, 0, 1, 1], class-1 probabilities [0, 0.5, 0.5, 1]."""
    p1 = np.array([[0.0, 0.5, 0.5, 1.0]])
    prob = np.stack([1 - p1, p1])
    truth = np.array([[0, 0, 1, 1]])
    sums = soft_overlap_sums(prob, truth)
    # class 1: N 4, Σpy = 1.5, Σp² = 1.5, Σp = 2, Σy = 2; class 0 (p = 1, .5, .5, 0) is its mirror image
    np.testing.assert_allclose(sums, [[4, 1.5, 1.5, 2, 2], [4, 1.5, 1.5, 2, 2]])
    s = soft_scores(sums, ["bg", "fg"], smooth=0.0)
    # T(p, y) = 1.5 / (1.5 + 2 - 1.5) = 0.75; complement 1 - p = [1, .5, .5, 0], 1 - y = [1, 1, 0, 0]:
    # Σ = 1.5, Σ(1-p)² = 1.5, Σ(1-y)² = 2, so 0.75 too; soft Dice = 3 / 4
    assert s["tanimoto_fg"] == pytest.approx(0.75) and s["tanimoto_bg"] == pytest.approx(0.75)
    assert s["soft_dice_fg"] == pytest.approx(0.75) and s["mean_tanimoto"] == pytest.approx(0.75)
    # the Tanimoto coefficient with complement is 1 - the loss the network is trained with
    logits = torch.log(torch.from_numpy(prob).clamp_min(1e-12)).unsqueeze(0)
    loss = float(tanimoto_loss(logits, torch.from_numpy(truth).unsqueeze(0), smooth=0.0))
    assert s["mean_tanimoto"] == pytest.approx(1 - loss, abs=1e-6)
    # sums add up over images: the pooled score of an image twice is the score of the image
    assert soft_scores(2 * sums, smooth=0.0)["mean_soft_dice"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="do not match"):
        soft_overlap_sums(prob, truth.T)


def test_soft_dice_differs_from_the_hard_f1_as_in_the_paper():
    """Confident right answers: the argmax is perfect (F1 1) but the soft Dice counts the missing confidence."""
    prob = np.array([[[0.8, 0.8, 0.2, 0.2]], [[0.2, 0.2, 0.8, 0.8]]])
    truth = np.array([[0, 0, 1, 1]])
    assert class_metrics(confusion_matrix(prob.argmax(0), truth, 2))["mean_f1"] == 1.0
    s = soft_scores(soft_overlap_sums(prob, truth), smooth=0.0)
    assert s["soft_dice_1"] == pytest.approx(2 * 1.6 / (2.0 + 2))  # Σpy 1.6, Σp 2, Σy 2
    # Tanimoto squares the probabilities: Σp² = 2 (0.64 + 0.04) = 1.36, T = 1.6 / (1.36 + 2 - 1.6) = 10 / 11, and the
    # complement is the same by symmetry
    assert s["mean_tanimoto"] == pytest.approx(10 / 11)


def test_table_one_scores_follow_from_precision_and_recall():
    """Res-CR-Net's Table 1 (EM): precision 0.926, recall 0.922 -> F1 0.924, Jaccard 0.859."""
    t = scores_of_mean_precision_recall(0.926, 0.922)
    assert round(t["f1_of_mean_pr"], 3) == 0.924 and round(t["jaccard_of_mean_pr"], 3) == 0.859
    # one set of counts: tp 6, fp 2, fn 4 -> P 3/4, R 3/5, Jaccard 6 / 12
    assert scores_of_mean_precision_recall(0.75, 0.6)["jaccard_of_mean_pr"] == pytest.approx(0.5)
    assert scores_of_mean_precision_recall(0.0, 0.5) == {"f1_of_mean_pr": 0.0, "jaccard_of_mean_pr": 0.0}


def test_bf16_channels_last_training_step_of_a_narrow_atrous_net_matches_the_contiguous_layout():
    """bf16 + channels_last is how training runs on a CPU with AVX512-BF16. PyTorch 2.14 crashed (segfault) in the
    backward pass of a depthwise convolution of < 16 channels at dilation >= 3 in that layout; those convolutions run
    contiguous instead, so the step completes and its loss and gradients equal the contiguous model's."""
    torch.manual_seed(0)
    model = build_model("rescrnet", out_channels=3, filters=4, n_conv=1, n_lstm=1, dilations=(1, 3, 5), dropout=0.0)
    x = torch.rand(2, 3, 32, 32)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model.zero_grad()
        model.to(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x.contiguous(memory_format=fmt)).float().square().mean()
        loss.backward()
        grads.append((float(loss), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (loss_a, ga), (loss_b, gb) = grads
    assert loss_b == pytest.approx(loss_a, rel=1e-2)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=0.05, atol=1e-3, msg=k)
