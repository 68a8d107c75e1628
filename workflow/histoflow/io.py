"""Reading and writing images, label maps and JSON, with atomic writes and clear errors.

Every writer goes through :func:`atomic_path`: the file is written under a temporary name in the
same folder and moved into place with :func:`os.replace`, so an interrupted job never leaves a
half-written file that Snakemake (or a human) could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import tifffile

#: A file or folder path as the functions of this package accept it.
PathLike = str | os.PathLike[str]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp")


class InputError(ValueError):
    """Bad input data: the message names the file and says how to fix it."""


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (os.umask sets it while reading)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched. The finished
    file gets the mode a plain ``open(path, "w")`` would give it (0666 less the umask), not the
    0600 of a temporary file, so colleagues sharing a results folder can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` (e.g. a zarr store) that replaces ``path`` on success.

    On an exception it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, after checking it exists and is not empty (:class:`InputError` with the fix)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found. Check the 'images'/'masks' paths in config.yaml.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes), e.g. an interrupted copy or export. Copy or "
                         "export it again, or remove it from the dataset folder.")
    return path


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an array; raises :class:`InputError` naming the file on failure.

    Returns
    -------
    np.ndarray
        ``(H, W)`` or ``(H, W, C)`` in the file's own dtype.
    """
    path = _existing_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = tifffile.imread(path)
        else:
            arr = iio.imread(path)
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes a clear input error
        raise InputError(
            f"{path}: cannot be read as an image ({exc}). Re-export it as PNG or TIFF, or remove it "
            "from the dataset folder."
        ) from exc
    return np.asarray(arr)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of an image from its header, without decoding the pixels; :class:`InputError` names the file.

    TIFF through tifffile (the first page), everything else through Pillow.
    """
    path = _existing_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        from PIL import Image

        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except Exception as exc:  # noqa: BLE001 - any header error becomes a clear input error
        raise InputError(f"{path}: cannot be read as an image ({exc}). Re-export it as PNG or TIFF, or remove "
                         "it from the dataset folder.") from exc


def read_rgb(path: str | os.PathLike[str], bit_depth: int | None = None) -> np.ndarray:
    """Read an image and convert it to ``uint8`` RGB ``(H, W, 3)`` (grey, RGBA, 16-bit handled).

    ``bit_depth``: the significant bits of a 16-bit image (:func:`histoflow.stain.to_rgb_uint8`).
    """
    from .stain import to_rgb_uint8

    return to_rgb_uint8(read_image(path), name=str(path), bit_depth=bit_depth)


def read_labels(path: str | os.PathLike[str], mask_type: str = "instance") -> np.ndarray:
    """Read a ground-truth file as an instance label map ``int32 (H, W)`` (0 = background).

    ``mask_type="instance"``: pixel values are object ids. ``"binary"``: any non-zero value is
    foreground and objects are the 8-connected components. An "instance" file holding only 0 and one other
    value in several separate objects is a binary mask saved as instances (0/255 exports): its connected
    components are used, with a warning naming the file (what StarDist's and Cellpose's label readers would
    otherwise count as one object).
    """
    from skimage.measure import label as cc_label

    arr = read_image(path)
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4) and np.all(arr[..., :3] == arr[..., :1]):
            arr = arr[..., 0]
        else:
            raise InputError(
                f"{path}: a label/mask image must be single-channel (got shape {arr.shape}). "
                "Save masks as greyscale PNG/TIFF with 0 = background."
            )
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a 2-D label image, got shape {arr.shape}.")
    if mask_type == "binary":
        return cc_label(arr > 0, connectivity=2).astype(np.int32)
    if mask_type != "instance":
        raise ValueError(f"mask_type must be 'instance' or 'binary', got {mask_type!r}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        raise InputError(f"{path}: instance labels must be integers, got non-integer floats.")
    if arr.min() < 0:
        raise InputError(f"{path}: instance labels must be >= 0 (0 = background).")
    values = np.unique(arr)
    if values.size == 2 and values[0] == 0:  # one object, or a binary mask saved under mask_type: instance
        components = cc_label(arr > 0, connectivity=2).astype(np.int32)
        if components.max() > 1:
            logging.getLogger(__name__).warning(
                "%s: holds only 0 and %s but %d separate objects: a binary mask (e.g. a QuPath or ImageJ export), "
                "not instance labels; its connected components are used as the objects (touching objects stay "
                "merged). Set mask_type: binary for this dataset to say so, or export instance labels.",
                path, values[1], components.max())
            return components
    return arr.astype(np.int32)


def write_image(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write an image atomically; ``.tif``/``.tiff`` via tifffile (compressed), others via imageio."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            # 8- and 16-bit colour images are RGB(A) (as cameras write them: one page, samples per pixel);
            # anything else is greyscale (a stack of planes: class probabilities, slices)
            rgb = array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype in (np.uint8, np.uint16)
            tifffile.imwrite(tmp, array, compression="zlib", photometric="rgb" if rgb else "minisblack")
        else:
            iio.imwrite(tmp, array, extension=path.suffix)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (indented, NumPy scalars converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    write_text(path, json.dumps(obj, indent=2, default=default) + "\n")  # ASCII: json.dumps escapes the rest


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def list_stems(folder: str | os.PathLike[str], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Map file stem → path for the image files directly inside ``folder`` (sorted by stem)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found. Set the dataset's 'images'/'masks' in config.yaml.")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in found:
                raise InputError(f"{folder}: two files share the stem {p.stem!r} ({found[p.stem].name}, {p.name}).")
            found[p.stem] = p
    return found


def write_labels(path: str | os.PathLike[str], labels: np.ndarray) -> None:
    """An instance label image as TIFF: uint16, or uint32 past 65535 objects."""
    write_image(path, labels.astype(np.uint16 if labels.max() < 65536 else np.uint32))
