"""Datasets as configured: which images exist, how they pair with masks, and their split.

Everything here runs when Snakemake parses the workflow, so it is cheap (directory listings only)
and its errors name the folder or file and the fix before any job starts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import InputError, list_stems
from .synthetic.fibres import demo_stems


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
    class_values: list[int] | None = None
    palette: list[list[int]] | None = None
    valid: dict[str, str] = field(default_factory=dict)  # stem -> mask of its labelled part (annotated slides)

    @property
    def stems(self) -> list[str]:
        return sorted(self.images)


def split_stems(stems: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split into (kept, held out) with ``fraction`` held out.

    At least one of each when there are ≥ 2 stems and ``fraction > 0``. Used for test splits here and
    validation splits of patches.
    """
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


def limit_stems(paths: dict[str, str], limit: int | None) -> dict[str, str]:
    """The first ``limit`` entries of ``paths`` (stem → path) in sorted stem order.

    The order is Python's string order (``train_1, train_10, train_11, ...``); all entries are returned when
    ``limit`` is None. A subset for quick runs (CI, trying out a config) that is the same on every machine.
    """
    if limit is None:
        return dict(paths)
    if limit < 1:
        raise InputError(f"datasets.*.limit must be at least 1 (or null for every image), got {limit}.")
    return {s: paths[s] for s in sorted(paths)[:limit]}


def select_stems(paths: dict[str, str], stems: list[str] | None, folder: str) -> dict[str, str]:
    """The entries of ``paths`` (stem → path) named in ``stems``, in that order; all of them when None.

    A stem that is not in ``folder`` is an error naming it (a typo would otherwise score fewer images).
    """
    if stems is None:
        return dict(paths)
    missing = [s for s in stems if s not in paths]
    if missing:
        raise InputError(f"{folder}: no image with the stem(s) {missing[:5]} listed in datasets.*.stems; "
                         f"the folder has e.g. {sorted(paths)[:3]}. Fix the names or remove them from stems.")
    return {s: paths[s] for s in stems}


@dataclass
class SlideDataset(Dataset):
    """A dataset of whole slides annotated in QuPath (:mod:`histoflow.annotations`).

    Its images are the windows of the slides' regions, read at ``mpp`` into ``<results>/data/<name>/images/<slide>``
    with their label tiles and region masks in ``<results>/data/<name>/labels/<slide>``; train and test are split
    by slide, never by window.
    """

    mpp: float = 0.5
    base_mpp: float | None = None
    classes: dict[str, int] = field(default_factory=dict)  # QuPath classification name -> class value
    regions: str = "Region*"  # classification pattern of the regions
    predict_slides: str = "test"  # which slides the slide path predicts whole: test, all, none
    slides: dict[str, str] = field(default_factory=dict)  # slide name -> file
    annotation_files: dict[str, str] = field(default_factory=dict)  # slide name -> GeoJSON
    windows: dict[str, list[Any]] = field(default_factory=dict)  # slide name -> its Windows
    downsample: dict[str, float] = field(default_factory=dict)  # slide name -> level-0 pixels per working pixel
    level0: dict[str, tuple[int, int]] = field(default_factory=dict)  # slide name -> (height, width) of level 0
    train_slides: list[str] = field(default_factory=list)
    test_slides: list[str] = field(default_factory=list)

    def slide_of(self, stems: list[str]) -> list[str]:
        """The slides (sorted, each once) whose windows these stems are."""
        return sorted({s for s, ws in self.windows.items() for w in ws if w.stem in stems})


def resolve_slide_dataset(name: str, cfg: dict[str, Any], config: dict[str, Any]) -> SlideDataset:
    """Build a :class:`SlideDataset`: open each slide's header, read and check its annotations, window its regions.

    Raises :class:`histoflow.io.InputError` naming the file and the fix for missing or bad slides and annotations.
    """
    from .annotations import (
        SLIDE_DATASET_DEFAULTS,
        annotation_file,
        class_values,
        load_slide_annotations,
        region_windows,
        window_files,
    )
    from .wsi.reader import find_slides, open_slide

    cfg = {**SLIDE_DATASET_DEFAULTS, **cfg}
    spec = cfg["slides"]
    slides = {k: str(v) for k, v in find_slides([spec] if isinstance(spec, str) else spec,
                                                key=f"datasets.{name}.slides").items()}
    split = cfg["split"]
    if isinstance(split, dict):
        train, test = sorted(split.get("train", [])), sorted(split.get("test", []))
        unknown = sorted((set(train) | set(test)) - set(slides))
        if unknown:
            raise InputError(f"datasets.{name}.split names slide(s) {unknown} that are not among its slides "
                             f"{sorted(slides)}; fix the names (slide file stems).")
        if set(train) & set(test):
            raise InputError(f"datasets.{name}.split: slide(s) {sorted(set(train) & set(test))} are listed for both "
                             "train and test; a slide belongs to one of them.")
        slides = limit_stems({s: slides[s] for s in train + test}, cfg.get("limit"))
        train, test = [s for s in train if s in slides], [s for s in test if s in slides]
    else:
        slides = limit_stems(slides, cfg.get("limit"))
        train, test = split_test(sorted(slides), split, cfg["test_fraction"], config["seed"])
    classes = class_values(cfg["classes"])
    n_classes = len(config.get("classes") or [])
    for cls, value in classes.items():
        if value < 1 or (n_classes and value >= n_classes):
            top = f"1..{n_classes - 1} (the indices of `classes` after the background)" if n_classes else ">= 1"
            raise InputError(f"datasets.{name}.classes.{cls}: class value {value} must be {top}.")
    base = f"{config['results']}/data/{name}"
    d = SlideDataset(name, {}, {}, "classes" if n_classes else "instance", pixel_size_um=cfg["mpp"], mpp=cfg["mpp"],
                     base_mpp=cfg["base_mpp"], classes=classes, regions=cfg["regions"],
                     predict_slides=cfg["predict_slides"], train_slides=train, test_slides=test)
    for slide, path in slides.items():
        with contextlib.closing(open_slide(path, mpp=cfg["mpp"], base_mpp=cfg["base_mpp"],
                                                key=f"datasets.{name}")) as s:
            lv = s.levels[0]
            d.level0[slide], d.downsample[slide], shape = (lv.height, lv.width), s.downsample, s.shape
        geojson = annotation_file(cfg["annotations"], slide, path)
        ann = load_slide_annotations(geojson, d.level0[slide], classes, cfg["regions"], slide)
        d.slides[slide], d.annotation_files[slide] = path, str(geojson)
        d.windows[slide] = region_windows(ann, slide, d.downsample[slide], shape, cfg["tile"])
        for w in d.windows[slide]:
            d.images[w.stem] = f"{base}/images/{slide}/{w.stem}.png"
            labels, region = window_files(w.stem, bool(n_classes))
            d.masks[w.stem], d.valid[w.stem] = f"{base}/labels/{slide}/{labels}", f"{base}/labels/{slide}/{region}"
            (d.train if slide in train else d.test).append(w.stem)
    return d


def resolve_dataset(name: str, cfg: dict[str, Any], config: dict[str, Any]) -> Dataset:
    """Build a :class:`Dataset` from its config entry (generator, folders, or annotated slides)."""
    results = config["results"]
    if cfg.get("slides"):
        return resolve_slide_dataset(name, cfg, config)
    if cfg.get("generator"):
        stems = demo_stems(config["demo"]["n_images"])
        images = {s: f"{results}/data/{name}/images/{s}.png" for s in stems}
        folder = "classes" if cfg["mask_type"] == "classes" else "labels"
        masks = {s: f"{results}/data/{name}/{folder}/{s}.png" for s in stems}
        images = limit_stems(select_stems(images, cfg.get("stems"), f"dataset {name!r} (generated)"),
                             cfg.get("limit"))
        masks = {s: masks[s] for s in images}
    else:
        images = select_stems({s: str(p) for s, p in list_stems(cfg["images"]).items()}, cfg.get("stems"),
                              cfg["images"])
        masks_all = {s: str(p) for s, p in list_stems(cfg["masks"]).items()}
        if not images:
            raise InputError(f"{cfg['images']}: no image files (png/tif/jpg/webp/bmp) found for dataset {name!r}.")
        images = limit_stems(images, cfg.get("limit"))
        missing = sorted(set(images) - set(masks_all))
        if missing:
            raise InputError(
                f"dataset {name!r}: {len(missing)} image(s) have no mask in {cfg['masks']} with the same stem, "
                f"e.g. {images[missing[0]]} (expected {Path(cfg['masks']) / missing[0]}.png). Add the masks or "
                "remove those images."
            )
        masks = {s: masks_all[s] for s in images}
    train, test = split_test(sorted(images), cfg["split"], cfg["test_fraction"], config["seed"])
    return Dataset(name, images, masks, cfg["mask_type"], train, test, cfg.get("pixel_size_um"),
                   cfg.get("class_values"), cfg.get("palette"))


def resolve_datasets(config: dict[str, Any]) -> dict[str, Dataset]:
    check_classes(config)
    out = {name: resolve_dataset(name, cfg, config) for name, cfg in config["datasets"].items()}
    if not any(d.train for d in out.values()):
        raise InputError("no dataset has training images: set split: train or auto on at least one dataset.")
    check_references(config, out)
    return out


def check_references(config: dict[str, Any], datasets: dict[str, Dataset]) -> None:
    """Published results (``references:``) must name datasets that have test images.

    The report sets them beside our scores on those images.
    """
    for name in config.get("references") or {}:
        if name not in datasets:
            raise InputError(f"references.{name}: no dataset of that name (datasets: {sorted(datasets)}). "
                             "Name the test dataset the published figures were measured on.")
        if not datasets[name].test:
            raise InputError(f"references.{name}: dataset {name!r} has no test images (split: train), so there is "
                             "nothing to compare; attach the references to a dataset with split: test or auto.")


def check_classes(config: dict[str, Any]) -> None:
    """A multi-class workflow (``classes:``) needs class masks everywhere, and class masks need it."""
    classes = config.get("classes") or []
    if len(classes) == 1:
        raise InputError("classes: name at least 2 classes (index 0 first, usually the background), or none for "
                         "a binary workflow.")
    for name, d in config["datasets"].items():
        if d.get("slides"):  # annotated slides: the mask type follows from `classes` (resolve_slide_dataset)
            continue
        if classes and d["mask_type"] != "classes":
            raise InputError(f"datasets.{name}.mask_type is {d['mask_type']!r} but `classes` makes this a multi-class "
                             "workflow: set mask_type: classes (with class_values or palette if needed).")
        if not classes and d["mask_type"] == "classes":
            raise InputError(f"datasets.{name}.mask_type is 'classes': name the classes in `classes:` "
                             "(e.g. [background, membrane]).")
        for key in ("class_values", "palette"):
            if classes and d.get(key) is not None and len(d[key]) != len(classes):
                raise InputError(f"datasets.{name}.{key} has {len(d[key])} entries for {len(classes)} classes.")
    for name, m in config.get("models", {}).items():
        for stage in ("pretrain", "train"):
            target = (m.get(stage) or {}).get("target")
            if not classes and target == "classes":
                raise InputError(f"models.{name}.{stage}.target is 'classes' but no `classes:` are configured.")


def check_sizes(datasets: dict[str, Dataset], max_listed: int = 10) -> None:
    """Every image and its mask, of training and test images alike, are readable and of one size.

    Checked from the files' headers when the workflow is parsed, so a test image's bad mask stops the run before
    training rather than at its evaluation. Raises :class:`histoflow.io.InputError` listing the first
    ``max_listed`` problems, each naming both files.
    """
    from .io import InputError, image_size

    problems = []
    for d in datasets.values():
        for stem in d.stems:
            if stem not in d.masks or not Path(d.images[stem]).exists():  # a generated dataset not made yet
                continue
            try:
                image, mask = image_size(d.images[stem]), image_size(d.masks[stem])
            except InputError as exc:
                problems.append(str(exc))
                continue
            if image != mask:
                role = "test" if stem in d.test else "training"
                problems.append(f"{d.masks[stem]}: mask is {mask[0]} x {mask[1]} but its {role} image "
                                f"{d.images[stem]} is {image[0]} x {image[1]}; masks must have their image's size.")
    if problems:
        more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        raise InputError("datasets: " + str(len(problems)) + " image/mask problem(s):\n  "
                         + "\n  ".join(problems[:max_listed]) + more)


def labelled_part(dataset: dict[str, Any], stem: str) -> np.ndarray | None:
    """The labelled pixels of one image of a dataset table (an annotated slide window's regions), else None (all).

    Evaluation and the report score only these: predictions outside them are set to background, as the truth is.
    """
    from .io import read_image

    path = (dataset.get("valid") or {}).get(stem)
    return None if path is None else read_image(path) > 0
