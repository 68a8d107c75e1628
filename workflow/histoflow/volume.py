"""Serial-section stacks: reading and writing them, checks, summaries and orthogonal views.

A *stack* is a set of aligned serial sections ``images uint8 (Z, H, W, 3)`` with optional binary
labels ``uint8 (Z, H, W)`` (1 = organ). Scribbles (seeds) follow :mod:`histoflow.graphcut`:
``0`` = none, ``1`` = foreground, ``2`` = background.

Scribbles are read and simulated in :mod:`histoflow.scribbles`; synthetic stacks come from
:mod:`histoflow.synthetic.organs`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import IMAGE_SUFFIXES, InputError, PathLike, atomic_path, read_image, write_image

MIN_SHAPE = (1, 32, 32)


TIFF_SUFFIXES = (".tif", ".tiff")


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_fraction(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def _natural_key(name: str) -> list[Any]:
    """Sort key: digit runs compare as numbers (``slice_2`` < ``slice_10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def image_files(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: _natural_key(p.name),
    )


def _slice_name(index: int, n: int) -> str:
    return f"slice_{index:0{max(3, len(str(max(n - 1, 0))))}d}"


def _as_rgb_slice(arr: np.ndarray, path: Path) -> np.ndarray:
    from .stain import to_rgb_uint8

    try:
        return to_rgb_uint8(arr, name=str(path))
    except ValueError as exc:
        raise InputError(
            f"{path}: not a usable RGB section ({exc}). Save sections as 8-bit RGB PNG/TIFF."
        ) from exc


def read_tiff_pages(path: Path) -> np.ndarray:
    """A (multi-page) TIFF as an array, with :class:`InputError` on failure."""
    import tifffile

    if not path.exists():
        raise InputError(f"{path}: file not found.")
    try:
        with tifffile.TiffFile(path) as tif:
            arr = tif.asarray()
            n_pages = len(tif.pages)
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes a clear input error
        raise InputError(
            f"{path}: cannot be read as a TIFF stack ({exc}). Re-export it as a multi-page TIFF."
        ) from exc
    arr = np.asarray(arr)
    if n_pages == 1 and arr.ndim in (2, 3):  # one page: (H, W) or (H, W, C) -> add Z
        if arr.ndim == 2 or arr.shape[-1] in (3, 4):
            arr = arr[None]
    return arr


def write_stack(folder: PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> list[Path]:
    """Write a stack as one PNG per slice (``slice_000.png`` ...; labels in ``labels/``).

    Each file is written atomically. Files ``slice_<digits>.png`` left in the folders from an
    earlier, longer stack are removed (and, when ``labels`` is None, the label slices of an earlier
    stack), so that :func:`read_stack` reads back exactly this stack.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created if missing).
    images : numpy.ndarray
        uint8 ``(Z, H, W, 3)``.
    labels : numpy.ndarray, optional
        ``(Z, H, W)`` integer labels with values in ``[0, 255]`` (written as uint8).

    Returns
    -------
    list of pathlib.Path
        The image files written, in slice order.

    Raises
    ------
    ValueError
        If the arrays have the wrong shape, dtype or values.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or images.shape[0] == 0:
        raise ValueError(f"images must be uint8 (Z, H, W, 3) with Z >= 1, got {images.dtype} {images.shape}")
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != images.shape[:3]:
            raise ValueError(f"labels must have shape {images.shape[:3]}, got {lab.shape}")
        if lab.dtype != bool and not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels must be integer or bool, got {lab.dtype}")
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise ValueError("labels must lie in [0, 255] to be written as 8-bit PNG")
        lab = lab.astype(np.uint8)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    names = [_slice_name(i, n) for i in range(n)]
    written = []
    for out_dir, arr in ((folder, images), (folder / "labels", lab)):
        keep = {f"{name}.png" for name in names} if arr is not None else set()
        if out_dir.is_dir():
            for old in out_dir.glob("slice_*.png"):
                if re.fullmatch(r"slice_\d+\.png", old.name) and old.name not in keep:
                    old.unlink()
            if arr is None and not any(out_dir.iterdir()):
                out_dir.rmdir()
        if arr is None:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, plane in zip(names, arr, strict=True):
            write_image(out_dir / f"{name}.png", plane)
            if out_dir == folder:
                written.append(out_dir / f"{name}.png")
    return written


def stack_slice_names(path: PathLike) -> list[str]:
    """File stems of a stack folder's slices in stack order (natural numeric order of the names).

    A multi-page TIFF has no slice names: ``slice_000`` ... are returned for its pages.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
        n = read_tiff_pages(path).shape[0]
        return [_slice_name(i, n) for i in range(n)]
    if not path.is_dir():
        raise InputError(f"{path}: stack folder not found. Point the volume's path to a folder of slices.")
    return [p.stem for p in image_files(path)]


def read_stack(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a stack written by :func:`write_stack`, any folder of slices, or a multi-page TIFF.

    Parameters
    ----------
    path : str or os.PathLike
        A folder of slice images (PNG/TIFF/JPEG ..., sorted in natural numeric order of the names:
        ``s2`` before ``s10``), with optional labels in ``<folder>/labels/`` under the same stems;
        or a multi-page TIFF file ``(Z, H, W)`` grey or ``(Z, H, W, 3|4)`` colour (no labels).

    Returns
    -------
    images : numpy.ndarray
        uint8 ``(Z, H, W, 3)`` (grey, RGBA and 16-bit slices are converted).
    labels : numpy.ndarray or None
        uint8 ``(Z, H, W)``, or None when there is no ``labels/`` folder.

    Raises
    ------
    InputError
        If the folder is missing or empty, a file cannot be read, a slice's size differs from the
        first slice's (the message names the odd file) or a label slice is missing or not 8-bit.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise InputError(f"{path}: a stack is a folder of slices or a multi-page TIFF (.tif/.tiff).")
        arr = read_tiff_pages(path)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise InputError(
                f"{path}: expected pages of (H, W) or (H, W, 3) pixels, got array shape {arr.shape}."
            )
        return np.stack([_as_rgb_slice(page, path) for page in arr]), None
    if not path.is_dir():
        raise InputError(f"{path}: stack folder not found. Point the volume's path to a folder of slices.")
    files = image_files(path)
    if not files:
        raise InputError(f"{path}: no slice images (PNG/TIFF/JPEG) found in the folder.")
    images = []
    for f in files:
        img = _as_rgb_slice(read_image(f), f)
        if images and img.shape != images[0].shape:
            raise InputError(
                f"{f}: size {img.shape[1]}x{img.shape[0]} differs from {files[0].name} "
                f"({images[0].shape[1]}x{images[0].shape[0]}); all slices of a stack must be aligned and "
                "of one size."
            )
        images.append(img)
    stack = np.stack(images)
    label_dir = path / "labels"
    if not label_dir.is_dir():
        return stack, None
    by_stem = {p.stem: p for p in image_files(label_dir)}
    labels = np.zeros(stack.shape[:3], dtype=np.uint8)
    for z, f in enumerate(files):
        lf = by_stem.get(f.stem)
        if lf is None:
            raise InputError(
                f"{label_dir}: no label file for slice {f.name}; give every slice a label image."
            )
        lab = read_image(lf)
        if lab.ndim == 3 and lab.shape[-1] in (3, 4) and np.all(lab[..., :3] == lab[..., :1]):
            lab = lab[..., 0]
        if lab.shape != stack.shape[1:3]:
            raise InputError(f"{lf}: label shape {lab.shape} differs from its slice's {stack.shape[1:3]}.")
        if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool) or (lab.size and lab.max() > 255):
            raise InputError(f"{lf}: labels must be 8-bit integers (0 = background, 1 = organ).")
        labels[z] = lab
    return stack, labels


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must be three numbers (dz, dy, dx), got {spacing!r}") from exc
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx), got {spacing!r}")
    return sp  # type: ignore[return-value]


def _check_mask3d(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"mask must be (Z, H, W), got shape {m.shape}")
    return m != 0


def volume_summary(mask: np.ndarray, spacing_um: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Size and extent of a binary volume.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(Z, H, W)``, non-zero = inside (bool or integer).
    spacing_um : tuple of float, optional
        Voxel size ``(dz, dy, dx)`` in micrometres (``dz``: section thickness / step).

    Returns
    -------
    dict
        JSON-ready (plain Python types):
        ``shape`` ``[Z, H, W]``; ``n_voxels`` (int); ``fraction`` of the volume;
        ``slice_areas_px`` (list of Z ints); ``n_slices_with_mask``;
        ``bbox``: ``{"z": [start, stop], "y": [...], "x": [...]}`` half-open index ranges, or None
        for an empty mask; ``spacing_um`` (list or None); ``voxel_volume_um3``, ``volume_um3``
        (float) and ``slice_areas_um2`` (list) when ``spacing_um`` is given, else None.

    Raises
    ------
    ValueError
        If ``mask`` is not 3-D or ``spacing_um`` is not three positive numbers.
    """
    m = _check_mask3d(mask)
    sp = _check_spacing(spacing_um)
    areas = m.reshape(m.shape[0], -1).sum(axis=1)
    n = int(areas.sum())
    bbox = None
    if n:
        bbox = {}
        for axis, key in enumerate(("z", "y", "x")):
            other = tuple(a for a in range(3) if a != axis)
            idx = np.flatnonzero(m.any(axis=other))
            bbox[key] = [int(idx[0]), int(idx[-1]) + 1]
    out: dict[str, Any] = {
        "shape": [int(s) for s in m.shape],
        "n_voxels": n,
        "fraction": float(n / m.size) if m.size else 0.0,
        "slice_areas_px": [int(a) for a in areas],
        "n_slices_with_mask": int((areas > 0).sum()),
        "bbox": bbox,
        "spacing_um": list(sp) if sp else None,
        "voxel_volume_um3": None,
        "volume_um3": None,
        "slice_areas_um2": None,
    }
    if sp:
        voxel = sp[0] * sp[1] * sp[2]
        out["voxel_volume_um3"] = voxel
        out["volume_um3"] = n * voxel
        out["slice_areas_um2"] = [float(a) * sp[1] * sp[2] for a in areas]
    return out


def orthogonal_views(
    volume_rgb: np.ndarray,
    mask: np.ndarray,
    path: PathLike,
    spacing: tuple[float, float, float] | None = None,
    dpi: int = 100,
    planes: tuple[int, int, int] | None = None,
) -> Path:
    """Save a PNG of three orthogonal planes (XY, XZ, YZ) with the mask outlined.

    Parameters
    ----------
    volume_rgb : numpy.ndarray
        uint8 ``(Z, H, W, 3)`` (or grey ``(Z, H, W)``).
    mask : numpy.ndarray
        ``(Z, H, W)``, non-zero = inside; outlined in green.
    path : str or os.PathLike
        Output PNG (written atomically).
    spacing : tuple of float, optional
        ``(dz, dy, dx)``; the XZ / YZ views are stretched along z by ``dz / dx`` / ``dz / dy``
        (isotropic when None).
    dpi : int
        Figure resolution.
    planes : tuple of int, optional
        ``(z, y, x)`` indices of the planes; default: the centre of the mask's bounding box (the
        middle of the volume for an empty mask).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        On mismatched shapes, bad spacing or plane indices.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vol = np.asarray(volume_rgb)
    m = _check_mask3d(mask)
    if vol.shape[:3] != m.shape or vol.ndim not in (3, 4):
        raise ValueError(f"volume_rgb {vol.shape} and mask {m.shape} must share (Z, H, W)")
    sp = _check_spacing(spacing) or (1.0, 1.0, 1.0)
    nz, h, w = m.shape
    if planes is None:
        summary = volume_summary(m)
        if summary["bbox"] is None:
            planes = (nz // 2, h // 2, w // 2)
        else:
            planes = tuple((lo + hi - 1) // 2 for lo, hi in summary["bbox"].values())  # type: ignore[assignment]
    pz, py, px = (int(p) for p in planes)  # type: ignore[misc]
    if not (0 <= pz < nz and 0 <= py < h and 0 <= px < w):
        raise ValueError(f"planes {planes} outside the volume {m.shape}")
    views = [
        (f"XY (z={pz})", vol[pz], m[pz], sp[1] / sp[2], "x", "y"),
        (f"XZ (y={py})", vol[:, py], m[:, py], sp[0] / sp[2], "x", "z"),
        (f"YZ (x={px})", vol[:, :, px], m[:, :, px], sp[0] / sp[1], "y", "z"),
    ]
    heights = [h * sp[1], nz * sp[0], nz * sp[0]]
    widths = [w * sp[2], w * sp[2], h * sp[1]]
    fig = Figure(figsize=(12, 4.5), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [wd / max(heights) for wd in widths]})
    for ax, (title, img, msk, aspect, xl, yl) in zip(axes, views, strict=True):
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", aspect=aspect, interpolation="nearest")
        if msk.any() and not msk.all():
            ax.contour(msk.astype(np.float32), levels=[0.5], colors=["lime"], linewidths=1.0)
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def write_tiff_stack(path: PathLike, mask: np.ndarray) -> Path:
    """Write ``(Z, H, W)`` values in ``[0, 255]`` as an 8-bit multi-page TIFF (zlib), atomically.

    Values are kept as they are (a binary mask stays 0/1, scribbles stay 0/1/2); bool becomes 0/1.
    Read it back with ``tifffile.imread`` or :func:`read_scribbles`.

    Raises
    ------
    ValueError
        If ``mask`` is not 3-D, not integer/bool or outside ``[0, 255]``.
    """
    import tifffile

    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"mask must be (Z, H, W), got shape {m.shape}")
    if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"mask must be integer or bool, got {m.dtype}")
    if m.size and (m.min() < 0 or m.max() > 255):
        raise ValueError("mask values must lie in [0, 255] for an 8-bit TIFF")
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, m.astype(np.uint8), compression="zlib", photometric="minisblack")
    return path


def stack_paths(spec: dict[str, Any], data_dir: PathLike | None) -> dict[str, str]:
    """Folders of the training, target and (where there is one) validation stacks of a generated or on-disk volume.

    A generated volume always has a validation stack (``val``); an on-disk one when ``validation`` names a folder.
    """
    if spec.get("generator"):
        d = Path(data_dir)
        return {"train": str(d / "train"), "target": str(d / "target"), "val": str(d / "val")}
    return {"train": spec["train"], "target": spec["target"]} | (
        {"val": spec["validation"]} if spec.get("validation") else {})


def stack_as_dataset(stack_dir: PathLike) -> tuple[dict[str, Any], str]:
    """A stack folder as the ``dataset`` dict :func:`histoflow.patches.extract_dataset_patches` takes."""
    d = Path(stack_dir)
    stems = sorted(p.stem for p in (d / "labels").glob("*.png"))
    if not stems:
        raise ValueError(f"{d}/labels: no label slices; the training stack needs labels")
    return ({"images": {s: str(d / f"{s}.png") for s in stems},
             "masks": {s: str(d / "labels" / f"{s}.png") for s in stems},
             "mask_type": "binary", "train": stems, "test": []}, str(d))
