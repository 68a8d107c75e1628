"""Training targets derived from instance labels, and the HDF5 patch store.

Targets (all ``(H, W)`` arrays computed from an ``int`` instance label map, 0 = background):

- :func:`boundary_map` – pixels on or next to an object border (``uint8`` 0/1);
- :func:`unet_weight_map` – Ronneberger et al.'s per-pixel loss weight: class balance plus a term
  ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` that makes the thin background between touching objects
  expensive to get wrong;
- :func:`class_balance_map` and :func:`distance_weight_map` – the two precomputed terms of the fibre
  network's loss weight (class-frequency balance of a target; high weight near object boundaries,
  decaying with the distance to the nearest boundary, 1 far from them);

and the patch store (:func:`write_patch_store`): one HDF5 file with groups ``train`` and ``val``,
each holding chunked, compressed datasets ``images (N, P, P, 3) uint8``, the targets
``masks``/``boundaries``/``interiors (N, P, P) uint8`` (interiors = objects minus their boundary
band), ``labels (N, P, P) int32``, the loss weights ``weights``, ``distance_weights`` and
``balance_<target> (N, P, P) float32`` (all 0 on padding, which the loss ignores), and the provenance
of each patch (``stems``, ``origins``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from .datasets import split_stems  # noqa: F401 - re-exported: the patch store's validation split
from .io import atomic_path
from .tiling import pad_mode, tile_starts

TARGET_FIELDS = ("masks", "boundaries", "interiors")
FIELDS = ("images", "masks", "labels", "boundaries", "interiors", "classes", "weights", "distance_weights",
          *(f"balance_{t}" for t in TARGET_FIELDS))
_PIXEL_DTYPES = {"images": np.uint8, "labels": np.int32, "classes": np.uint8, **{t: np.uint8 for t in TARGET_FIELDS}}


def boundary_map(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Object borders of an instance map: ``uint8 (H, W)``, 1 on the border pixels of every object.

    Borders cover both sides of a contact between two objects, and the object side of an object/background
    edge; they are dilated to ``width`` pixels.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    b = find_boundaries(labels, connectivity=1, mode="inner")
    if width > 1:
        b = ndi.binary_dilation(b, iterations=width - 1) & (labels > 0)
    return b.astype(np.uint8)


def unet_weight_map(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = True
) -> np.ndarray:
    """Ronneberger U-Net loss weights ``float32 (H, W)``.

    ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels, where ``d1``/``d2`` are
    the distances to the nearest and second-nearest object, and ``w = w_c`` on objects. ``w_c`` is
    ``N / (2 N_class)`` (clipped to [0.1, 10]) with ``class_balance``, else 1. Distances are computed
    per object inside its bounding box grown by ``4 sigma`` (beyond that the term is < e^-8·w0), so the
    cost scales with object count × object size, not object count × image size.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    fg = labels > 0
    w = class_balance_map(fg) if class_balance else np.ones(labels.shape, np.float32)
    if w0 <= 0:
        return w
    reach = int(np.ceil(4 * sigma))
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ys = slice(max(sl[0].start - reach, 0), min(sl[0].stop + reach, labels.shape[0]))
        xs = slice(max(sl[1].start - reach, 0), min(sl[1].stop + reach, labels.shape[1]))
        d = ndi.distance_transform_edt(labels[ys, xs] != k).astype(np.float32)
        a, b = d1[ys, xs], d2[ys, xs]
        d2[ys, xs] = np.where(d < a, a, np.minimum(b, d))
        d1[ys, xs] = np.minimum(a, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border[~np.isfinite(border)] = 0
    w[~fg] += border[~fg]
    return w


def class_balance_map(target: np.ndarray, clip: tuple[float, float] = (0.1, 10.0),
                      valid: np.ndarray | None = None) -> np.ndarray:
    """Class-frequency balance ``float32 (H, W)`` of a binary target: ``N / (2 N_c)`` for a pixel of class ``c``.

    Both classes then carry half the total weight and the mean weight is 1. The weights are clipped to ``clip``;
    all ones when the target has a single class. With ``valid`` (bool), only its pixels are counted and the others
    get weight 0.
    """
    t = target > 0
    v = np.ones(t.shape, bool) if valid is None else valid.astype(bool)
    w = v.astype(np.float32)
    n, n_pos = int(v.sum()), int((t & v).sum())
    if 0 < n_pos < n:
        w[t & v] = np.clip(n / (2.0 * n_pos), *clip)
        w[~t & v] = np.clip(n / (2.0 * (n - n_pos)), *clip)
    return w


def distance_weight_map(boundaries: np.ndarray, w0: float = 10.0, sigma: float = 3.0) -> np.ndarray:
    """Boundary term of the fibre loss ``float32 (H, W)``: ``1 + (w0 - 1) exp(-d^2 / (2 sigma^2))``.

    ``d`` is the Euclidean distance to the nearest boundary pixel — ``w0`` on the boundary, decaying to 1 a
    few ``sigma`` away (all ones when there is no boundary or ``w0 <= 1``).
    """
    if boundaries.ndim != 2:
        raise ValueError(f"boundaries must be 2-D, got shape {boundaries.shape}")
    b = boundaries > 0
    if w0 <= 1 or not b.any():
        return np.ones(b.shape, np.float32)
    d = ndi.distance_transform_edt(~b)
    return (1.0 + (w0 - 1.0) * np.exp(-(d**2) / (2.0 * sigma**2))).astype(np.float32)


@dataclass
class Patch:
    """One training patch; arrays are ``(P, P[, 3])`` and ``origin`` its top-left (y, x) in the image.

    ``distance_weights`` and ``balance`` (target name → class-balance map) are the fibre loss's
    precomputed terms; left out, they default to 1 on valid pixels (``weights > 0``).
    """

    image: np.ndarray
    labels: np.ndarray
    boundaries: np.ndarray
    weights: np.ndarray
    stem: str
    origin: tuple[int, int]
    distance_weights: np.ndarray | None = None
    balance: dict[str, np.ndarray] = field(default_factory=dict)
    classes: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        return (self.labels > 0).astype(np.uint8)

    @property
    def interiors(self) -> np.ndarray:
        return ((self.labels > 0) & (self.boundaries == 0)).astype(np.uint8)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field of :data:`FIELDS` for the patch store."""
        valid = (self.weights > 0).astype(np.float32)
        out = {"images": self.image, "masks": self.mask, "labels": self.labels, "boundaries": self.boundaries,
               "interiors": self.interiors, "weights": self.weights,
               "classes": self.mask if self.classes is None else self.classes,
               "distance_weights": valid if self.distance_weights is None else self.distance_weights}
        for t in TARGET_FIELDS:
            out[f"balance_{t}"] = self.balance.get(t, valid)
        return out


def pad_to(image: np.ndarray, maps: list[np.ndarray], size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pad image (reflect) and per-pixel maps (0: unlabelled, and ignored by the loss) up to ``size`` on each side."""
    ph, pw = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
    if not (ph or pw):
        return image, maps
    mode = {"reflect": "reflect", "replicate": "edge"}[pad_mode((ph, pw), image.shape[:2])]
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return image, [np.pad(m, ((0, ph), (0, pw))) for m in maps]


def extract_patches(
    image: np.ndarray,
    labels: np.ndarray,
    stem: str,
    size: int,
    mode: str = "random",
    n_random: int = 16,
    overlap: int = 0,
    rng: np.random.Generator | None = None,
    boundary_width: int = 1,
    weight_w0: float = 10.0,
    weight_sigma: float = 5.0,
    distance_w0: float = 10.0,
    distance_sigma: float = 3.0,
    classes: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> Iterator[Patch]:
    """Cut patches (``size`` × ``size``) with all their targets from one image.

    ``mode="random"``: ``n_random`` uniformly random crops; ``"grid"``: an evenly spaced grid covering
    the image with at least ``overlap`` pixels overlap (see :func:`histoflow.tiling.tile_starts`).
    Targets and weights (boundaries, U-Net weights, the fibre loss's distance and class-balance
    terms, the latter per target and per image) are computed on the whole image first, so they are
    correct at patch borders. ``classes`` (``(H, W)`` class indices, multi-class workflows) is cut
    alongside; ``labels`` are then its per-class components (:func:`histoflow.semantic.class_instances`).
    ``valid`` (bool ``(H, W)``, e.g. the annotated regions of a slide window): pixels outside it are unlabelled,
    every loss weight is 0 there and the class balance counts only the pixels inside.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"{stem}: image {image.shape[:2]} and labels {labels.shape} differ in size")
    boundaries = boundary_map(labels, boundary_width)
    weights = unet_weight_map(labels, weight_w0, weight_sigma)
    distance = distance_weight_map(boundaries, distance_w0, distance_sigma)
    fg = labels > 0
    targets = {"masks": fg, "boundaries": boundaries > 0, "interiors": fg & (boundaries == 0)}
    balance = [class_balance_map(targets[t], valid=valid) for t in TARGET_FIELDS]
    if valid is not None:
        weights, distance = weights * valid, distance * valid
    cls = (fg if classes is None else classes).astype(np.uint8)
    image, (labels_p, boundaries, weights, distance, cls, *balance) = pad_to(
        image, [labels, boundaries, weights, distance, cls, *balance], size
    )
    h, w = labels_p.shape
    if mode == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        origins = [(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))) for _ in range(n_random)]
    elif mode == "grid":
        origins = [(y, x) for y in tile_starts(h, size, overlap) for x in tile_starts(w, size, overlap)]
    else:
        raise ValueError(f"patch mode must be 'random' or 'grid', got {mode!r}")
    for y, x in origins:
        sl = (slice(y, y + size), slice(x, x + size))
        yield Patch(image[sl], labels_p[sl], boundaries[sl], weights[sl], stem, (y, x), distance[sl],
                    {t: b[sl] for t, b in zip(TARGET_FIELDS, balance, strict=True)}, cls[sl])


def write_patch_store(
    path: str | os.PathLike[str], groups: dict[str, Iterable[Patch]], size: int, attrs: dict | None = None
) -> dict[str, int]:
    """Stream patches into an HDF5 store (atomically); returns the patch count per group.

    ``attrs`` (e.g. the boundary width the targets were made with) are stored as file attributes.

    Datasets are chunked one patch per chunk and gzip-compressed; they grow as patches arrive, so
    memory stays at one patch whatever the dataset size.
    """
    try:
        return _write_patch_store(path, groups, size, attrs)
    except OSError as exc:
        if "No space left" not in str(exc) and getattr(exc, "errno", None) != 28:
            raise
        from .io import InputError

        raise InputError(f"{path}: the disk filled up while writing the patch store ({exc}); nothing was kept. "
                         "Free some space or put results: on a larger disk, then rerun.") from exc


def _write_patch_store(path, groups, size, attrs) -> dict[str, int]:
    counts: dict[str, int] = {}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["patch_size"] = size
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for name, patches in groups.items():
            g = f.create_group(name)
            shapes = {k: ((size, size, 3) if k == "images" else (size, size), _PIXEL_DTYPES.get(k, np.float32))
                      for k in FIELDS}
            ds = {
                k: g.create_dataset(
                    k, shape=(0, *s), maxshape=(None, *s), dtype=dt, chunks=(1, *s), compression="gzip",
                    compression_opts=4, shuffle=True,
                )
                for k, (s, dt) in shapes.items()
            }
            stems_ds = g.create_dataset("stems", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
            origins = g.create_dataset("origins", shape=(0, 2), maxshape=(None, 2), dtype=np.int32)
            n = 0
            for p in patches:
                for k, arr in p.arrays().items():
                    ds[k].resize(n + 1, axis=0)
                    ds[k][n] = arr
                stems_ds.resize(n + 1, axis=0)
                stems_ds[n] = p.stem
                origins.resize(n + 1, axis=0)
                origins[n] = p.origin
                n += 1
            counts[name] = n
    return counts


def patch_bytes(size: int) -> int:
    """Uncompressed bytes one ``size`` × ``size`` patch takes in the store (every field)."""
    return sum(size * size * (3 if k == "images" else 1) * np.dtype(_PIXEL_DTYPES.get(k, np.float32)).itemsize
               for k in FIELDS)


def count_patches(shapes: list[tuple[int, int]], patches: dict[str, Any], mode: str) -> int:
    """How many patches images of these working-resolution ``shapes`` give (random: ``per_image`` each)."""
    size = patches["size"]
    if mode == "random":
        return len(shapes) * patches["per_image"]
    return sum(len(tile_starts(max(h, size), size, patches["overlap"])) *
               len(tile_starts(max(w, size), size, patches["overlap"])) for h, w in shapes)


def check_free_space(store: str | os.PathLike[str], n_patches: int, size: int) -> None:
    """Stop before writing a patch store the disk cannot hold (a full disk can crash HDF5 mid-write).

    The store is gzip-compressed, typically 2-4× smaller than :func:`patch_bytes` says: with less free space
    than half the uncompressed size it cannot fit, and :class:`histoflow.io.InputError` says so with both sizes;
    with less than the uncompressed size a warning is logged.
    """
    import logging
    import shutil

    from .io import InputError

    folder = Path(store).resolve().parent
    while not folder.exists():
        folder = folder.parent
    need, free = n_patches * patch_bytes(size), shutil.disk_usage(folder).free
    gb = 1024**3
    if free < need / 2:
        raise InputError(f"{store}: {n_patches} patches of {size} px need about {need / gb:.1f} GB "
                         f"uncompressed (at least {need / 2 / gb:.1f} GB compressed), but {folder} has only "
                         f"{free / gb:.1f} GB free. Free some space, put results: on a larger disk, or lower "
                         "patches.per_image / patches.size.")
    if free < need:
        logging.getLogger(__name__).warning("%s: %.1f GB free for about %.1f GB of patches before compression",
                                            store, free / gb, need / gb)


def read_patch_group(path: str | os.PathLike[str], group: str,
                     fields: tuple[str, ...] = FIELDS) -> dict[str, np.ndarray]:
    """Load ``fields`` of a whole group into memory (fine for training sets of a few thousand patches)."""
    with h5py.File(Path(path), "r") as f:
        if group not in f:
            raise KeyError(f"{path}: no group {group!r} (has {list(f)})")
        g = f[group]
        out = {k: g[k][...] for k in fields}
        out["stems"] = np.array([s.decode() if isinstance(s, bytes) else s for s in g["stems"][...]])
        out["origins"] = g["origins"][...]
    return out


def read_store_attrs(path: str | os.PathLike[str]) -> dict:
    """The patch store's file attributes (``patch_size``, ``boundary_width``, ...)."""
    with h5py.File(Path(path), "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def extract_dataset_patches(
    datasets: dict[str, dict[str, Any]],
    normalized_dirs: dict[str, str | os.PathLike[str]],
    patches: dict[str, Any],
    seed: int,
    out_store: str | os.PathLike[str],
    classes: list[str] | None = None,
) -> tuple[dict[str, int], dict[str, list[tuple[str, str]]]]:
    """Split each dataset's training images into train/val and write all their patches to the HDF5 store.

    The store is ``out_store``. With ``patches["scale"]`` other than 1 (or ``patches["long_side"]``), images and
    labels are resized to the working resolution first (:mod:`histoflow.resample`; the store's ``scale`` and
    ``long_side`` attributes record it).
    Returns the patch counts and the ``(dataset, stem)`` pairs of each role.

    ``normalized_dirs`` maps each dataset to the folder of its normalized ``<stem>.png`` images.

    With ``classes`` (a multi-class workflow) the masks are class masks; their per-class components
    are the instance labels behind the boundary and contour-aware weight maps.
    """
    from .io import image_size, read_image, read_rgb
    from .resample import resize_image, resize_labels, working_shape
    from .semantic import class_instances, read_truth

    scale = float(patches.get("scale", 1.0))
    long_side = patches.get("long_side")

    rng = np.random.default_rng(seed)
    roles: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for name, d in datasets.items():
        train, val = split_stems(d["train"], patches["val_fraction"], seed)
        roles["train"] += [(name, s) for s in train]
        roles["val"] += [(name, s) for s in val]

    def patches_of(items: list[tuple[str, str]], mode: str):
        for name, stem in items:
            d = datasets[name]
            image = read_rgb(Path(normalized_dirs[name]) / f"{stem}.png")
            truth = read_truth(d, stem, classes)
            labels = class_instances(truth) if classes else truth
            valid = read_image(d["valid"][stem]) > 0 if stem in (d.get("valid") or {}) else None
            if image.shape[:2] != labels.shape:
                raise ValueError(
                    f"{d['masks'][stem]}: mask is {labels.shape} but its image {d['images'][stem]} is "
                    f"{image.shape[:2]}; masks must have the same size as their images."
                )
            shape = working_shape(image.shape, scale, long_side)  # the working resolution (histoflow.resample)
            if shape != image.shape[:2]:
                image, labels = resize_image(image, shape), resize_labels(labels, shape)
                truth = resize_labels(truth, shape) if classes else labels
                valid = None if valid is None else resize_labels(valid.astype(np.uint8), shape) > 0
            yield from extract_patches(
                image, labels, f"{name}/{stem}", patches["size"], mode=mode, n_random=patches["per_image"],
                overlap=patches["overlap"], rng=rng, boundary_width=patches["boundary_width"],
                weight_w0=patches["weight_w0"], weight_sigma=patches["weight_sigma"],
                distance_w0=patches["distance_w0"], distance_sigma=patches["distance_sigma"],
                classes=truth if classes else None, valid=valid,
            )

    # Validation always uses the grid, so its score does not depend on random crops.
    def shapes(items: list[tuple[str, str]]) -> list[tuple[int, int]]:
        return [working_shape(image_size(Path(normalized_dirs[n]) / f"{s}.png"), scale, long_side) for n, s in items]

    n_planned = (count_patches(shapes(roles["train"]), patches, patches["mode"])
                 + count_patches(shapes(roles["val"]), patches, "grid"))
    check_free_space(out_store, n_planned, patches["size"])
    counts = write_patch_store(
        out_store,
        {"train": patches_of(roles["train"], patches["mode"]), "val": patches_of(roles["val"], "grid")},
        patches["size"],
        attrs={"boundary_width": patches["boundary_width"], "classes": json.dumps(list(classes or [])),
               "scale": scale, "long_side": int(long_side or 0)},
    )
    return counts, roles

