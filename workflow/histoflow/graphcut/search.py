"""Choosing ``gamma``, ``sigma`` and ``delta`` by a grid search on validation data."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
from .solve import graphcut, graphcut_banded


def _score(
    pred: np.ndarray, truth: np.ndarray, metric: str | Callable[[np.ndarray, np.ndarray], float]
) -> float:
    """IoU or Dice of two bool masks (1.0 when both are empty), or a user metric."""
    if callable(metric):
        return float(metric(pred, truth))
    inter = int(np.count_nonzero(pred & truth))
    n_p, n_t = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    if metric == "iou":
        union = n_p + n_t - inter
        return inter / union if union else 1.0
    return 2.0 * inter / (n_p + n_t) if n_p + n_t else 1.0


def search_parameters(
    prob: np.ndarray | Sequence[np.ndarray],
    image: np.ndarray | Sequence[np.ndarray] | None,
    truth: np.ndarray | Sequence[np.ndarray],
    gammas: Sequence[float],
    sigmas: Sequence[float],
    deltas: Sequence[float],
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "iou",
    *,
    connectivity: int | None = None,
    spacing: Sequence[float] | None = None,
    banded: bool = False,
    seeds: np.ndarray | Sequence[np.ndarray | None] | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Grid search of ``gamma``, ``sigma`` and ``delta`` on validation data.

    Parameters
    ----------
    prob : np.ndarray or sequence of np.ndarray
        One probability map ``(H, W)`` / ``(Z, H, W)`` or a list of them (one per validation case).
    image : np.ndarray or sequence of np.ndarray or None
        The matching image(s), or None (then ``sigma`` has no effect).
    truth : np.ndarray or sequence of np.ndarray
        The matching ground-truth masks (anything ``> 0`` is foreground).
    gammas, sigmas, deltas : sequence of float
        Candidate values; every combination is evaluated.
    metric : {"iou", "dice"} or callable
        Score to maximise, averaged over the cases; a callable gets ``(pred, truth)`` bool arrays
        and returns a float (higher is better).
    connectivity, spacing
        Passed to :func:`graphcut`.
    banded : bool
        Use :func:`graphcut_banded` (default band and margin) instead of :func:`graphcut`.
    seeds : np.ndarray or sequence, optional
        Hard seeds per case (1 = foreground, 2 = background, as :func:`graphcut` takes them): search the
        parameters for the cut they will be used in, e.g. a 3-D cut with the user's scribbles.

    Returns
    -------
    best : dict[str, float]
        ``{"gamma": ..., "sigma": ..., "delta": ..., "<metric>": best mean score}``; among equal
        scores the first combination in grid order (gammas outer, deltas inner) wins.
    table : pandas.DataFrame
        One row per combination in grid order: ``gamma, sigma, delta, <metric>`` (mean over the
        cases) and ``<metric>_min`` (worst case).

    Raises
    ------
    ValueError
        On empty candidate lists, mismatched case lists or shapes, or an unknown metric.
    """
    import pandas as pd

    if not callable(metric) and metric not in ("iou", "dice"):
        raise ValueError(f"metric must be 'iou', 'dice' or a callable, got {metric!r}")
    name = "score" if callable(metric) else metric
    grids = {"gammas": gammas, "sigmas": sigmas, "deltas": deltas}
    for key, values in grids.items():
        if len(values) == 0:
            raise ValueError(f"{key} must hold at least one candidate value")
    single = isinstance(prob, np.ndarray)
    probs = [prob] if single else list(prob)
    truths = [truth] if single else list(truth)
    if image is None:
        images: list[np.ndarray | None] = [None] * len(probs)
    else:
        images = [image] if single else list(image)
    if not probs:
        raise ValueError("prob must hold at least one validation case")
    if not (len(probs) == len(truths) == len(images)):
        raise ValueError(
            f"prob, image and truth must hold the same number of cases, got {len(probs)}, "
            f"{len(images)} and {len(truths)}"
        )
    seed_list = [seeds] if single else (list(seeds) if seeds is not None else [None] * len(probs))
    if len(seed_list) != len(probs):
        raise ValueError(f"seeds must hold one entry per case, got {len(seed_list)} for {len(probs)}")
    masks = []
    for i, (p, t) in enumerate(zip(probs, truths, strict=True)):
        t = np.asarray(t)
        if t.shape != np.shape(p):
            raise ValueError(f"case {i}: truth shape {t.shape} differs from prob shape {np.shape(p)}")
        masks.append(t > 0)
    cut = graphcut_banded if banded else graphcut
    rows = []
    for gamma, sigma, delta in itertools.product(gammas, sigmas, deltas):
        scores = [
            _score(
                cut(p, im, gamma=gamma, sigma=sigma, delta=delta, connectivity=connectivity, spacing=spacing,
                    seeds=s),
                t,
                metric,
            )
            for p, im, t, s in zip(probs, images, masks, seed_list, strict=True)
        ]
        rows.append(
            {
                "gamma": float(gamma),
                "sigma": float(sigma),
                "delta": float(delta),
                name: float(np.mean(scores)),
                f"{name}_min": float(np.min(scores)),
            }
        )
    table = pd.DataFrame(rows)
    best_row = rows[int(np.argmax(table[name].to_numpy()))]
    best = {k: best_row[k] for k in ("gamma", "sigma", "delta", name)}
    return best, table

