"""VGG16 multi-decoder network for whole-slide muscle fibre segmentation (deep supervision).

The encoder is VGG16's 13 convolutions (configuration "D", fully connected layers removed), built
with torchvision's own ``make_layers`` so a torchvision VGG16 (or VGG16-BN) state dict loads into it
unchanged. One decoder is attached before each of the five max-pooling stages (after conv1_2,
conv2_2, conv3_3, conv4_3 and conv5_3, at strides 1, 2, 4, 8, 16). Each decoder is a small pixelwise
classifier: a 3×3 convolution, then ``k`` times (learnable 2× transposed convolution → 3×3
convolution), so its feature map grows step by step back to input size, then a 1×1 classifier. Its
prediction is cropped to the input (pooling rounds up, so sizes can exceed the input by up to 15 px).
The five predictions are concatenated and fused by a 1×1 convolution into the final output.

In training mode ``forward`` returns ``(fused, [side_1, ..., side_5])`` so the loss can supervise
every decoder (deep supervision); in eval mode it returns the fused logits only, so tiled inference,
validation and ensembles see an ordinary segmentation model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from . import register_model

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _act(c: int, norm: bool) -> list[nn.Module]:
    """Batch norm (when ``norm``) and ReLU after a convolution of ``c`` channels."""
    return ([nn.BatchNorm2d(c)] if norm else []) + [nn.ReLU(inplace=True)]


def _decoder(cin: int, width: int, steps: int, out_channels: int, norm: bool) -> nn.Sequential:
    """3×3 conv, then ``steps`` × (2× transposed conv, 3×3 conv), then a 1×1 classifier."""
    layers: list[nn.Module] = [nn.Conv2d(cin, width, 3, padding=1, bias=not norm), *_act(width, norm)]
    for _ in range(steps):
        layers += [nn.ConvTranspose2d(width, width, 2, stride=2, bias=not norm), *_act(width, norm)]
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=not norm), *_act(width, norm)]
    layers.append(nn.Conv2d(width, out_channels, 1))
    return nn.Sequential(*layers)


class CrossDecoder(nn.Module):
    """A decoder that, at every scale on its way up, also reads the same-scale map of the decoder one level finer.

    Decoder ``k`` starts at stride ``2**k``; after its ``i``-th 2× up-sampling it is at stride ``2**(k - i)``, where
    decoder ``k - 1`` has its own map (after its ``(i - 1)``-th step). That map is concatenated before the step's
    3×3 convolution (the arrows between decoders of the paper's architecture figure), so coarse decoders reuse
    the finer ones' detail. Decoder 0 has no finer partner and is a plain decoder.
    """

    def __init__(self, cin: int, width: int, steps: int, out_channels: int, norm: bool, partner: bool) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, bias=not norm), *_act(width, norm))
        self.ups = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(width, width, 2, stride=2, bias=not norm), *_act(width, norm))
            for _ in range(steps)
        )
        extra = width if partner else 0
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width + extra, width, 3, padding=1, bias=not norm), *_act(width, norm))
            for _ in range(steps)
        )
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor, partner: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and this decoder's maps at every scale (coarsest first) given the finer decoder's maps."""
        x = self.first(x)
        maps = [x]
        for i, (up, conv) in enumerate(zip(self.ups, self.convs, strict=True)):
            x = up(x)
            if partner is not None:
                other = partner[i]
                x = torch.cat([x[..., : other.shape[-2], : other.shape[-1]], other], dim=1)
            x = conv(x)
            maps.append(x)
        return self.head(x), maps


@register_model("vgg16_mdn")
class VGG16MultiDecoder(nn.Module):
    """VGG16 encoder with five deeply supervised decoders fused by a 1×1 convolution.

    Parameters
    ----------
    in_channels, out_channels:
        Input channels (3 for RGB) and logits channels (1 for a binary target).
    base_width:
        Width of VGG16's first block; blocks have ``base_width × (1, 2, 4, 8, 8)`` channels
        (VGG16: 64, i.e. 64-128-256-512-512). Pretrained weights need 64.
    batch_norm:
        Batch normalisation after every convolution (VGG16-BN layout). Plain VGG16 weights need
        ``False``; from scratch ``True`` trains much faster.
    decoder_width:
        Channels inside each decoder.
    imagenet_norm:
        Standardise the ``[0, 1]`` RGB input with ImageNet's mean/std inside the model (what
        torchvision's VGG16 weights expect; harmless from scratch).
    cross_decoders:
        ``True`` (default): each decoder also reads the same-scale maps of the decoder one level finer
        (:class:`CrossDecoder`, the paper's connections between decoders; better on the fibre demo's validation
        patches, ``config/ablations/fibre_cross_decoders.yaml``). ``False``: five independent decoders.

    Shapes
    ------
    ``forward``: ``(N, in_channels, H, W)`` → ``(N, out_channels, H, W)`` logits (eval), or
    ``(fused, [5 × (N, out_channels, H, W)])`` (training), for any ``H, W >= 1``.
    """

    n_sides = 5

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        base_width: int = 64,
        batch_norm: bool = True,
        decoder_width: int = 32,
        imagenet_norm: bool = True,
        cross_decoders: bool = True,
    ) -> None:
        super().__init__()
        if base_width < 1 or decoder_width < 1:
            raise ValueError(f"base_width and decoder_width must be >= 1, got {base_width}, {decoder_width}")
        from torchvision.models.vgg import cfgs, make_layers  # here: importing torchvision costs every job ~2 s

        layout = [v if v == "M" else int(v) * base_width // 64 for v in cfgs["D"]][:-1]  # drop pool5
        self.features = make_layers(layout, batch_norm=batch_norm)
        if in_channels != 3:
            first = self.features[0]
            self.features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1, bias=first.bias is not None)
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True  # odd sizes: never drop the last row/column (Caffe's pooling)
        widths = [w for w, nxt in zip(layout, [*layout[1:], "M"], strict=True) if w != "M" and nxt == "M"]
        self.cross_decoders = cross_decoders
        if cross_decoders:
            self.decoders = nn.ModuleList(
                CrossDecoder(c, decoder_width, k, out_channels, batch_norm, partner=k > 0) for k, c in enumerate(widths)
            )
        else:
            self.decoders = nn.ModuleList(
                _decoder(c, decoder_width, k, out_channels, batch_norm) for k, c in enumerate(widths)
            )
        self.fuse = nn.Conv2d(self.n_sides * out_channels, out_channels, 1)
        self.imagenet_norm = imagenet_norm
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def side_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five decoders' logits, each ``(N, out_channels, H, W)`` (input size)."""
        h, w = x.shape[-2:]
        if self.imagenet_norm and x.shape[1] == 3:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        taps: list[torch.Tensor] = []  # the encoder's map before each pooling stage, and the last one
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                taps.append(x)
            x = layer(x)
        taps.append(x)
        if not self.cross_decoders:
            return [dec(t)[..., :h, :w] for dec, t in zip(self.decoders, taps, strict=True)]
        sides, partner = [], None
        for dec, t in zip(self.decoders, taps, strict=True):  # finest first: each feeds the next coarser one
            logits, partner = dec(t, partner)
            sides.append(logits[..., :h, :w])
        return sides

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        sides = self.side_outputs(x)
        fused = self.fuse(torch.cat(sides, dim=1))
        return (fused, sides) if self.training else fused

    def load_pretrained(self, path: str | os.PathLike[str]) -> int:
        """Initialise the encoder from a local torchvision VGG16 / VGG16-BN state dict.

        The file is e.g. ``vgg16-397923af.pth``; its classifier is ignored. Returns the number of tensors loaded.

        Raises ``ValueError`` naming the file and the setting to change when the file's layout does
        not match this encoder (width, batch norm, input channels). Never downloads anything.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: VGG16 weight file not found (models.<name>.weights in config.yaml).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        ours = self.features.state_dict()
        theirs = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        if not theirs:
            raise ValueError(f"{path}: no 'features.*' tensors; expected a torchvision VGG16 state dict.")
        bad = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
        if bad:
            has_bn = any(k.endswith("running_mean") for k in theirs)
            raise ValueError(
                f"{path}: does not fit this encoder ({len(bad)} tensors missing or of another shape, e.g. "
                f"features.{bad[0]}). The file is VGG16{'-BN' if has_bn else ''}: set params.batch_norm: "
                f"{str(has_bn).lower()}, params.base_width: 64 and in_channels 3."
            )
        self.features.load_state_dict({k: theirs[k] for k in ours})
        log.info("encoder initialised from %s (%d tensors)", path, len(ours))
        return len(ours)
