"""Res-CR-Net: residual blocks of separable atrous convolutions and a bidirectional ConvLSTM block.

No pooling anywhere: every feature map keeps the input size, so any image size works and thin
structures (membranes, fibre boundaries) are never down-sampled away. The network is

- a STEM block (3×3 conv → LeakyReLU → 3×3 conv, plus a 1×1 shortcut);
- ``n_conv`` CONV RES blocks: three parallel branches of depthwise-separable atrous convolutions
  (one dilation rate each), concatenated (or added), projected by a 1×1 conv and added to the
  shortcut, then Spatial Dropout;
- a 1×1 head giving ``C`` class scores;
- ``n_lstm`` LSTM RES blocks on those scores, as the paper places them (a learned replacement for a CRF): a
  bidirectional 2-D convolutional LSTM runs over the rows (each row a time step, a columns × classes slice)
  and another over the columns; their outputs, summed over both directions and both scans, are added to
  the shortcut; the result is the logits (softmax is applied by the loss and at inference). ``lstm_on:
  features`` runs them on the feature channels before the head instead.

:class:`ConvLSTMCell` is the small, separately tested building block: one step of a convolutional
LSTM (1-D: a row of the feature map, channels × width; or 2-D). :class:`GroupedConvLSTM` runs
several such cells in lockstep (tested to equal them), which is how the LSTM block scans.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model


def lstm_update(i: torch.Tensor, f: torch.Tensor, o: torch.Tensor, g: torch.Tensor, c: torch.Tensor):
    """The LSTM state update from gate pre-activations; returns ``(h', c')``.

    ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``.
    """
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMCell(nn.Module):
    """One step of a convolutional LSTM (Shi et al., NeurIPS 2015) on ``(N, C, *spatial)`` tensors.

    The gates ``i, f, o, g`` come from one convolution of ``[x, h]``; ``c' = f c + i g``,
    ``h' = o tanh(c')``. ``dims`` is 1 (sequences of rows: spatial ``(W,)``) or 2 (sequences of
    images). Padding keeps the spatial size. The forget-gate bias starts at 1 (a common LSTM
    initialisation that helps long sequences).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3, dims: int = 1) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the size, got {kernel_size}")
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.hidden = hidden
        self.conv = conv(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)
        with torch.no_grad():
            self.conv.bias.zero_()
            self.conv.bias[hidden : 2 * hidden] = 1.0

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``x (N, C_in, *S)`` and ``(h, c)`` each ``(N, hidden, *S)`` (zeros when ``None``) → the new ``(h, c)``."""
        if state is None:
            z = x.new_zeros((x.shape[0], self.hidden, *x.shape[2:]))
            state = (z, z)
        h, c = state
        return lstm_update(*self.conv(torch.cat([x, h], dim=1)).chunk(4, dim=1), c)


class GroupedConvLSTM(nn.Module):
    """``groups`` independent ConvLSTMs (each exactly a :class:`ConvLSTMCell`) stepped in lockstep.

    One grouped convolution per time step computes every group's gates, so four directional scans cost one
    sequential pass instead of four (the time loop, not the arithmetic, bounds the speed).

    ``forward(seq, first, last)`` runs groups ``first .. last - 1`` on ``seq (N, T, last - first, C, *S)``
    and returns their hidden sequences ``(N, T, last - first, hidden, *S)``; ``S`` is ``(L,)`` for ``dims=1``
    (a row of a feature map) and ``(A, B)`` for ``dims=2`` (a row of class scores seen as a 2-D slice).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3, groups: int = 4, dims: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the size, got {kernel_size}")
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        self.hidden, self.groups, self.pad, self.dims = hidden, groups, kernel_size // 2, dims
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = conv(groups * (in_channels + hidden), groups * 4 * hidden, kernel_size, padding=self.pad,
                         groups=groups)
        with torch.no_grad():
            self.conv.bias.zero_()
            self.conv.bias.view(groups, 4, hidden)[:, 1] = 1.0  # forget gates

    def forward(self, seq: torch.Tensor, first: int = 0, last: int | None = None) -> torch.Tensor:
        last = self.groups if last is None else last
        n, steps, g = seq.shape[:3]
        spatial = tuple(seq.shape[4:])
        if g != last - first:
            raise ValueError(f"seq has {g} groups for groups {first}..{last - 1}")
        rows = slice(first * 4 * self.hidden, last * 4 * self.hidden)
        weight, bias = self.conv.weight[rows], self.conv.bias[rows]
        conv = F.conv1d if self.dims == 1 else F.conv2d
        h = seq.new_zeros((n, g, self.hidden, *spatial))
        c = h
        outs = []
        for t in range(steps):
            z = torch.cat([seq[:, t], h], dim=2).reshape(n, -1, *spatial)
            gates = conv(z, weight, bias, padding=self.pad, groups=g).reshape(n, g, 4, self.hidden, *spatial)
            h, c = lstm_update(*gates.unbind(2), c)
            outs.append(h)
        return torch.stack(outs, 1)


class DepthwiseAtrousConv(nn.Conv2d):
    """A depthwise (``groups = channels``) atrous convolution, bias-free, that keeps the size.

    PyTorch 2.14's CPU kernel crashes (segmentation fault) in the backward pass of such a convolution in bf16
    with channels_last input and weights when it has fewer than 16 channels and a dilation of 3 or more (measured
    on an AMD EPYC with AVX512-BF16, where training runs bf16 + channels_last); that one case runs in the
    contiguous layout instead, which gives the same numbers.
    """

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                         groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and self.dilation[0] > 2 and self.in_channels < 16
                and torch.is_autocast_enabled("cpu") and x.is_contiguous(memory_format=torch.channels_last)):
            # input, weights and the gradient coming back all contiguous: the kernel follows their layout
            # (a (C, 1, k, k) weight in channels_last counts as contiguous: only a clone changes its strides)
            weight = self.weight.clone(memory_format=torch.contiguous_format)
            y = self._conv_forward(x.contiguous(), weight, self.bias)
            return y.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def _separable(cin: int, cout: int, kernel: int, dilation: int) -> nn.Sequential:
    """Depthwise atrous convolution then a pointwise 1×1 (padding keeps the size)."""
    return nn.Sequential(DepthwiseAtrousConv(cin, kernel, dilation), nn.Conv2d(cin, cout, 1))


class StemBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.LeakyReLU(slope, inplace=True),
            nn.Conv2d(cout, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ConvResBlock(nn.Module):
    """Three parallel separable atrous branches (one dilation each), merged, projected, added to the input.

    Then LeakyReLU and Spatial Dropout.
    """

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], merge: str, slope: float,
                 dropout: float) -> None:
        super().__init__()
        if merge not in ("concat", "add"):
            raise ValueError(f"merge must be 'concat' or 'add', got {merge!r}")
        self.merge = merge
        self.branches = nn.ModuleList(
            nn.Sequential(_separable(channels, channels, kernel, d), nn.BatchNorm2d(channels), nn.LeakyReLU(slope))
            for d in dilations
        )
        self.project = nn.Conv2d(channels * (len(dilations) if merge == "concat" else 1), channels, 1)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        merged = torch.cat(outs, 1) if self.merge == "concat" else torch.stack(outs).sum(0)
        return self.drop(self.act(x + self.project(merged)))


class LSTMResBlock(nn.Module):
    """Bidirectional ConvLSTMs over the rows and over the columns of the feature map, with a shortcut.

    Each row is a time step of the row scans (each column of the column scans); the four directional outputs
    are summed and added to the shortcut.

    The four scans are groups of one :class:`GroupedConvLSTM` (row forward, row backward, column
    forward, column backward): on a square map they run in one pass of ``H`` steps, otherwise rows
    and columns take one pass each.
    """

    def __init__(self, channels: int, hidden: int, kernel: int, slope: float) -> None:
        super().__init__()
        self.lstm = GroupedConvLSTM(channels, hidden, kernel, groups=4)
        self.project = nn.Conv2d(hidden, channels, 1) if hidden != channels else nn.Identity()
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3)  # (N, H, C, W): H time steps of length W
        cols = x.permute(0, 3, 1, 2)  # (N, W, C, H)
        if x.shape[2] == x.shape[3]:
            out = self.lstm(torch.stack([rows, rows.flip(1), cols, cols.flip(1)], 2))
            r_out, c_out = out[:, :, :2], out[:, :, 2:]
        else:
            r_out = self.lstm(torch.stack([rows, rows.flip(1)], 2), 0, 2)
            c_out = self.lstm(torch.stack([cols, cols.flip(1)], 2), 2, 4)
        r = (r_out[:, :, 0] + r_out[:, :, 1].flip(1)).permute(0, 2, 1, 3)  # (N, hidden, H, W)
        c = (c_out[:, :, 0] + c_out[:, :, 1].flip(1)).permute(0, 2, 3, 1)
        return self.act(x + self.project(r + c))


class ScoreLSTMResBlock(nn.Module):
    """Res-CR-Net's LSTM RES block as the paper places it: on the ``C`` class-score maps, before the softmax.

    Each image row is a time step whose input is a 2-D slice (columns × classes) with one channel, convolved
    with a single 3 × 3 filter (``hidden = 1``; the paper's ConvLSTM2D with one filter); bidirectional scans over
    the rows and, on the transposed map, over the columns. The four directional outputs are summed (the paper
    adds the two scans and sums the bidirectional pair) and added to the shortcut, the scores themselves: a
    learned, CRF-like smoothing of the class scores. No activation follows (the result is the logits).
    """

    def __init__(self, kernel: int = 3) -> None:
        super().__init__()
        self.lstm = GroupedConvLSTM(1, 1, kernel, groups=4, dims=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).unsqueeze(2)  # (N, H, 1, C, W): H steps of a (C, W) slice
        cols = x.permute(0, 3, 1, 2).unsqueeze(2)  # (N, W, 1, C, H)
        r_out = self.lstm(torch.stack([rows, rows.flip(1)], 2), 0, 2)[:, :, :, 0]  # (N, H, 2, C, W)
        c_out = self.lstm(torch.stack([cols, cols.flip(1)], 2), 2, 4)[:, :, :, 0]  # (N, W, 2, C, H)
        r = (r_out[:, :, 0] + r_out[:, :, 1].flip(1)).permute(0, 2, 1, 3)  # (N, C, H, W)
        c = (c_out[:, :, 0] + c_out[:, :, 1].flip(1)).permute(0, 2, 3, 1)
        return x + r + c


@register_model("rescrnet")
class ResCRNet(nn.Module):
    """Res-CR-Net (registered as ``rescrnet``).

    Parameters
    ----------
    in_channels, out_channels:
        Input channels and classes ``C`` (logits; use softmax, or sigmoid when ``C == 1``).
    filters:
        Channels of every block (no pooling, so one width throughout).
    n_conv, n_lstm:
        Numbers of CONV RES and LSTM RES blocks (seed: 6 and 1).
    kernel_size, dilations, merge:
        Kernel of the separable atrous convolutions, one dilation rate per branch, and how branches
        are merged (``concat`` then 1×1 projection, or ``add``).
    lstm_on:
        ``"scores"`` (the paper): the LSTM RES blocks run on the class-score maps after the 1×1 head, just before
        the softmax (:class:`ScoreLSTMResBlock`). ``"features"``: they run on the ``filters`` feature channels
        before the head (:class:`LSTMResBlock`, this project's earlier variant).
    lstm_hidden, lstm_kernel:
        Hidden channels (``features`` only) and kernel of the ConvLSTM cells.
    dropout, slope:
        Spatial Dropout rate after each CONV RES block; LeakyReLU negative slope.

    Shapes
    ------
    ``forward``: ``(N, in_channels, H, W)`` → ``(N, out_channels, H, W)`` logits, any ``H, W >= 1``.
    The LSTM block steps over H rows and W columns, so its cost grows with the tile edge.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        filters: int = 32,
        n_conv: int = 6,
        n_lstm: int = 1,
        kernel_size: int = 3,
        dilations: tuple[int, ...] | list[int] = (1, 3, 5),
        merge: str = "concat",
        lstm_on: str = "scores",
        lstm_hidden: int = 16,
        lstm_kernel: int = 3,
        dropout: float = 0.1,
        slope: float = 0.1,
    ) -> None:
        super().__init__()
        if n_conv < 0 or n_lstm < 0 or filters < 1:
            raise ValueError(f"n_conv, n_lstm must be >= 0 and filters >= 1, got {n_conv}, {n_lstm}, {filters}")
        dilations = tuple(int(d) for d in dilations)
        self.stem = StemBlock(in_channels, filters, kernel_size, slope)
        self.conv_blocks = nn.Sequential(*(ConvResBlock(filters, kernel_size, dilations, merge, slope, dropout)
                                           for _ in range(n_conv)))
        if lstm_on == "scores":
            blocks = [ScoreLSTMResBlock(lstm_kernel) for _ in range(n_lstm)]
        elif lstm_on == "features":
            blocks = [LSTMResBlock(filters, lstm_hidden, lstm_kernel, slope) for _ in range(n_lstm)]
        else:
            raise ValueError(f"lstm_on must be 'scores' or 'features', got {lstm_on!r}")
        self.lstm_on = lstm_on
        self.lstm_blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(filters, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv_blocks(self.stem(x))
        if self.lstm_on == "scores":
            return self.lstm_blocks(self.head(features))
        return self.head(self.lstm_blocks(features))
