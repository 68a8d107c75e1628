"""Stage of ``rules/predict.smk``: tiled inference on the normalized test images, and ensembles of models."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike, read_json, read_rgb, write_image, write_json, write_labels

log = logging.getLogger(__name__)

def run_predict(
    model_dir: PathLike, normalized_dir: PathLike, stems: list[str], predict: dict[str, Any], device: str,
    out_dir: PathLike,
) -> None:
    """Tiled inference: ``out_dir/<stem>.tif`` float32 foreground probability ``(H, W)`` per image.

    A multi-class model gives the class probabilities ``(C, H, W)`` instead (softmax, averaged across overlaps).
    A model trained at a working resolution (``spec["scale"]`` or ``spec["long_side"]``, :mod:`histoflow.resample`)
    predicts each image resized to it; its probabilities are resized back to the image's size.
    """
    import torch

    from ..backends import job_megapixels, model_predictor
    from ..device import load_for_inference
    from ..resample import resize_image, resize_probability, working_shape
    from ..tiling import predict_tiled, tta_predictor

    model, spec, dev = load_for_inference(model_dir, device)
    if getattr(model, "instance_model", False):
        predict_instances(model, spec, normalized_dir, stems, predict, dev, out_dir)
        return
    multiclass = bool(spec.get("classes"))
    activation = (lambda z: torch.softmax(z.float(), dim=1)) if multiclass else torch.sigmoid
    scale = float(spec.get("scale", 1.0))  # the working resolution it was trained at (histoflow.resample)
    long_side = spec.get("long_side")
    side = getattr(model, "context_factor", 1) * predict["tile"]
    megapixels = job_megapixels(tiles_of_job(normalized_dir, stems, predict, scale, long_side), side,
                                predict.get("tta", "none"))
    net = model_predictor(model, dev, predict, model_dir, activation, megapixels)
    predictor = tta_predictor(net, predict.get("tta", "none"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image = read_rgb(Path(normalized_dir) / f"{stem}.png")
        t0 = time.perf_counter()
        x = torch.from_numpy(resize_image(image, working_shape(image.shape, scale, long_side)))
        x = x.permute(2, 0, 1).float() / 255.0
        prob = predict_tiled(
            predictor, x, tile=predict["tile"], overlap=predict["overlap"],
            batch_size=predict["batch_size"], blend=predict["blend"], device=dev,
            context=(getattr(model, "context_factor", 1) - 1) * predict["tile"] // 2,
            precision=net.precision,
        )
        prob = resize_probability(prob if multiclass else prob[0], image.shape[:2])
        write_image(out / f"{stem}.tif", prob.astype(np.float32))
        log.info("%s: %dx%d in %.2fs", stem, image.shape[0], image.shape[1], time.perf_counter() - t0)
    write_json(out / "backend.json", net.record)


def tiles_of_job(normalized_dir: PathLike, stems: list[str], predict: dict[str, Any], scale: float = 1.0,
                 long_side: int | None = None) -> int:
    """How many tiles the job's images make at the working resolution (their sizes read from the PNG headers)."""
    from ..io import image_size
    from ..resample import working_shape
    from ..tiling import tile_starts

    tiles = 0
    for stem in stems:
        h, w = working_shape(image_size(Path(normalized_dir) / f"{stem}.png"), scale, long_side)
        tiles += len(tile_starts(max(h, predict["tile"]), predict["tile"], predict["overlap"])) * len(
            tile_starts(max(w, predict["tile"]), predict["tile"], predict["overlap"]))
    return tiles


def predict_instances(
    model, spec: dict[str, Any], normalized_dir: PathLike, stems: list[str], predict: dict[str, Any], dev,
    out_dir: PathLike,
) -> None:
    """Tiled detection with an instance model.

    Per image: ``detections/<stem>.json``, the kept detections' boxes ``(x0, y0, x1, y1)`` and scores;
    ``<stem>.tif``, the seed's merge map (kept masks with pixels under ``mask_threshold`` zeroed,
    summed, clipped to [0, 1]; thresholded at the paper's 0.9 by the ``merge`` post-processing) and
    ``instances/<stem>.tif``, each kept detection with its own id (the ``preserve`` post-processing). Kept = score
    at least ``score_threshold`` (null: the one chosen on the validation patches), then NMS at ``nms_iou``.
    """
    import torch

    from ..detection import (
        detect_tiled,
        filter_detections,
        instance_detector,
        instance_labels,
        merged_probability,
    )

    detector, score = instance_detector(model, spec, predict, dev)
    out = Path(out_dir)
    (out / "instances").mkdir(parents=True, exist_ok=True)
    (out / "detections").mkdir(parents=True, exist_ok=True)
    log.info("detection score threshold %.2f%s, NMS IoU %.2f, mask threshold %.2f", score,
             " (validation-chosen)" if predict.get("score_threshold") is None else "", predict["nms_iou"],
             predict["mask_threshold"])
    for stem in stems:
        image = read_rgb(Path(normalized_dir) / f"{stem}.png")
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        t0 = time.perf_counter()
        dets = detect_tiled(detector, x, tile=predict["tile"], overlap=predict["overlap"],
                            batch_size=predict["batch_size"], device=dev, nms_iou=predict["nms_iou"])
        kept = filter_detections(dets, score, predict["nms_iou"])
        shape = image.shape[:2]
        write_image(out / f"{stem}.tif", merged_probability(kept, shape, predict["mask_threshold"]))
        labels = instance_labels(kept, shape, 0.5)
        write_labels(out / "instances" / f"{stem}.tif", labels)
        write_json(out / "detections" / f"{stem}.json", {  # for the box AP the detection papers report
            "boxes": np.round(kept.boxes.astype(np.float64), 2).tolist(),
            "scores": np.round(kept.scores.astype(np.float64), 5).tolist()})
        log.info("%s: %dx%d, %d detections, %d kept, %d instances in %.2fs", stem, *shape, len(dets), len(kept),
                 labels.max(), time.perf_counter() - t0)


def run_ensemble_predict(member_dirs: list[PathLike], weights: list[float] | None, out_dir: PathLike) -> None:
    """Average the members' probability maps (``<stem>.tif`` in every member folder), weighted."""
    from ..io import read_image

    w = np.asarray(weights if weights else [1.0] * len(member_dirs), np.float64)
    w = w / w.sum()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in Path(member_dirs[0]).glob("*.tif"))
    for stem in stems:
        acc = sum(
            wi * read_image(Path(d) / f"{stem}.tif").astype(np.float64) for wi, d in zip(w, member_dirs, strict=True)
        )
        write_image(out / f"{stem}.tif", np.asarray(acc, np.float32))
    log.info("averaged %d members over %d images (weights %s)", len(member_dirs), len(stems), w.round(3).tolist())


def run_ensemble_vote(member_dirs: list[PathLike], weights: list[float] | None, vote_fraction: float,
                      out_dir: PathLike) -> None:
    """Instance voting (:func:`histoflow.postprocess.vote_instances`) between the members' instances.

    The members' post-processed instances are ``<stem>.tif`` in every member folder. Writes
    ``instances/<stem>.tif``, the voted objects, and ``<stem>.tif``, the weighted fraction of members covering
    each pixel.
    """
    from ..io import read_image
    from ..postprocess import vote_instances

    out = Path(out_dir)
    (out / "instances").mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in Path(member_dirs[0]).glob("*.tif"))
    for stem in stems:
        maps = [read_image(Path(d) / f"{stem}.tif").astype(np.int64) for d in member_dirs]
        labels, votes = vote_instances(maps, weights, vote_fraction)
        write_image(out / f"{stem}.tif", votes)
        write_labels(out / "instances" / f"{stem}.tif", labels)
        log.info("%s: members found %s objects, %d kept by the vote", stem,
                 [len(np.unique(m)) - 1 for m in maps], labels.max())
    log.info("instance vote of %d members over %d images (objects kept above %.2f of the weight %s)",
             len(member_dirs), len(stems), vote_fraction, weights or "equal")


def run_ensemble_spec(member_specs: list[PathLike], members: list[str], weights: list[float] | None,
                      out_json: PathLike, combine: str = "mean", vote_fraction: float = 0.5) -> None:
    w = np.asarray(weights if weights else [1.0] * len(members), np.float64)
    w = w / w.sum()
    specs = [read_json(p) for p in member_specs]
    if combine == "vote":  # members' instances are voted on, whatever each predicted
        if any(s.get("classes") for s in specs):
            raise ValueError(f"ensemble of {members}: combine: vote compares object instances; multi-class "
                             "models have none (use combine: mean)")
        write_json(out_json, {
            "arch": "ensemble", "combine": "vote", "members": members, "weights": w.tolist(),
            "vote_fraction": vote_fraction, "instances": True, "target": "instances", "threshold": 0.5,
            "boundary_width": max(int(s.get("boundary_width", 1)) for s in specs), "classes": [],
        })
        return
    # an instance model's merge map is a foreground probability, like a masks model's
    targets = {s.get("target", "masks").replace("instances", "masks") for s in specs}
    if len(targets) > 1:
        raise ValueError(f"ensemble members {members} predict different targets {sorted(targets)}: average only "
                         "models of the same target (masks with masks, interiors with interiors)")
    write_json(out_json, {
        "arch": "ensemble", "members": members, "weights": w.tolist(),
        "threshold": float(sum(wi * s["threshold"] for wi, s in zip(w, specs, strict=True))),
        "target": targets.pop(), "boundary_width": max(int(s.get("boundary_width", 1)) for s in specs),
        "classes": specs[0].get("classes", []),
    })

