"""The working resolution (``patches.scale``): models train and predict on rescaled images.

Large objects need fewer pixels than the scanner gives them: GlaS glands are ~120 px across at 20×, and at
half resolution a network sees 4× the tissue per pixel it computes. With ``patches.scale: s`` the training
patches are cut from images and labels resized by ``s``; at inference each image is resized by the same ``s``,
predicted, and its probability map resized back to the image's own size, so post-processing, evaluation and
every output stay in the original pixels. ``patches.long_side: n`` instead resizes each image so that its
longer side is ``n`` pixels (:func:`working_shape`). All sizes round to the nearest pixel (at least one); images and
probabilities are interpolated bilinearly (anti-aliased when shrinking), labels by nearest neighbour.
"""

from __future__ import annotations

import numpy as np


def scaled_shape(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """``(H, W)`` of an image of ``shape`` (``(H, W, ...)``) at ``scale``: each side rounded, at least 1."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def working_shape(shape: tuple[int, ...], scale: float = 1.0, long_side: int | None = None) -> tuple[int, int]:
    """``(H, W)`` an image of ``shape`` has at the working resolution.

    With ``long_side`` (``patches.long_side``: the GlaS U-Net paper's resize to 512 px) each image gets its own
    scale, ``long_side / max(H, W)``, so its longer side becomes ``long_side`` pixels; otherwise ``scale``.
    """
    if long_side:
        scale = long_side / max(shape[0], shape[1])
    return scaled_shape(shape, scale)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (``(H, W)`` or ``(H, W, C)``) resized to ``shape``, bilinear, same dtype.

    Shrinking is anti-aliased (a Gaussian pre-filter, as scikit-image chooses it), so no detail aliases into
    the smaller image; an integer image is rounded back to its dtype.
    """
    from skimage.transform import resize

    if image.shape[:2] == tuple(shape):
        return image
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image, (*shape, *image.shape[2:]), order=1, mode="edge", anti_aliasing=shrink, preserve_range=True)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Label (or class) image resized to ``shape`` by nearest neighbour: every value is an input value."""
    from skimage.transform import resize

    if labels.shape[:2] == tuple(shape):
        return labels
    return resize(labels, shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True).astype(labels.dtype)


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A probability map ``(H, W)`` or per-class ``(C, H, W)`` resized to ``shape`` (bilinear, float32)."""
    if prob.shape[-2:] == tuple(shape):
        return prob.astype(np.float32, copy=False)
    if prob.ndim == 3:
        return np.stack([resize_image(p.astype(np.float32), shape) for p in prob])
    return resize_image(prob.astype(np.float32), shape)
