"""Record a finished public-benchmark run's official figures in benchmarks/results/accuracy.json.

    python benchmarks/accuracy.py --config config/glas.yaml [--device-name "NVIDIA H100 80GB HBM3"]
    python benchmarks/accuracy.py --config config/monuseg.yaml --dry-run      # print only
    python benchmarks/accuracy.py --config config/glas_cpu.yaml config/ablations/glas_cpu_1600.yaml   # an overlay

Reads what the workflow left in the config's results folder (run from the folder the workflow ran
in, normally the repository root, or pass --workdir): per model and test dataset the evaluation
summary ``metrics/<model>/<dataset>_summary.json``, the model's ``spec.json`` (training wall-clock,
both stages of a two-stage model, and device) and the ``predict`` job's benchmark file (inference
wall-clock). Each figure becomes an entry under a key ``<dataset>_<metric>`` (``glas_testA_object_f1``,
``monuseg_aji``: a trailing ``_test`` of the dataset name is dropped) holding one entry per model:
value, model, arch, recipe (the model's validated config block) and post-processing (the ``postprocess:``
block), config files (merged as Snakemake merges several ``--configfile``), device (the GPU, or the CPU model and
cores) and threads, training precision, inference backend and precision, training and inference seconds, the date
the evaluation ran, the commit checked out when it was recorded.
Every recipe scored stays recorded: a rerun of the same model, config, recipe and post-processing replaces its
own entry; an entry of the same model and config with another recipe or post-processing is kept, marked
``"superseded": true`` (the config has moved on; its overlay in ``config/ablations/`` reproduces it). Also prints
a markdown table, with the config's published references beside ours.

A test-split dataset made of training images (the validation images a CPU recipe is chosen on) is not
a benchmark figure and is skipped. Only measured values are ever written, and only from a run that is the
config's benchmark: a run on
a subset of the test images (``datasets.*.limit``), or whose trained networks differ from the
config's recipe (e.g. a CI run with tiny widths or fewer epochs), is refused with the reason.

Which summary key is the official figure (see docs/benchmarks.md): GlaS object F1 pooled over the
test part, object Dice and Hausdorff over all its objects; MoNuSeg AJI and pixel Dice as means over
test images; multi-class (ISBI 2012 EM) the Dice of the pooled test pixels, per class and mean.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench import merged_config  # noqa: E402

from histoflow.datasets import resolve_datasets  # noqa: E402
from histoflow.io import read_json, write_json  # noqa: E402
from histoflow.stages.report import model_timing  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "accuracy.json"

# summary key -> metric name in accuracy.json (binary / instance workflows)
FIGURES = {
    "object_f1_pooled": "object_f1",
    "object_dice_pooled": "object_dice",
    "object_hausdorff_pooled": "object_hausdorff",
    "aji_mean": "aji",
    "pixel_f1_mean": "dice",
    "pq_mean": "pq",
}


class RunMismatch(ValueError):
    """The results folder is not the config's benchmark run (a subset, or another recipe)."""


def figure_prefix(dataset: str) -> str:
    """``glas_testA`` → ``glas_testA``, ``monuseg_test`` → ``monuseg``."""
    return dataset[: -len("_test")] if dataset.endswith("_test") else dataset


def summary_figures(summary: dict[str, Any], classes: list[str]) -> dict[str, tuple[str, float]]:
    """metric name → (summary key, value) of the official figures present in one evaluation summary."""
    if classes:
        keys = {"pooled_mean_dice": "mean_dice", **{f"pooled_dice_{c}": f"{c}_dice" for c in classes},
                "pooled_mean_tanimoto": "mean_tanimoto"}
    else:
        keys = FIGURES
    return {name: (key, float(summary[key])) for key, name in keys.items() if key in summary}


def check_run(results: Path, model: str, model_cfg: dict[str, Any], dataset: str, n_test: int,
              summary: dict[str, Any]) -> None:
    """Refuse a run that is not the config's recipe on the whole test set (:class:`RunMismatch`)."""
    where = results / "metrics" / model / f"{dataset}_summary.json"
    if int(summary["n_images"]) != n_test:
        raise RunMismatch(f"{where}: evaluated on {int(summary['n_images'])} of the {n_test} test images of "
                          f"{dataset} (a subset run, e.g. datasets.*.limit); rerun the config on every test image.")
    spec = read_json(results / "models" / model / "spec.json")
    if "kwargs" not in spec:  # an ensemble: its members are checked as models
        return
    params = {k: v for k, v in spec["kwargs"].items() if k not in ("in_channels", "out_channels")}
    given = model_cfg.get("params", {})
    differ = {k: (v, params.get(k)) for k, v in given.items() if params.get(k) != v}
    if spec["arch"] != model_cfg["arch"] or differ:
        raise RunMismatch(f"{results / 'models' / model / 'spec.json'}: the trained {spec['arch']} has params "
                          f"{params}, the config's {model} is {model_cfg['arch']} with {given} (differing: {differ}); "
                          "this results folder is not that config's run - rerun it, or pass the config it ran with.")
    for stage, folder in (("train", results / "models" / model), ("pretrain", results / "models" / model / "stage1")):
        if stage not in model_cfg:
            continue
        epochs = sum(1 for line in (folder / "history.tsv").read_text().splitlines()[1:] if line.strip())
        if epochs != model_cfg[stage]["epochs"]:
            raise RunMismatch(f"{folder / 'history.tsv'}: {epochs} epoch(s) trained, the config's {model}.{stage} has "
                              f"{model_cfg[stage]['epochs']}; this results folder is not that config's run.")


def validation_datasets(datasets: dict[str, Any]) -> set[str]:
    """Test-split datasets made of training images (e.g. ``stems:`` of the validation images): not benchmark
    figures, so never recorded (``benchmarks/learning_curves.py`` reports them)."""
    training = {str(Path(ds.images[s]).resolve()) for ds in datasets.values() for s in ds.train}
    return {name for name, ds in datasets.items()
            if ds.test and all(str(Path(ds.images[s]).resolve()) in training for s in ds.test)}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=30)
    except OSError:
        return None
    return out.stdout.strip() or None


def collect(config: dict[str, Any], config_paths: list[Path], workdir: Path,
            device_name: str | None = None) -> dict[str, dict[str, Any]]:
    """Every official figure of the run in ``workdir`` of ``config``, the validated merge of ``config_paths`` (one
    config, or a config and its overlays): key → entry (one model) as ``{key: {model: entry}}``.

    Raises :class:`RunMismatch` for a run that is not the config's benchmark and FileNotFoundError
    (naming the file) for a run that has not finished."""
    config = copy.deepcopy(config)  # its dataset paths are made absolute below
    config_path = " ".join(p.as_posix() for p in config_paths)
    for d in config["datasets"].values():  # the config's paths are relative to where the workflow ran
        for key in ("images", "masks"):
            if key in d and not Path(d[key]).is_absolute():
                d[key] = str(workdir / d[key])
    results = workdir / config["results"]
    datasets = resolve_datasets({**config, "results": str(results)})
    models = list(config["models"]) + list(config["ensembles"])
    commit = git_commit()
    out: dict[str, dict[str, Any]] = {}
    held_out = validation_datasets(datasets)
    for d in (name for name, ds in datasets.items() if ds.test and name not in held_out):
        for m in models:
            path = results / "metrics" / m / f"{d}_summary.json"
            if not path.exists():
                raise FileNotFoundError(f"{path}: not found - the run of {config_path} has not finished (or ran "
                                        f"elsewhere: pass --workdir, the folder holding {config['results']}/).")
            summary = read_json(path)
            model_cfg = config["models"].get(m) or config["ensembles"][m]
            if m in config["models"]:
                check_run(results, m, model_cfg, d, len(datasets[d].test), summary)
            timing = model_timing(str(results), m, d)
            spec_path = results / "models" / m / "spec.json"
            spec = read_json(spec_path) if spec_path.exists() else {}  # an ensemble has none
            backend_path = results / "predictions" / m / d / "backend.json"
            backend = read_json(backend_path) if backend_path.exists() else {}
            recorded = spec.get("device_name")
            device = recorded or timing["device"]
            if not recorded and str(device).startswith("cuda"):  # the run stored only "cuda"
                device = device_name or f"{device} (GPU model not recorded: pass --device-name)"
            for name, (key, value) in summary_figures(summary, config["classes"]).items():
                out.setdefault(f"{figure_prefix(d)}_{name}", {})[m] = {
                    "value": value,
                    "model": m,
                    "arch": model_cfg.get("arch", "ensemble"),
                    "recipe": model_cfg,
                    "postprocess": config["postprocess"],
                    "config": config_path,
                    "dataset": d,
                    "summary_key": key,
                    "n_images": int(summary["n_images"]),
                    "device": device,
                    "threads": spec.get("threads"),
                    "train_precision": spec.get("precision"),
                    "inference_backend": backend.get("backend"),
                    "inference_precision": backend.get("precision"),
                    "train_seconds": timing["train_seconds"],
                    "predict_seconds": timing["predict_seconds"],
                    "date": dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat(),
                    "commit_when_recorded": commit,
                }
    return out


def merge(existing: dict[str, list[dict[str, Any]]], new: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """accuracy.json with ``new``'s entries added: one of the same model, config, recipe and post-processing is
    replaced (a rerun); one of the same model and config with another recipe is kept as ``superseded``."""

    def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(a.get(k) == b.get(k) for k in ("model", "config", "recipe", "postprocess"))

    merged = {k: list(v) for k, v in existing.items()}
    for key, by_model in new.items():
        kept = []
        for e in merged.get(key, []):
            if any(same_run(e, n) for n in by_model.values()):
                continue
            if any((e["model"], e["config"]) == (n["model"], n["config"]) for n in by_model.values()):
                e = {**e, "superseded": True}
            kept.append(e)
        merged[key] = sorted(kept + list(by_model.values()),
                             key=lambda e: (e["config"], e["model"], e.get("superseded", False) is False,
                                            e.get("date", "")))
    return dict(sorted(merged.items()))


def markdown(new: dict[str, dict[str, Any]], references: dict[str, list[dict[str, Any]]]) -> str:
    """A table of the figures recorded, with the published values the config gives for them."""
    lines = ["| figure | model | ours | published | device | training (s) | inference (s) |",
             "|---|---|---:|---|---|---:|---:|"]
    for key, by_model in sorted(new.items()):
        for m, e in sorted(by_model.items()):
            published = "; ".join(f"{r['method']} {r['metrics'][e['summary_key']]:g}"
                                  for r in references.get(e["dataset"], []) if e["summary_key"] in r["metrics"])
            value = f"{e['value']:.1f}" if "hausdorff" in key else f"{e['value']:.3f}"
            train = "–" if e["train_seconds"] is None else f"{e['train_seconds']:.0f}"
            predict = "–" if e["predict_seconds"] is None else f"{e['predict_seconds']:.1f}"
            lines.append(f"| {key} | {m} | {value} | {published or '–'} | {e['device'] or '–'} | {train} | {predict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, nargs="+", required=True,
                        help="the config file(s) the workflow ran, as given to --configfile (config/glas.yaml)")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where the workflow ran (default: here)")
    parser.add_argument("--device-name", help="GPU model, for runs whose spec.json records only 'cuda' "
                        "(e.g. \"$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)\")")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default {OUT.relative_to(REPO)}")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    config = merged_config(args.config)  # as Snakemake merges several --configfile
    try:
        new = collect(config, args.config, args.workdir.resolve(), args.device_name)
    except (RunMismatch, FileNotFoundError) as exc:
        print(f"accuracy.py: {exc}", file=sys.stderr)
        return 1
    print(markdown(new, config["references"]))
    if not args.dry_run:
        existing = json.loads(args.out.read_text()) if args.out.exists() else {}
        write_json(args.out, merge(existing, new))
        print(f"\nwrote {sum(len(v) for v in new.values())} figures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
