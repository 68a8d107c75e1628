"""Stage of ``rules/stain.smk``: fit the stain normalizer on the target image, normalize every image."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike, read_image, read_json, read_rgb, write_image, write_json

log = logging.getLogger(__name__)

def run_fit_stain(target_image: PathLike, method: str, kwargs: dict[str, Any], out_json: PathLike) -> None:
    from ..stain import get_normalizer, save_normalizer, to_rgb_uint8
    from ..stain.colour import bit_depth_of

    image = read_image(target_image)  # a 16-bit target is read with its own significant bits (dataset_bit_depth)
    depth = bit_depth_of(int(image.max())) if image.dtype == np.uint16 else None
    norm = get_normalizer(method, **kwargs).fit(to_rgb_uint8(image, name=str(target_image), bit_depth=depth))
    save_normalizer(norm, out_json)
    d = read_json(out_json)
    d["target_image"] = str(target_image)
    write_json(out_json, d)
    log.info("fitted %s normalizer on %s", method, target_image)


def dataset_bit_depth(images: dict[str, str], declared: int | str = "auto") -> dict[str, Any]:
    """The significant bits of a dataset's 16-bit images: ``{"dtype", "max", "bit_depth", "declared"}``.

    ``bit_depth`` is ``None`` for images that are not 16-bit (nothing to decide). ``declared`` (the dataset's
    ``bit_depth``) wins; ``auto`` takes the smallest standard depth holding the brightest value of all the
    images (one depth for the whole dataset, so images keep their relative brightness).
    """
    from ..stain.colour import bit_depth_of

    first = read_image(next(iter(images.values())))
    info: dict[str, Any] = {"dtype": first.dtype.name, "max": None, "bit_depth": None, "declared": declared}
    if first.dtype.name != "uint16":
        return info
    if declared != "auto":
        info["bit_depth"] = int(declared)
        return info
    paths = iter(images.values())
    next(paths)  # the first image is read already
    top = max([int(first.max())] + [int(read_image(p).max()) for p in paths])
    info.update(max=top, bit_depth=bit_depth_of(top))
    return info


def run_normalize(images: dict[str, str], stain_json: PathLike, out_dir: PathLike,
                  bit_depth: int | str = "auto") -> None:
    """Normalize every image (stem → path) with the fitted normalizer into ``out_dir/<stem>.png``.

    16-bit images are read with the dataset's significant bits (:func:`dataset_bit_depth`), recorded in
    ``out_dir/bit_depth.json`` and the log.
    """
    from tqdm import tqdm

    from ..stain import load_normalizer

    norm = load_normalizer(stain_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    depth = dataset_bit_depth(images, bit_depth)
    if depth["bit_depth"] is not None:
        write_json(out / "bit_depth.json", depth)
        if depth["bit_depth"] < 16:
            log.warning("16-bit images %s: read as %d-bit data (0 .. %d scaled to 0 .. 255)%s",
                        f"with values up to {depth['max']}" if depth["max"] is not None else "",
                        depth["bit_depth"], 2 ** depth["bit_depth"] - 1,
                        "" if depth["declared"] != "auto" else "; set datasets.<name>.bit_depth to override")
    for stem, path in tqdm(sorted(images.items()), desc="normalize", unit="image", mininterval=5):
        write_image(out / f"{stem}.png", norm.transform(read_rgb(path, depth["bit_depth"])))
