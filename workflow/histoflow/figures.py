"""Figures: error overlays, training curves, augmented patches, morphometry histograms and class colours.

The error overlay is a pure array function. Figures are written as PNG files or as ``<img>`` tags with the PNG
embedded (base64).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from .io import PathLike, atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB ``uint8 (H, W, 3)``: ``image`` with its errors and the predicted instance contours marked.

    False positives are red, false negatives blue, and the predicted instance contours yellow. ``pred``/``gt``
    are label maps (> 0 = foreground).
    """
    from skimage.segmentation import find_boundaries

    if image.shape[:2] != pred.shape or pred.shape != gt.shape:
        raise ValueError(f"shapes differ: image {image.shape}, pred {pred.shape}, gt {gt.shape}")
    out = image.astype(np.float32).copy()
    p, g = pred > 0, gt > 0
    for mask, colour in ((p & ~g, (255, 0, 0)), (~p & g, (0, 80, 255))):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(colour, np.float32)
    out[find_boundaries(pred, mode="inner")] = (255, 230, 0)
    return np.clip(out, 0, 255).astype(np.uint8)


def plot_history(history: list[dict[str, float]], path: PathLike, dpi: int = 100) -> None:
    """Training curves: losses (left), validation Dice and learning rate (right)."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [h["epoch"] for h in history]
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    if any("val_loss" in h for h in history):
        a.plot(ep, [h.get("val_loss", np.nan) for h in history], label="validation loss")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    a.grid(alpha=0.3)
    if any("val_dice" in h for h in history):
        b.plot(ep, [h.get("val_dice", np.nan) for h in history], color="tab:green", label="validation Dice")
        b.set_ylim(0, 1)
    b.set_xlabel("epoch")
    b.set_ylabel("validation pixel Dice")
    b2 = b.twinx()
    b2.plot(ep, [h["lr"] for h in history], color="tab:gray", ls="--", label="learning rate")
    b2.set_ylabel("learning rate")
    fig.tight_layout()
    save_figure(fig, path, dpi)


def plot_augmented(images: np.ndarray, masks: np.ndarray, path: PathLike, title: str = "", dpi: int = 100) -> None:
    """A row of augmented training patches ``(N, H, W, 3)`` with their masks ``(N, H, W)`` outlined.

    A user sees what the model trained on (integer masks are instance labels: every object outlined).
    """
    from skimage.segmentation import find_boundaries

    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.5), squeeze=False)
    for a, img, m in zip(axes[0], images, masks, strict=True):
        shown = img.copy()
        shown[find_boundaries(m if m.dtype.kind in "iu" else m > 0, mode="inner")] = (255, 230, 0)
        a.imshow(shown)
        a.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi)


def save_figure(fig, path: PathLike, dpi: int) -> None:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def img_tag(path: PathLike, width: str = "100%") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:{width}">'


def fig_tag(fig, dpi: int) -> str:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" style="max-width:100%">'


def biomarker_columns(table: Any) -> list[str]:
    """The area, minimum Feret diameter and eccentricity columns (units depend on the pixel size)."""
    return [next(c for c in table.columns if c.startswith("area_")),
            next(c for c in table.columns if c.startswith("min_feret_")), "eccentricity"]


def column_label(column: str) -> str:
    """``area_um2`` → ``area (µm²)``, ``min_feret_px`` → ``min feret (px)``."""
    return (column.replace("_um2", " (µm²)").replace("_px2", " (px²)").replace("_um", " (µm)")
            .replace("_px", " (px)").replace("_", " "))


def morphometry_figure(tables: dict[str, Any], dpi: int) -> str:
    """Histograms of object area, minimum Feret diameter and eccentricity per model.

    ``tables`` come from :func:`load_morphometry`.
    """
    plt = pyplot()
    if not tables:
        return "<p>No objects.</p>"
    columns = biomarker_columns(next(iter(tables.values())))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for m, t in tables.items():
        for k, (ax, c) in enumerate(zip(axes, columns, strict=True)):
            ax.hist(t[c], bins=30, alpha=0.5, label=f"{m} (n={len(t)})" if k == 0 else m,
                    range=(0, 1) if c == "eccentricity" else None)
    for ax, c in zip(axes, columns, strict=True):
        ax.set_xlabel(column_label(c))
        ax.set_ylabel("objects")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig_tag(fig, dpi)


CLASS_COLOURS = np.array([[40, 40, 40], [230, 120, 40], [60, 170, 230], [120, 200, 90], [220, 60, 150],
                          [250, 220, 60], [150, 100, 220], [250, 250, 250]], np.uint8)


def class_colours(classes: np.ndarray) -> np.ndarray:
    """RGB ``uint8 (H, W, 3)`` of a class map (a fixed colour per class index, cycling past 8)."""
    return CLASS_COLOURS[classes.astype(np.int64) % len(CLASS_COLOURS)]

