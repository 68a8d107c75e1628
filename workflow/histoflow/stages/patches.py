"""Stage of ``rules/patches.smk``: the HDF5 patch stores of the training images and of a volume's training stack."""

from __future__ import annotations

import logging
from typing import Any

from ..io import PathLike, write_json

log = logging.getLogger(__name__)

def run_extract_patches(
    datasets: dict[str, dict[str, Any]],
    normalized_dirs: dict[str, PathLike],
    patches: dict[str, Any],
    seed: int,
    out_store: PathLike,
    out_split: PathLike,
    classes: list[str] | None = None,
) -> dict[str, int]:
    """The patch store of the datasets' training images (split into train / val) and the split as JSON.

    With ``classes`` (a multi-class workflow) the masks are class masks; their per-class components
    are the instance labels behind the boundary and contour-aware weight maps.
    """
    from ..patches import extract_dataset_patches

    counts, roles = extract_dataset_patches(datasets, normalized_dirs, patches, seed, out_store, classes)
    write_json(out_split, {k: [f"{n}/{s}" for n, s in v] for k, v in roles.items()} | {"counts": counts})
    log.info("patches: %s", counts)
    return counts


#: The patch settings of a volume's training stack: random crops of its labelled slices, plain masks.
VOLUME_PATCHES = {"mode": "random", "overlap": 0, "boundary_width": 1, "weight_w0": 0.0, "weight_sigma": 5.0,
                  "distance_w0": 1.0, "distance_sigma": 3.0}


def run_volume_patches(stack_dir: PathLike, patches: dict[str, Any], seed: int, out_store: PathLike,
                       out_split: PathLike) -> dict[str, int]:
    """The patch store of a volume's labelled training stack (``volume_patches`` in the config)."""
    from ..volume import stack_as_dataset

    dataset, folder = stack_as_dataset(stack_dir)
    cfg = {**VOLUME_PATCHES, "size": patches["size"], "per_image": patches["per_image"],
           "val_fraction": patches["val_fraction"]}
    return run_extract_patches({"stack": dataset}, {"stack": folder}, cfg, seed, out_store, out_split)
