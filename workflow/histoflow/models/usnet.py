"""US-Net: a U-Net whose segmentation is shared with an SSD/RetinaNet-style detector, plus mask refinement.

Three branches, each with its own parameter group (:meth:`USNet.param_groups`):

- **segmentation**: a :class:`~histoflow.models.unet.UNet` (BatchNorm, ReLU) whose 1×1 head gives
  the foreground probability ``sigmoid(seg)``;
- **detection**: a RetinaNet head (1×1 laterals to a common width, then a class tower and a box
  tower of 3×3 convs shared across levels) on ``det_levels`` consecutive decoder feature maps;
  ``len(aspect_ratios) · len(scales)`` anchors per location, one logit and four deltas each;
- **refinement**: a small U-Net that maps a ``refine_size``² crop of the image and the segmentation
  probability (4 channels, RoI Align, ``aligned=True``) around each detection to that object's mask.

Levels and anchors. The decoder feature map at stride ``2**k`` (``k = depth`` is the bottleneck,
``k = 0`` the full-resolution map) has ``base_width · 2**k`` channels. Anchor base sizes are
geometric, ``size_l = s_min · (s_max / s_min) ** (l / (L - 1))`` with ``s_min = min_size / scales[0]``
and ``s_max = max_size / scales[-1]``, so the smallest anchor is ``min_size`` and the largest
``max_size`` (``sqrt(w · h) = size_l · scale``, ``w / h = aspect ratio``). Level ``l`` sits on
stride ``2**(k0 + l)`` with ``k0 = clip(round(log2(size_0 / 4)), 0, depth + 1 - L)``: anchors about
four strides wide, as in RetinaNet. The defaults (20–128 px, depth 6) give sizes 25, 51.6 and 106.7
on strides 8, 16 and 32. (The seed's "last three feature maps" at strides 1, 2, 4 would need
anchors of 4–16 px; the stride follows the object size instead.)

Loss ``L_conf + α·L_loc + β·L_seg`` (+ the refinement net's own term): ``L_conf`` is the sigmoid
focal loss weighted per anchor by η (:func:`class_weights_from_segmentation`) and divided by the
number of positive anchors; ``L_loc`` the smooth-L1 on the encoded ``(x, y, w, h)`` of positive
anchors; ``L_seg`` the L1 distance between the segmentation probability and the foreground mask.

Inputs of any size are zero-padded to a multiple of ``2**depth`` inside :meth:`USNet.forward`
(anchors cover the padded image; detections centred in the padding are dropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..detection import Detections, box_masks, filter_detections, instance_targets
from . import register_model
from .unet import UNet

_BBOX_CLIP = math.log(1000.0 / 16)  # largest log-scale delta decoded (torchvision's choice)


# ------------------------------------------------------------------------------------- anchors & boxes
def anchors(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], sizes: Sequence[float],
            aspect_ratios: Sequence[float], scales: Sequence[float],
            device: torch.device | str | None = None) -> torch.Tensor:
    """All anchors of all levels, ``float32 (A, 4)`` xyxy with ``A = Σ_l h_l · w_l · K``.

    Level ``l`` has a ``feature_sizes[l] = (h_l, w_l)`` grid of centres ``((j + 0.5) · stride,
    (i + 0.5) · stride)``; at each centre ``K = len(aspect_ratios) · len(scales)`` anchors, ratio
    major, of width ``size · scale · sqrt(ratio)`` and height ``size · scale / sqrt(ratio)`` (ratio =
    w / h). Order: level, row, column, anchor (what :class:`USNet`'s head outputs).
    """
    if not (len(feature_sizes) == len(strides) == len(sizes)):
        raise ValueError(f"need one stride and size per level: {len(feature_sizes)} levels, "
                         f"{len(strides)} strides, {len(sizes)} sizes")
    out = []
    for (fh, fw), stride, size in zip(feature_sizes, strides, sizes, strict=True):
        wh = torch.tensor([(size * s * math.sqrt(r), size * s / math.sqrt(r)) for r in aspect_ratios for s in scales],
                          dtype=torch.float32, device=device)
        cy = (torch.arange(fh, dtype=torch.float32, device=device) + 0.5) * stride
        cx = (torch.arange(fw, dtype=torch.float32, device=device) + 0.5) * stride
        yy, xx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([xx, yy], -1).reshape(-1, 1, 2)
        out.append(torch.cat([centres - wh / 2, centres + wh / 2], -1).reshape(-1, 4))
    return torch.cat(out) if out else torch.zeros((0, 4), device=device)


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + w / 2, boxes[..., 1] + h / 2, w, h


def encode_boxes(gt: torch.Tensor, anchors: torch.Tensor,
                 variances: tuple[float, float] = (0.1, 0.2)) -> torch.Tensor:
    """Regression targets ``(..., 4)`` of boxes ``gt (..., 4)`` xyxy against ``anchors (..., 4)``.

    The targets are ``((x - x_a) / w_a / v0, (y - y_a) / h_a / v0, log(w / w_a) / v1, log(h / h_a) / v1)``
    on the centres and sizes (SSD; ``variances=(1, 1)`` is Faster R-CNN's encoding).
    """
    gx, gy, gw, gh = _centre_size(gt)
    ax, ay, aw, ah = _centre_size(anchors)
    v0, v1 = variances
    return torch.stack([(gx - ax) / aw / v0, (gy - ay) / ah / v0,
                        torch.log(gw / aw) / v1, torch.log(gh / ah) / v1], -1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor,
                 variances: tuple[float, float] = (0.1, 0.2)) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: deltas ``(..., 4)`` + anchors ``(..., 4)`` → xyxy boxes ``(..., 4)``.

    Log-scales are clipped at ``log(1000 / 16)`` so an untrained head cannot overflow.
    """
    ax, ay, aw, ah = _centre_size(anchors)
    v0, v1 = variances
    x = ax + deltas[..., 0] * v0 * aw
    y = ay + deltas[..., 1] * v0 * ah
    w = aw * torch.exp((deltas[..., 2] * v1).clamp(max=_BBOX_CLIP))
    h = ah * torch.exp((deltas[..., 3] * v1).clamp(max=_BBOX_CLIP))
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1)


def match_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, pos_iou: float = 0.5,
                  neg_iou: float = 0.4) -> torch.Tensor:
    """Assign anchors ``(A, 4)`` to ground-truth boxes ``(G, 4)``: ``int64 (A,)``.

    The result holds the matched box index for IoU ≥ ``pos_iou``, −1 (negative) under ``neg_iou`` and −2
    (ignored) in between. Each box's best anchor is made positive for it whatever its IoU, so no object goes
    unmatched.
    """
    from torchvision.ops import box_iou

    if not 0 <= neg_iou <= pos_iou <= 1:
        raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got neg_iou={neg_iou}, pos_iou={pos_iou}")
    matched = torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
    if len(gt_boxes) == 0 or len(anchors) == 0:
        return matched
    iou = box_iou(anchors.float(), gt_boxes.float())  # (A, G)
    best, idx = iou.max(1)
    matched = torch.where(best >= pos_iou, idx, torch.where(best >= neg_iou, -2, -1))
    matched[iou.argmax(0)] = torch.arange(len(gt_boxes), device=anchors.device)
    return matched


def enlarge_boxes(boxes: torch.Tensor, margin: float) -> torch.Tensor:
    """Boxes ``(N, 4)`` grown by ``margin`` times their width/height on every side."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + margin * torch.stack([-w, -h, w, h], 1)


# -------------------------------------------------------------------------------------------- losses
def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float | None = None, gamma: float = 2.0,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid focal loss, element-wise, same shape as ``logits``.

    The loss is ``-(1 - p_t)**γ log(p_t)`` with ``p_t = p`` where the target is 1 and ``1 - p`` where it is 0,
    times ``weights`` (broadcast) when given: with US-Net's η as the weights, the paper's
    ``L_conf = η (1 − ĉ)^γ log ĉ`` (up to the sign). ``alpha`` adds RetinaNet's class balance (Lin et al. 2017):
    ``α_t = α`` where the target is 1 and ``1 - α`` where it is 0; ``None`` (the US-Net paper, whose η already
    balances the classes) leaves it out. Computed from the logits (``log p_t`` is minus the binary
    cross-entropy), so it stays finite for any logit.
    """
    if (alpha is not None and not 0 <= alpha <= 1) or gamma < 0:
        raise ValueError(f"need 0 <= alpha <= 1 (or None) and gamma >= 0, got alpha={alpha}, gamma={gamma}")
    logits, targets = logits.float(), targets.float()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = (1 - p_t).pow(gamma) * ce
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss if weights is None else loss * weights


def class_weights_from_segmentation(seg_prob: torch.Tensor, min_fraction: float = 0.01) -> torch.Tensor:
    """The seed's η: ``float32 (B, 2)`` = ``(η_bg, η_fg)`` per image from its foreground probability ``seg_prob``.

    ``seg_prob`` is ``(B, ...)``. ``η_c = sqrt(S_all / Ŝ_c)`` with ``S_all`` the number of pixels,
    ``Ŝ_fg = Σ p`` and ``Ŝ_bg = Σ (1 - p)`` (detached: η steers the detector, it is not a target for the
    segmentation). The rarer
    class, as the segmentation branch sees it, weighs more: an image 10 % foreground gives η_fg ≈ 3.2,
    η_bg ≈ 1.05. ``Ŝ_c`` is clamped to at least ``min_fraction · S_all`` so that an empty (or full)
    prediction caps η at ``1 / sqrt(min_fraction)``. Positive anchors get η_fg, negatives η_bg.
    """
    p = seg_prob.detach().float().flatten(1)
    total = float(p.shape[1])
    fg = p.sum(1)
    s = torch.stack([total - fg, fg], 1).clamp(min=min_fraction * total)
    return torch.sqrt(total / s)


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


# --------------------------------------------------------------------------------------------- model
class _RetinaHead(nn.Module):
    """1×1 laterals to ``width`` channels, then class and box towers shared by all levels."""

    def __init__(self, in_widths: Sequence[int], width: int, n_anchors: int, n_convs: int,
                 prior: float = 0.01) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, width, 1) for w in in_widths)

        def tower() -> nn.Sequential:
            return nn.Sequential(*[m for _ in range(n_convs) for m in (nn.Conv2d(width, width, 3, padding=1),
                                                                       nn.ReLU(inplace=True))])

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls = nn.Conv2d(width, n_anchors, 3, padding=1)
        self.box = nn.Conv2d(width, 4 * n_anchors, 3, padding=1)
        for m in [*self.cls_tower, *self.box_tower, self.cls, self.box]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls, box = [], []
        for f, lat in zip(feats, self.lateral, strict=True):
            x = lat(f)
            b = x.shape[0]
            cls.append(self.cls(self.cls_tower(x)).permute(0, 2, 3, 1).reshape(b, -1))
            box.append(self.box(self.box_tower(x)).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return torch.cat(cls, 1), torch.cat(box, 1)


def _plain_refine(in_channels: int, width: int) -> nn.Sequential:
    """The US-Net paper's refinement network: four convolution layers on the 48 x 48 crop, no down-sampling.

    Three 3 x 3 convolutions with ReLU (``width`` channels) and a 1 x 1 convolution to the mask logit.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(width, 1, 1),
    )


@register_model("usnet")
class USNet(nn.Module):
    """US-Net instance model (see the module docstring for levels, anchors and the loss).

    Parameters
    ----------
    in_channels, out_channels:
        Image channels; ``out_channels`` is accepted for the workflow's sake and ignored (US-Net
        segments one foreground class).
    base_width, depth:
        The U-Net backbone's first width and number of down/up stages (the seed: six).
    det_levels, min_size, max_size, aspect_ratios, scales:
        Detection levels and anchors: ``det_levels`` consecutive decoder maps, anchors spanning
        ``min_size``–``max_size`` px, ``len(aspect_ratios) · len(scales)`` per location.
    head_width, head_convs:
        Width and depth of the RetinaNet class and box towers.
    alpha, beta, focal_gamma, focal_alpha:
        Loss weights ``L_conf + alpha · L_loc + beta · L_seg`` and the focal loss's γ and α_t (``None``, the
        default: the paper's η-weighted form without RetinaNet's α_t; 0.25 is RetinaNet's, :func:`focal_loss`).
    variances, pos_iou, neg_iou:
        Box coding (:func:`encode_boxes`) and anchor matching (:func:`match_anchors`).
    refine_size, refine_arch, refine_width, crop_margin:
        The refinement crop's side; the refinement network, ``unet`` (a two-level U-Net, this project's
        default) or ``plain`` (the paper's four convolution layers, :func:`_plain_refine`), and its width; the
        context added around a box for its crop (a fraction of the box's width/height on each side).
    refinement, eta_weighting:
        The paper's ablation switches: without refinement each detection's mask is the segmentation
        probability in its box (no refine net, no refine loss); without η weighting the focal loss weighs every
        anchor 1. (Without detection, US-Net is its backbone alone: ``arch: unet`` with the same widths.)
    refine_jitter, refine_batch:
        Training: ground-truth boxes are jittered by up to this fraction of their size before
        cropping; at most ``refine_batch`` crops a batch.
    score_floor, nms_iou, max_detections, pre_nms_top:
        :meth:`detect`: lowest score kept, NMS IoU, detections kept per image, candidates per image
        entering NMS.

    ``forward`` returns ``seg (B, 1, H, W)`` logits, ``cls (B, A)`` logits, ``box (B, A, 4)``
    deltas and the ``anchors (A, 4)`` of the padded input.
    """

    instance_model = True

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_width: int = 16, depth: int = 6,
                 det_levels: int = 3, min_size: float = 20, max_size: float = 128,
                 aspect_ratios: Sequence[float] = (1.0, 0.75), scales: Sequence[float] = (0.8, 1.2),
                 head_width: int = 64, head_convs: int = 2, alpha: float = 1.0, beta: float = 0.1,
                 focal_gamma: float = 2.0, focal_alpha: float | None = None,
                 variances: Sequence[float] = (0.1, 0.2),
                 pos_iou: float = 0.5, neg_iou: float = 0.4, refine_size: int = 48, refine_width: int = 16,
                 refine_arch: str = "unet", refinement: bool = True, eta_weighting: bool = True,
                 crop_margin: float = 0.25, refine_jitter: float = 0.08,
                 refine_batch: int = 64,
                 score_floor: float = 0.05, nms_iou: float = 0.5, max_detections: int = 500,
                 pre_nms_top: int = 2000) -> None:
        super().__init__()
        if depth < 1 or not 1 <= det_levels <= depth + 1:
            raise ValueError(f"need depth >= 1 and 1 <= det_levels <= depth + 1, got depth={depth}, "
                             f"det_levels={det_levels}")
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        if not aspect_ratios or not scales or min(*aspect_ratios, *scales) <= 0:
            raise ValueError(f"aspect_ratios and scales must be positive, got {aspect_ratios}, {scales}")
        if not 0 <= neg_iou <= pos_iou <= 1:
            raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got neg_iou={neg_iou}, pos_iou={pos_iou}")
        if refine_size < 4 or crop_margin < 0 or not 0 <= refine_jitter < 0.5:
            raise ValueError(f"need refine_size >= 4, crop_margin >= 0 and 0 <= refine_jitter < 0.5, got "
                             f"{refine_size}, {crop_margin}, {refine_jitter}")
        self.depth, self.ratios, self.scales = depth, tuple(aspect_ratios), tuple(scales)
        self.alpha, self.beta, self.focal_gamma, self.focal_alpha = alpha, beta, focal_gamma, focal_alpha
        self.variances = (float(variances[0]), float(variances[1]))
        self.pos_iou, self.neg_iou = pos_iou, neg_iou
        self.refine_size, self.crop_margin, self.refine_jitter = refine_size, crop_margin, refine_jitter
        self.refine_batch, self.score_floor, self.nms_iou = refine_batch, score_floor, nms_iou
        self.eta_weighting = eta_weighting
        self.max_detections, self.pre_nms_top = max_detections, pre_nms_top
        s_min, s_max = min_size / self.scales[0], max_size / self.scales[-1]
        n = det_levels
        self.sizes = [s_min * (s_max / s_min) ** (i / (n - 1)) if n > 1 else s_min for i in range(n)]
        k0 = min(max(round(math.log2(self.sizes[0] / 4)), 0), depth + 1 - n)
        self.level_exps = [k0 + i for i in range(n)]
        self.strides = [2**k for k in self.level_exps]
        self.backbone = UNet(in_channels, 1, base_width, depth)
        self.det_head = _RetinaHead([base_width * self.strides[i] for i in range(n)], head_width,
                                    len(self.ratios) * len(self.scales), head_convs)
        if refine_arch not in ("unet", "plain"):
            raise ValueError(f"refine_arch must be 'unet' or 'plain', got {refine_arch!r}")
        # without refinement there is no refine net: nothing to train, save or count in the parameters
        self.refine: nn.Module | None = None
        if refinement:
            self.refine = (UNet(in_channels + 1, 1, refine_width, 2) if refine_arch == "unet"
                           else _plain_refine(in_channels + 1, refine_width))

    @property
    def refinement(self) -> bool:
        """Whether the model has a refine net (built with ``refinement=True``)."""
        return self.refine is not None

    # ------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2**self.depth
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        bb = self.backbone
        skips, feats = [], {}
        for block in bb.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = bb.drop(bb.bottleneck(x))
        feats[self.depth] = x
        for k, (up, conv, skip) in enumerate(zip(bb.up, bb.up_conv, reversed(skips), strict=True)):
            x = conv(torch.cat([up(x), skip], dim=1))
            feats[self.depth - 1 - k] = x
        # anchors only where the image is: a level of stride s covers ceil(H / s) x ceil(W / s) positions (the SSD
        # layout: 38 / 19 / 10 maps for a 300 x 300 input), not the padding's extra rows and columns
        levels = [feats[k][..., : -(-h // s), : -(-w // s)] for k, s in zip(self.level_exps, self.strides, strict=True)]
        cls, box = self.det_head(levels)
        anc = anchors([tuple(f.shape[-2:]) for f in levels], self.strides, self.sizes, self.ratios,
                      self.scales, device=x.device)
        return {"seg": bb.head(x)[..., :h, :w], "cls": cls, "box": box, "anchors": anc}

    def refine_logits(self, stack: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(N, S, S)`` of crop boxes ``(N, 4)`` (already enlarged) of ``stack (B, 4, H, W)``.

        ``stack`` is image + segmentation probability; ``batch_index (N,)`` says which image each box is in.
        """
        if not self.refinement:
            raise RuntimeError("this US-Net was built with refinement=False: it has no refine net")
        return self.refine(self.crop_maps(stack, boxes, batch_index))[:, 0].float()

    def crop_maps(self, maps: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` crops of ``maps (B, C, H, W)`` in ``boxes (N, 4)`` (RoI Align, ``S = refine_size``)."""
        from torchvision.ops import roi_align

        rois = torch.cat([batch_index[:, None].to(boxes.dtype), boxes], 1).float()
        s = self.refine_size
        return roi_align(maps.float(), rois, (s, s), spatial_scale=1.0, sampling_ratio=2, aligned=True)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups ``segmentation``, ``detection`` and ``refinement``: disjoint, together all parameters.

        ``segmentation`` is the U-Net backbone + its head, ``detection`` the RetinaNet head and ``refinement``
        the refine net (absent when the model has none, ``refinement=False``).
        """
        groups = {"segmentation": list(self.backbone.parameters()), "detection": list(self.det_head.parameters())}
        if self.refinement:
            groups["refinement"] = list(self.refine.parameters())
        return groups

    # ------------------------------------------------------------------------------------ training
    def instance_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of a batch: ``images (B, C, H, W)`` float in [0, 1], ``labels (B, H, W)`` int64 instance ids.

        Returns ``conf`` (η-weighted focal loss / positives), ``loc`` (α · smooth-L1 / positives), ``seg``
        (β · L1 between probability and foreground) and ``refine`` (BCE + soft Dice of the refine net on
        jittered, enlarged ground-truth boxes).
        """
        if images.ndim != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"need images (B, C, H, W) and labels (B, H, W), got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        out = self(images)
        seg_prob = torch.sigmoid(out["seg"].float())
        cls, box, anc = out["cls"].float(), out["box"].float(), out["anchors"]
        eta = class_weights_from_segmentation(seg_prob) if self.eta_weighting else seg_prob.new_ones((len(images), 2))
        conf, loc, n_pos = cls.new_zeros(()), box.new_zeros(()), 0
        crops: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (image index, crop box, instance mask)
        for i in range(len(images)):
            t = instance_targets(labels[i])
            gt = t["boxes"].to(anc.device)
            matched = match_anchors(anc, gt, self.pos_iou, self.neg_iou)
            pos = matched >= 0
            weight = torch.where(pos, eta[i, 1], eta[i, 0]) * (matched != -2)
            conf = conf + focal_loss(cls[i], pos.float(), self.focal_alpha, self.focal_gamma, weight).sum()
            target = encode_boxes(gt[matched[pos]], anc[pos], self.variances)
            loc = loc + F.smooth_l1_loss(box[i][pos], target, reduction="sum", beta=1.0)
            n_pos += int(pos.sum())
            if len(gt):
                wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
                jittered = gt + (torch.rand_like(gt) * 2 - 1) * self.refine_jitter * wh
                crops += [(i, b, m) for b, m in zip(enlarge_boxes(jittered, self.crop_margin), t["masks"], strict=True)]
        norm = max(n_pos, 1)
        fg = (labels > 0).float()[:, None]
        losses = {"conf": conf / norm, "loc": self.alpha * loc / norm,
                  "seg": self.beta * (seg_prob - fg).abs().mean()}
        losses["refine"] = (self._refine_loss(images, seg_prob, crops) if crops and self.refinement
                            else cls.new_zeros(()))
        return losses

    def _refine_loss(self, images: torch.Tensor, seg_prob: torch.Tensor,
                     crops: list[tuple[int, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """BCE + soft Dice of the refine net on at most ``refine_batch`` random crops.

        Each crop is ``(image index, crop box (4,), instance mask (H, W))``; the segmentation input is
        detached.
        """
        if len(crops) > self.refine_batch:
            crops = [crops[j] for j in torch.randperm(len(crops))[: self.refine_batch].tolist()]
        boxes = torch.stack([b for _, b, _ in crops])
        idx = torch.tensor([i for i, _, _ in crops], device=boxes.device)
        target = box_masks(torch.stack([m for _, _, m in crops]).to(boxes.device), boxes, self.refine_size)
        logits = self.refine_logits(torch.cat([images.float(), seg_prob.detach()], 1), boxes, idx)
        return F.binary_cross_entropy_with_logits(logits, target) + _soft_dice_loss(logits, target)

    # ----------------------------------------------------------------------------------- inference
    def detect(self, images: torch.Tensor, min_score: float = 0.0) -> list[Detections]:
        """One :class:`~histoflow.detection.Detections` per image of ``images (B, C, H, W)``.

        Boxes scoring ≥ ``max(score_floor, min_score)`` and centred in the image, NMS at ``nms_iou``, the
        best ``max_detections``, each refined. Boxes are the enlarged crop boxes and masks the refine net's
        ``(refine_size, refine_size)`` probabilities in them (call in eval mode, no grad).
        """
        h, w = images.shape[-2:]
        out = self(images)
        seg_prob = torch.sigmoid(out["seg"].float())
        stack = torch.cat([images.float(), seg_prob], 1)
        scores = torch.sigmoid(out["cls"].float())
        boxes = decode_boxes(out["box"].float(), out["anchors"], self.variances)
        floor = max(self.score_floor, float(min_score))
        result = []
        for i in range(len(images)):
            cx, cy = (boxes[i, :, 0] + boxes[i, :, 2]) / 2, (boxes[i, :, 1] + boxes[i, :, 3]) / 2
            ok = (scores[i] >= floor) & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            cand = torch.nonzero(ok).flatten()
            cand = cand[scores[i, cand].topk(min(len(cand), self.pre_nms_top)).indices]
            dets = Detections.from_torch(boxes[i, cand], scores[i, cand], torch.zeros((len(cand), 1, 1)))
            dets = filter_detections(dets, floor, self.nms_iou)
            dets = dets.select(np.arange(min(len(dets), self.max_detections)))
            if len(dets) == 0:
                result.append(Detections.empty(self.refine_size))
                continue
            crop = enlarge_boxes(torch.from_numpy(dets.boxes).to(images.device), self.crop_margin)
            index = torch.full((len(crop),), i, device=crop.device)
            if self.refinement:
                masks = torch.sigmoid(self.refine_logits(stack, crop, index))
            else:  # ablation: the segmentation branch's probability inside each box, unrefined
                masks = self.crop_maps(seg_prob, crop, index)[:, 0]
            result.append(Detections.from_torch(crop, torch.from_numpy(dets.scores), masks))
        return result
