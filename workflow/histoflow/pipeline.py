"""The workflow's stages as plain functions of paths and config dicts.

Each ``run_*`` function is what one Snakemake rule does: read its inputs, call the array-level
functions of the stage modules, write its outputs atomically. The scripts in ``workflow/scripts``
only unpack Snakemake's ``snakemake`` object into these calls, so every stage can also be run and
tested without Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .io import read_json, read_labels, read_rgb, write_image, write_json

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


def run_demo_data(out_dir: PathLike, demo: dict[str, Any]) -> list[str]:
    """Generate the synthetic muscle-fibre dataset into ``out_dir/images`` and ``out_dir/labels``, and
    its 3-class masks (gap / cytoplasm / boundary) into ``out_dir/classes``."""
    from .demo import FibreParams, fibre_classes, make_demo_dataset

    out = Path(out_dir)
    params = FibreParams(size=(demo["size"], demo["size"]), fibre_diameter=demo["fibre_diameter"])
    stems = make_demo_dataset(out / "images", out / "labels", demo["n_images"], demo["seed"], params)
    (out / "classes").mkdir(exist_ok=True)
    for stem in stems:
        write_image(out / "classes" / f"{stem}.png", fibre_classes(read_labels(out / "labels" / f"{stem}.png")))
    log.info("wrote %d demo images to %s", len(stems), out)
    return stems


def run_fit_stain(target_image: PathLike, method: str, kwargs: dict[str, Any], out_json: PathLike) -> None:
    from .stain import get_normalizer, save_normalizer

    norm = get_normalizer(method, **kwargs).fit(read_rgb(target_image))
    save_normalizer(norm, out_json)
    d = read_json(out_json)
    d["target_image"] = str(target_image)
    write_json(out_json, d)
    log.info("fitted %s normalizer on %s", method, target_image)


def run_normalize(images: dict[str, str], stain_json: PathLike, out_dir: PathLike) -> None:
    """Normalize every image (stem → path) with the fitted normalizer into ``out_dir/<stem>.png``."""
    from tqdm import tqdm

    from .stain import load_normalizer

    norm = load_normalizer(stain_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem, path in tqdm(sorted(images.items()), desc="normalize", unit="image", mininterval=5):
        write_image(out / f"{stem}.png", norm.transform(read_rgb(path)))


def run_extract_patches(
    datasets: dict[str, dict[str, Any]],
    normalized_dirs: dict[str, PathLike],
    patches: dict[str, Any],
    seed: int,
    out_store: PathLike,
    out_split: PathLike,
    classes: list[str] | None = None,
) -> dict[str, int]:
    """Split each dataset's training images into train/val and write all their patches to HDF5.

    With ``classes`` (a multi-class workflow) the masks are class masks; their per-class components
    are the instance labels behind the boundary and contour-aware weight maps."""
    from .patches import extract_patches, split_stems, write_patch_store
    from .semantic import class_instances, read_truth

    rng = np.random.default_rng(seed)
    roles: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for name, d in datasets.items():
        train, val = split_stems(d["train"], patches["val_fraction"], seed)
        roles["train"] += [(name, s) for s in train]
        roles["val"] += [(name, s) for s in val]

    def patches_of(items: list[tuple[str, str]], mode: str):
        for name, stem in items:
            d = datasets[name]
            image = read_rgb(Path(normalized_dirs[name]) / f"{stem}.png")
            truth = read_truth(d, stem, classes)
            labels = class_instances(truth) if classes else truth
            if image.shape[:2] != labels.shape:
                raise ValueError(
                    f"{d['masks'][stem]}: mask is {labels.shape} but its image {d['images'][stem]} is "
                    f"{image.shape[:2]}; masks must have the same size as their images."
                )
            yield from extract_patches(
                image, labels, f"{name}/{stem}", patches["size"], mode=mode, n_random=patches["per_image"],
                overlap=patches["overlap"], rng=rng, boundary_width=patches["boundary_width"],
                weight_w0=patches["weight_w0"], weight_sigma=patches["weight_sigma"],
                distance_w0=patches["distance_w0"], distance_sigma=patches["distance_sigma"],
                classes=truth if classes else None,
            )

    # Validation always uses the grid, so its score does not depend on random crops.
    counts = write_patch_store(
        out_store,
        {"train": patches_of(roles["train"], patches["mode"]), "val": patches_of(roles["val"], "grid")},
        patches["size"],
        attrs={"boundary_width": patches["boundary_width"], "classes": json.dumps(list(classes or []))},
    )
    write_json(out_split, {k: [f"{n}/{s}" for n, s in v] for k, v in roles.items()} | {"counts": counts})
    log.info("patches: %s", counts)
    return counts


def run_train(
    store: PathLike, model_cfg: dict[str, Any], seed: int, device: str, out_dir: PathLike,
    init_from: PathLike | None = None, stage: str = "train",
) -> dict[str, Any]:
    """Train one model from the patch store; writes model.pt, spec.json, history.tsv, curves.png.

    ``stage="pretrain"`` trains with the model's ``pretrain`` block (stage 1 of two-stage training,
    e.g. fibre boundaries); ``init_from`` (a trained model's folder, e.g. that stage 1) initialises
    every weight from it before training (stage 2: fine-tuning on another target). Otherwise
    ``weights`` (a local file) initialises the model: through the architecture's
    ``load_pretrained`` when it has one (VGG16 encoders check the file's layout), else as a state
    dict loaded non-strictly.
    """
    import torch

    from .device import resolve_device
    from .models import build_model, save_model
    from .patches import read_patch_group, read_store_attrs
    from .report import plot_history
    from .train import (
        TrainConfig,
        loss_fields,
        seed_everything,
        train_instances,
        train_model,
        write_history_tsv,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    attrs = read_store_attrs(store)
    classes = json.loads(attrs.get("classes", "[]"))
    stage_cfg = dict(model_cfg.get(stage, {}))
    kwargs = {"in_channels": 3, "out_channels": len(classes) if classes else 1, **model_cfg.get("params", {})}
    seed_everything(seed)  # the initial weights are part of the reproducible run
    model = build_model(model_cfg["arch"], **kwargs)
    instance = getattr(model, "instance_model", False)
    if instance and classes:
        raise ValueError(f"model {model_cfg['arch']!r} segments object instances, but this workflow is multi-class "
                         "(top-level classes:); use a semantic model (unet, rescrnet) or drop classes:")
    if instance:  # boxes and masks from the instance labels, whatever the target was
        stage_cfg["target"] = "instances"
    elif classes:  # multi-class workflow: a softmax over the classes, whatever the target was
        stage_cfg["target"] = "classes"
    cfg = TrainConfig(**stage_cfg, seed=seed)
    init = Path(init_from) / "model.pt" if init_from else (Path(model_cfg["weights"]) if model_cfg.get("weights") else None)
    if init is not None and not init.exists():
        raise FileNotFoundError(f"{init}: initial weights not found (models.*.weights in config.yaml).")
    if init_from:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
        log.info("stage %s: initialised from %s", stage, init)
    elif init is not None and hasattr(model, "load_pretrained"):
        model.load_pretrained(init)
    elif init is not None:
        missing, unexpected = model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True), strict=False)
        log.info("initialised from %s (missing %d, unexpected %d keys)", init, len(missing), len(unexpected))
    fields = ("images", "labels") if instance else loss_fields(cfg)
    train = read_patch_group(store, "train", fields)
    val = read_patch_group(store, "val", fields)
    log.info("training %s (%s, target %s, loss %s) on %s: %d train / %d val patches, %.2f M parameters",
             model_cfg["arch"], stage, cfg.target, "the model's own" if instance else cfg.loss, dev,
             len(train["images"]), len(val["images"]), sum(p.numel() for p in model.parameters()) / 1e6)
    t0 = time.perf_counter()
    # The checkpoint resumes only the same run: same settings and the same input files.
    run_key = {"model": model_cfg, "stage": stage, "inputs": [_fingerprint(store), _fingerprint(init)]}
    result = train_with_oom_fallback(model, train, val, cfg, dev, out / "checkpoint.pt", run_key,
                                     train_instances if instance else train_model)
    spec = {
        "arch": model_cfg["arch"],
        "kwargs": kwargs,
        "input": "rgb/255",
        "target": cfg.target,
        "boundary_width": int(attrs.get("boundary_width", 1)),
        "classes": classes,
        "threshold": result.get("threshold", 0.5),
        **({"instances": True, "score_threshold": result["score_threshold"], "val_aji": result["val_aji"]}
           if instance else {}),
        "batch_size": cfg.batch_size,
        "val_dice": result["val_dice"],
        "train_seconds": time.perf_counter() - t0,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "stage": stage,
    }
    write_history_tsv(result["history"], out / "history.tsv")
    plot_history(result["history"], out / "curves.png")
    plot_augmentation_examples(train, cfg, out / "augmented.png")
    save_model(model.cpu(), spec, out)
    (out / "checkpoint.pt").unlink(missing_ok=True)  # the model is saved; a rerun starts afresh
    return spec


def _fingerprint(path: PathLike | None) -> list | None:
    """Size and modification time of an input file: a regenerated input changes it."""
    if path is None:
        return None
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def plot_augmentation_examples(train: dict[str, np.ndarray], cfg, path: Path, n: int = 6) -> None:
    """Save a figure of ``n`` augmented training patches with their targets outlined."""
    import torch

    from .augment import augment, augment_config
    from .report import plot_augmented
    from .train import images_to_tensor

    k = min(n, len(train["images"]))
    x = images_to_tensor(train["images"][:k])
    field = "labels" if cfg.target == "instances" else cfg.target
    y = torch.from_numpy(train[field][:k])[:, None]
    y = y.long() if field == "labels" else y.float()
    aug = augment_config(cfg.augment)
    xa, (ya,) = augment(x, [y], aug, torch.Generator().manual_seed(cfg.seed))
    images = (xa.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    name = cfg.augment if isinstance(cfg.augment, str) else ("dihedral" if cfg.augment is True else cfg.augment)
    plot_augmented(images, ya[:, 0].numpy(), path, title=f"augmented training patches ({name}); outlines = {cfg.target}")


def train_with_oom_fallback(model, train, val, cfg, dev, checkpoint: Path, run_key: Any, train_fn=None):
    """``train_fn`` (default :func:`histoflow.train.train_model`), restarted with half the batch
    size on CUDA out-of-memory.

    A job that asked for too large a batch still finishes (more slowly, with a warning in its log)
    instead of failing after the queue wait; ``cfg.batch_size`` is updated to the size that worked.
    """
    import copy

    import torch

    from .train import train_model

    train_fn = train_fn or train_model
    initial = copy.deepcopy(model.state_dict())
    while True:
        try:
            return train_fn(model, train, val, cfg, dev, checkpoint, run_key=run_key)
        except torch.cuda.OutOfMemoryError:
            if cfg.batch_size == 1:
                raise RuntimeError("out of GPU memory with batch_size=1: lower patches.size or the model width") from None
            cfg.batch_size //= 2
            log.warning("out of GPU memory: restarting training with batch_size=%d", cfg.batch_size)
            model.load_state_dict(initial)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def run_predict(
    model_dir: PathLike, normalized_dir: PathLike, stems: list[str], predict: dict[str, Any], device: str,
    out_dir: PathLike,
) -> None:
    """Tiled inference: ``out_dir/<stem>.tif`` float32 foreground probability ``(H, W)`` per image, or
    the class probabilities ``(C, H, W)`` (softmax, averaged across overlaps) of a multi-class model."""
    import torch

    from .device import prepare_model, resolve_device
    from .models import load_model
    from .tiling import predict_tiled, tta_predictor

    dev = resolve_device(device)
    model, spec = load_model(model_dir, dev)
    model = prepare_model(model, dev)
    if getattr(model, "instance_model", False):
        predict_instances(model, spec, normalized_dir, stems, predict, dev, out_dir)
        return
    multiclass = bool(spec.get("classes"))
    activation = (lambda z: torch.softmax(z.float(), dim=1)) if multiclass else torch.sigmoid
    predictor = tta_predictor(lambda b: activation(model(b)), predict.get("tta", "none"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image = read_rgb(Path(normalized_dir) / f"{stem}.png")
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        t0 = time.perf_counter()
        prob = predict_tiled(
            predictor, x, tile=predict["tile"], overlap=predict["overlap"],
            batch_size=predict["batch_size"], blend=predict["blend"], device=dev,
            context=(getattr(model, "context_factor", 1) - 1) * predict["tile"] // 2,
        )
        prob = prob if multiclass else prob[0]
        write_image(out / f"{stem}.tif", prob.astype(np.float32))
        log.info("%s: %dx%d in %.2fs", stem, image.shape[0], image.shape[1], time.perf_counter() - t0)


def predict_instances(
    model, spec: dict[str, Any], normalized_dir: PathLike, stems: list[str], predict: dict[str, Any], dev,
    out_dir: PathLike,
) -> None:
    """Tiled detection with an instance model. Per image: ``<stem>.tif``, the seed's merge map (kept
    masks with pixels under ``mask_threshold`` zeroed, summed, clipped to [0, 1]; thresholded at
    the spec's 0.5 by the ``merge`` post-processing) and ``instances/<stem>.tif``, each kept detection
    with its own id (the ``preserve`` post-processing). Kept = score at least ``score_threshold``
    (null: the one chosen on the validation patches), then NMS at ``nms_iou``."""
    import torch

    from .detection import detect_tiled, filter_detections, instance_labels, merged_probability

    detector, score = instance_detector(model, spec, predict, dev)
    out = Path(out_dir)
    (out / "instances").mkdir(parents=True, exist_ok=True)
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
        log.info("%s: %dx%d, %d detections, %d kept, %d instances in %.2fs", stem, *shape, len(dets), len(kept),
                 labels.max(), time.perf_counter() - t0)


def instance_detector(model, spec: dict[str, Any], predict: dict[str, Any], dev):
    """An instance model's ``detect`` as the image and slide runners call it, and its detection
    score threshold: ``predict.score_threshold``, or when null the one chosen on the validation
    patches at training (``spec.json``). The detector runs under autocast and passes the score as
    ``min_score``, so the mask/refine heads skip what the threshold drops anyway."""
    from .device import autocast

    if predict.get("tta", "none") != "none":
        raise ValueError(f"predict.tta: {predict['tta']} averages probability maps; detections of the instance model "
                         f"{spec['arch']!r} cannot be averaged that way. Set tta: none for this model (or ensemble "
                         "its probability map with other models).")
    score = predict.get("score_threshold")
    score = float(spec.get("score_threshold", 0.5) if score is None else score)

    def detect(batch):
        with autocast(dev):
            return model.detect(batch, min_score=score)

    return detect, score


def run_ensemble_predict(member_dirs: list[PathLike], weights: list[float] | None, out_dir: PathLike) -> None:
    """Average the members' probability maps (``<stem>.tif`` in every member folder), weighted."""
    from .io import read_image

    w = np.asarray(weights if weights else [1.0] * len(member_dirs), np.float64)
    w = w / w.sum()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in Path(member_dirs[0]).glob("*.tif"))
    for stem in stems:
        acc = sum(wi * read_image(Path(d) / f"{stem}.tif").astype(np.float64) for wi, d in zip(w, member_dirs, strict=True))
        write_image(out / f"{stem}.tif", np.asarray(acc, np.float32))
    log.info("averaged %d members over %d images (weights %s)", len(member_dirs), len(stems), w.round(3).tolist())


def run_ensemble_vote(member_dirs: list[PathLike], weights: list[float] | None, vote_fraction: float,
                      out_dir: PathLike) -> None:
    """Instance voting (:func:`histoflow.postprocess.vote_instances`) between the members'
    post-processed instances (``<stem>.tif`` in every member folder). Writes ``instances/<stem>.tif``,
    the voted objects, and ``<stem>.tif``, the weighted fraction of members covering each pixel."""
    from .io import read_image
    from .postprocess import vote_instances

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


def run_postprocess(
    pred_dir: PathLike, spec_json: PathLike, cfg: dict[str, Any], out_dir: PathLike,
    normalized_dir: PathLike | None = None,
) -> None:
    """Probability maps → instance label TIFFs (uint16, or uint32 past 65535 objects)."""
    from .io import read_image
    from .postprocess import PostprocessConfig, postprocess, relabel_sequential

    pp = PostprocessConfig(**cfg)
    spec = read_json(spec_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if spec.get("classes"):  # multi-class: argmax, then each class's specks handed to their surroundings
        from .semantic import cleanup_classes

        for p in sorted(Path(pred_dir).glob("*.tif")):
            prob = read_image(p)
            write_image(out / f"{p.stem}.tif", cleanup_classes(prob.argmax(0).astype(np.uint8), pp.min_size))
        log.info("argmax class maps, regions under %d px merged into their surroundings", pp.min_size)
        return
    if spec.get("instances") and (pp.detections == "preserve" or spec.get("combine") == "vote"):  # own ids
        for p in sorted(Path(pred_dir).glob("*.tif")):
            labels = read_image(Path(pred_dir) / "instances" / p.name).astype(np.int64)
            labels[np.bincount(labels.ravel())[labels] < pp.min_size] = 0
            labels = relabel_sequential(labels)
            write_labels(out / p.name, labels)
        log.info("instances: the %s, each with its own id (objects under %d px dropped)",
                 "voted objects" if spec.get("combine") == "vote" else "model's detections", pp.min_size)
        return
    default_th = float(spec.get("threshold", 0.5))
    grow = instance_growth(spec)
    log.info("threshold: %s%s", pp.threshold if pp.threshold is not None else f"{default_th} (validation-chosen)",
             f"; graph cut gamma={pp.gamma} sigma={pp.sigma} delta={pp.delta}" if pp.graphcut else "")
    for p in sorted(Path(pred_dir).glob("*.tif")):
        image = read_rgb(Path(normalized_dir) / f"{p.stem}.png") if (pp.graphcut and normalized_dir) else None
        labels = postprocess(read_image(p), pp, default_th, image, grow=grow)
        write_labels(out / f"{p.stem}.tif", labels)


def write_labels(path: PathLike, labels: np.ndarray) -> None:
    """An instance label image as TIFF: uint16, or uint32 past 65535 objects."""
    write_image(path, labels.astype(np.uint16 if labels.max() < 65536 else np.uint32))


def instance_growth(spec: dict[str, Any]) -> int:
    """How far instances are grown after thresholding: the boundary width for a model of object
    interiors, else 0. A model of boundaries alone cannot give instances."""
    target = spec.get("target", "masks")
    if target == "boundaries":
        raise ValueError(f"model {spec.get('arch')!r} was trained on target boundaries, which gives no objects: "
                         "evaluate a model trained on masks or interiors (e.g. stage 2 of a two-stage model)")
    return int(spec.get("boundary_width", 1)) if target == "interiors" else 0


def run_export_objects(
    instances_dir: PathLike, normalized_dir: PathLike, pixel_size_um: float | None, classification: str,
    out_dir: PathLike,
) -> None:
    """Per image: QuPath GeoJSON of the instances with their measurements; per dataset:
    ``morphometry.tsv`` (one row per object: image, id and every measurement)."""
    import pandas as pd

    from .io import atomic_path, read_image
    from .morphometry import measure_objects
    from .qupath import instances_to_geojson

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
    probability and detection AP at IoU 0.5 is computed per image (``ap50``) and pooled over the
    dataset (``ap50_pooled``, the VOC way: all detections ranked together). With ``classes`` (a
    multi-class workflow) the outputs are class maps, scored per class (:func:`evaluate_classes`).
    """
    if classes:
        return evaluate_classes(instances_dir, dataset, classes, out_tsv, out_summary)
    import pandas as pd

    from .io import atomic_path, read_image
    from .metrics import (
        average_precision,
        evaluate_instances,
        match_detections,
        object_scores,
        per_fibre_precision_recall,
        summarize,
    )

    rows, pooled = [], ([], [], 0)
    for stem in dataset["test"]:
        pred = read_image(Path(instances_dir) / f"{stem}.tif").astype(np.int64)
        gt = read_labels(dataset["masks"][stem], dataset["mask_type"])
        fibre = per_fibre_precision_recall(pred, gt)  # skipped on images without ground-truth objects
        row = {"image": stem, **evaluate_instances(pred, gt),
               **({f"fibre_{k}": fibre[k] for k in ("precision", "recall", "f1")} if fibre["n_gt"] else {})}
        if predictions_dir is not None:
            scores = object_scores(pred, read_image(Path(predictions_dir) / f"{stem}.tif"))
            sc, tp, n_gt = match_detections(pred, gt, scores)
            row["ap50"] = average_precision(sc, tp, n_gt)
            pooled = (pooled[0] + [sc], pooled[1] + [tp], pooled[2] + n_gt)
        rows.append(row)
    summary = summarize(rows)
    if pooled[0]:
        summary["ap50_pooled"] = average_precision(np.concatenate(pooled[0]), np.concatenate(pooled[1]), pooled[2])
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
) -> dict[str, Any]:
    """Per-fibre precision / recall / F1 of every test image at every threshold (instances made by
    the configured post-processing at that threshold), and their fixed-threshold (FT) and
    dynamic-threshold (DT) summaries (:func:`histoflow.metrics.fixed_and_dynamic_thresholds`)."""
    import dataclasses

    import pandas as pd
    from tqdm import tqdm

    from .io import atomic_path, read_image
    from .metrics import fixed_and_dynamic_thresholds, per_fibre_precision_recall
    from .postprocess import PostprocessConfig, postprocess

    pp = PostprocessConfig(**postprocess_cfg)
    grow = instance_growth(read_json(spec_json))
    rows, scores = [], []
    for stem in tqdm(dataset["test"], desc="per-fibre P/R", unit="image", mininterval=5):
        prob = read_image(Path(pred_dir) / f"{stem}.tif")
        gt = read_labels(dataset["masks"][stem], dataset["mask_type"])
        image = read_rgb(Path(normalized_dir) / f"{stem}.png") if (pp.graphcut and normalized_dir) else None
        per_t = []
        for t in thresholds:
            labels = postprocess(prob, dataclasses.replace(pp, threshold=float(t)), image=image, grow=grow)
            r = per_fibre_precision_recall(labels, gt)
            rows.append({"image": stem, "threshold": float(t), **r})
            per_t.append([r["precision"], r["recall"], r["f1"]])
        scores.append(per_t)
    summary = fixed_and_dynamic_thresholds(np.array(scores).reshape(len(scores), len(thresholds), 3), thresholds)
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
) -> dict[str, Any]:
    """Per-class Dice, F1, Jaccard, precision, recall and pixel accuracy of every test image (rows), and
    a summary with their mean ± sd over images, the same scores of the pooled confusion matrix
    (``pooled_*``) and that matrix itself (``confusion``, rows = truth)."""
    import pandas as pd

    from .io import atomic_path, read_image
    from .metrics import summarize
    from .semantic import class_metrics, confusion_matrix, read_truth

    rows, pooled = [], np.zeros((len(classes), len(classes)), np.int64)
    for stem in dataset["test"]:
        pred = read_image(Path(classes_dir) / f"{stem}.tif")
        cm = confusion_matrix(pred, read_truth(dataset, stem, classes), len(classes))
        pooled += cm
        rows.append({"image": stem, **class_metrics(cm, classes)})
    summary: dict[str, Any] = summarize(rows)
    summary.update({f"pooled_{k}": v for k, v in class_metrics(pooled, classes).items()})
    summary["classes"] = list(classes)
    summary["confusion"] = pooled.tolist()
    with atomic_path(out_tsv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_json(out_summary, summary)
    log.info("mean class Dice %.4f (pooled %.4f), pixel accuracy %.4f", summary["mean_dice_mean"],
             summary["pooled_mean_dice"], summary["pooled_pixel_accuracy"])
    return summary
