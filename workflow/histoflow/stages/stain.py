"""Stage of ``rules/stain.smk``: fit the stain normalizer on the target image, normalize every image."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..io import PathLike, read_json, read_rgb, write_image, write_json

log = logging.getLogger(__name__)

def run_fit_stain(target_image: PathLike, method: str, kwargs: dict[str, Any], out_json: PathLike) -> None:
    from ..stain import get_normalizer, save_normalizer

    norm = get_normalizer(method, **kwargs).fit(read_rgb(target_image))
    save_normalizer(norm, out_json)
    d = read_json(out_json)
    d["target_image"] = str(target_image)
    write_json(out_json, d)
    log.info("fitted %s normalizer on %s", method, target_image)


def run_normalize(images: dict[str, str], stain_json: PathLike, out_dir: PathLike) -> None:
    """Normalize every image (stem → path) with the fitted normalizer into ``out_dir/<stem>.png``."""
    from tqdm import tqdm

    from ..stain import load_normalizer

    norm = load_normalizer(stain_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem, path in tqdm(sorted(images.items()), desc="normalize", unit="image", mininterval=5):
        write_image(out / f"{stem}.png", norm.transform(read_rgb(path)))

