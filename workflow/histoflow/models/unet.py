"""U-Net (Ronneberger et al., MICCAI 2015) with 'same' padding so any input size works, and the Res-U-Net.

Widths follow the paper (64, 128, 256, 512, 1024 for ``base_width=64, depth=4``) and scale with
``base_width``. Inputs whose height/width are not multiples of ``2**depth`` are padded inside
``forward`` (reflect) and the output is cropped back, so the output always has the input's size.

``resunet`` (the baseline the Res-CR-Net paper compares against) is the same network with every double
convolution a residual block (He et al., CVPR 2016): ``ReLU(conv-BN-ReLU-conv-BN(x) + shortcut(x))``, the
shortcut the identity, or a 1×1 convolution (+ BN) where the width changes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import pad_mode
from . import register_model


def _conv_block(cin: int, cout: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers += [nn.Conv2d(c_in, cout, 3, padding=1, bias=not norm)]
        if norm:
            layers += [nn.BatchNorm2d(cout)]
        layers += [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class _ResBlock(nn.Module):
    """Two 3×3 convolutions added to a shortcut, then ReLU (a U-Net level of the Res-U-Net)."""

    def __init__(self, cin: int, cout: int, norm: bool) -> None:
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not norm)]
        body += [nn.BatchNorm2d(cout)] if norm else []
        body += [nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=not norm)]
        body += [nn.BatchNorm2d(cout)] if norm else []
        self.body = nn.Sequential(*body)
        shortcut: list[nn.Module] = []
        if cin != cout:
            shortcut = [nn.Conv2d(cin, cout, 1, bias=not norm)] + ([nn.BatchNorm2d(cout)] if norm else [])
        self.shortcut = nn.Sequential(*shortcut)  # empty: the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


@register_model("unet")
class UNet(nn.Module):
    """U-Net encoder/decoder with skip connections.

    Parameters
    ----------
    in_channels, out_channels:
        Input channels (3 for RGB) and output logits channels (1 for a binary mask).
    base_width:
        Channels of the first level; level ``i`` has ``base_width * 2**i`` (Ronneberger: 64).
    depth:
        Number of 2× down-samplings (Ronneberger: 4).
    norm:
        Batch normalisation after each convolution (not in the original paper; trains faster).
    dropout:
        Dropout probability at the bottleneck.
    residual:
        Residual blocks instead of plain double convolutions (the Res-U-Net; ``arch: resunet`` sets it).

    Shapes
    ------
    ``forward``: ``(N, in_channels, H, W)`` float → ``(N, out_channels, H, W)`` logits, any H, W ≥ 1.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        base_width: int = 64,
        depth: int = 4,
        norm: bool = True,
        dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or base_width < 1:
            raise ValueError(f"depth and base_width must be >= 1, got depth={depth}, base_width={base_width}")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.depth = depth
        block = _ResBlock if residual else _conv_block
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(block(cin, w, norm))
            cin = w
        self.bottleneck = block(widths[-2], widths[-1], norm)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.up_conv.append(block(2 * widths[i - 1], widths[i - 1], norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode=pad_mode((ph, pw), (h, w)))
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.drop(self.bottleneck(x))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = conv(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]


@register_model("resunet")
class ResUNet(UNet):
    """Res-U-Net: :class:`UNet` with residual blocks (``residual=True``); the same parameters otherwise."""

    def __init__(self, *args: Any, residual: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, residual=residual, **kwargs)
