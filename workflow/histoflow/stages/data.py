"""Stage of ``rules/data.smk``: the embedded synthetic demo dataset, and the images and labels of annotated slides."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

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



def run_annotated_images(slide_path: PathLike, windows: list[dict[str, Any]], mpp: float, base_mpp: float | None,
                         out_dir: PathLike) -> int:
    """Read each window of an annotated slide's regions at ``mpp`` into ``out_dir/<stem>.png``; the window count.

    Only the slide tiles under a window are decoded (:meth:`histoflow.wsi.reader.Slide.read_region`).
    """
    from ..io import atomic_dir
    from ..wsi.reader import open_slide

    with atomic_dir(out_dir) as tmp, contextlib.closing(open_slide(slide_path, mpp=mpp, base_mpp=base_mpp)) as slide:
        for w in windows:
            write_image(Path(tmp) / f"{w['stem']}.png", slide.read_region(w["y"], w["x"], w["h"], w["w"]))
    log.info("%s: %d windows read at %.3g µm/px", slide_path, len(windows), mpp)
    return len(windows)


def run_annotated_labels(geojson: PathLike, windows: list[dict[str, Any]], classes: dict[str, int] | list[str],
                         regions: str, downsample: float, level0: tuple[int, int], multiclass: bool,
                         out_dir: PathLike) -> dict[str, int]:
    """Rasterise an annotated slide's GeoJSON into each window's labels and region mask (:mod:`histoflow.annotations`).

    ``out_dir`` gets :func:`histoflow.annotations.window_files` per window: the class map (multi-class workflows) or
    the instance labels, and the region mask (255 inside a region). Returns the object count per window.
    """
    from ..annotations import Window, class_values, load_slide_annotations, rasterize_window, window_files
    from ..io import atomic_dir, write_labels

    ann = load_slide_annotations(geojson, tuple(level0), class_values(classes), regions, Path(geojson).stem)
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for spec in windows:
            w = Window(**spec)
            labels, cls, valid = rasterize_window(ann, w, downsample)
            labels_name, region_name = window_files(w.stem, multiclass)
            if multiclass:
                write_image(Path(tmp) / labels_name, cls)
            else:
                write_labels(Path(tmp) / labels_name, labels)
            write_image(Path(tmp) / region_name, valid.astype(np.uint8) * 255)
            counts[w.stem] = int(labels.max())
    log.info("%s: %d objects in %d windows", geojson, sum(counts.values()), len(counts))
    return counts
