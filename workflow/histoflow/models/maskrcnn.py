"""Mask R-CNN (torchvision, ResNet-FPN backbone) as a histoflow instance model.

torchvision's implementation, with three changes for histology:

- native scale: torchvision resizes every image so its short side is 800 px; here images and tiles
  go in at their own resolution (an object's size in pixels is what the anchors are chosen for,
  and a tile must not be rescaled differently from the training patches);
- anchors sized for cells and glands (``anchor_sizes``, one per FPN level, default 16–256 px)
  instead of COCO's 32–512 px, and more detections per image (dense nuclei);
- random initialisation with trainable BatchNorm (as torchvision does without pretrained weights), or
  a local weight file: a torchvision Mask R-CNN checkpoint (heads whose shape differs, such as the
  91-class COCO predictor, are skipped) or a ResNet state dict for the backbone. Nothing is
  downloaded.

Detections come out with Mask R-CNN's own 28 × 28 box-frame masks (see :mod:`histoflow.detection`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..detection import Detections, instance_targets
from . import register_model

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


def _native_scale_transform(base):
    """A GeneralizedRCNNTransform that normalises and batches but never resizes."""

    class NativeScaleTransform(base):
        def resize(self, image, target=None):  # noqa: D102 - identity: keep the pixel scale
            return image, target

    return NativeScaleTransform


class MaskRCNN(nn.Module):
    """torchvision Mask R-CNN for one object class, behind histoflow's instance-model interface.

    Parameters
    ----------
    backbone:
        ResNet depth of the FPN backbone: ``resnet50`` (the seed's), ``resnet18/34/101``.
    anchor_sizes:
        RPN anchor size (pixels) of each of the 5 FPN levels; aspect ratios 0.5, 1, 2 at every level.
    detections_per_image, score_floor, nms_iou:
        Box head output: at most this many detections per image, scoring at least ``score_floor``,
        after per-class NMS at ``nms_iou`` (the workflow's ``predict`` block filters further).
    trainable_layers:
        ResNet stages that train (5 = all; fewer only makes sense with pretrained weights).
    in_channels, out_channels:
        Accepted for the workflow's uniform call; Mask R-CNN needs RGB input and predicts one class.
    """

    instance_model = True

    def __init__(
        self,
        backbone: str = "resnet50",
        anchor_sizes: tuple[int, ...] | list[int] = (16, 32, 64, 128, 256),
        detections_per_image: int = 300,
        score_floor: float = 0.05,
        nms_iou: float = 0.5,
        trainable_layers: int = 5,
        rpn_batch_size: int = 256,
        box_batch_size: int = 512,
        mask_size: int = 28,
        min_area: int = 4,
        in_channels: int = 3,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        from torchvision.models.detection import MaskRCNN as TVMaskRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        if backbone not in BACKBONES:
            raise ValueError(f"mask_rcnn backbone must be one of {BACKBONES}, got {backbone!r}")
        if in_channels != 3:
            raise ValueError(f"mask_rcnn needs RGB input (in_channels 3), got {in_channels}")
        if len(anchor_sizes) != 5:
            raise ValueError(f"mask_rcnn anchor_sizes needs one size per FPN level (5), got {list(anchor_sizes)}")
        if mask_size != 28:
            raise ValueError("mask_rcnn mask_size is fixed at 28 by torchvision's mask head")
        body = resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d,
                                   trainable_layers=trainable_layers)
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
        self.net = TVMaskRCNN(
            body, num_classes=2, rpn_anchor_generator=anchors, box_detections_per_img=detections_per_image,
            box_score_thresh=score_floor, box_nms_thresh=nms_iou, rpn_batch_size_per_image=rpn_batch_size,
            box_batch_size_per_image=box_batch_size,
        )
        t = self.net.transform
        self.net.transform = _native_scale_transform(GeneralizedRCNNTransform)(
            t.min_size, t.max_size, t.image_mean, t.image_std)
        self.min_area = min_area
        self.mask_size = mask_size
        self.backbone_name = backbone

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        """Torchvision's call: losses (training, with ``targets``) or detection dicts (eval)."""
        return self.net(list(images), targets)

    def instance_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """RPN and box/mask head losses for ``images (B, 3, H, W)`` in [0, 1] and ``labels (B, H, W)``."""
        targets = []
        for lab in labels:
            t = instance_targets(lab, self.min_area)
            targets.append({"boxes": t["boxes"].to(images.device), "labels": t["labels"].to(images.device),
                            "masks": t["masks"].to(images.device)})
        losses = self.net([im.float() for im in images], targets)
        return {k.removeprefix("loss_"): v.float() for k, v in losses.items()}

    def detect(self, images: torch.Tensor, min_score: float = 0.0) -> list[Detections]:
        """Detections per image scoring above ``max(score_floor, min_score)``, with their unpasted masks.

        The masks are 28 × 28, in the box frame. The mask head only runs on those detections: an undertrained
        model's few hundred low-score boxes per patch would otherwise each cost a mask-head pass.
        """
        net = self.net
        floor = net.roi_heads.score_thresh
        il, _ = net.transform(list(images.float()))
        features = net.backbone(il.tensors)
        proposals, _ = net.rpn(il, features)
        # torchvision keeps scores strictly above score_thresh; the workflow keeps those at least min_score
        net.roi_heads.score_thresh = max(floor, float(np.nextafter(np.float32(min_score), np.float32(-1))))
        try:
            found, _ = net.roi_heads(features, proposals, il.image_sizes)
        finally:
            net.roi_heads.score_thresh = floor
        return [Detections.from_torch(d["boxes"], d["scores"], d["masks"][:, 0]) for d in found]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"all": [p for p in self.parameters() if p.requires_grad]}

    def load_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Initialise from a local file: a torchvision Mask R-CNN or a ResNet state dict.

        A Mask R-CNN state dict has keys ``backbone.…``, ``rpn.…``, ``roi_heads.…`` (tensors whose shape differs
        are skipped); a ResNet state dict (keys ``conv1.…``, ``layer1.…``) initialises the backbone only.
        """
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        own = self.net.state_dict()
        if any(k.startswith("layer1.") for k in state):
            state = {f"backbone.body.{k}": v for k, v in state.items()}
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(
                f"{path}: no tensor matches mask_rcnn (backbone {self.backbone_name}); use a torchvision "
                "Mask R-CNN or ResNet state dict of the same depth (params.backbone)")
        self.net.load_state_dict(usable, strict=False)
        log.info("mask_rcnn: %d of %d tensors loaded from %s (%d skipped: other shape or not in the model)",
                 len(usable), len(own), path, len(state) - len(usable))


@register_model("mask_rcnn")
def mask_rcnn(**kwargs) -> MaskRCNN:
    """Mask R-CNN, ResNet-50-FPN by default (``params.backbone``), one object class."""
    return MaskRCNN(**kwargs)
