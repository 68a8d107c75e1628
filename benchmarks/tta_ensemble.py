"""What test-time augmentation and an ensemble add, measured on a finished run's trained models.

    python benchmarks/tta_ensemble.py --configfile config/glas.yaml [more.yaml ...] [--workdir .]
        [--tta none flips dihedral] [--models unet unet_b] [--ensemble unet unet_b]
        [--out benchmarks/results/tta_ensemble.json]

For every trained model of the run (``--models``, default every binary model) and the ensemble of
``--ensemble`` members (default: those models; members must predict the same target), every test dataset and
every TTA setting, the test images are predicted again with the
model's own ``predict`` block but that ``tta``, post-processed with the run's ``postprocess`` block
and the model's validation-chosen threshold, and scored by the workflow's evaluation
(:func:`histoflow.stages.evaluate.run_evaluate`). Nothing is chosen here: the trained models, thresholds
and post-processing are those the workflow chose on the training split, so each test image is only
scored. Writes its scratch outputs under ``<results>/tta_ensemble/`` and prints a markdown table;
the JSON holds every figure with the config files, device and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench import OBJECT_FIGURES, dataset_entry, merged_config, score  # noqa: E402

from histoflow.datasets import resolve_datasets  # noqa: E402
from histoflow.io import read_json, write_json  # noqa: E402
from histoflow.stages.predict import run_ensemble_predict, run_ensemble_spec, run_predict  # noqa: E402


def run(config: dict[str, Any], tta: list[str], members: list[str] | None, device: str,
        models: list[str] | None = None, only: list[str] | None = None) -> list[dict[str, Any]]:
    results = Path(config["results"])
    datasets = resolve_datasets(config)
    binary = [m for m in (models or config["models"])
              if not read_json(results / "models" / m / "spec.json").get("classes")]
    members = members or binary
    rows = []
    for dataset, d in datasets.items():
        if not d.test or (only and dataset not in only):
            continue
        ds = dataset_entry(d)
        for setting in tta:
            preds = {}
            for m in binary:
                out = results / "tta_ensemble" / m / setting / dataset
                predict = {**config["models"][m]["predict"], "tta": setting}
                run_predict(results / "models" / m, results / "normalized" / dataset, d.test, predict, device,
                                     out / "predictions")
                preds[m] = out / "predictions"
                summary = score(config["postprocess"], results / "normalized" / dataset,
                                results / "models" / m / "spec.json", out / "predictions", ds, out)
                figures = {k: summary.get(k) for k in OBJECT_FIGURES}
                rows.append({"model": m, "tta": setting, "dataset": dataset, **figures})
                print(rows[-1], flush=True)
            if len(members) > 1:
                name = "+".join(members)
                out = results / "tta_ensemble" / name / setting / dataset
                run_ensemble_predict([preds[m] for m in members], None, out / "predictions")
                run_ensemble_spec([results / "models" / m / "spec.json" for m in members], members, None,
                                           out / "spec.json")
                summary = score(config["postprocess"], results / "normalized" / dataset, out / "spec.json",
                                out / "predictions", ds, out)
                figures = {k: summary.get(k) for k in OBJECT_FIGURES}
                rows.append({"model": name, "tta": setting, "dataset": dataset, **figures})
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| dataset | model | TTA | " + " | ".join(OBJECT_FIGURES) + " |"
    lines = [head, "|" + "---|" * 3 + "---:|" * len(OBJECT_FIGURES)]
    for r in rows:
        vals = " | ".join("–" if r[k] is None else f"{r[k]:.3f}" if k != "object_hausdorff_pooled" else f"{r[k]:.1f}"
                          for k in OBJECT_FIGURES)
        lines.append(f"| {r['dataset']} | {r['model']} | {r['tta']} | {vals} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configfile", nargs="+", type=Path, required=True)
    p.add_argument("--workdir", type=Path, default=Path("."), help="the folder the workflow ran in")
    p.add_argument("--tta", nargs="+", default=["none", "flips", "dihedral"])
    p.add_argument("--models", nargs="*", default=None, help="models to measure (default: every binary model)")
    p.add_argument("--ensemble", nargs="*", default=None, help="ensemble members (default: the measured models)")
    p.add_argument("--datasets", nargs="*", default=None, help="test datasets to score (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tta_ensemble.json")
    args = p.parse_args(argv)
    files = [f.resolve() for f in args.configfile]
    out = args.out.resolve()
    os.chdir(args.workdir)
    config = merged_config(files)
    rows = run(config, args.tta, args.ensemble, args.device, args.models, args.datasets)
    from _bench import device_name

    from histoflow.device import resolve_device

    write_json(out, {"configfiles": [str(f.relative_to(REPO)) if f.is_relative_to(REPO) else f.name for f in files],
                     "device": device_name(str(resolve_device(args.device))), "date": dt.date.today().isoformat(),
                     "rows": rows})
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
