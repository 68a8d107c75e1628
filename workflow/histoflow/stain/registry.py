"""Build a normalizer by name, and save / load fitted normalizers as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io import write_text
from .base import StainNormalizer, _construct, _lookup


def get_normalizer(method: str, **params: Any) -> StainNormalizer:
    """Build an (unfitted) normalizer by name.

    Parameters
    ----------
    method : str
        One of :func:`available_normalizers` (``"macenko"``, ``"none"``, ``"reinhard"``);
        case-insensitive.
    **params
        Constructor keyword arguments of that class (e.g. ``beta``, ``alpha``, ``percentile``).

    Raises
    ------
    ValueError
        Unknown method (the message lists the valid names), unknown or invalid parameters.
    """
    return _construct(_lookup(method), params)


def save_normalizer(norm: StainNormalizer, path: str | os.PathLike[str]) -> Path:
    """Write ``norm.to_dict()`` as JSON, atomically (temporary file + ``os.replace``).

    Returns
    -------
    Path
        The written path. Parent folders are created.
    """
    if not isinstance(norm, StainNormalizer):
        raise ValueError(f"norm must be a StainNormalizer, got {type(norm).__name__}")
    text = json.dumps(norm.to_dict(), indent=2, allow_nan=False) + "\n"
    return write_text(path, text)


def load_normalizer(path: str | os.PathLike[str]) -> StainNormalizer:
    """Read a normalizer written by :func:`save_normalizer`.

    Raises
    ------
    ValueError
        If the file is not valid JSON or does not describe a normalizer (message names the path).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid stain normalizer JSON file ({exc})") from None
    try:
        return StainNormalizer.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc

