"""Stage of ``rules/train.smk``: train one model (or one stage of a two-stage model) from a patch store.

:func:`run_train` reads the patch store, builds and initialises the model, trains it (restarting
with a smaller batch on GPU out-of-memory, resuming a checkpoint of the same run) and writes
``model.pt``, ``spec.json``, ``history.tsv``, ``curves.png`` and ``augmented.png``. Each of those
concerns is one function below or in the library (:mod:`histoflow.train`, :mod:`histoflow.models`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..io import PathLike

log = logging.getLogger(__name__)


def run_train(
    store: PathLike, model_cfg: dict[str, Any], seed: int, device: str, out_dir: PathLike,
    init_from: PathLike | None = None, stage: str = "train",
) -> dict[str, Any]:
    """Train one model from the patch store; writes model.pt, spec.json, history.tsv, curves.png.

    ``stage="pretrain"`` trains with the model's ``pretrain`` block (stage 1 of two-stage training,
    e.g. fibre boundaries); ``init_from`` (a trained ``model.pt``, e.g. that of stage 1) initialises
    every weight from it before training (stage 2: fine-tuning on another target). Otherwise
    ``weights`` (a local file) initialises the model (:func:`histoflow.models.load_initial_weights`).
    """
    from ..device import resolve_device
    from ..models import build_model, load_initial_weights, save_model
    from ..patches import read_patch_group, read_store_attrs
    from ..train import loss_fields, seed_everything, train_instances, train_model, train_with_oom_fallback

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    attrs = read_store_attrs(store)
    classes = json.loads(attrs.get("classes", "[]"))
    kwargs = {"in_channels": 3, "out_channels": len(classes) if classes else 1, **model_cfg.get("params", {})}
    seed_everything(seed)  # the initial weights are part of the reproducible run
    model = build_model(model_cfg["arch"], **kwargs)
    instance = getattr(model, "instance_model", False)
    cfg = stage_config(model_cfg, stage, seed, classes, instance)
    init = initial_weights(model_cfg, init_from)
    if init is not None:
        load_initial_weights(model, init, whole_model=init_from is not None)
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
    # a resumed run: its earlier jobs' training time counts too (the history's cumulative loop time)
    elapsed = result["history"][-1].get("elapsed", 0.0) if result["history"] else 0.0
    spec = model_spec(model_cfg, kwargs, cfg, attrs, classes, result, dev, stage, instance,
                      train_seconds=max(time.perf_counter() - t0, elapsed))
    write_training_figures(result["history"], train, cfg, out)
    save_model(model.cpu(), spec, out)
    (out / "checkpoint.pt").unlink(missing_ok=True)  # the model is saved; a rerun starts afresh
    return spec


def stage_config(model_cfg: dict[str, Any], stage: str, seed: int, classes: list[str], instance: bool):
    """The :class:`~histoflow.train.TrainConfig` of one training stage.

    An instance model learns boxes and masks from the instance labels, and a multi-class workflow a softmax over
    its classes, whatever ``target`` the block names.
    """
    from ..train import TrainConfig

    stage_cfg = dict(model_cfg.get(stage, {}))
    if instance and classes:
        raise ValueError(f"model {model_cfg['arch']!r} segments object instances, but this workflow is multi-class "
                         "(top-level classes:); use a semantic model (unet, rescrnet) or drop classes:")
    if instance:
        stage_cfg["target"] = "instances"
    elif classes:
        stage_cfg["target"] = "classes"
    return TrainConfig(**stage_cfg, seed=seed)


def initial_weights(model_cfg: dict[str, Any], init_from: PathLike | None) -> Path | None:
    """The file that initialises the model: stage 1's ``model.pt``, else ``weights`` (a local file), else none."""
    if init_from:
        return Path(init_from)
    return Path(model_cfg["weights"]) if model_cfg.get("weights") else None


def model_spec(model_cfg: dict[str, Any], kwargs: dict[str, Any], cfg, attrs: dict[str, Any], classes: list[str],
               result: dict[str, Any], dev, stage: str, instance: bool, train_seconds: float) -> dict[str, Any]:
    """``spec.json``: what rebuilds the model (arch, kwargs) and how its outputs are used and were made."""
    import torch

    from ..device import cpu_name, resolve_precision
    from ..train import instance_precision

    return {
        "arch": model_cfg["arch"],
        "kwargs": kwargs,
        "input": "rgb/255",
        "target": cfg.target,
        "boundary_width": int(attrs.get("boundary_width", 1)),
        "scale": float(attrs.get("scale", 1.0)),  # the working resolution it was trained at (histoflow.resample)
        "long_side": int(attrs.get("long_side", 0)) or None,
        "classes": classes,
        "threshold": result.get("threshold", 0.5),
        **({"instances": True, "score_threshold": result["score_threshold"], "val_aji": result["val_aji"]}
           if instance else {}),
        "batch_size": cfg.batch_size,
        "val_dice": result["val_dice"],
        "train_seconds": train_seconds,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "precision": resolve_precision(instance_precision(cfg.precision, dev) if instance else cfg.precision, dev),
        "stage": stage,
    }


def write_training_figures(history: list[dict[str, float]], train: dict[str, Any], cfg, out: Path) -> None:
    """``history.tsv``, the training curves and a figure of augmented training patches."""
    from ..augment import augmentation_examples
    from ..figures import plot_augmented, plot_history
    from ..train import write_history_tsv

    write_history_tsv(history, out / "history.tsv")
    plot_history(history, out / "curves.png")
    field = "labels" if cfg.target == "instances" else cfg.target
    images, targets = augmentation_examples(train["images"], train[field], cfg.augment, cfg.seed,
                                            labels=field == "labels")
    name = cfg.augment if isinstance(cfg.augment, str) else ("dihedral" if cfg.augment is True else cfg.augment)
    plot_augmented(images, targets, out / "augmented.png",
                   title=f"augmented training patches ({name}); outlines = {cfg.target}")


def _fingerprint(path: PathLike | None) -> list | None:
    """Size and modification time of an input file: a regenerated input changes it."""
    if path is None:
        return None
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]
