"""Stage of ``rules/report.smk``: one self-contained HTML page from the workflow's outputs.

Figures are embedded as base64, so the file can be e-mailed. The page shows metrics, published references,
training, stain normalization, overlays, objects, per-fibre thresholds, classes and volumes.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..figures import (
    CLASS_COLOURS,
    biomarker_columns,
    class_colours,
    column_label,
    error_overlay,
    fig_tag,
    img_tag,
    morphometry_figure,
    pyplot,
    save_figure,
)
from ..io import PathLike, atomic_path, read_image, read_json, read_labels, read_rgb

log = logging.getLogger(__name__)

HEADLINE = [
    ("object_f1", "object F1"),
    ("object_dice", "object Dice"),
    ("object_hausdorff", "object Hausdorff (px)"),
    ("aji", "AJI"),
    ("pq", "PQ"),
    ("pixel_f1", "pixel Dice"),
    ("pixel_iou", "pixel IoU"),
    ("pixel_precision", "pixel precision"),
    ("pixel_recall", "pixel recall"),
]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def metrics_rows(results: str, models: list[str], datasets: list[str]) -> list[list[str]]:
    """One row per (model, dataset): mean ± sd of the headline metrics and the pooled object F1."""
    rows = []
    for m in models:
        for d in datasets:
            s = read_json(Path(results) / "metrics" / m / f"{d}_summary.json")
            cells = [m, d, str(int(s["n_images"]))]
            for key, _ in HEADLINE:
                mean, sd = s.get(f"{key}_mean", np.nan), s.get(f"{key}_sd", np.nan)
                cells.append(f"{mean:.3f} ± {sd:.3f}" if key != "object_hausdorff" else f"{mean:.1f} ± {sd:.1f}")
            cells.append(f"{s.get('object_f1_pooled', np.nan):.3f}")
            cells.append(f"{s.get('ap50_pooled', np.nan):.3f}")
            cells.append(_format_metric("box_ap50_pooled", s.get("box_ap50_pooled")))
            rows.append(cells)
    return rows


# Column labels of the summary keys published figures are usually given in (others show as the key).
REFERENCE_LABELS = {
    "object_f1_pooled": "object F1",
    "object_dice_pooled": "object Dice",
    "object_hausdorff_pooled": "object Hausdorff (px)",
    "aji_mean": "AJI",
    "pixel_f1_mean": "Dice (pixel)",
    "pq_mean": "PQ",
    "ap50_pooled": "AP@0.5",
    "box_ap50_pooled": "box AP@0.5",
    # the VGG16 fibre paper's Table 1 (metrics/<model>/<dataset>_fibres.json)
    "ft_f1_mean": "F (FT)",
    "dt_f1_mean": "F (DT)",
    "ft_precision_mean": "precision (FT)",
    "dt_precision_mean": "precision (DT)",
    "ft_recall_mean": "recall (FT)",
    "dt_recall_mean": "recall (DT)",
    # Res-CR-Net's table (class-averaged, pooled over the test images)
    "pooled_mean_tanimoto": "Tanimoto",
    "pooled_mean_soft_dice": "Dice (soft)",
    "pooled_jaccard_of_mean_pr": "Jaccard",
    "pooled_mean_precision": "precision",
    "pooled_mean_recall": "recall",
    "pooled_f1_of_mean_pr": "F1",
}


def _format_metric(key: str, value: float | None) -> str:
    """A metric for a table: Hausdorff distances with one decimal, scores with three; '–' if missing."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.1f}" if "hausdorff" in key else f"{value:.3f}"


def model_timing(results: str, model: str, dataset: str) -> dict[str, Any]:
    """Wall-clock training and inference seconds and the device they ran on, from a finished run.

    The device names the training precision and the inference backend and precision where the run recorded them.

    Training seconds cover both stages of a two-stage model; inference seconds are those on ``dataset`` (the
    ``predict`` job's benchmark file). ``None`` where the run has no such record (an ensemble is not trained).
    """
    import pandas as pd

    root = Path(results)
    spec_path = root / "models" / model / "spec.json"
    spec = read_json(spec_path) if spec_path.exists() else {}
    train = spec.get("train_seconds")
    stage1 = root / "models" / model / "stage1" / "spec.json"
    if train is not None and stage1.exists():
        train += read_json(stage1).get("train_seconds", 0.0)
    bench = root / "benchmarks" / "predict" / model / f"{dataset}.tsv"
    predict = float(pd.read_csv(bench, sep="\t")["s"].iloc[-1]) if bench.exists() else None
    device = spec.get("device_name") or spec.get("device")
    backend_json = root / "predictions" / model / dataset / "backend.json"
    backend = read_json(backend_json) if backend_json.exists() else {}
    if device and spec.get("precision"):
        device += f" (train {spec['precision']}"
        device += f"; inference {backend['backend']} {backend['precision']})" if backend.get("backend") else ")"
    return {"train_seconds": train, "predict_seconds": predict, "device": device}


def reference_table(results: str, models: list[str], dataset: str, references: list[dict[str, Any]]) -> str:
    """Published results on ``dataset`` (config ``references:``) and ours, in the same columns.

    One column per summary key the references give, plus our training and inference wall-clock times. Our
    figures come from the evaluation summary and, where the run made it, the per-fibre summary (FT / DT keys).
    """
    keys: list[str] = []
    for ref in references:
        keys += [k for k in ref["metrics"] if k not in keys]
    order = list(REFERENCE_LABELS)  # the usual order (F1, Dice, Hausdorff; AJI, Dice), others after
    keys.sort(key=lambda k: order.index(k) if k in order else len(order))
    header = ["method", "source", *(REFERENCE_LABELS.get(k, k) for k in keys), "training (s)", "inference (s)",
              "device"]
    rows = [[ref["method"], ref["source"] + (f" — {ref['note']}" if ref.get("note") else ""),
             *(_format_metric(k, ref["metrics"].get(k)) for k in keys), "", "", ""] for ref in references]
    for m in models:
        summary = read_json(Path(results) / "metrics" / m / f"{dataset}_summary.json")
        fibres = Path(results) / "metrics" / m / f"{dataset}_fibres.json"
        if fibres.exists():
            summary = {**read_json(fibres), **summary}
        t = model_timing(results, m, dataset)
        rows.append([f"histoflow: {m}", "this run", *(_format_metric(k, summary.get(k)) for k in keys),
                     "–" if t["train_seconds"] is None else f"{t['train_seconds']:.0f}",
                     "–" if t["predict_seconds"] is None else f"{t['predict_seconds']:.1f}", t["device"] or "–"])
    return _table(header, rows)


def reference_section(results: str, models: list[str], references: dict[str, list[dict[str, Any]]],
                      datasets: list[str]) -> list[str]:
    """The "Against published results" section: a :func:`reference_table` per test dataset with references."""
    named = [d for d in datasets if references.get(d)]
    if not named:
        return []
    parts = ["<h2>Against published results</h2>"]
    for d in named:
        parts.append(f"<h3>{html.escape(d)}</h3>")
        parts.append(reference_table(results, models, d, references[d]))
    parts.append(
        "<p class=note>Published figures as their authors report them (config <code>references:</code>), with "
        "their own training, on the same test images unless a row's source or note names other data (a seed "
        "config's paper whose data is not public); ours are this run's evaluation of its test images, in the "
        "column of the figure computed the same way. GlaS: object F1 from the detections pooled over the test "
        "part, object Dice and Hausdorff over all objects of the test part (pixels). AJI and pixel Dice: mean "
        "over test images. Training time includes both stages of a two-stage model; inference is the predict "
        "job (tiled, with test-time augmentation if configured), without post-processing.</p>")
    return parts


def benchmark_rows(results: str) -> list[list[str]]:
    """Per-job runtimes and peak memory from Snakemake's ``benchmark:`` files."""
    import pandas as pd

    rows = []
    root = Path(results) / "benchmarks"
    for p in sorted(root.rglob("*.tsv")):
        df = pd.read_csv(p, sep="\t")
        job = str(p.relative_to(root).with_suffix(""))
        rows.append([job, f"{df['s'].iloc[-1]:.1f}", f"{df['max_rss'].iloc[-1]:.0f}" if "max_rss" in df else "-"])
    return rows


def stain_figure(datasets: dict[str, Any], results: str, dpi: int, n: int = 3) -> str:
    """Before/after thumbnails of a few images and the fitted stain vectors."""
    plt = pyplot()
    pairs = [(name, stem) for name, d in datasets.items() for stem in d["test"]][:n]
    if not pairs:
        return ""
    fig, axes = plt.subplots(2, len(pairs), figsize=(3 * len(pairs), 6), squeeze=False)
    for j, (name, stem) in enumerate(pairs):
        axes[0, j].imshow(read_rgb(datasets[name]["images"][stem]))
        axes[0, j].set_title(f"{stem} (raw)", fontsize=9)
        axes[1, j].imshow(read_rgb(Path(results) / "normalized" / name / f"{stem}.png"))
        axes[1, j].set_title("normalized", fontsize=9)
        for a in axes[:, j]:
            a.axis("off")
    fig.tight_layout()
    return fig_tag(fig, dpi)


def overlay_figures(
    results: str, model: str, dname: str, dataset: dict[str, Any], n: int, alpha: float, out_dir: Path, dpi: int
) -> list[Path]:
    """Error overlays for the first ``n`` test images (PNG files in ``out_dir``)."""
    from ..datasets import labelled_part
    from ..metrics import evaluate_instances

    plt = pyplot()
    paths = []
    for stem in dataset["test"][:n]:
        image = read_rgb(Path(results) / "normalized" / dname / f"{stem}.png")
        pred = read_image(Path(results) / "instances" / model / dname / f"{stem}.tif").astype(np.int64)
        gt = read_labels(dataset["masks"][stem], dataset["mask_type"])
        valid = labelled_part(dataset, stem)
        if valid is not None:  # an annotated slide's window: what lies outside its regions is not scored (dimmed)
            pred[~valid], gt[~valid] = 0, 0
            image = np.where(valid[..., None], image, image // 2)
        m = evaluate_instances(pred, gt)
        fig, axes = plt.subplots(1, 2, figsize=(9, 5))
        axes[0].imshow(image)
        axes[0].set_title(f"{dname}/{stem}", fontsize=9)
        axes[1].imshow(error_overlay(image, pred, gt, alpha))
        axes[1].set_title(
            f"{model}: object F1 {m['object_f1']:.3f}, Dice {m['pixel_f1']:.3f}\n"
            "red = false positive, blue = false negative, yellow = predicted outlines", fontsize=8,
        )
        for a in axes:
            a.axis("off")
        fig.tight_layout()
        path = out_dir / f"{model}__{dname}__{stem}.png"
        save_figure(fig, path, dpi)
        paths.append(path)
    return paths


def load_morphometry(results: str, models: list[str], datasets: list[str]) -> dict[str, Any]:
    """Per model, its objects' measurements on every test dataset pooled (a DataFrame).

    Models without any object are left out.
    """
    import pandas as pd

    tables = {}
    for m in models:
        frames = [pd.read_csv(p, sep="\t") for d in datasets
                  if (p := Path(results) / "objects" / m / d / "morphometry.tsv").stat().st_size > 1]
        frames = [f for f in frames if len(f)]
        if frames:
            tables[m] = pd.concat(frames)
    return tables


def _score(summary: dict[str, Any], key: str) -> str:
    """A score with three decimals, or "n/a" for a summary written before it existed."""
    return f"{summary[key]:.3f}" if key in summary else "n/a"


def class_section(results: str, models: list[str], datasets: dict[str, dict[str, Any]], classes: list[str],
                  options: dict[str, Any], fig_dir: Path) -> str:
    """Multi-class results: per-class scores of the pooled test pixels and the mean over classes.

    With them, the confusion matrices (row-normalised) and class-map overlays.
    """
    from ..semantic import read_truth

    dpi = options["dpi"]
    plt = pyplot()
    rows, mats = [], []
    for m in models:
        for d in datasets:
            s = read_json(Path(results) / "metrics" / m / f"{d}_summary.json")
            for c in classes:
                rows.append([m, d, c]
                            + [f"{s[f'pooled_{k}_{c}']:.3f}" for k in ("dice", "jaccard", "precision", "recall")]
                            + [_score(s, f"pooled_tanimoto_{c}"), _score(s, f"pooled_soft_dice_{c}")]
                            + [f"{s.get(f'dice_{c}_mean', np.nan):.3f} ± {s.get(f'dice_{c}_sd', np.nan):.3f}"])
            rows.append([m, d, "mean over classes"]
                        + [f"{s[f'pooled_mean_{k}']:.3f}" for k in ("dice", "jaccard", "precision", "recall")]
                        + [_score(s, "pooled_mean_tanimoto"), _score(s, "pooled_mean_soft_dice")]
                        + [f"{s['mean_dice_mean']:.3f} ± {s['mean_dice_sd']:.3f}"])
            mats.append((f"{m} / {d} (pixel accuracy {s['pooled_pixel_accuracy']:.3f})",
                         np.array(s["confusion"], float)))
    parts = [_table(["model", "dataset", "class", "Dice (= F1)", "Jaccard", "precision", "recall",
                     "Tanimoto (soft)", "Dice (soft)", "Dice per image (mean ± sd)"], rows),
             "<p class=note>Scores of all test pixels pooled (confusion matrix summed over images), and the "
             "per-image Dice as mean ± sd; 'mean over classes' is the unweighted mean, as the seeds report it. "
             "Tanimoto (soft) is Res-CR-Net's headline figure, the Tanimoto coefficient with complement of the class "
             "probabilities, and Dice (soft) the Dice of its Table 1, also on probabilities (sums pooled over the "
             "test pixels); the other columns score the argmax class map.</p>"]
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 3.8), squeeze=False)
    for ax, (title, cm) in zip(axes[0], mats, strict=True):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    parts.append(fig_tag(fig, dpi))
    parts.append("<h3>Class maps on test images</h3>")
    for m in models:
        for d, dataset in datasets.items():
            for stem in dataset["test"][: options["n_overlays"]]:
                image = read_rgb(Path(results) / "normalized" / d / f"{stem}.png")
                pred = read_image(Path(results) / "instances" / m / d / f"{stem}.tif")
                gt = read_truth(dataset, stem, classes)
                fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
                for ax, img, title in zip(axes, (image, class_colours(gt), class_colours(pred)),
                                          (f"{d}/{stem}", "ground truth", f"{m}"), strict=True):
                    ax.imshow(img)
                    ax.set_title(title, fontsize=9)
                    ax.axis("off")
                handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[i % len(CLASS_COLOURS)] / 255)
                           for i in range(len(classes))]
                fig.legend(handles, classes, loc="lower center", ncol=len(classes), fontsize=8)
                fig.tight_layout(rect=(0, 0.06, 1, 1))
                path = fig_dir / f"{m}__{d}__{stem}.png"
                save_figure(fig, path, dpi)
                parts.append(img_tag(path))
    return "".join(parts)


def fibre_section(results: str, models: list[str], datasets: list[str], dpi: int) -> str:
    """Per-fibre precision / recall / F1 at three kinds of threshold, and mean F1 against the threshold.

    The thresholds are the validation-chosen one, the fixed threshold (FT) and dynamic per-image thresholds (DT).
    """
    import pandas as pd

    def pm(s: dict, key: str) -> str:
        return f"{s.get(key + '_mean', np.nan):.3f} ± {s.get(key + '_sd', np.nan):.3f}"

    rows, curves = [], []
    for m in models:
        for d in datasets:
            root = Path(results) / "metrics" / m
            ev, sw = read_json(root / f"{d}_summary.json"), read_json(root / f"{d}_fibres.json")
            if not sw.get("n_images"):
                continue
            rows.append([m, d, pm(ev, "fibre_precision"), pm(ev, "fibre_recall"), pm(ev, "fibre_f1"),
                         f"{sw['ft_threshold']:.2f}", pm(sw, "ft_precision"), pm(sw, "ft_recall"), pm(sw, "ft_f1"),
                         pm(sw, "dt_precision"), pm(sw, "dt_recall"), pm(sw, "dt_f1"),
                         pm(sw, "ft_object_f1"), pm(sw, "dt_object_f1")])
            t = pd.read_csv(root / f"{d}_fibres.tsv", sep="\t")
            curves.append((f"{m} / {d}", t.groupby("threshold")[["precision", "recall", "f1"]].mean()))
    if not rows:
        return "<p>No test image has ground-truth objects.</p>"
    header = ["model", "dataset", "P (val thr.)", "R (val thr.)", "F1 (val thr.)", "FT", "P (FT)", "R (FT)",
              "F1 (FT)", "P (DT)", "R (DT)", "F1 (DT)", "object F1 (FT)", "object F1 (DT)"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    for label, c in curves:
        for ax, col in zip(axes, ("precision", "recall", "f1"), strict=True):
            ax.plot(c.index, c[col], marker=".", label=label)
    for ax, col in zip(axes, ("precision", "recall", "F1"), strict=True):
        ax.set_xlabel("threshold")
        ax.set_title(f"per-fibre {col}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over test images")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _table(header, rows) + fig_tag(fig, dpi) + (
        "<p class=note>For every ground-truth object, the predicted object overlapping it most gives precision "
        "|S∩G|/|S| and recall |S∩G|/|G|, averaged per image (mean ± sd over images); F1 = 2PR/(P+R). "
        "'val thr.': the deployable result, at the threshold chosen on validation patches. FT: the one threshold "
        "with the best mean F1 over the test images; DT: each image's best threshold — the muscle-fibre "
        "protocol's oracle choices, for comparison with published FT/DT figures; at FT and DT the fibres are the "
        "thresholded network output's connected components, as the paper evaluates it (evaluate.fibres_from). "
        "Per-fibre figures never see a predicted fibre that overlaps no ground truth; the object F1 (GlaS rule) "
        "counts it as a false positive.</p>")


def morphometry_table(tables: dict[str, Any]) -> str:
    """Median (IQR) of the main fibre biomarkers per model (tables from :func:`load_morphometry`)."""
    rows = []
    for m, t in tables.items():
        rows.append([m, str(len(t))] + [f"{t[c].median():.4g} ({t[c].quantile(0.25):.4g}–{t[c].quantile(0.75):.4g})"
                                        for c in biomarker_columns(t)])
    if not rows:
        return ""
    header = ["model", "objects", *(column_label(c) for c in biomarker_columns(next(iter(tables.values()))))]
    return _table(header, rows)


def volume_section(results: str, volume: str) -> str:
    """Ablation table, chosen graph-cut parameters, volume summary and orthogonal views of a volume."""
    import pandas as pd

    root = Path(results) / "volumes" / volume
    table = pd.read_csv(root / "ablation.tsv", sep="\t")
    rows = [[r["method"]] + [f"{r[k]:.3f}" for k in ("precision", "recall", "f1", "iou")] for _, r in table.iterrows()]
    best = read_json(root / "graphcut_params.json")["best"]
    summary = read_json(root / "segmentation" / "summary.json")
    vol = summary.get("volume_um3")
    parts = [
        f"<h2>Volume {html.escape(volume)}: scribbles, metric learning and graph cut</h2>",
        _table(["method", "precision", "recall", "F1", "IoU"], rows),
        "<p class=note>Voxel scores on the target stack. U-Net / M-Unet: thresholded at their validation-chosen "
        "thresholds; + DDML: metric learning on the M-Unet features driven by the scribbles; + graph cut: one 3-D "
        f"max-flow over the stack with the scribbles as hard seeds (gamma {best['gamma']}, sigma {best['sigma']}, "
        f"delta {best['delta']}, chosen on the training slices).</p>",
        f"<p>Segmented voxels: {summary['n_voxels']} in {summary['n_slices_with_mask']} slices"
        + (f", volume {vol:.4g} µm³" if vol else "")
        + "</p>",
        img_tag(root / "segmentation" / "views.png"),
    ]
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{border-bottom:2px solid #c05;padding-bottom:.2em} h2{color:#803;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:.3em .6em}
th{background:#f4e8ee} tr:nth-child(even){background:#fafafa} \
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}
.note{color:#555;font-size:.9em}
"""


def build_report(
    config: dict[str, Any], models: list[str], datasets: dict[str, dict[str, Any]], results: str,
    options: dict[str, Any], out_html: PathLike, out_figures: PathLike, trained: list[str] | None = None,
    volumes: list[str] | None = None, classes: list[str] | None = None,
    references: dict[str, list[dict[str, Any]]] | None = None, per_fibre: bool = True,
) -> None:
    """Assemble ``report.html`` and write the overlay PNGs into ``out_figures``.

    ``models`` are everything evaluated (trained models and ensembles); ``trained`` the subset with
    training curves (default: all of ``models``); ``classes`` makes it a multi-class report (per-class
    scores, confusion matrices and class maps instead of object metrics); ``references`` (config
    ``references:``, test dataset → published results) adds a table of those next to ours; ``per_fibre``
    (config ``evaluate.per_fibre``) adds the per-fibre precision / recall section.
    """
    dpi = options["dpi"]
    fig_dir = Path(out_figures)
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = list(datasets)
    parts = [f"<h1>{html.escape(options['title'])}</h1>",
             f"<p class=note>Generated {_dt.datetime.now():%Y-%m-%d %H:%M} by histoflow. "
             "Metrics are on each dataset's held-out test images only.</p>"]
    parts += reference_section(results, models, references or {}, names)

    parts.append("<h2>Results</h2>")
    if classes:
        parts.append(class_section(results, models, datasets, classes, options, fig_dir))
    else:
        parts += object_sections(results, models, names, datasets, options, fig_dir, per_fibre)
    parts += training_section(results, trained if trained is not None else models)
    parts += tail_sections(config, datasets, results, volumes, dpi)
    page = f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(options['title'])}</title>" \
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    with atomic_path(out_html) as tmp:
        tmp.write_text(page)
    log.info("wrote %s", out_html)


def object_sections(results: str, models: list[str], names: list[str], datasets: dict[str, dict[str, Any]],
                    options: dict[str, Any], fig_dir: Path, per_fibre: bool = True) -> list[str]:
    """Object metrics, per-fibre P/R (with ``per_fibre``), morphometry and error overlays (binary workflows)."""
    dpi = options["dpi"]
    parts = []
    header = ["model", "dataset", "images"] + [h for _, h in HEADLINE] + ["object F1 (pooled)", "AP@0.5 (pooled)",
                                                                      "box AP@0.5 (pooled)"]
    parts.append(_table(header, metrics_rows(results, models, names)))
    parts.append("<p class=note>mean ± sd over test images. Object F1, Dice and Hausdorff follow the GlaS 2015 "
                 "definitions; AJI is Kumar et al.'s (MoNuSeg); PQ = DQ × SQ at IoU 0.5; 'pooled' sums TP/FP/FN over "
                 "all images, as GlaS does for a test set; AP@0.5 ranks every object of every image by its "
                 "mean probability (mask IoU, VOC all-point interpolation); box AP@0.5, for detection models "
                 "only, ranks the detector's boxes by its confidence (box IoU, the VOC paper's 11-point "
                 "interpolation, as US-Net reports it).</p>")

    if per_fibre:
        parts.append("<h2>Per-fibre precision and recall</h2>")
        parts.append(fibre_section(results, models, names, dpi))

    parts.append("<h2>Morphometry</h2>")
    tables = load_morphometry(results, models, names)
    parts.append(morphometry_table(tables))
    parts.append(morphometry_figure(tables, dpi))
    parts.append("<p class=note>Per-object measurements of the predicted instances on the test images "
                 "(<code>objects/&lt;model&gt;/&lt;dataset&gt;/morphometry.tsv</code>); every image's objects "
                 "are also in a QuPath GeoJSON beside it (File &gt; Import objects).</p>")

    parts.append("<h2>Predictions on test images</h2>")
    for m in models:
        for d in names:
            for p in overlay_figures(results, m, d, datasets[d], options["n_overlays"], options["overlay_alpha"],
                                     fig_dir, dpi):
                parts.append(img_tag(p))
    return parts


def training_section(results: str, trained: list[str]) -> list[str]:
    """Training curves (both stages of two-stage models) and augmented samples per trained model."""
    parts = ["<h2>Training</h2>"]
    for m in trained:
        spec = read_json(Path(results) / "models" / m / "spec.json")
        parts.append(f"<h3>{html.escape(m)} ({html.escape(spec['arch'])})</h3>")
        parts.append(f"<p class=note>threshold {spec['threshold']:.2f} chosen on validation patches "
                     f"(pixel Dice {spec['val_dice']:.3f}); trained {spec['train_seconds']:.0f} s on "
                     f"{html.escape(spec['device'])}"
                     + (f" in {html.escape(spec['precision'])}" if spec.get("precision") else "") + ".</p>")
        stage1 = Path(results) / "models" / m / "stage1"
        if (stage1 / "spec.json").exists():
            s1 = read_json(stage1 / "spec.json")
            parts.append(f"<p>Stage 1 (target <b>{html.escape(s1['target'])}</b>, {s1['train_seconds']:.0f} s), "
                         f"then stage 2 fine-tuned from it (target <b>{html.escape(spec['target'])}</b>):</p>")
            parts.append(img_tag(stage1 / "curves.png"))
        parts.append(img_tag(Path(results) / "models" / m / "curves.png"))
        aug = Path(results) / "models" / m / "augmented.png"
        if aug.exists():
            parts.append(img_tag(aug))
    return parts


def bit_depth_rows(results: str) -> list[list[str]]:
    """One row per dataset of 16-bit images (``normalized/<dataset>/bit_depth.json``): the bits they were read with."""
    rows = []
    for f in sorted((Path(results) / "normalized").glob("*/bit_depth.json")):
        d = read_json(f)
        how = ("declared (datasets.<name>.bit_depth)" if d["declared"] != "auto"
               else f"auto: brightest value {d['max']}")
        rows.append([f.parent.name, d["dtype"], f"{d['bit_depth']}-bit",
                     f"0 … {2 ** d['bit_depth'] - 1} → 0 … 255", how])
    return rows


def tail_sections(config: dict[str, Any], datasets: dict[str, dict[str, Any]], results: str,
                  volumes: list[str] | None, dpi: int) -> list[str]:
    """Volumes, stain normalization, runtimes and the configuration."""
    import yaml

    parts = []
    for v in volumes or []:
        parts.append(volume_section(results, v))

    parts.append("<h2>Stain normalization</h2>")
    stain = read_json(Path(results) / "stain" / "target.json")
    parts.append(f"<p>method <b>{html.escape(stain.get('method', '?'))}</b>, target "
                 f"<code>{html.escape(str(stain.get('target_image', '')))}</code></p>")
    depth_rows = bit_depth_rows(results)
    if depth_rows:
        parts.append("<p>16-bit input images were read with the significant bits below (one depth per dataset, "
                     "so images keep their relative brightness) before normalization:</p>")
        parts.append(_table(["dataset", "stored as", "significant bits", "scaled", "how"], depth_rows))
    parts.append(stain_figure(datasets, results, dpi))

    parts.append("<h2>Runtimes</h2>")
    parts.append(_table(["job", "seconds", "peak RSS (MB)"], benchmark_rows(results)))

    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>")
    return parts

