"""Stage of ``rules/volumes.smk``: the serial-section volumes.

Serial-section stacks, scribbles, volume models' predictions, M-Unet features, DDML, the 3-D graph cut and the
ablation table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..io import PathLike, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

def run_volume_data(out_dir: PathLike, spec: dict[str, Any]) -> None:
    """Write ``train/``, ``target/`` and ``val/`` synthetic organ stacks (images + labels) into ``out_dir``.

    ``val`` is a third, independent stack: the graph-cut parameters are chosen on it (:func:`run_search_graphcut`).
    """
    from ..synthetic.organs import make_organ_stack
    from ..volume import write_stack

    shape = (spec["n_slices"], spec["size"], spec["size"])
    for part, seed in (("target", spec["seed"]), ("train", spec["seed"] + 1000), ("val", spec["seed"] + 2000)):
        images, labels = make_organ_stack(seed, shape)
        write_stack(Path(out_dir) / part, images, labels)
        log.info("%s stack: %s, organ fraction %.3f", part, images.shape, labels.mean())


def run_normalize_volume(dirs: dict[str, str], out_dir: PathLike, method: str) -> dict[str, Any]:
    """Stain-normalize the training, target (and validation) stacks into ``out_dir/<part>``.

    As the M-Unet paper colour-normalizes each volume with Vahadane's method before anything else: one
    normalizer, fitted on the middle slice of the training stack, maps every slice of every stack to that
    slice's stains (so the target's stain drift along z is removed and the stacks look alike). Labels are
    copied unchanged. Writes ``out_dir/stain.json`` (the fitted normalizer) and returns what it did.
    """
    from ..stain import get_normalizer, save_normalizer
    from ..volume import read_stack, write_stack

    out = Path(out_dir)
    train, train_labels = read_stack(dirs["train"])
    ref = len(train) // 2
    norm = get_normalizer(method).fit(train[ref])
    save_normalizer(norm, out / "stain.json")
    others = ((part, read_stack(d)) for part, d in dirs.items() if part != "train")
    for part, (images, labels) in (("train", (train, train_labels)), *others):
        write_stack(out / part, np.stack([norm.transform(s) for s in images]), labels)
        log.info("%s stack: %d slices normalized (%s, reference: training slice %d)", part, len(images), method, ref)
    return {"method": method, "reference_slice": ref}


def run_auto_scribbles(target_dir: PathLike, every: int, seed: int, out_tif: PathLike) -> None:
    from ..scribbles import make_scribbles
    from ..volume import read_stack, write_tiff_stack

    _, labels = read_stack(target_dir)
    if labels is None:
        raise ValueError(f"{target_dir}: automatic scribbles need the target's labels; draw scribbles instead")
    seeds = make_scribbles(labels, every=every, seed=seed)
    write_tiff_stack(out_tif, seeds)
    log.info("scribbles on %d slices: %d fg, %d bg pixels", int((seeds.reshape(len(seeds), -1).max(1) > 0).sum()),
             int((seeds == 1).sum()), int((seeds == 2).sum()))


def _tiled(model, predictor, image: np.ndarray, predict: dict[str, Any], dev) -> np.ndarray:
    import torch

    from ..tiling import predict_tiled

    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return predict_tiled(
        predictor, x, tile=predict["tile"], overlap=predict["overlap"], batch_size=predict["batch_size"],
        blend=predict["blend"], device=dev, context=(getattr(model, "context_factor", 1) - 1) * predict["tile"] // 2,
    )


def run_predict_volume(model_dir: PathLike, target_dir: PathLike, predict: dict[str, Any], device: str,
                       out_tif: PathLike) -> None:
    """Foreground probability ``float32 (Z, H, W)`` of every target slice (tiled, blended)."""
    import tifffile
    import torch
    from tqdm import tqdm

    from ..device import load_for_inference
    from ..volume import read_stack

    model, _, dev = load_for_inference(model_dir, device)
    images, _ = read_stack(target_dir)
    prob = np.stack([_tiled(model, lambda b: torch.sigmoid(model(b)), im, predict, dev)[0]
                     for im in tqdm(images, desc="slices", mininterval=5)])
    with atomic_path(out_tif) as tmp:
        tifffile.imwrite(tmp, prob.astype(np.float32), compression="zlib")


def run_volume_features(model_dir: PathLike, dirs: dict[str, str], predict: dict[str, Any], train_every: int,
                        device: str, out_h5: PathLike) -> None:
    """M-Unet per-pixel features (the layer before its last 1×1 conv) into HDF5.

    ``target/features (Z, H, W, F)`` float16 for every target slice (and ``val/features`` for every slice of the
    validation stack, when ``dirs`` has one), and ``train/features``, ``train/labels`` for every
    ``train_every``-th training slice (training pixels for DDML; without a validation stack, the slices on which
    the graph-cut parameters are chosen); ``*/prob`` the M-Unet probability.
    """
    import torch
    from tqdm import tqdm

    from ..device import load_for_inference
    from ..volume import read_stack

    model, _, dev = load_for_inference(model_dir, device)
    if not hasattr(model, "forward_features"):
        raise ValueError(f"{model_dir}: DDML needs a model with forward_features (arch munet)")

    def both(b):
        f = model.forward_features(b)
        return torch.cat([torch.sigmoid(model.head(f)), f], dim=1)

    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        for part in ("target", "train", "val")[: 3 if "val" in dirs else 2]:
            images, labels = read_stack(dirs[part])
            idx = np.arange(0, len(images), train_every) if part == "train" else np.arange(len(images))
            g = h5.create_group(part)
            g["slices"] = idx
            feats = probs = None
            for k, i in enumerate(tqdm(idx, desc=f"{part} features", mininterval=5)):
                out = _tiled(model, both, images[i], predict, dev)
                if feats is None:
                    feats = g.create_dataset("features", (len(idx), *out.shape[1:], out.shape[0] - 1), np.float16,
                                             chunks=(1, *out.shape[1:], out.shape[0] - 1), compression="gzip")
                    probs = g.create_dataset("prob", (len(idx), *out.shape[1:]), np.float32)
                probs[k] = out[0]
                feats[k] = np.moveaxis(out[1:], 0, -1).astype(np.float16)
            if labels is not None:
                g["labels"] = labels[idx].astype(np.uint8)
            g["images"] = images[idx]


def fit_ddml(features: np.ndarray, seeds: np.ndarray, train_f: np.ndarray, train_y: np.ndarray,
              ddml: dict[str, Any], seed: int, scribbles: PathLike):
    """DDML's metric network and discriminator: trained on the scribbled pixels plus sampled training pixels."""
    from ..ddml import train_discriminator, train_metric

    rng = np.random.default_rng(seed)
    xs, ys = (
        [features[seeds == 1], features[seeds == 2]],
        [np.ones((seeds == 1).sum(), np.int64), np.zeros((seeds == 2).sum(), np.int64)],
    )
    if len(xs[0]) == 0 or len(xs[1]) == 0:
        raise ValueError(f"{scribbles}: needs both foreground (1) and background (2) scribbles")
    n_train = min(ddml["train_pixels"], train_y.size)
    if n_train:
        pick = rng.choice(train_y.size, n_train, replace=False)
        xs.append(train_f.reshape(-1, train_f.shape[-1])[pick])
        ys.append(train_y.reshape(-1)[pick].astype(np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    log.info("DDML on %d pixels (%d from scribbles), %d features", len(x), int((seeds > 0).sum()), x.shape[1])
    net = train_metric(x, y, dims=tuple(ddml["dims"]), tau=ddml["tau"], beta=ddml["beta"], lam=ddml["lam"],
                       steps=ddml["steps"], seed=seed)
    return net, train_discriminator(net, x, y, seed=seed)


def run_ddml(features_h5: PathLike, scribbles: PathLike, ddml: dict[str, Any], seed: int,
             out_target: PathLike, out_train: PathLike | None = None, part: str = "target") -> None:
    """Train DDML on a stack's scribble pixels (+ sampled training pixels) and write its refined probability ``h``.

    ``part`` is the stack of ``features_h5`` (``target``, or ``val``: the validation stack with its own scribbles, on
    which the graph-cut parameters are chosen as they are used). ``h`` is written as a TIFF (``out_target``) and,
    with ``out_train``, for the training slices too (NPZ, for the search on training slices).
    """
    import tifffile

    from ..ddml import refined_probability
    from ..scribbles import read_scribbles

    with h5py.File(features_h5, "r") as h5:
        tf = h5[f"{part}/features"][...].astype(np.float32)
        train_f = h5["train/features"][...].astype(np.float32)
        train_y = h5["train/labels"][...]
    seeds = read_scribbles(scribbles, tf.shape[:3])
    net, head = fit_ddml(tf, seeds, train_f, train_y, ddml, seed, scribbles)
    with atomic_path(out_target) as tmp:
        tifffile.imwrite(tmp, refined_probability(net, head, tf), compression="zlib")
    if out_train is not None:
        with atomic_path(out_train) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, h=refined_probability(net, head, train_f))


def run_search_graphcut(
    train_h: PathLike, features_h5: PathLike, grid: dict[str, list[float]], out_json: PathLike
) -> None:
    """Choose γ, σ, δ on the training slices, 2-D without seeds (``graphcut.search: training_slices``).

    Their labels are known and the target is never used, but DDML saw those slices' pixels in training, so their
    ``h`` is in-sample, and the cut the parameters are chosen for differs from the target's (3-D, seeded):
    :func:`run_search_graphcut_validation` is the default.
    """
    from ..graphcut import search_parameters

    h = np.load(train_h)["h"]
    with h5py.File(features_h5, "r") as h5:
        images, labels = h5["train/images"][...], h5["train/labels"][...]
    best, table = search_parameters(list(h), list(images), list(labels), grid["gamma"], grid["sigma"], grid["delta"])
    write_json(out_json, {"protocol": "training slices, 2-D, without seeds", "best": best,
                          "table": table.to_dict(orient="records")})
    log.info("graph-cut parameters chosen on %d training slices: %s", len(h), best)


def run_search_graphcut_validation(val_h: PathLike, val_dir: PathLike, scribbles: PathLike,
                                   grid: dict[str, Any], spacing, out_json: PathLike) -> dict[str, float]:
    """Choose γ, σ, δ the way they are used: one 3-D graph cut with the scribbles as seeds, on the validation stack.

    ``val_h`` is DDML's refined probability of the validation stack, trained on its own scribbles (never on its
    labels), so every candidate is scored on the same kind of input, with the same seeds and spacing, as the
    target's cut gets; the labels only score it (IoU). Returns the best parameters.
    """
    import tifffile

    from ..graphcut import search_parameters
    from ..scribbles import read_scribbles
    from ..volume import read_stack

    h = tifffile.imread(val_h)
    images, labels = read_stack(val_dir)
    if labels is None:
        raise ValueError(f"{val_dir}: the validation stack needs labels (labels/ beside its slices)")
    seeds = read_scribbles(scribbles, h.shape)
    best, table = search_parameters(h, images, labels, grid["gamma"], grid["sigma"], grid["delta"], seeds=seeds,
                                    spacing=tuple(spacing) if spacing else None, banded=grid["banded"])
    write_json(out_json, {"protocol": "validation stack, 3-D, scribbles as seeds", "best": best,
                          "table": table.to_dict(orient="records")})
    log.info("graph-cut parameters chosen in 3-D on the %d-slice validation stack: %s", len(h), best)
    return best


def run_graphcut_volume(refined: PathLike, target_dir: PathLike, scribbles: PathLike, params_json: PathLike,
                        spacing, banded: bool, out_tif: PathLike, out_summary: PathLike, out_views: PathLike) -> None:
    """One 3-D graph cut over the whole target stack, scribbles as hard seeds."""
    import tifffile

    from ..graphcut import graphcut, graphcut_banded
    from ..scribbles import read_scribbles
    from ..volume import orthogonal_views, read_stack, volume_summary, write_tiff_stack

    h = tifffile.imread(refined)
    images, _ = read_stack(target_dir)
    seeds = read_scribbles(scribbles, h.shape)
    p = read_json(params_json)["best"]
    cut = graphcut_banded if banded else graphcut
    mask = cut(h, images, gamma=p["gamma"], sigma=p["sigma"], delta=p["delta"], seeds=seeds,
               spacing=tuple(spacing) if spacing else None)
    write_tiff_stack(out_tif, mask.astype(np.uint8))
    write_json(out_summary, volume_summary(mask, tuple(spacing) if spacing else None))
    orthogonal_views(images, mask, out_views, spacing=tuple(spacing) if spacing else None)


def voxel_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and IoU of two binary volumes."""
    from ..metrics import pixel_metrics

    m = pixel_metrics(pred.reshape(pred.shape[0], -1) > 0, truth.reshape(truth.shape[0], -1) > 0)
    return {k: m[k] for k in ("precision", "recall", "f1", "iou")}


#: Display names of the volume models in the ablation table.
VOLUME_MODEL_NAMES = {"unet": "U-Net", "munet": "M-Unet", "munet_joint": "M-Unet, branches trained jointly"}


def ablation_methods(vmodels: list[str], predictions: list[PathLike], specs: list[PathLike], features_from: str,
                     refined: PathLike, mask: PathLike) -> dict[str, tuple[PathLike, float]]:
    """The rows of the ablation table, in order.

    Each volume model's probability at its validation-chosen threshold (the plain U-Net baseline first), then
    DDML's refined probability and the graph cut's mask.
    """
    methods: dict[str, tuple[PathLike, float]] = {}
    rows = zip(vmodels, predictions, specs, strict=True)
    for m, pred, spec in sorted(rows, key=lambda r: r[0] != "unet"):
        methods[VOLUME_MODEL_NAMES.get(m, m)] = (pred, read_json(spec)["threshold"])
    ddml = VOLUME_MODEL_NAMES.get(features_from, features_from)
    methods[f"{ddml} + DDML"] = (refined, 0.5)
    methods[f"{ddml} + DDML + graph cut"] = (mask, 0.5)
    return methods


def run_evaluate_volume(target_dir: PathLike, methods: dict[str, tuple[PathLike, float]], out_tsv: PathLike) -> None:
    """The ablation table: each method's probability (thresholded) or mask against the target labels."""
    import pandas as pd
    import tifffile

    from ..volume import read_stack

    _, truth = read_stack(target_dir)
    if truth is None:
        raise ValueError(f"{target_dir}: no labels, nothing to evaluate against")
    rows = []
    for name, (path, threshold) in methods.items():
        pred = tifffile.imread(path) > threshold
        rows.append({"method": name, **voxel_scores(pred, truth)})
        log.info("%s: %s", name, rows[-1])
    with atomic_path(out_tsv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.4f")

