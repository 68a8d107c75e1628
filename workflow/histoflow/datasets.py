"""Datasets as configured: which images exist, how they pair with masks, and their split.

Everything here runs when Snakemake parses the workflow, so it is cheap (directory listings only)
and its errors name the folder or file and the fix before any job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .demo import demo_stems
from .io import InputError, list_stems


@dataclass
class Dataset:
    """One configured dataset: image/mask paths by stem and the train/test split of its stems."""

    name: str
    images: dict[str, str]
    masks: dict[str, str]
    mask_type: str
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    pixel_size_um: float | None = None

    @property
    def stems(self) -> list[str]:
        return sorted(self.images)


def split_stems(stems: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split into (kept, held out) with ``fraction`` held out; at least one of each when there
    are ≥ 2 stems and ``fraction > 0``. Used for test splits here and validation splits of patches."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the held-out fraction (val_fraction, test_fraction) must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(stems))
    n_out = int(round(fraction * len(stems)))
    if fraction > 0 and len(stems) >= 2:
        n_out = min(max(n_out, 1), len(stems) - 1)
    held_out = sorted(stems[i] for i in order[:n_out])
    kept = sorted(stems[i] for i in order[n_out:])
    return kept, held_out


def split_test(stems: list[str], mode: str, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, test) stems: everything to one role, or a seeded random split with ≥ 1 of each."""
    if mode == "train":
        return sorted(stems), []
    if mode == "test":
        return [], sorted(stems)
    return split_stems(stems, test_fraction, seed)


def resolve_dataset(name: str, cfg: dict[str, Any], config: dict[str, Any]) -> Dataset:
    """Build a :class:`Dataset` from its config entry (generator or folders)."""
    results = config["results"]
    if cfg.get("generator"):
        stems = demo_stems(config["demo"]["n_images"])
        images = {s: f"{results}/data/{name}/images/{s}.png" for s in stems}
        masks = {s: f"{results}/data/{name}/labels/{s}.png" for s in stems}
    else:
        images = {s: str(p) for s, p in list_stems(cfg["images"]).items()}
        masks_all = {s: str(p) for s, p in list_stems(cfg["masks"]).items()}
        if not images:
            raise InputError(f"{cfg['images']}: no image files (png/tif/jpg/webp/bmp) found for dataset {name!r}.")
        missing = sorted(set(images) - set(masks_all))
        if missing:
            raise InputError(
                f"dataset {name!r}: {len(missing)} image(s) have no mask in {cfg['masks']} with the same stem, "
                f"e.g. {images[missing[0]]} (expected {Path(cfg['masks']) / missing[0]}.png). Add the masks or "
                "remove those images."
            )
        masks = {s: masks_all[s] for s in images}
    train, test = split_test(sorted(images), cfg["split"], cfg["test_fraction"], config["seed"])
    return Dataset(name, images, masks, cfg["mask_type"], train, test, cfg.get("pixel_size_um"))


def resolve_datasets(config: dict[str, Any]) -> dict[str, Dataset]:
    out = {name: resolve_dataset(name, cfg, config) for name, cfg in config["datasets"].items()}
    if not any(d.train for d in out.values()):
        raise InputError("no dataset has training images: set split: train or auto on at least one dataset.")
    return out
