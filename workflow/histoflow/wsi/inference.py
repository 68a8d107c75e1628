"""Streaming tiled inference over a slide's tissue tiles with bounded memory, and the row-band split / merge.

The row-band split / merge lets separate jobs share one slide.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io import PathLike
from ..tiling import pad_mode
from .ngff import LEVEL0, dimension_names
from .reader import Slide
from .store import _FLUSH_COLS, CHUNK, _Writer, create_array, open_group
from .tissue import TissueMask

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TileGrid:
    """The tiles of a slide: evenly spaced starts per axis and which tiles hold tissue.

    ``height``, ``width``: the slide; tiles live in the slide padded to at least one tile
    (``padded``), as :func:`histoflow.tiling.predict_tiled` pads images smaller than a tile.
    ``keep``: ``bool (len(ys), len(xs))``.
    """

    height: int
    width: int
    tile: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    keep: np.ndarray

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height, self.tile), max(self.width, self.tile)

    @property
    def n_tiles(self) -> int:
        return int(self.keep.sum())


def plan_grid(
    shape: tuple[int, int], tile: int, overlap: int, tissue: TissueMask | None = None, min_fraction: float = 0.0
) -> TileGrid:
    """Tile grid over ``shape`` (as :func:`histoflow.tiling.iter_tiles`), keeping the tiles with tissue.

    The kept tiles are those whose tissue fraction is at least ``min_fraction`` (and above 0); all tiles without
    ``tissue``.
    """
    from ..tiling import tile_starts

    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    hp, wp = max(h, tile), max(w, tile)
    ys, xs = tile_starts(hp, tile, overlap), tile_starts(wp, tile, overlap)
    keep = np.ones((len(ys), len(xs)), bool)
    if tissue is not None:
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                f = tissue.fraction(y, x, min(tile, h - y), min(tile, w - x))
                keep[i, j] = f > 0 and f >= min_fraction
    return TileGrid(h, w, tile, overlap, tuple(ys), tuple(xs), keep)


@dataclass(frozen=True)
class Region:
    """One job's share of a slide: it owns output rows ``rows`` and runs tile rows ``tile_rows``.

    The tile rows are its own, plus the halo above whose tiles overlap its first rows.
    """

    index: int
    count: int
    rows: tuple[int, int]
    tile_rows: tuple[int, int]


def split_regions(grid: TileGrid, n: int) -> list[Region]:
    """Split ``grid`` into ``n`` row bands along tile rows, balanced by tissue tiles.

    Region ``r`` owns the tile rows ``[a_r, a_{r+1})`` and the output rows from the start of its
    first tile row (0 for the first) to the start of the next region's; it also runs the tile rows
    above that overlap its rows, so each region finishes its own rows exactly as a single job over
    the whole slide would. With more regions than tile rows, the extra ones are empty.
    """
    if n < 1:
        raise ValueError(f"number of regions must be >= 1, got {n}")
    rows = len(grid.ys)
    counts = grid.keep.sum(axis=1).astype(np.float64)
    if counts.sum() == 0:
        counts[:] = 1.0
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    starts = [0]
    for r in range(1, n):
        a = int(np.argmin(np.abs(cum - cum[-1] * r / n)))  # the tile row boundary nearest to r/n of the work
        starts.append(min(max(a, starts[-1] + 1), rows) if starts[-1] < rows else rows)
    starts.append(rows)
    regions = []
    for r in range(n):
        a, b = starts[r], max(starts[r + 1], starts[r])
        row0 = 0 if r == 0 else (grid.ys[a] if a < rows else grid.height)
        row1 = grid.height if b >= rows else grid.ys[b]
        row0 = min(row0, grid.height)
        row1 = max(min(row1, grid.height), row0)
        halo = a
        while halo > 0 and grid.ys[halo - 1] + grid.tile > row0:
            halo -= 1
        regions.append(Region(r, n, (row0, row1), (halo, b) if row1 > row0 else (a, a)))
    return regions


def _pad_index(n: int, pad_to: int, mode: str) -> np.ndarray:
    """``np.pad`` index map: padded position -> source position, for padding ``n`` up to ``pad_to``."""
    i = np.arange(pad_to)
    if mode == "reflect":
        period = 2 * (n - 1)
        j = np.mod(i, period) if period > 0 else np.zeros_like(i)
        return np.where(j < n, j, period - j)
    return np.minimum(i, n - 1)


def _window_index(start: int, length: int, n: int, padded: int, context: int, mode1: str, mode2: str) -> np.ndarray:
    """Source indices of positions ``start .. start+length`` of the slide padded as predict_tiled pads an image.

    The padding is first at the end up to ``padded`` (``mode1``), then ``context`` on both sides (``mode2``);
    positions are in the context-padded frame shifted by ``-context``.
    """
    pos = np.arange(start, start + length)
    inner = pos
    if context:
        if mode2 == "reflect":
            period = 2 * (padded - 1)
            j = np.mod(pos, period) if period > 0 else np.zeros_like(pos)
            inner = np.where(j < padded, j, period - j)
        else:
            inner = np.clip(pos, 0, padded - 1)
    if padded > n:
        inner = _pad_index(n, padded, mode1)[inner]
    return inner


class _TileDataset:
    """Tiles of a slide (with context), as ``uint8 (3, t + 2c, t + 2c)`` tensors.

    The tiles are stain-normalized if a normalizer is given. Picklable; each worker process opens the slide
    itself.
    """

    def __init__(self, slide: Slide, grid: TileGrid, tiles: list[tuple[int, int]], context: int,
                 normalizer: Any = None, stain_source: Mapping[str, Any] | None = None) -> None:
        self.slide, self.grid, self.tiles, self.context = slide, grid, tiles, context
        self.normalizer, self.stain_source = normalizer, stain_source
        h, w = grid.height, grid.width
        hp, wp = grid.padded
        self.mode1 = pad_mode((hp - h, wp - w), (h, w))  # as predict_tiled pads the image (histoflow.tiling)
        self.mode2 = pad_mode((context, context), (hp, wp))

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, k: int) -> tuple[Any, int]:
        import torch

        i, j = self.tiles[k]
        g, c = self.grid, self.context
        size = g.tile + 2 * c
        rows = _window_index(g.ys[i] - c, size, g.height, g.padded[0], c, self.mode1, self.mode2)
        cols = _window_index(g.xs[j] - c, size, g.width, g.padded[1], c, self.mode1, self.mode2)
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        region = self.slide.read_region(r0, c0, r1 - r0, c1 - c0)
        if r1 - r0 != size or c1 - c0 != size or rows[0] != r0 or cols[0] != c0:
            region = region[np.ix_(rows - r0, cols - c0)]
        if self.normalizer is not None:
            region = self.normalizer.transform(region, source_params=self.stain_source)
        return torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1))), k


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.slide.reset()


def cpu_normalizer(normalizer: Any) -> Any:
    """The same fitted normalizer on the NumPy backend (CUDA cannot be used in worker processes)."""
    if normalizer is None:
        return None
    from ..stain import StainNormalizer

    d = normalizer.to_dict()
    if "backend" in d.get("params", {}):
        d = {**d, "params": {**d["params"], "backend": "numpy"}}
        return StainNormalizer.from_dict(d)
    return normalizer


def limit_malloc_retention(threshold: int = 1 << 20) -> bool:
    """Make glibc return freed blocks of ``threshold`` bytes or more to the system at once.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
    blocks of tiles, batches and row bands come from heap arenas that keep their freed memory: on
    a 30k-wide slide that doubled the peak resident memory of an inference process (2.3 GB instead
    of 1.2 GB). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, also ``M_TRIM_THRESHOLD``)
    keeps memory flat. Process-wide; call it in a process that runs whole-slide inference. Returns
    False (and does nothing) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))
    except (OSError, AttributeError):
        return False


def predict_slide(
    slide: Slide | np.ndarray,
    predictor: Callable[[Any], Any],
    out: PathLike,
    *,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 8,
    blend: str = "gaussian",
    device: Any = "cpu",
    num_workers: int = 0,
    normalizer: Any = None,
    stain_source: Mapping[str, Any] | None = None,
    tissue: TissueMask | None = None,
    min_tissue_fraction: float = 0.0,
    region: Region | None = None,
    grid: TileGrid | None = None,
    context: int = 0,
    out_channels: int = 1,
    progress: bool = True,
    name: str | None = None,
    attrs: Mapping[str, Any] | None = None,
    static_batches: bool = False,
    precision: str = "auto",
) -> dict[str, Any]:
    """Tiled inference over a whole slide into a chunked zarr store, with bounded memory.

    Parameters
    ----------
    slide:
        A :class:`Slide` (see :func:`open_slide`) or an in-memory ``(H, W, 3)`` image.
    predictor:
        Maps a float tensor ``(B, 3, t + 2c, t + 2c)`` (RGB / 255, on ``device``) to
        ``(B, K, t, t)`` (e.g. ``sigmoid(model(x))`` or a :class:`histoflow.backends.ModelPredictor`); run
        under autocast in ``precision`` (auto, fp32 or bf16; :func:`histoflow.device.autocast`).
    out:
        The zarr group to write: array ``prob`` ``float32 (K, rows, W)`` holding the output rows of
        ``region`` (all rows by default), and attributes describing the run.
    tile, overlap, blend, context:
        As :func:`histoflow.tiling.predict_tiled`; the result equals its result on the whole image
        (bit for bit on CPU with a batch-independent predictor) where only tissue is skipped.
    batch_size:
        Tiles per forward pass; on CUDA out-of-memory the batch is split in halves (and the smaller
        size kept). Batches never span two tile rows, so a region's batches are exactly the single
        job's and a predictor whose output for a tile depends on its batch (convolution kernels
        chosen by batch size) still gives regions that merge into the single job's result.
    static_batches:
        Pad the last batch of each tile row to ``batch_size`` (one input shape: what
        ``torch.compile`` and cuDNN autotuning want); the padding's outputs are dropped.
    num_workers:
        DataLoader worker processes reading (and normalizing) tiles; 0 reads in this process.
    normalizer, stain_source:
        A fitted stain normalizer applied to every tile with the slide's staining ``stain_source``
        (:meth:`histoflow.stain.StainNormalizer.fit_source`), so all tiles get the same mapping.
    tissue, min_tissue_fraction:
        Only tiles with at least this fraction of tissue (and some tissue) are run; pixels no run
        tile covers get 0. Ignored when ``grid`` is given.
    region:
        Run only this region (:func:`split_regions`) and store only its rows.
    grid:
        A precomputed :func:`plan_grid` (must match ``slide.shape``, ``tile`` and ``overlap``).

    Returns
    -------
    dict
        Run statistics: tiles, seconds, tiles/s, megapixels covered (slide pixels under run tiles,
        in this region's rows) and MP/s.
    """
    import torch
    from tqdm import tqdm

    from ..device import to_device
    from ..tiling import blend_window

    if isinstance(slide, np.ndarray):
        slide = Slide.from_array(slide)
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if grid is None:
        grid = plan_grid(slide.shape, tile, overlap, tissue, min_tissue_fraction)
    elif (grid.height, grid.width, grid.tile, grid.overlap) != (*slide.shape, tile, overlap):
        raise ValueError("grid does not match the slide shape, tile and overlap")
    if region is None:
        region = Region(0, 1, (0, grid.height), (0, len(grid.ys)))
    device = torch.device(device)
    h, w = grid.height, grid.width
    hp, wp = grid.padded
    own0, own1 = region.rows
    tiles = [(i, j) for i in range(*region.tile_rows) for j in range(len(grid.xs)) if grid.keep[i, j]]
    name = name or slide.path.name

    group = open_group(out, "w")
    prob = create_array(group, "prob", (out_channels, own1 - own0, w), (1, CHUNK, CHUNK), np.float32)
    group.attrs.update({
        "slide": slide.info(), "tile": tile, "overlap": overlap, "blend": blend, "context": context,
        "height": h, "width": w, "rows": [own0, own1], "region": region.index, "regions": region.count,
        "tile_rows": list(region.tile_rows), **(dict(attrs) if attrs else {}),
    })

    window = torch.from_numpy(blend_window((tile, tile), blend)).to(device)
    band_h = tile + CHUNK
    first_y = grid.ys[region.tile_rows[0]] if tiles else own0
    band_y0 = own0 - CHUNK * math.ceil(max(own0 - first_y, 0) / CHUNK)  # chunk-aligned with own0
    acc = torch.zeros((out_channels, band_h, wp), dtype=torch.float32, device=device)
    wsum = torch.zeros((band_h, wp), dtype=torch.float32, device=device)
    # two host buffers of one chunk row: one is filled while the other is being written
    host = [np.empty((out_channels, CHUNK, w), np.float32) for _ in range(2)]
    slot = 0
    writer = _Writer(prob)
    covered = 0

    def flush_chunk() -> None:
        """Finish the band's first CHUNK rows: normalize, write the owned ones, shift the band."""
        nonlocal band_y0, covered, slot
        r0, r1 = max(band_y0, own0), min(band_y0 + CHUNK, own1)
        if r1 > r0:
            buf = host[slot][:, : r1 - r0]
            for c0 in range(0, w, _FLUSH_COLS):  # in column blocks: small temporaries on wide slides
                c1 = min(c0 + _FLUSH_COLS, w)
                a = acc[:, r0 - band_y0 : r1 - band_y0, c0:c1]
                ws = wsum[r0 - band_y0 : r1 - band_y0, c0:c1]
                hit = ws > 0
                buf[:, :, c0:c1] = torch.where(hit, a / torch.where(hit, ws, 1.0), 0.0).cpu().numpy()
                covered += int(hit.sum())
            writer.write(r0 - own0, buf)
            slot ^= 1
        for k in range(0, band_h - CHUNK, CHUNK):  # shift up by CHUNK rows, piece by piece (no copy)
            n = min(CHUNK, band_h - CHUNK - k)
            acc[:, k : k + n] = acc[:, k + CHUNK : k + CHUNK + n]
            wsum[k : k + n] = wsum[k + CHUNK : k + CHUNK + n]
        acc[:, band_h - CHUNK :] = 0
        wsum[band_h - CHUNK :] = 0
        band_y0 += CHUNK

    ds = _TileDataset(slide, grid, tiles, context, normalizer, stain_source)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=_row_batches(tiles, batch_size), num_workers=num_workers,
        pin_memory=device.type == "cuda", worker_init_fn=_worker_init if num_workers else None,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
    )
    micro = batch_size
    bar = tqdm(total=len(tiles), desc=name, unit="tile", disable=not progress, mininterval=5, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        for batch, index in loader:
            n = batch.shape[0]
            if static_batches and n < batch_size:
                batch = torch.cat([batch, batch[-1:].expand(batch_size - n, -1, -1, -1)])
            x = to_device(batch, device).float() / 255.0  # the model's memory format, as on image tiles
            outs, micro = _forward(predictor, x, micro, device, tile, precision)
            outs = outs[:n].float()
            if outs.shape[1] != out_channels or outs.shape[-2:] != (tile, tile):
                raise ValueError(
                    f"predictor returned {tuple(outs.shape)} for a batch {tuple(x.shape)}; expected "
                    f"(B, {out_channels}, {tile}, {tile}) (set out_channels, or context for models that crop)"
                )
            outs = outs * window
            for o, k in zip(outs, index.tolist(), strict=True):
                i, j = ds.tiles[k]
                y, xx = grid.ys[i], grid.xs[j]
                while y + tile > band_y0 + band_h:
                    flush_chunk()
                acc[:, y - band_y0 : y - band_y0 + tile, xx : xx + tile] += o
                wsum[y - band_y0 : y - band_y0 + tile, xx : xx + tile] += window
            bar.update(len(index))
        while band_y0 < own1:
            flush_chunk()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        bar.close()
        writer.close()
    seconds = time.perf_counter() - t0
    stats = {
        "tiles": len(tiles), "tiles_total": len(grid.ys) * len(grid.xs), "seconds": round(seconds, 3),
        "tiles_per_s": round(len(tiles) / seconds, 2) if seconds > 0 else None,
        "pixels": covered, "megapixels": round(covered / 1e6, 6),
        "mpps": round(covered / 1e6 / seconds, 3) if seconds > 0 else None,
        "micro_batch": micro, "device": str(device), "workers": num_workers,
    }
    group.attrs.update({"stats": stats})
    log.info("%s: %d of %d tiles (%.1f MP) in %.1f s: %.1f tiles/s, %.2f MP/s", name, len(tiles),
             stats["tiles_total"], covered / 1e6, seconds, stats["tiles_per_s"] or 0, stats["mpps"] or 0)
    return stats


def _row_batches(tiles: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of ``tiles`` (in order) in batches of at most ``batch_size`` within one tile row."""
    batches: list[list[int]] = []
    current: list[int] = []
    row = None
    for k, (i, _) in enumerate(tiles):
        if current and (i != row or len(current) == batch_size):
            batches.append(current)
            current = []
        current.append(k)
        row = i
    if current:
        batches.append(current)
    return batches


def _forward(predictor: Callable[[Any], Any], x: Any, micro: int, device: Any, tile: int,
             precision: str = "auto") -> tuple[Any, int]:
    """Predictor over ``x`` in micro-batches; halves the micro-batch on CUDA out-of-memory."""
    import torch

    from ..device import autocast, retry_halving_on_oom

    def run(n: int) -> Any:
        with torch.inference_mode(), autocast(device, precision):
            if n >= x.shape[0]:
                return predictor(x)
            return torch.cat([predictor(x[s : s + n]) for s in range(0, x.shape[0], n)])

    return retry_halving_on_oom(
        run, micro, f"out of GPU memory with one {tile}x{tile} tile: lower slides.tile in config.yaml"
    )


def merge_regions(region_stores: Sequence[PathLike], out: PathLike) -> dict[str, Any]:
    """Concatenate the row bands of region stores (in any order) into one store ``out``.

    Each region finished its own rows completely, so this is a copy (chunk row by chunk row,
    bounded memory) and the result, array :data:`~histoflow.wsi.ngff.LEVEL0` of ``out`` (the level 0 of
    an NGFF image, :func:`histoflow.wsi.ngff.write_ngff`), equals a single job's ``prob`` bit for bit.

    Raises
    ------
    ValueError
        If the regions do not tile the slide's rows exactly once, or disagree on its size.
    """
    groups = [open_group(p, "r") for p in region_stores]
    if not groups:
        raise ValueError("no region stores to merge")
    meta = [dict(g.attrs) for g in groups]
    order = sorted(range(len(groups)), key=lambda k: meta[k]["rows"][0])
    h, w = meta[0]["height"], meta[0]["width"]
    k_ch = groups[0]["prob"].shape[0]
    pos = 0
    for k in order:
        m = meta[k]
        if (m["height"], m["width"]) != (h, w) or groups[k]["prob"].shape[0] != k_ch:
            raise ValueError(f"{region_stores[k]}: region of a different slide or model ({m['height']}x{m['width']})")
        if m["rows"][0] != pos:
            raise ValueError(f"regions do not tile the rows: expected a region starting at row {pos}, "
                             f"got {region_stores[k]} at {m['rows'][0]}")
        pos = m["rows"][1]
    if pos != h:
        raise ValueError(f"regions end at row {pos}, the slide has {h} rows")
    target = open_group(out, "w")
    prob = create_array(target, LEVEL0, (k_ch, h, w), (1, CHUNK, CHUNK), np.float32, dimension_names(True))
    spans = [(meta[k]["rows"][0], meta[k]["rows"][1], groups[k]["prob"]) for k in order]
    for r0 in range(0, h, CHUNK):
        r1 = min(r0 + CHUNK, h)
        for c0 in range(0, w, 8 * CHUNK):
            c1 = min(c0 + 8 * CHUNK, w)
            block = np.zeros((k_ch, r1 - r0, c1 - c0), np.float32)
            for s0, s1, arr in spans:
                a, b = max(r0, s0), min(r1, s1)
                if b > a:
                    block[:, a - r0 : b - r0] = arr[:, a - s0 : b - s0, c0:c1]
            prob[:, r0:r1, c0:c1] = block
    stats = [m.get("stats", {}) for m in meta]
    attrs = {k: v for k, v in meta[order[0]].items() if k not in ("rows", "region", "tile_rows", "stats")}
    merged_stats = {
        "tiles_run": sum(s.get("tiles", 0) for s in stats),  # halo tiles count once per region running them
        "tiles_total": stats[0].get("tiles_total"),
        "pixels": sum(s.get("pixels", 0) for s in stats),
        "megapixels": round(sum(s.get("pixels", 0) for s in stats) / 1e6, 6),
        "seconds_per_region": [s.get("seconds") for s in (stats[k] for k in order)],
    }
    target.attrs.update({**attrs, "rows": [0, h], "regions": len(groups), "stats": merged_stats})
    return merged_stats

