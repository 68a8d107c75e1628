"""Stage of ``rules/wsi.smk``: whole slides: tissue, tiled inference by row band, merge, OME-TIFF / GeoJSON outputs."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike, read_image, read_json, write_image, write_json

log = logging.getLogger(__name__)

def open_configured_slide(path: PathLike, slides: dict[str, Any]):
    """The slide at the resolution ``slides.mpp`` / ``slides.level`` of the config."""
    from ..wsi import open_slide

    return open_slide(path, mpp=slides.get("mpp"), level=slides.get("level"), base_mpp=slides.get("base_mpp"),
                      backend=slides.get("backend", "auto"))


def slide_normalizer(stain_json: PathLike | None):
    """The fitted stain normalizer on its NumPy backend, or None (no normalization, or method none)."""
    if not stain_json:
        return None
    from ..stain import load_normalizer
    from ..wsi import cpu_normalizer

    norm = load_normalizer(stain_json)
    return None if norm.method == "none" else cpu_normalizer(norm)


def run_slide_tissue(
    slide_path: PathLike, slides: dict[str, Any], stain_json: PathLike | None, out_json: PathLike,
    out_mask: PathLike, out_thumbnail: PathLike,
) -> dict[str, Any]:
    """Thumbnail, tissue mask (PNG, 255 = tissue) and ``tissue.json`` of one slide.

    ``tissue.json`` holds the slide at the chosen resolution, the mask's scale, the tile counts and the slide's
    staining (estimated once on the thumbnail, so every region normalizes its tiles identically).
    """
    from ..wsi import TissueMask, plan_grid, tissue_mask

    t0 = time.perf_counter()
    slide = open_configured_slide(slide_path, slides)
    tcfg = slides["tissue"]
    if tcfg["method"] == "none":
        thumb, scale = slide.thumbnail(tcfg["thumbnail_size"])
        tissue = TissueMask(np.ones(thumb.shape[:2], bool), scale)
    else:
        tissue, thumb = tissue_mask(slide, tcfg["method"], tcfg["thumbnail_size"], tcfg["closing"],
                                    tcfg["min_object"], tcfg["max_hole"])
    grid = plan_grid(slide.shape, slides["tile"], slides["overlap"], tissue, tcfg["min_fraction"])
    norm = slide_normalizer(stain_json) if slides["stain"] else None
    source = None
    if norm is not None:
        source = (slide_stain_from_tiles(norm, slide, tissue, slides["tile"])
                  if slides.get("stain_source", "thumbnail") == "tiles" else norm.fit_source(thumb))
    write_image(out_mask, (tissue.mask * 255).astype(np.uint8))
    write_image(out_thumbnail, thumb)
    info = {
        "slide": slide.info(),
        "tissue": {"method": tcfg["method"], "scale": tissue.scale, "fraction": float(tissue.mask.mean()),
                   "mask": Path(out_mask).name},
        "grid": {"tile": grid.tile, "overlap": grid.overlap, "rows": len(grid.ys), "cols": len(grid.xs),
                 "tiles_total": len(grid.ys) * len(grid.xs), "tiles_tissue": grid.n_tiles},
        "stain_source": source,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out_json, info)
    log.info("%s: %dx%d at %s µm/px (level %d, x%.3f); tissue %.1f%%, %d of %d tiles", slide_path,
             slide.shape[0], slide.shape[1], f"{slide.mpp:.4f}" if slide.mpp else "?", slide.level, slide.factor,
             100 * info["tissue"]["fraction"], grid.n_tiles, info["grid"]["tiles_total"])
    return info


def slide_stain_from_tiles(norm: Any, slide: Any, tissue: Any, tile: int) -> dict[str, Any]:
    """The slide's source staining from its tissue tiles at the working resolution.

    The tiles partition the slide (no overlap: no pixel counts twice) and those touching tissue are
    read one at a time with their positions, so :func:`histoflow.stain.fit_source_from_tiles` samples
    exactly the pixels it would sample from the assembled slide's tissue tiles, in bounded memory.
    """
    from ..stain import fit_source_from_tiles

    h, w = slide.shape
    cells = [(y, x, min(tile, h - y), min(tile, w - x)) for y in range(0, h, tile) for x in range(0, w, tile)]
    cells = [c for c in cells if tissue.fraction(*c) > 0]
    source = fit_source_from_tiles(norm, ((slide.read_region(*c), (c[0], c[1])) for c in cells))
    log.info("slide staining estimated from %d tissue tiles of %d px", len(cells), tile)
    return source


def load_tissue(tissue_json: PathLike):
    """The :class:`histoflow.wsi.TissueMask` and the info dict written by :func:`run_slide_tissue`."""
    from ..wsi import TissueMask

    info = read_json(tissue_json)
    mask = read_image(Path(tissue_json).parent / info["tissue"]["mask"]) > 0
    return TissueMask(mask, float(info["tissue"]["scale"])), info


def run_predict_slide_region(
    slide_path: PathLike, tissue_json: PathLike, model_dir: PathLike, stain_json: PathLike | None,
    slides: dict[str, Any], predict: dict[str, Any], region: int, device: str, perf: dict[str, Any],
    out_store: PathLike,
) -> dict[str, Any]:
    """One region of a slide through the model into a zarr store (rows it owns, finished).

    ``perf``: ``batch_size``, ``workers``, ``compile`` (speed only, not rerun triggers).
    """
    import torch

    from ..backends import job_megapixels, model_predictor
    from ..device import load_for_inference
    from ..io import atomic_dir
    from ..postprocess import default_threshold
    from ..tiling import tta_predictor
    from ..wsi import limit_malloc_retention, plan_grid, predict_slide, split_regions

    limit_malloc_retention()  # flat host memory (this job's own process)
    tissue, info = load_tissue(tissue_json)
    slide = open_configured_slide(slide_path, slides)
    if list(slide.shape) != list(info["slide"]["shape"]):
        raise ValueError(f"{slide_path}: the slide is {slide.shape} now but was {info['slide']['shape']} when "
                         f"its tissue was detected ({tissue_json}); rerun slide_tissue")
    grid = plan_grid(slide.shape, slides["tile"], slides["overlap"], tissue, slides["tissue"]["min_fraction"])
    regions = split_regions(grid, slides["regions"])
    reg = regions[region]
    model, spec, dev = load_for_inference(model_dir, device)
    context = (getattr(model, "context_factor", 1) - 1) * slides["tile"] // 2
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if perf.get("compile"):
            model = torch.compile(model)
    net = None
    if getattr(model, "instance_model", False):  # detections -> the seed's merge map, blended like any map
        predictor = instance_slide_predictor(model, spec, predict, dev)
    else:
        # the whole slide's size decides auto's export, so that every region runs the same backend
        side = slides["tile"] + 2 * context
        net = model_predictor(model, dev, predict, model_dir,
                              megapixels=job_megapixels(grid.n_tiles, side, predict.get("tta", "none")))
        predictor = tta_predictor(net, predict.get("tta", "none"))
    norm = slide_normalizer(stain_json) if slides["stain"] else None
    out_channels = int(spec.get("kwargs", {}).get("out_channels", 1))
    log.info("region %d/%d: rows %d..%d, tile rows %d..%d, %s", region + 1, len(regions), *reg.rows,
             *reg.tile_rows, dev)
    with atomic_dir(out_store) as tmp:
        stats = predict_slide(
            slide, predictor, tmp, tile=slides["tile"], overlap=slides["overlap"],
            batch_size=perf.get("batch_size", 8), blend=slides["blend"], device=dev,
            num_workers=perf.get("workers", 0), normalizer=norm, stain_source=info["stain_source"],
            region=reg, grid=grid, context=context, out_channels=out_channels,
            name=f"{Path(slide_path).name} [{region + 1}/{len(regions)}]",
            static_batches=bool(perf.get("compile")) and dev.type == "cuda", precision=predict.get("precision", "auto"),
            attrs={"model": str(model_dir), "threshold": default_threshold(spec)},
        )
    if net is not None:
        stats["backend"] = net.record
    return stats


def instance_slide_predictor(model, spec: dict[str, Any], predict: dict[str, Any], dev):
    """An instance model (Mask R-CNN, US-Net) on slide tiles: each tile's merge map of the kept detections.

    The kept detections are those the model's ``predict`` settings keep
    (:func:`histoflow.detection.merge_map_predictor`). Slides get the ``merge`` rule: the blended map is
    thresholded and split like a U-Net's.
    """
    from ..detection import instance_detector, merge_map_predictor

    detect, score = instance_detector(model, spec, predict, dev)
    log.info("instance model %s on slide tiles: merge map of detections scoring >= %.2f (NMS IoU %.2f, mask "
             "threshold %.2f)", spec["arch"], score, predict.get("nms_iou", 0.5), predict.get("mask_threshold", 0.3))
    return merge_map_predictor(detect, score, predict.get("nms_iou", 0.5), predict.get("mask_threshold", 0.3))


def probability_channels(k_ch: int) -> list[str]:
    """The channel names of a ``(K, H, W)`` probability map (one channel: ``probability``)."""
    return ["probability"] if k_ch == 1 else [f"probability {k}" for k in range(k_ch)]


def run_merge_slide(region_stores: list[PathLike], out_root: PathLike) -> dict[str, Any]:
    """The regions' row bands concatenated into the slide's probability map, an OME-NGFF image store.

    ``out_root`` is the store's root file (``…/probability.zarr/zarr.json``, the rule's output).
    """
    from ..io import atomic_dir
    from ..wsi import LEVEL0, merge_regions, open_group, store_of, write_ngff

    with atomic_dir(store_of(out_root)) as tmp:
        stats = merge_regions(region_stores, tmp)
        group = open_group(tmp, "r+")
        slide = dict(group.attrs)["slide"]
        levels = write_ngff(group, kind="prob", mpp=slide.get("mpp"), name=f"{Path(slide['path']).stem} probability",
                            channel_names=probability_channels(group[LEVEL0].shape[0]))
    log.info("merged %d regions: %d tiles run; %d resolution levels", len(region_stores), stats["tiles_run"],
             len(levels))
    return stats


def run_slide_outputs(
    prob_root: PathLike, spec_json: PathLike, postprocess: dict[str, Any], slides: dict[str, Any],
    classification: str, out: dict[str, PathLike],
) -> dict[str, Any]:
    """Pyramidal OME-TIFF of the probability map, optionally the instances, and ``summary.json``.

    With ``slides.outputs.instances``, also instance labels (an OME-NGFF label image in zarr and a pyramidal
    OME-TIFF, sharing their resolution levels) and the objects as QuPath GeoJSON. The probability TIFF's
    sub-resolutions are the NGFF store's own levels (:func:`run_merge_slide`), not computed again.

    ``prob_root`` is the probability store's root file; ``out``: paths ``probability``, ``summary`` and (with
    instances) ``labels``, ``labels_zarr`` (the label store's root file), ``objects`` - the rule's outputs.
    """
    from ..io import atomic_dir
    from ..postprocess import PostprocessConfig, default_threshold
    from ..wsi import (
        CHUNK,
        LEVEL0,
        create_array,
        image_levels,
        open_group,
        slide_instances,
        store_of,
        write_ngff,
        write_ome_pyramid,
    )

    t0 = time.perf_counter()
    prob_store = store_of(prob_root)
    group = open_group(prob_store, "r")
    attrs = dict(group.attrs)
    prob_levels = image_levels(group)
    prob = prob_levels[0]
    slide = attrs["slide"]
    mpp = slide.get("mpp")
    outputs = slides["outputs"]
    dtype = np.uint8 if outputs["prob_dtype"] == "uint8" else np.float32
    levels = write_ome_pyramid(prob, out["probability"], kind="prob", mpp=mpp, dtype=dtype,
                               channel_names=probability_channels(prob.shape[0]), levels=prob_levels)
    summary: dict[str, Any] = {
        "slide": slide, "model": attrs.get("model"), "inference": attrs.get("stats"),
        "probability": {"path": str(out["probability"]), "levels": levels, "dtype": np.dtype(dtype).name},
    }
    if outputs["instances"]:
        pp = PostprocessConfig(**postprocess)
        default_th = default_threshold(read_json(spec_json))
        threshold = pp.threshold if pp.threshold is not None else default_th
        icfg = slides["instances"]
        labels_store = store_of(out["labels_zarr"])
        with atomic_dir(labels_store) as tmp:
            lgroup = open_group(tmp, "w")
            labels = create_array(lgroup, LEVEL0, tuple(prob.shape[-2:]), (CHUNK, CHUNK), np.uint32, ("y", "x"))
            stats = slide_instances(
                prob, labels, out["objects"], threshold=threshold, postprocess_cfg=pp, block=icfg["block"],
                margin=icfg["margin"], channel=icfg["channel"], mpp=mpp, downsample=slide.get("downsample", 1.0),
                classification=classification,
            )
            lgroup.attrs.update({"slide": slide, "threshold": threshold, "stats": stats})
            label_levels = write_ngff(lgroup, kind="labels", mpp=mpp, name=f"{Path(slide['path']).stem} instances",
                                      source=os.path.relpath(prob_store, labels_store))
            label_shapes = write_ome_pyramid(labels, out["labels"], kind="labels", mpp=mpp, levels=label_levels)
        if stats["truncated"]:
            log.warning("%d objects reached the edge of their block's margin (%d px): they may be cut; raise "
                        "slides.instances.margin", stats["truncated"], icfg["margin"])
        summary["instances"] = {**stats, "threshold": threshold, "levels": label_shapes}
        if mpp:
            summary["instances"]["foreground_area_um2"] = stats["foreground_pixels"] * mpp * mpp
    inf = attrs.get("stats") or {}
    if mpp and inf.get("megapixels") is not None:
        summary["processed_area_mm2"] = inf["megapixels"] * mpp * mpp  # under the tiles run (MP x µm² = mm²)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(out["summary"], summary)
    log.info("outputs written in %.1f s", summary["seconds"])
    return summary

