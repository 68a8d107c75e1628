"""Multi-field-of-view U-Net (M-Unet) for semi-automatic organ segmentation.

Several U-Nets see the *same* location at different magnifications: the branch for scale ``s``
gets the centred crop whose side is ``s`` times the output side, average-pooled by ``s`` back to
the output side, so every branch works at the same pixel count but with an ``s``× larger field of
view. Each branch's decoder features (the layer before the U-Net's 1×1 head) are centre-cropped to
the output region, bilinearly up-sampled by ``s`` to full resolution, concatenated, and fused by a
1×1 conv + BN + ReLU into the per-pixel feature map (:meth:`MUNet.forward_features`, later used
for metric learning); a last 1×1 conv gives the logits.

Geometry, with ``f = context_factor = max(scales)`` and input (context tile) side ``S``::

    output side         P = S / f            (the centred P×P region of the tile)
    branch s input      centred crop of side P·s, average-pooled by s  ->  P×P
    branch s output     P×P features at 1/s resolution; the output region is its centred
                        (P/s)×(P/s) part, up-sampled by s  ->  P×P

Scale 1 therefore sees exactly the output region at full resolution, scale ``f`` the whole tile at
``1/f`` resolution.

``separate_branches=True`` trains the branches as the M-Unet paper's separately trained networks: each branch gets
its own 1×1 head and its own loss (the training loop's side outputs), and the fusion layer and head learn from the
branches' features with their gradient stopped, so no branch is shaped by another's field of view or by the fusion.
One training run then equals training each branch alone and the aggregation on the frozen branches afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model
from .unet import UNet


def _check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    out = tuple(scales)
    if not out:
        raise ValueError("scales must not be empty")
    for s in out:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1 or s & (s - 1):
            raise ValueError(f"scales must be powers of two (1, 2, 4, ...), got {out}")
    if out[0] != 1:
        raise ValueError(f"scales must include 1 (the full-resolution branch), got {out}")
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"scales must be strictly increasing, got {out}")
    return out


@register_model("munet")
class MUNet(nn.Module):
    """M-Unet: one :class:`~histoflow.models.unet.UNet` per field of view, features fused per pixel.

    Parameters
    ----------
    in_channels, out_channels:
        Input channels (3 for RGB) and output logits channels (1 for a binary mask).
    scales:
        Field-of-view factors of the branches: powers of two, strictly increasing, starting at 1.
        ``context_factor = max(scales)``.
    base_width, depth, norm:
        Passed to each branch's U-Net; a branch contributes its ``base_width`` decoder channels.
        ``norm`` also switches the batch norm of the fusion layer.
    feature_dim:
        Channels of the fused per-pixel feature map (:meth:`forward_features`).
    separate_branches:
        Train the branches separately (see the module docstring): in training mode ``forward`` returns
        ``(fused logits, [branch logits, ...])`` and the fused logits see the branch features detached.

    Attributes
    ----------
    context_factor:
        ``f = max(scales)``: the input tile is ``f``× the output on each side.
    size_multiple:
        The input side ``S`` must be a multiple of this: ``f * max(2**depth, 2*f)`` (just
        ``2**depth`` when ``f == 1``). This makes the output side ``P = S/f`` a multiple of
        ``2**depth`` (no padding inside the branch U-Nets, which would break the centring) and of
        ``2*f`` (every centre crop, at every resolution, starts on a whole pixel).

    Shapes
    ------
    ``forward``: ``(N, in_channels, S, S)`` → ``(N, out_channels, S/f, S/f)`` logits of the centred
    region. ``forward_features``: ``(N, in_channels, S, S)`` → ``(N, feature_dim, S/f, S/f)``.
    ``branch_features``: list, one ``(N, base_width, S/f, S/f)`` per scale (before fusion).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        scales: Sequence[int] = (1, 2, 4),
        base_width: int = 16,
        depth: int = 3,
        feature_dim: int = 32,
        norm: bool = True,
        separate_branches: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_width", base_width),
            ("depth", depth),
            ("feature_dim", feature_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.scales: tuple[int, ...] = _check_scales(scales)
        self.context_factor: int = self.scales[-1]
        self.depth = depth
        f = self.context_factor
        self.size_multiple: int = f * max(2**depth, 2 * f if f > 1 else 1)
        self.branches = nn.ModuleList()
        for _ in self.scales:
            branch = UNet(in_channels, 1, base_width=base_width, depth=depth, norm=norm)
            branch.head = nn.Identity()  # the branch's features are the last decoder block's output
            self.branches.append(branch)
        fuse: list[nn.Module] = [nn.Conv2d(base_width * len(self.scales), feature_dim, 1, bias=not norm)]
        if norm:
            fuse.append(nn.BatchNorm2d(feature_dim))
        fuse.append(nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(*fuse)
        self.head = nn.Conv2d(feature_dim, out_channels, 1)
        self.separate_branches = bool(separate_branches)
        self.branch_heads = (nn.ModuleList(nn.Conv2d(base_width, out_channels, 1) for _ in self.scales)
                             if self.separate_branches else None)

    def output_size(self, size: int) -> int:
        """Side of the output for an input tile of side ``size``; ValueError if ``size`` is invalid."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % self.size_multiple:
            raise ValueError(
                f"M-Unet input side must be a positive multiple of {self.size_multiple} "
                f"(context_factor={self.context_factor}, depth={self.depth}), got {size!r}"
            )
        return size // self.context_factor

    def branch_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale features of the output region: ``(N, C, S, S)`` → list of ``(N, base_width, P, P)``."""
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"expected a square (N, C, S, S) tile, got shape {tuple(x.shape)}")
        side = int(x.shape[-1])
        p = self.output_size(side)
        out = []
        for s, branch in zip(self.scales, self.branches, strict=True):
            a = (side - p * s) // 2  # centred field of view of side p*s
            view = x[..., a : a + p * s, a : a + p * s]
            if s > 1:
                view = F.avg_pool2d(view, s)
            feat = branch(view)  # (N, base_width, p, p) at 1/s resolution
            if s > 1:
                # The output region is the centred (p/s)² part. Crop it with a one-pixel halo so the
                # bilinear interpolation at its border uses the true neighbours, up-sample, trim the
                # halo (s pixels at full resolution): identical to up-sampling the whole map, cheaper.
                r = p // s
                b = (p - r) // 2 - 1
                feat = feat[..., b : b + r + 2, b : b + r + 2]
                feat = F.interpolate(feat, scale_factor=s, mode="bilinear", align_corners=False)
                feat = feat[..., s : s + p, s : s + p]
            out.append(feat)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel features of the centred output region: ``(N, C, S, S)`` → ``(N, feature_dim, P, P)``."""
        return self.fuse(torch.cat(self.branch_features(x), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of the centred output region: ``(N, C, S, S)`` → ``(N, out_channels, S/f, S/f)``.

        With ``separate_branches`` in training mode: ``(fused, [branch_1, ...])``, the fused logits computed from
        the branch features with their gradient stopped.
        """
        if not (self.separate_branches and self.training):
            return self.head(self.forward_features(x))
        feats = self.branch_features(x)
        sides = [head(f) for head, f in zip(self.branch_heads, feats, strict=True)]
        return self.head(self.fuse(torch.cat([f.detach() for f in feats], dim=1))), sides
