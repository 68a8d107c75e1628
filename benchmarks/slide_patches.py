"""How long reading training patches from a pyramidal slide takes, per 1,000 patches (annotated slides, issue 24).

    python benchmarks/slide_patches.py [--size 16384] [--patches 1000] [--patch 256]

A synthetic JPEG-tiled pyramidal TIFF (``write_synthetic_slide``: 0.25 µm/px at level 0, levels halving, 256 px
tiles, as scanners write them) is read two ways, side by side in one run:

- **random patches**: ``--patches`` patches of ``--patch`` px at seeded random positions, one
  ``Slide.read_region`` each, through tifffile + zarr and through OpenSlide, at 0.25 µm/px (level 0), 0.5 µm/px
  (level 1 as it is) and 0.7 µm/px (level 1 area-averaged by 1.4);
- **the workflow's path** (``annotated_images``): the same number of patches' area at 0.5 µm/px read as windows of
  2048 px (``datasets.<name>.tile``) and written as PNG images, which is what the annotated-slides dataset does
  before patches are cut (cutting them is the same as for any image folder).

Prints a table and writes ``benchmarks/results/slide_patches_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from _bench import device_name, package_versions  # noqa: E402

from histoflow.stages.data import run_annotated_images  # noqa: E402
from histoflow.synthetic.slides import write_synthetic_slide  # noqa: E402
from histoflow.wsi.reader import open_slide  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "slide_patches_cpu.json"


def random_reads(path: Path, backend: str, mpp: float, n: int, patch: int, seed: int = 0) -> dict:
    slide = open_slide(path, mpp=mpp, backend=backend)
    rng = np.random.default_rng(seed)
    h, w = slide.shape
    ys, xs = rng.integers(0, h - patch, n), rng.integers(0, w - patch, n)
    t0 = time.perf_counter()
    for y, x in zip(ys, xs, strict=True):
        slide.read_region(int(y), int(x), patch, patch)
    seconds = time.perf_counter() - t0
    slide.close()
    return {"how": f"random {patch} px patches", "backend": backend, "mpp": mpp, "level": slide.level,
            "factor": round(slide.factor, 3), "patches": n, "seconds": round(seconds, 3),
            "seconds_per_1000": round(seconds * 1000 / n, 3)}


def workflow_windows(path: Path, n: int, patch: int, tile: int, folder: Path) -> dict:
    slide = open_slide(path, mpp=0.5)
    h, w = slide.shape
    slide.close()
    n_windows = max(1, round(n * patch * patch / (tile * tile)))
    grid = [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
    windows = [{"stem": f"w{k}", "region": k, "y": grid[k % len(grid)][0], "x": grid[k % len(grid)][1], "h": tile,
                "w": tile} for k in range(n_windows)]
    t0 = time.perf_counter()
    run_annotated_images(path, windows, 0.5, None, folder)
    seconds = time.perf_counter() - t0
    patches = n_windows * tile * tile / (patch * patch)
    return {"how": f"annotated_images: {n_windows} windows of {tile} px -> PNG", "backend": "auto", "mpp": 0.5,
            "level": 1, "factor": 1.0, "patches": patches, "seconds": round(seconds, 3),
            "seconds_per_1000": round(seconds * 1000 / patches, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="level-0 edge of the synthetic slide")
    parser.add_argument("--patches", type=int, default=1000)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--tile", type=int, default=2048, help="window edge of the workflow's path")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = write_synthetic_slide(Path(tmp) / "slide.tif", args.size, args.size, mpp=0.25, levels=5, tile=256,
                                     workers=2)
        print(f"wrote {args.size}² synthetic slide in {time.perf_counter() - t0:.1f} s "
              f"({path.stat().st_size / 1e6:.0f} MB)")
        rows = []
        for mpp in (0.25, 0.5, 0.7):
            for backend in ("tifffile", "openslide"):
                rows.append(random_reads(path, backend, mpp, args.patches, args.patch))
        rows.append(workflow_windows(path, args.patches, args.patch, args.tile, Path(tmp) / "windows"))
    print(f"\n{'how':<44} {'backend':<10} {'µm/px':>6} {'level':>5} {'s / 1000 patches':>17}")
    for r in rows:
        print(f"{r['how']:<44} {r['backend']:<10} {r['mpp']:>6} {r['level']:>5} {r['seconds_per_1000']:>17.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device_name("cpu"), "slide_size": args.size, "patch": args.patch,
                               "versions": package_versions(["tifffile", "zarr", "imagecodecs", "openslide-python",
                                                             "openslide-bin"]),
                               "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
