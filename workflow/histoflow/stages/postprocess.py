"""Stage of ``rules/postprocess.smk``: probability maps to instance (or class) label images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike, read_json, read_rgb, write_image, write_labels
from ..postprocess import default_threshold, instance_growth

log = logging.getLogger(__name__)

def run_postprocess(
    pred_dir: PathLike, spec_json: PathLike, cfg: dict[str, Any], out_dir: PathLike,
    normalized_dir: PathLike | None = None,
) -> None:
    """Probability maps → instance label TIFFs (uint16, or uint32 past 65535 objects)."""
    from ..io import read_image
    from ..postprocess import PostprocessConfig, postprocess, relabel_sequential

    pp = PostprocessConfig(**cfg)
    spec = read_json(spec_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if spec.get("classes"):  # multi-class: argmax, then each class's specks handed to their surroundings
        from ..semantic import cleanup_classes

        for p in sorted(Path(pred_dir).glob("*.tif")):
            prob = read_image(p)
            write_image(out / f"{p.stem}.tif", cleanup_classes(prob.argmax(0).astype(np.uint8), pp.min_size))
        log.info("argmax class maps, regions under %d px merged into their surroundings", pp.min_size)
        return
    if spec.get("instances") and (pp.detections == "preserve" or spec.get("combine") == "vote"):  # own ids
        for p in sorted(Path(pred_dir).glob("*.tif")):
            labels = read_image(Path(pred_dir) / "instances" / p.name).astype(np.int64)
            labels[np.bincount(labels.ravel())[labels] < pp.min_size] = 0
            labels = relabel_sequential(labels)
            write_labels(out / p.name, labels)
        log.info("instances: the %s, each with its own id (objects under %d px dropped)",
                 "voted objects" if spec.get("combine") == "vote" else "model's detections", pp.min_size)
        return
    default_th = default_threshold(spec)
    grow = instance_growth(spec)
    log.info("threshold: %s%s", pp.threshold if pp.threshold is not None else
             f"{default_th} ({'the merge rule' if spec.get('instances') else 'validation-chosen'})",
             f"; graph cut gamma={pp.gamma} sigma={pp.sigma} delta={pp.delta}" if pp.graphcut else "")
    for p in sorted(Path(pred_dir).glob("*.tif")):
        image = read_rgb(Path(normalized_dir) / f"{p.stem}.png") if (pp.graphcut and normalized_dir) else None
        labels = postprocess(read_image(p), pp, default_th, image, grow=grow)
        write_labels(out / f"{p.stem}.tif", labels)

