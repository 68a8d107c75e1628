"""Multi-class (semantic) segmentation: class masks, the Tanimoto loss, argmax post-processing and per-class metrics.

A workflow is multi-class when ``classes:`` in ``config.yaml`` names its classes (index 0 first,
usually the background). Masks then hold a class per pixel: integer class indices, other grey values
listed per dataset (``class_values``, e.g. ``[0, 255]`` for a 0/255 membrane mask), or RGB colours
(``palette``). Every array function here takes and returns plain arrays / tensors:

- :func:`read_class_mask` – a mask file → ``uint8 (H, W)`` class indices, with errors naming the file;
- :func:`class_instances` – per-class connected components, for the contour-aware weights that keep
  touching objects of one class apart;
- :func:`tanimoto_loss` – 1 − Tanimoto with complement (Diakogiannis et al. 2020), class- and
  pixel-weighted;
- :func:`cleanup_classes` – argmax map → small regions of each class handed to their surroundings;
- :func:`confusion_matrix`, :func:`class_metrics` – per-class Dice, Jaccard, precision, recall, F1,
  pixel accuracy and their means over classes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from .io import InputError, read_image


def read_class_mask(
    path: str | os.PathLike[str], n_classes: int, class_values: list[int] | None = None,
    palette: list[list[int]] | None = None,
) -> np.ndarray:
    """A class mask ``uint8 (H, W)`` with values ``0 .. n_classes - 1``.

    ``palette``: RGB colour of each class (RGB masks); ``class_values``: grey value of each class;
    neither: the grey values are the class indices. A pixel with any other value is an error that
    names the file, the unexpected values and the setting to fix.
    """
    arr = read_image(path)
    if palette is not None:
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise InputError(f"{path}: a palette is configured, so the mask must be RGB; got shape {arr.shape}.")
        rgb = arr[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        values = [(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in palette]
        names = [f"RGB{tuple(c)}" for c in palette]
    else:
        if arr.ndim == 3:
            if arr.shape[2] in (3, 4) and np.all(arr[..., :3] == arr[..., :1]):
                arr = arr[..., 0]
            else:
                raise InputError(f"{path}: an RGB class mask needs `palette:` (one colour per class) in its dataset.")
        code = arr.astype(np.int64)
        values = list(class_values) if class_values is not None else list(range(n_classes))
        names = [str(v) for v in values]
    if len(values) != n_classes:
        raise InputError(f"{path}: {len(values)} class values/colours configured for {n_classes} classes.")
    lut_keys = np.array(values, np.int64)
    order = np.argsort(lut_keys)
    idx = np.searchsorted(lut_keys[order], code)
    idx = np.clip(idx, 0, len(values) - 1)
    found = lut_keys[order][idx] == code
    if not found.all():
        bad = [int(b) for b in np.unique(code[~found])[:5]]
        shown = [f"RGB{((b >> 16) & 255, (b >> 8) & 255, b & 255)}" for b in bad] if palette is not None else bad
        raise InputError(f"{path}: pixel values {shown} are not among the classes' values {names}; set "
                         "`class_values` (grey) or `palette` (RGB) of this dataset, one per entry of `classes`.")
    return order[idx].astype(np.uint8)


def read_truth(dataset: dict[str, Any], stem: str, classes: list[str] | None) -> np.ndarray:
    """The ground truth of one image of a dataset table.

    A class mask ``uint8`` in a multi-class workflow (``classes``), else instance labels ``int32``.
    """
    from .io import read_labels

    path = dataset["masks"][stem]
    if classes:
        return read_class_mask(path, len(classes), dataset.get("class_values"), dataset.get("palette"))
    return read_labels(path, dataset["mask_type"])


def class_instances(classes: np.ndarray, background: int = 0) -> np.ndarray:
    """Connected components of every non-background class, numbered across classes ``int32 (H, W)``.

    0 = background. Two touching objects of one class are one component, objects of different classes never
    share an id. Feeds :func:`histoflow.patches.unet_weight_map`.
    """
    out = np.zeros(classes.shape, np.int32)
    offset = 0
    for c in np.unique(classes):
        if c == background:
            continue
        lab, n = ndi.label(classes == c)
        out[lab > 0] = lab[lab > 0] + offset
        offset += n
    return out


def tanimoto_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
    class_weights: list[float] | torch.Tensor | None = None, smooth: float = 1e-5,
) -> torch.Tensor:
    """1 − Tanimoto coefficient with complement, averaged over classes.

    ``T(p, y) = (Σ w p y + s) / (Σ w (p² + y²) − Σ w p y + s)`` per class over the batch and pixels,
    ``T̃ = (T(p, y) + T(1 − p, 1 − y)) / 2``, loss ``= 1 − Σ_c k_c T̃_c`` with class weights ``k``
    (normalised to sum 1; default equal). ``p`` is the softmax of ``logits (N, C, H, W)`` (sigmoid
    when ``C == 1``); ``target`` holds class indices ``(N, H, W)`` (or ``(N, 1, H, W)`` 0/1 for
    ``C == 1``); ``weights (N, 1, H, W)`` are per-pixel weights (0 = ignored; e.g. the contour-aware
    U-Net map).
    """
    logits = logits.float()
    n_cls = logits.shape[1]
    if n_cls == 1:
        p = torch.sigmoid(logits)
        y = target.float().reshape(p.shape)
    else:
        p = torch.softmax(logits, dim=1)
        t = target.long().reshape(p.shape[0], *p.shape[2:])
        y = torch.nn.functional.one_hot(t, n_cls).permute(0, 3, 1, 2).float()
    w = torch.ones_like(p[:, :1]) if weights is None else weights.float()
    dims = (0, 2, 3)

    def tanimoto(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ab = (w * a * b).sum(dims)
        return (ab + smooth) / ((w * (a * a + b * b)).sum(dims) - ab + smooth)

    t_c = 0.5 * (tanimoto(p, y) + tanimoto(1 - p, 1 - y))
    k = (torch.ones(n_cls, device=p.device) if class_weights is None
         else torch.as_tensor(class_weights, dtype=torch.float32, device=p.device))
    if k.numel() != n_cls:
        raise ValueError(f"class_weights has {k.numel()} entries for {n_cls} classes")
    return 1 - (k * t_c).sum() / k.sum()


def cleanup_classes(classes: np.ndarray, min_size: int = 0, background: int = 0) -> np.ndarray:
    """Per-class cleanup of an argmax map ``(H, W)``: small regions take the class of their surroundings.

    Every connected region of a non-background class smaller than ``min_size`` pixels takes the class of the
    nearest pixel outside all such small regions (its surroundings), so no pixel is left unassigned.
    """
    if min_size <= 0:
        return classes.copy()
    small = np.zeros(classes.shape, bool)
    for c in np.unique(classes):
        if c == background:
            continue
        lab, n = ndi.label(classes == c)
        if n:
            sizes = np.bincount(lab.ravel())
            tiny = sizes < min_size
            tiny[0] = False
            small |= tiny[lab]
    if not small.any() or small.all():
        return classes.copy()
    _, (iy, ix) = ndi.distance_transform_edt(small, return_indices=True)
    return classes[iy, ix]


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """``int64 (C, C)``: rows = ground-truth class, columns = predicted class, pixel counts."""
    if pred.shape != gt.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, gt {gt.shape}")
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    if g.size and (max(g.max(), p.max()) >= n_classes or min(g.min(), p.min()) < 0):
        raise ValueError(f"class indices must be in 0..{n_classes - 1}")
    return np.bincount(g * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_metrics(cm: np.ndarray, names: list[str] | None = None) -> dict[str, Any]:
    """Per-class and mean scores from a confusion matrix (rows = truth).

    Per class ``c``: ``dice_c``, ``f1_c`` (pixel F1, equal to Dice), ``jaccard_c``, ``precision_c``,
    ``recall_c``; plus ``pixel_accuracy`` and the unweighted means over classes ``mean_dice``,
    ``mean_f1``, ``mean_jaccard``, ``mean_precision``, ``mean_recall``. A class absent from both truth
    and prediction scores 1 (nothing to find, nothing wrongly found); keys use ``names`` when given.
    """
    cm = np.asarray(cm, np.float64)
    n = cm.shape[0]
    names = names or [str(i) for i in range(n)]
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp

    def ratio(num, den):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)

    dice = ratio(2 * tp, 2 * tp + fp + fn)
    per = {"dice": dice, "f1": dice, "jaccard": ratio(tp, tp + fp + fn), "precision": ratio(tp, tp + fp),
           "recall": ratio(tp, tp + fn)}
    out: dict[str, Any] = {"pixel_accuracy": float(tp.sum() / cm.sum()) if cm.sum() else 1.0}
    for key, vals in per.items():
        for name, v in zip(names, vals, strict=True):
            out[f"{key}_{name}"] = float(v)
        out[f"mean_{key}"] = float(np.mean(vals))
    return out


def soft_overlap_sums(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-class sums of class probabilities against the one-hot truth, for :func:`soft_scores`.

    ``prob`` is ``(C, H, W)`` (a multi-class model's softmax; any values in [0, 1]), ``truth`` the class index
    map ``(H, W)``. Returns ``float64 (C, 5)``: for every class ``c`` with ``p = prob[c]`` and ``y = (truth == c)``,
    ``[N, Σ p y, Σ p², Σ p, Σ y]`` over the ``N`` pixels. The sums of several images add up to the pooled sums.
    """
    prob = np.asarray(prob, np.float64)
    if prob.ndim != 3 or prob.shape[1:] != truth.shape:
        raise ValueError(f"probabilities {prob.shape} do not match the class map {truth.shape}: expected (C, H, W)")
    out = np.empty((prob.shape[0], 5), np.float64)
    for c, p in enumerate(prob):
        y = truth == c
        out[c] = (p.size, p[y].sum(), np.square(p).sum(), p.sum(), np.count_nonzero(y))
    return out


def soft_scores(sums: np.ndarray, names: list[str] | None = None, smooth: float = 1e-5) -> dict[str, float]:
    """Res-CR-Net's soft scores of class probabilities, from :func:`soft_overlap_sums`.

    Per class: the Tanimoto coefficient with complement ``T̃ = (T(p, y) + T(1 − p, 1 − y)) / 2`` with
    ``T(p, y) = (Σ p y + s) / (Σ (p² + y²) − Σ p y + s)`` (the paper's headline figure, the complement of its
    loss, :func:`tanimoto_loss`) as ``tanimoto_<c>``, and the soft Dice ``(2 Σ p y + s) / (Σ p + Σ y + s)`` (the
    "Dice coeff." of its Table 1, computed on probabilities, which is why it differs from its F1) as
    ``soft_dice_<c>``; plus their unweighted means over classes, ``mean_tanimoto`` and ``mean_soft_dice``.
    ``y`` is binary, so ``Σ y² = Σ y``, and the complement's sums follow from ``N``.
    """
    n, py, pp, p, y = np.asarray(sums, np.float64).T
    names = names or [str(i) for i in range(len(n))]
    fore = (py + smooth) / (pp + y - py + smooth)
    # 1 - p and 1 - y: Σ (1-p)(1-y) = N - Σp - Σy + Σpy, Σ (1-p)² = N - 2 Σp + Σp², Σ (1-y)² = N - Σy
    cpy = n - p - y + py
    back = (cpy + smooth) / ((n - 2 * p + pp) + (n - y) - cpy + smooth)
    tanimoto = 0.5 * (fore + back)
    dice = (2 * py + smooth) / (p + y + smooth)
    out: dict[str, float] = {}
    for key, vals in (("tanimoto", tanimoto), ("soft_dice", dice)):
        for name, v in zip(names, vals, strict=True):
            out[f"{key}_{name}"] = float(v)
        out[f"mean_{key}"] = float(np.mean(vals))
    return out


def scores_of_mean_precision_recall(precision: float, recall: float) -> dict[str, float]:
    """F1 and Jaccard from class-averaged precision ``P`` and recall ``R``, as Res-CR-Net's Table 1 reports them.

    ``F1 = 2 P R / (P + R)`` and ``J = P R / (P + R − P R)`` (the Jaccard index of one set of counts with that
    precision and recall); the paper's four columns satisfy both to its three decimals.
    """
    if precision <= 0 or recall <= 0:
        return {"f1_of_mean_pr": 0.0, "jaccard_of_mean_pr": 0.0}
    return {"f1_of_mean_pr": 2 * precision * recall / (precision + recall),
            "jaccard_of_mean_pr": precision * recall / (precision + recall - precision * recall)}
