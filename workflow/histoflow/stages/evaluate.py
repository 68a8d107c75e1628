"""Stage of ``rules/evaluate.smk``: metrics of the test images, per-fibre thresholds, QuPath / morphometry export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike, read_json, read_labels, read_rgb, write_json
from ..postprocess import instance_growth

log = logging.getLogger(__name__)

def run_export_objects(
    instances_dir: PathLike, normalized_dir: PathLike, pixel_size_um: float | None, classification: str,
    out_dir: PathLike,
) -> None:
    """Per image, QuPath GeoJSON of the instances with their measurements; per dataset, ``morphometry.tsv``.

    ``morphometry.tsv`` has one row per object: image, id and every measurement.
    """
    import pandas as pd

    from ..io import atomic_path, read_image
    from ..morphometry import measure_objects
    from ..qupath import instances_to_geojson

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in sorted(Path(instances_dir).glob("*.tif")):
        labels = read_image(p).astype(np.int64)
        image = read_rgb(Path(normalized_dir) / f"{p.stem}.png")
        measurements = measure_objects(labels, image, pixel_size_um)
        n = instances_to_geojson(labels, out / f"{p.stem}.geojson", classification=classification,
                                 object_type="detection", measurements=measurements)
        rows += [{"image": p.stem, "object": k, **v} for k, v in measurements.items()]
        log.info("%s: %d objects", p.stem, n)
    with atomic_path(out / "morphometry.tsv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.5g")


def run_evaluate(
    instances_dir: PathLike, dataset: dict[str, Any], out_tsv: PathLike, out_summary: PathLike,
    predictions_dir: PathLike | None = None, classes: list[str] | None = None,
) -> dict[str, float]:
    """Per-image metrics of the test images and their summary.

    With ``predictions_dir`` (probability maps), each predicted object is scored by its mean
    probability and detection AP at mask IoU 0.5 is computed per image (``ap50``) and pooled over the
    dataset (``ap50_pooled``, the VOC way: all detections ranked together). For an instance model
    (``detections/<stem>.json`` beside the maps), also the box AP of the detector's own boxes and
    confidences, VOC-matched at box IoU 0.5 with the VOC paper's 11-point interpolation, as US-Net
    reports it (``box_ap50``, ``box_ap50_pooled``). With ``classes`` (a
    multi-class workflow) the outputs are class maps, scored per class (:func:`evaluate_classes`).
    """
    if classes:
        return evaluate_classes(instances_dir, dataset, classes, out_tsv, out_summary, predictions_dir)
    import pandas as pd

    from ..datasets import labelled_part
    from ..io import atomic_path, read_image
    from ..metrics import (
        average_precision,
        evaluate_instances,
        match_boxes,
        match_detections,
        object_scores,
        per_fibre_precision_recall,
        summarize,
    )

    rows, pooled, boxes = [], ([], [], 0), ([], [], 0)
    for stem in dataset["test"]:
        pred = read_image(Path(instances_dir) / f"{stem}.tif").astype(np.int64)
        gt = read_labels(dataset["masks"][stem], dataset["mask_type"])
        valid = labelled_part(dataset, stem)
        if valid is not None:  # an annotated slide's window: only its regions are labelled
            pred[~valid], gt[~valid] = 0, 0
        fibre = per_fibre_precision_recall(pred, gt)  # skipped on images without ground-truth objects
        row = {"image": stem, **evaluate_instances(pred, gt),
               **({f"fibre_{k}": fibre[k] for k in ("precision", "recall", "f1")} if fibre["n_gt"] else {})}
        if predictions_dir is not None:
            scores = object_scores(pred, read_image(Path(predictions_dir) / f"{stem}.tif"))
            sc, tp, n_gt = match_detections(pred, gt, scores)
            row["ap50"] = average_precision(sc, tp, n_gt)
            pooled = (pooled[0] + [sc], pooled[1] + [tp], pooled[2] + n_gt)
            detections = Path(predictions_dir) / "detections" / f"{stem}.json"
            if detections.is_file():  # an instance model: the detector's own boxes and confidences
                d = read_json(detections)
                sc, tp, n_gt = match_boxes(np.asarray(d["boxes"], np.float64), d["scores"], gt)
                row["box_ap50"] = average_precision(sc, tp, n_gt, points=11)
                boxes = (boxes[0] + [sc], boxes[1] + [tp], boxes[2] + n_gt)
        rows.append(row)
    summary = summarize(rows)
    if pooled[0]:
        summary["ap50_pooled"] = average_precision(np.concatenate(pooled[0]), np.concatenate(pooled[1]), pooled[2])
    if boxes[0]:
        summary["box_ap50_pooled"] = average_precision(np.concatenate(boxes[0]), np.concatenate(boxes[1]), boxes[2],
                                                       points=11)
    with atomic_path(out_tsv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_json(out_summary, summary)
    log.info("object F1 %.4f (pooled %.4f), pixel Dice %.4f, AJI %.4f, PQ %.4f",
             summary.get("object_f1_mean", float("nan")), summary.get("object_f1_pooled", float("nan")),
             summary.get("pixel_f1_mean", float("nan")), summary.get("aji_mean", float("nan")),
             summary.get("pq_mean", float("nan")))
    return summary


def run_evaluate_fibres(
    pred_dir: PathLike, spec_json: PathLike, postprocess_cfg: dict[str, Any], dataset: dict[str, Any],
    thresholds: list[float], out_tsv: PathLike, out_summary: PathLike, normalized_dir: PathLike | None = None,
    fibres_from: str = "raw",
) -> dict[str, Any]:
    """Per-fibre precision / recall / F1 and object F1 of every test image at every threshold, and their summaries.

    At each threshold the fibres are made from the network's output as the VGG16 paper evaluates it
    (``fibres_from="raw"``: the thresholded map's connected components, no other post-processing; a model of
    interiors still gets its boundary width back) or by the configured post-processing at that threshold
    (``"postprocess"``). The summaries are the fixed-threshold (FT) and dynamic-threshold (DT) ones
    (:func:`histoflow.metrics.fixed_and_dynamic_thresholds`, chosen by the per-fibre F1). Beside the per-fibre
    figures, which ignore predicted fibres that overlap no ground truth, the GlaS object F1 counts them
    (``ft_object_f1_mean``, ``dt_object_f1_mean``). Of an annotated slide's window only the labelled part counts
    (:func:`~histoflow.datasets.labelled_part`), as in :func:`run_evaluate`.
    """
    import dataclasses

    import pandas as pd
    from tqdm import tqdm

    from ..datasets import labelled_part
    from ..io import atomic_path, read_image
    from ..metrics import fixed_and_dynamic_thresholds, object_f1, per_fibre_precision_recall
    from ..postprocess import PostprocessConfig, postprocess

    pp = PostprocessConfig(**postprocess_cfg)
    if fibres_from == "raw":
        pp = dataclasses.replace(pp, split="components", min_size=0, max_hole=0, graphcut=False)
    elif fibres_from != "postprocess":
        raise ValueError(f"evaluate.fibres_from must be 'raw' or 'postprocess', got {fibres_from!r}")
    grow = instance_growth(read_json(spec_json))
    names = ("precision", "recall", "object_f1", "f1")  # F1 last: it chooses the thresholds
    rows, scores = [], []
    for stem in tqdm(dataset["test"], desc="per-fibre P/R", unit="image", mininterval=5):
        prob = read_image(Path(pred_dir) / f"{stem}.tif")
        gt = read_labels(dataset["masks"][stem], dataset["mask_type"])
        valid = labelled_part(dataset, stem)
        if valid is not None:  # an annotated slide's window: only its regions are labelled, as in run_evaluate
            gt[~valid] = 0
        image = read_rgb(Path(normalized_dir) / f"{stem}.png") if (pp.graphcut and normalized_dir) else None
        per_t = []
        for t in thresholds:
            labels = postprocess(prob, dataclasses.replace(pp, threshold=float(t)), image=image, grow=grow)
            if valid is not None:
                labels[~valid] = 0
            r = per_fibre_precision_recall(labels, gt)
            r["object_f1"] = object_f1(labels, gt) if r["n_gt"] else float("nan")
            rows.append({"image": stem, "threshold": float(t), **r})
            per_t.append([r[k] for k in names])
        scores.append(per_t)
    summary = fixed_and_dynamic_thresholds(np.array(scores).reshape(len(scores), len(thresholds), len(names)),
                                           thresholds, names)
    summary["fibres_from"] = fibres_from
    summary["thresholds"] = [float(t) for t in thresholds]
    with atomic_path(out_tsv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_json(out_summary, summary)
    if summary["n_images"]:
        log.info("per-fibre F1: FT %.4f ± %.4f (threshold %.2f), DT %.4f ± %.4f", summary["ft_f1_mean"],
                 summary["ft_f1_sd"], summary["ft_threshold"], summary["dt_f1_mean"], summary["dt_f1_sd"])
    return summary


def evaluate_classes(
    classes_dir: PathLike, dataset: dict[str, Any], classes: list[str], out_tsv: PathLike, out_summary: PathLike,
    predictions_dir: PathLike | None = None,
) -> dict[str, Any]:
    """Per-class Dice, F1, Jaccard, precision, recall and pixel accuracy of every test image, and a summary.

    The test images are the rows. The summary holds their mean ± sd over images, the same scores of the pooled
    confusion matrix (``pooled_*``) and that matrix itself (``confusion``, rows = truth). With the class
    probability maps (``predictions_dir/<stem>.tif``, ``(C, H, W)``), also Res-CR-Net's soft scores
    (:func:`histoflow.semantic.soft_scores`: Tanimoto with complement and soft Dice per class, their sums pooled
    over the test images' pixels), and its Table 1's F1 and Jaccard of the class-averaged precision and recall
    (:func:`histoflow.semantic.scores_of_mean_precision_recall`).
    """
    import pandas as pd

    from ..datasets import labelled_part
    from ..io import atomic_path, read_image
    from ..metrics import summarize
    from ..semantic import (
        class_metrics,
        confusion_matrix,
        read_truth,
        scores_of_mean_precision_recall,
        soft_overlap_sums,
        soft_scores,
    )

    rows, pooled = [], np.zeros((len(classes), len(classes)), np.int64)
    soft = np.zeros((len(classes), 5)) if predictions_dir is not None else None
    for stem in dataset["test"]:
        pred = read_image(Path(classes_dir) / f"{stem}.tif")
        truth = read_truth(dataset, stem, classes)
        valid = labelled_part(dataset, stem)
        cm = confusion_matrix(pred, truth, len(classes)) if valid is None else confusion_matrix(
            pred[valid], truth[valid], len(classes))
        pooled += cm
        row = {"image": stem, **class_metrics(cm, classes)}
        if soft is not None:
            prob = read_image(Path(predictions_dir) / f"{stem}.tif")
            if valid is not None:  # the labelled pixels only, as a (C, n, 1) map against an (n, 1) truth
                prob, truth = prob[:, valid][..., None], truth[valid][:, None]
            sums = soft_overlap_sums(prob, truth)
            soft += sums
            row.update(soft_scores(sums, classes))
        rows.append(row)
    summary: dict[str, Any] = summarize(rows)
    summary.update({f"pooled_{k}": v for k, v in class_metrics(pooled, classes).items()})
    summary.update({f"pooled_{k}": v for k, v in scores_of_mean_precision_recall(
        summary["pooled_mean_precision"], summary["pooled_mean_recall"]).items()})
    if soft is not None:
        summary.update({f"pooled_{k}": v for k, v in soft_scores(soft, classes).items()})
    summary["classes"] = list(classes)
    summary["confusion"] = pooled.tolist()
    with atomic_path(out_tsv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_json(out_summary, summary)
    log.info("mean class Dice %.4f (pooled %.4f), pixel accuracy %.4f%s", summary["mean_dice_mean"],
             summary["pooled_mean_dice"], summary["pooled_pixel_accuracy"],
             f", Tanimoto {summary['pooled_mean_tanimoto']:.4f}" if soft is not None else "")
    return summary
