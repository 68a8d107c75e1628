"""Model-agnostic tiled inference over images of any size, with blended overlaps.

Tiles are evenly spaced so the first starts at 0 and the last ends exactly at the border (no
ragged last tile, no padding beyond what an image smaller than one tile needs). Each tile's output
is weighted by a smooth window (Gaussian by default) and the weighted sum is divided by the summed
weights, so a model that is exact on its own (``x + 1``) is exact through the tiler too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from .device import autocast, retry_halving_on_oom, to_device

log = logging.getLogger(__name__)


def pad_mode(pad: tuple[int, ...], size: tuple[int, ...]) -> str:
    """The mode to pad axes of ``size`` pixels by ``pad`` pixels each, the same everywhere an image is padded.

    ``"reflect"`` when every pad is shorter than its axis (reflection needs that), else ``"replicate"`` (repeat the
    edge; numpy calls it ``"edge"``).
    """
    return "reflect" if all(p < n for p, n in zip(pad, size, strict=True)) else "replicate"


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` overlap.

    The first tile starts at 0 and the last ends at ``length``; starts in between are spaced as evenly
    as integers allow. If ``length <= tile`` one tile at 0 is returned (the caller pads).
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def blend_window(shape: tuple[int, int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Tile weight window ``float32 (h, w)``, strictly positive (so every pixel gets weight).

    ``gaussian``: nnU-Net/MONAI style, sigma = ``sigma_scale`` × tile size, normalised to max 1 and
    floored at 1e-3 of the max; ``cosine``: Hann window floored likewise; ``constant``: all ones.
    """
    if mode == "constant":
        return np.ones(shape, np.float32)
    axes = []
    for n in shape:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        if mode == "gaussian":
            sigma = max(sigma_scale * n, 1e-6)
            axes.append(np.exp(-0.5 * (x / sigma) ** 2))
        elif mode == "cosine":
            axes.append(np.cos(np.pi * x / (n + 1)) ** 2)
        else:
            raise ValueError(f"blend mode must be gaussian, cosine or constant, got {mode!r}")
    win = np.outer(axes[0], axes[1])
    win /= win.max()
    return np.maximum(win, 1e-3).astype(np.float32)


DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")
TTA_PRESETS = {"none": ("identity",), "flips": ("identity", "flip", "rot180", "flip_rot180"), "dihedral": DIHEDRAL}


def _dihedral(x: torch.Tensor, name: str, inverse: bool = False) -> torch.Tensor:
    """Apply one of the 8 dihedral transforms (or its inverse) to the last two axes of ``x``."""
    if name not in DIHEDRAL:
        raise ValueError(f"unknown TTA transform {name!r}; choose from {', '.join(DIHEDRAL)}")
    flip = name.startswith("flip")
    k = {"identity": 0, "flip": 0, "rot90": 1, "rot180": 2, "rot270": 3}[name.removeprefix("flip_")]
    if not inverse:
        x = x.flip(-1) if flip else x
        return torch.rot90(x, k, dims=(-2, -1))
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def tta_predictor(
    predictor: Callable[[torch.Tensor], torch.Tensor], transforms: str | tuple[str, ...] = "dihedral"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``predictor`` so it averages its outputs over dihedral test-time augmentations.

    ``transforms``: a preset (``none``, ``flips``, ``dihedral`` = all 8) or names from
    :data:`DIHEDRAL`. Each transform is applied to the input batch, the output is mapped back by the
    inverse transform, and the outputs are averaged, so an equivariant predictor (``x + 1``) is
    returned unchanged. Works on any ``(B, C, H, W)`` batch; rotations by 90° need square tiles
    (as :func:`predict_tiled` makes).
    """
    names = TTA_PRESETS[transforms] if isinstance(transforms, str) else tuple(transforms)
    for n in names:
        _dihedral(torch.zeros(1, 1), n)  # validate names early
    if names == ("identity",):
        return predictor

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return _pairwise_mean([_dihedral(predictor(_dihedral(x, n)).float(), n, inverse=True) for n in names])

    return wrapped


def _pairwise_mean(outs: list[torch.Tensor]) -> torch.Tensor:
    """Mean by pairwise halving.

    Exact (bitwise) when all inputs are equal and their count is a power of two (1, 2, 4, 8 transforms),
    unlike a running sum.
    """
    while len(outs) > 1:
        if len(outs) % 2:
            return torch.stack(outs).mean(0)
        outs = [(a + b) / 2 for a, b in zip(outs[::2], outs[1::2], strict=True)]
    return outs[0]


def iter_tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[tuple[int, int]]:
    """Yield ``(y, x)`` top-left corners of the tile grid."""
    for y in tile_starts(height, tile, overlap):
        for x in tile_starts(width, tile, overlap):
            yield y, x


def predict_tiled(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray | torch.Tensor,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    blend: str = "gaussian",
    device: torch.device | str = "cpu",
    out_channels: int | None = None,
    progress: bool = False,
    context: int = 0,
    precision: str = "auto",
) -> np.ndarray:
    """Run ``predictor`` over ``image`` in overlapping tiles and blend the outputs.

    Parameters
    ----------
    predictor:
        Maps a float tensor ``(B, C, t, t)`` to ``(B, K, t, t)`` (e.g. a model followed by sigmoid).
    image:
        ``(C, H, W)`` float array/tensor, any H, W. Images smaller than a tile are reflect-padded
        (replicate where reflect is impossible) and the output cropped back.
    tile, overlap:
        Tile edge and minimum overlap in pixels.
    out_channels:
        K; inferred from the first batch when ``None``.
    batch_size:
        Tiles per forward pass; halved automatically (and the batch retried) on a CUDA out-of-memory
        error, so a too-large setting slows a job down instead of failing it.
    context:
        Extra pixels on every side of each tile that the predictor receives but does not predict, for
        models whose output covers only the centre of their input (multi-field-of-view nets): the
        predictor then maps ``(B, C, t + 2·context, t + 2·context)`` to ``(B, K, t, t)``. The image is
        reflect-padded by ``context`` so border tiles get context too.
    precision:
        auto, fp32 or bf16: the autocast the predictor runs under (:func:`histoflow.device.autocast`).

    Returns
    -------
    np.ndarray
        ``float32 (K, H, W)``, the window-weighted average of the tile outputs.
    """
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(x.shape)}")
    c, h, w = x.shape
    pad_h, pad_w = max(tile - h, 0), max(tile - w, 0)
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x[None], (0, pad_w, 0, pad_h), mode=pad_mode((pad_h, pad_w), (h, w)))[0]
    hp, wp = x.shape[-2:]
    th = tw = tile
    window = torch.from_numpy(blend_window((th, tw), blend))
    coords = list(iter_tiles(hp, wp, tile, overlap))
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if context:
        x = torch.nn.functional.pad(x[None], (context,) * 4, mode=pad_mode((context, context), (hp, wp)))[0]
    device = torch.device(device)
    acc: torch.Tensor | None = None
    norm = torch.zeros((hp, wp), dtype=torch.float32)
    bar = tqdm(total=len(coords), desc="tiles", unit="tile", disable=not progress, mininterval=5)
    start = 0
    while start < len(coords):
        def run(n: int, start: int = start) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
            batch_coords = coords[start : start + n]
            batch = torch.stack([x[:, y : y + th + 2 * context, xx : xx + tw + 2 * context] for y, xx in batch_coords])
            with torch.inference_mode(), autocast(device, precision):
                return batch_coords, batch, predictor(to_device(batch, device))

        (batch_coords, batch, out), batch_size = retry_halving_on_oom(
            run, batch_size, f"out of GPU memory with one {tile}x{tile} tile: lower predict.tile in config.yaml"
        )
        out = out.float().cpu()
        if out.shape[-2:] != (th, tw):
            raise ValueError(f"predictor changed the tile size: {tuple(batch.shape)} -> {tuple(out.shape)}")
        if acc is None:
            k = out_channels if out_channels is not None else out.shape[1]
            acc = torch.zeros((k, hp, wp), dtype=torch.float32)
        for o, (y, xx) in zip(out, batch_coords, strict=True):
            acc[:, y : y + th, xx : xx + tw] += o * window
            norm[y : y + th, xx : xx + tw] += window
        start += len(batch_coords)
        bar.update(len(batch_coords))
    bar.close()
    if acc is None:  # pragma: no cover - coords is never empty
        raise RuntimeError("no tiles")
    return (acc / norm)[:, :h, :w].numpy()
