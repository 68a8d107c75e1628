"""Scribbles of serial-section stacks: simulated annotator strokes and scribbles drawn by hand.

Strokes are simulated from a ground-truth mask (the paper's experiments); scribbles drawn by hand are read from
label or RGB TIFF stacks and QuPath GeoJSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .graphcut import SEED_BACKGROUND, SEED_FOREGROUND
from .io import InputError, PathLike, read_image
from .volume import TIFF_SUFFIXES, check_seed, image_files, read_tiff_pages

_GEOJSON_SUFFIXES = (".geojson", ".json")


#: RGB scribbles: a channel must exceed both others by at least this much to mark a pixel
_RGB_DOMINANCE = 60


#: RGB scribbles: pixels whose channels differ by at most this much are "no scribble" (grey/black/white)
_RGB_NEUTRAL_SPREAD = 60


_SCRIBBLE_CONVENTION = (
    "Scribble files hold one value per pixel: 0 = no scribble, 1 = foreground, 2 = background "
    "(single-channel PNG/TIFF), or RGB with red strokes = foreground, blue strokes = background and "
    "black/white/grey elsewhere; or a QuPath GeoJSON with annotations classified 'Foreground'/'Background'."
)


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def _random_walk(
    rng: np.random.Generator, allowed: np.ndarray, start: tuple[int, int], length: int
) -> list[tuple[int, int]]:
    """A smooth random walk of up to ``length`` one-pixel steps that stays on ``allowed`` pixels."""
    h, w = allowed.shape
    y, x = float(start[0]), float(start[1])
    angle = rng.uniform(0, 2 * np.pi)
    points = [start]
    turns = np.array([0.0, 0.4, -0.4, 0.8, -0.8, 1.3, -1.3, 1.9, -1.9])
    for _ in range(length - 1):
        angle += rng.normal(0, 0.25)
        for turn in turns:
            ny, nx = y + math.sin(angle + turn), x + math.cos(angle + turn)
            iy, ix = int(round(ny)), int(round(nx))
            if 0 <= iy < h and 0 <= ix < w and allowed[iy, ix]:
                angle += turn
                y, x = ny, nx
                if (iy, ix) != points[-1]:
                    points.append((iy, ix))
                break
        else:
            break
    return points


def make_scribbles(
    labels: np.ndarray,
    every: int = 10,
    strokes_per_class: int = 2,
    width: int = 3,
    seed: int = 0,
    *,
    margin: int = 2,
) -> np.ndarray:
    """Simulated user scribbles: a few short strokes per class on every ``every``-th slice.

    On slices ``0, every, 2 every, ...`` each class gets ``strokes_per_class`` smooth random-walk
    strokes (15-40 px long, ``width`` px wide): foreground strokes inside the organ (label 1),
    background strokes inside label 0, preferably within 30 px of the organ (where a person would
    mark the surroundings). Every stroke pixel keeps a Euclidean distance of at least ``margin + 1``
    to the nearest pixel of the other class, i.e. at least ``margin`` pixels of its own class lie
    between a stroke and the border. A class with no room on a slice gets no stroke there.

    Parameters
    ----------
    labels : numpy.ndarray
        Binary labels ``(Z, H, W)`` or ``(H, W)`` (non-zero = organ), any integer or bool dtype.
    every : int
        Slice interval, ``>= 1``.
    strokes_per_class : int
        Strokes per class and scribbled slice, ``>= 0``.
    width : int
        Stroke width in pixels, ``>= 1`` (a disk of radius ``width // 2`` along the stroke).
    seed : int
        Non-negative seed; the same inputs give identical scribbles.
    margin : int
        Clearance in pixels to the class border, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        uint8, the shape of ``labels``: 0 none, 1 foreground, 2 background (see
        :mod:`histoflow.graphcut`); all other slices are 0.

    Raises
    ------
    ValueError
        On a bad argument.
    """
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3) or lab.size == 0:
        raise ValueError(f"labels must be a non-empty (Z, H, W) or (H, W) array, got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"labels must be integer or bool, got {lab.dtype}")
    for name, value, lo in (
        ("every", every, 1),
        ("strokes_per_class", strokes_per_class, 0),
        ("width", width, 1),
        ("margin", margin, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    seed = check_seed(seed)
    squeeze = lab.ndim == 2
    lab3 = (lab[None] if squeeze else lab) != 0
    rng = np.random.default_rng(seed)
    radius = int(width) // 2
    footprint = _disk(radius)
    need = float(radius + margin + 1)  # centre-line clearance so every stroke pixel keeps margin + 1
    seeds = np.zeros(lab3.shape, dtype=np.uint8)
    for z in range(0, lab3.shape[0], int(every)):
        fg = lab3[z]
        for value, region in ((SEED_FOREGROUND, fg), (SEED_BACKGROUND, ~fg)):
            if not region.any():
                continue
            clearance = (
                ndi.distance_transform_edt(region) if not region.all() else np.full(region.shape, np.inf)
            )
            allowed = clearance >= need
            if not allowed.any():
                continue
            candidates = allowed
            if value == SEED_BACKGROUND and fg.any():
                near = allowed & (ndi.distance_transform_edt(~fg) <= 30.0)
                if near.any():
                    candidates = near
            flat = np.flatnonzero(candidates)
            stroke = np.zeros(region.shape, dtype=bool)
            for _ in range(int(strokes_per_class)):
                for _attempt in range(5):
                    start = np.unravel_index(flat[rng.integers(flat.size)], region.shape)
                    pts = _random_walk(
                        rng, allowed, (int(start[0]), int(start[1])), int(rng.integers(15, 41))
                    )
                    if len(pts) >= 8:
                        break
                py, px = np.array(pts).T
                stroke[py, px] = True
            if radius > 0:
                stroke = ndi.binary_dilation(stroke, structure=footprint)
            stroke &= clearance >= margin + 1
            seeds[z][stroke & (seeds[z] == 0)] = value
    return seeds[0] if squeeze else seeds


def _decode_scribble_plane(arr: np.ndarray, path: Path) -> np.ndarray:
    """One scribble plane (value-coded or RGB) as uint8 ``(H, W)`` with values 0/1/2."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"{path}: unsupported pixel type {arr.dtype}. {_SCRIBBLE_CONVENTION}")
        bad = ~np.isin(arr, (0, 1, 2))
        if bad.any():
            vals = np.unique(arr[bad])[:5].tolist()
            raise InputError(
                f"{path}: scribble values must be 0, 1 or 2, found {vals}. {_SCRIBBLE_CONVENTION}"
            )
        return arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if arr.dtype == np.uint16:
            arr = (arr // 257).astype(np.uint8)
        if arr.dtype != np.uint8:
            raise InputError(f"{path}: RGB scribbles must be 8-bit (got {arr.dtype}). {_SCRIBBLE_CONVENTION}")
        rgb = arr[..., :3].astype(np.int16)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        red = r - np.maximum(g, b) >= _RGB_DOMINANCE
        blue = b - np.maximum(r, g) >= _RGB_DOMINANCE
        neutral = rgb.max(axis=-1) - rgb.min(axis=-1) <= _RGB_NEUTRAL_SPREAD
        if arr.shape[-1] == 4:
            transparent = arr[..., 3] == 0
            red &= ~transparent
            blue &= ~transparent
            neutral |= transparent
        bad = ~(red | blue | neutral)
        if bad.any():
            y, x = (int(v[0]) for v in np.nonzero(bad))
            raise InputError(
                f"{path}: {int(bad.sum())} pixels are neither red, blue nor grey/black/white (e.g. RGB "
                f"{rgb[y, x].tolist()} at x={x}, y={y}). RGB scribbles: a stroke is red (foreground) or blue "
                f"(background) when that channel exceeds both others by >= {_RGB_DOMINANCE}; unmarked "
                f"pixels must be grey (channels within {_RGB_NEUTRAL_SPREAD}). Export the scribble layer on "
                f"its own, not painted over the section. {_SCRIBBLE_CONVENTION}"
            )
        out = np.zeros(arr.shape[:2], dtype=np.uint8)
        out[red] = SEED_FOREGROUND
        out[blue] = SEED_BACKGROUND
        return out
    raise InputError(
        f"{path}: expected a single-channel or RGB scribble image, got shape {arr.shape}. "
        f"{_SCRIBBLE_CONVENTION}"
    )


def _check_plane_shape(plane: np.ndarray, hw: tuple[int, int], path: Path) -> np.ndarray:
    if plane.shape != hw:
        raise InputError(f"{path}: scribbles of size {plane.shape} do not match the sections' {hw} (H, W).")
    return plane


def read_scribbles(path: PathLike, shape: tuple[int, ...], names: Sequence[str] | None = None) -> np.ndarray:
    """Read scribbles (seeds for :mod:`histoflow.graphcut`) from a file or folder.

    Accepted inputs:

    (a) a **folder** of per-slice PNG/TIFF images named like the stack's slices
        (``slice_007.png`` -> slice 7: the last number in the file stem is the slice index, or,
        when ``names`` is given, the stem is looked up in ``names``); slices without a file have
        no scribbles;
    (b) a **multi-page TIFF** ``(Z, H, W)`` (or ``(Z, H, W, 3|4)`` RGB);
    (c) a **single image** ``(H, W)`` / ``(H, W, 3|4)`` for a 2-D ``shape``;
    (d) a **QuPath GeoJSON** (``.geojson``/``.json``): annotations classified ``Foreground``/``fg``
        (1) or ``Background``/``bg`` (2), case-insensitive; lines are drawn 3 px wide, polygons
        filled; in 3-D each feature needs its plane's ``z`` (see :mod:`histoflow.qupath`).

    Pixel coding: single-channel 0 = none, 1 = foreground, 2 = background. RGB(A): a pixel is
    foreground when red exceeds both green and blue by at least 60, background when blue exceeds
    both others by at least 60, and none when it is grey/black/white (largest minus smallest
    channel at most 60) or fully transparent. This tolerates anti-aliased stroke edges (e.g. pink
    ``(255, 128, 128)`` is red); any other colour is an error.

    Parameters
    ----------
    path : str or os.PathLike
        The scribble file or folder.
    shape : tuple of int
        ``(Z, H, W)`` of the stack, or ``(H, W)`` for a single image.
    names : sequence of str, optional
        Stems of the stack's slices in order (:func:`stack_slice_names`), to match folder files by
        name instead of by number.

    Returns
    -------
    numpy.ndarray
        uint8 ``shape`` with values 0, 1, 2.

    Raises
    ------
    InputError
        Naming the file, for an unreadable file, a size that does not match ``shape``, a file
        whose slice cannot be determined, or pixel values outside the convention.
    ValueError
        If ``shape`` is not 2-D or 3-D.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (Z, H, W) or (H, W), got {shape}")
    path = Path(path)
    hw = shape[-2:]
    if path.is_dir():
        if len(shape) != 3:
            raise InputError(
                f"{path}: a folder of scribble slices needs a 3-D stack; give one image for 2-D."
            )
        files = image_files(path)
        out = np.zeros(shape, dtype=np.uint8)
        index = {n: i for i, n in enumerate(names)} if names is not None else None
        seen: dict[int, Path] = {}
        for f in files:
            if index is not None:
                if f.stem not in index:
                    raise InputError(
                        f"{f}: no stack slice is named {f.stem!r}; name scribble files like the slices."
                    )
                z = index[f.stem]
            else:
                digits = re.findall(r"\d+", f.stem)
                if not digits:
                    raise InputError(
                        f"{f}: cannot tell the slice from the name; name it like the slices "
                        "(e.g. slice_007.png for slice 7)."
                    )
                z = int(digits[-1])
            if not 0 <= z < shape[0]:
                raise InputError(f"{f}: slice index {z} is outside the stack's 0..{shape[0] - 1}.")
            if z in seen:
                raise InputError(
                    f"{f}: slice {z} also has scribbles in {seen[z].name}; keep one file per slice."
                )
            seen[z] = f
            out[z] = _check_plane_shape(_decode_scribble_plane(read_image(f), f), hw, f)
        return out
    if path.suffix.lower() in _GEOJSON_SUFFIXES:
        from .qupath import SCRIBBLE_CLASSES, rasterize_annotations

        seeds = rasterize_annotations(path, shape, SCRIBBLE_CLASSES, width=3)
        return seeds.astype(np.uint8)
    if path.suffix.lower() in TIFF_SUFFIXES:
        arr = read_tiff_pages(path)
        if len(shape) == 2:
            if arr.shape[0] != 1:
                raise InputError(f"{path}: {arr.shape[0]} pages for a single 2-D image; give one page.")
            return _check_plane_shape(_decode_scribble_plane(arr[0], path), hw, path)
        if arr.shape[0] != shape[0] or arr.ndim not in (3, 4):
            raise InputError(
                f"{path}: array of shape {arr.shape} does not match the stack's {shape} (Z, H, W); "
                "write one page per slice."
            )
        return np.stack([_check_plane_shape(_decode_scribble_plane(p, path), hw, path) for p in arr])
    if len(shape) == 3:
        raise InputError(
            f"{path}: a single image cannot hold scribbles for a {shape[0]}-slice stack; use a folder "
            "of per-slice images, a multi-page TIFF or a GeoJSON."
        )
    return _check_plane_shape(_decode_scribble_plane(read_image(path), path), hw, path)

