"""Stage of ``rules/data.smk``: the embedded synthetic demo dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..io import PathLike, read_labels, write_image

log = logging.getLogger(__name__)

def run_demo_data(out_dir: PathLike, demo: dict[str, Any]) -> list[str]:
    """Generate the synthetic muscle-fibre dataset and its 3-class masks.

    Images go into ``out_dir/images``, labels into ``out_dir/labels`` and the 3-class masks (gap / cytoplasm /
    boundary) into ``out_dir/classes``.
    """
    from ..synthetic.fibres import FibreParams, fibre_classes, make_demo_dataset

    out = Path(out_dir)
    params = FibreParams(size=(demo["size"], demo["size"]), fibre_diameter=demo["fibre_diameter"])
    stems = make_demo_dataset(out / "images", out / "labels", demo["n_images"], demo["seed"], params)
    (out / "classes").mkdir(exist_ok=True)
    for stem in stems:
        write_image(out / "classes" / f"{stem}.png", fibre_classes(read_labels(out / "labels" / f"{stem}.png")))
    log.info("wrote %d demo images to %s", len(stems), out)
    return stems

