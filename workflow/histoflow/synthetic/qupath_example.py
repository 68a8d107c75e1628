"""The README's "From QuPath annotations" example: synthetic pyramidal slides and the GeoJSON QuPath would export.

``python -m histoflow.synthetic.qupath_example FOLDER`` writes ``FOLDER/slides/slide_<k>.tif`` (pyramidal TIFF, 0.25 µm
per pixel at level 0, 3 levels) and ``FOLDER/geojson/slide_<k>.geojson`` (nuclei classified ``Nucleus`` inside two
rectangles classified ``Region``), plus ``FOLDER/truth/slide_<k>.tif``: every nucleus's level-0 label, to compare
predictions with. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io import PathLike, atomic_path, write_labels
from .slides import annotated_slide, write_pyramid


def write_example(folder: PathLike, n_slides: int = 3, size: int = 1024, seed: int = 0) -> list[Path]:
    """Write ``n_slides`` synthetic slides of ``size`` x ``size`` level-0 pixels with their annotations and truth."""
    folder = Path(folder)
    paths = []
    for k in range(1, n_slides + 1):
        image, features, labels = annotated_slide((size, size), seed=seed + k)
        paths.append(write_pyramid(folder / "slides" / f"slide_{k}.tif", image, mpp=0.25, levels=3))
        geojson = folder / "geojson" / f"slide_{k}.geojson"
        geojson.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(geojson) as tmp:
            tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        (folder / "truth").mkdir(exist_ok=True)
        write_labels(folder / "truth" / f"slide_{k}.tif", labels)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write slides/, geojson/ and truth/")
    parser.add_argument("--slides", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="level-0 edge of each slide in pixels")
    args = parser.parse_args(argv)
    for p in write_example(args.folder, args.slides, args.size):
        print(p)


if __name__ == "__main__":
    main()
