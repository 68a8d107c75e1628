"""Validation score against training wall-clock, for the recipes of one dataset: would more time help?

    python benchmarks/learning_curves.py --name glas_cpu --val-dataset glas_val \
        --run "U-Net 16/4, full resolution=results_glas_cpu_e1:unet" \
        --run "U-Net 16/4, half resolution=results_glas_cpu_e2:unet"

``--keep LABEL`` carries a run of the existing ``<name>_curves.json`` over as recorded, so a new recipe can be
drawn beside earlier ones whose results folders are gone.

Each ``--run LABEL=RESULTS:MODEL`` is a finished training in the results folder ``RESULTS``: its per-epoch
history (``models/MODEL/history.tsv``: the validation patches' pixel Dice ``val_dice`` after each epoch and
the epoch's seconds) gives one curve against the cumulative training minutes; with ``--val-dataset`` the
evaluation of that dataset's images (``metrics/MODEL/<dataset>_summary.json``, e.g. the training images held
out for validation, scored as a test-split dataset) adds the object-level validation figures of the finished
model. Prints a table and writes ``benchmarks/results/<name>_curves.json`` and ``.png``. Test splits have no
place here: every curve is on validation data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from histoflow.io import read_json, write_json  # noqa: E402

OUT = REPO / "benchmarks" / "results"
#: Validation figures of the finished model, when its validation dataset was evaluated.
VAL_KEYS = ("object_f1_pooled", "object_dice_pooled", "object_hausdorff_pooled", "aji_mean", "pq_mean",
            "pooled_mean_dice", "pixel_f1_mean")


def parse_run(text: str) -> tuple[str, Path, str]:
    """``"label=results:model"`` → ``(label, Path(results), model)``."""
    label, sep, where = text.partition("=")
    results, sep2, model = where.rpartition(":")
    if not (sep and sep2 and label and results and model):
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected LABEL=RESULTS_FOLDER:MODEL")
    return label, Path(results), model


def curve(history: Path) -> dict[str, list[float]]:
    """Cumulative training minutes and the validation Dice after each epoch of ``history.tsv``."""
    import pandas as pd

    h = pd.read_csv(history, sep="\t")
    if "val_dice" not in h or "seconds" not in h:
        raise ValueError(f"{history}: no val_dice / seconds columns (a model trained without validation patches)")
    return {"minutes": (h["seconds"].cumsum() / 60).round(3).tolist(), "val_dice": h["val_dice"].round(5).tolist()}


def run_record(label: str, results: Path, model: str, val_dataset: str | None) -> dict[str, Any]:
    folder = results / "models" / model
    spec = read_json(folder / "spec.json")
    rec: dict[str, Any] = {"label": label, "results": str(results), "model": model, **curve(folder / "history.tsv"),
                           "device": spec.get("device_name") or spec.get("device"), "threads": spec.get("threads"),
                           "precision": spec.get("precision"), "scale": spec.get("scale", 1.0),
                           "train_minutes": round(spec["train_seconds"] / 60, 2)}
    summary = results / "metrics" / model / f"{val_dataset}_summary.json" if val_dataset else None
    if summary is not None and summary.exists():
        s = read_json(summary)
        rec["validation"] = {k: round(float(s[k]), 4) for k in VAL_KEYS if k in s}
    return rec


def kept_runs(path: Path, labels: list[str]) -> list[dict[str, Any]]:
    """The runs labelled ``labels`` of an earlier curves file ``path``, as recorded, in the order asked.

    ``"OLD=NEW"`` keeps the run labelled ``OLD`` under the label ``NEW``.
    """
    if not labels:
        return []
    if not path.exists():
        raise SystemExit(f"--keep: {path} does not exist (nothing recorded to keep)")
    recorded = {r["label"]: r for r in read_json(path)["runs"]}
    pairs = [label.partition("=")[::2] for label in labels]
    missing = [old for old, _ in pairs if old not in recorded]
    if missing:
        raise SystemExit(f"--keep: {path} has no run labelled {missing}; its runs: {sorted(recorded)}")
    return [{**recorded[old], "label": new or old} for old, new in pairs]


def plot(records: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in records:
        ax.plot(r["minutes"], r["val_dice"], marker="o", ms=3, label=r["label"])
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("validation pixel Dice")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.2))  # below the axes: long labels hide no curve
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def table(records: list[dict[str, Any]]) -> str:
    keys = sorted({k for r in records for k in r.get("validation", {})}, key=VAL_KEYS.index)
    lines = ["| recipe | training (min) | final val Dice (patches) | " + " | ".join(f"val {k}" for k in keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for r in records:
        val = r.get("validation", {})
        lines.append(f"| {r['label']} | {r['train_minutes']:.1f} | {r['val_dice'][-1]:.4f} | "
                     + " | ".join(f"{val[k]:.4f}" if k in val else "–" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True, help="output stem: benchmarks/results/<name>_curves.{json,png}")
    ap.add_argument("--run", action="append", type=parse_run, default=[], help="LABEL=RESULTS_FOLDER:MODEL")
    ap.add_argument("--keep", action="append", default=[], metavar="LABEL[=NEW_LABEL]",
                    help="a run of the existing <name>_curves.json to keep as recorded (its results folder may be "
                         "gone), listed before the --run ones; =NEW_LABEL renames it")
    ap.add_argument("--val-dataset", help="the validation dataset evaluated in each results folder")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    records = kept_runs(args.out / f"{args.name}_curves.json", args.keep)
    records += [run_record(label, results, model, args.val_dataset) for label, results, model in args.run]
    if not records:
        ap.error("nothing to plot: give --run LABEL=RESULTS_FOLDER:MODEL (or --keep LABEL)")
    out = {"name": args.name, "val_dataset": args.val_dataset, "runs": records}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}_curves.json", out)
    title = args.title or f"{args.name}: validation score against training time"
    plot(records, title, args.out / f"{args.name}_curves.png")
    print(table(records))
    print(json.dumps({"json": str(args.out / f"{args.name}_curves.json")}))
    return out


if __name__ == "__main__":
    main()
