"""Choose the post-processing on validation images: a grid of ``postprocess:`` settings scored on a finished run.

    python benchmarks/postprocess_sweep.py --configfile config/glas_cpu.yaml [more.yaml ...] --dataset glas_val
        [--model unet] [--threshold spec 0.3 0.4] [--min-size 100 300] [--max-hole ...] [--h ...]
        [--select object_f1_pooled] [--min-wins 0.5] [--out benchmarks/results/postprocess_<results>.json]

The probability maps the workflow already predicted for ``--dataset`` are post-processed with every combination of
the listed values (the run's own ``postprocess:`` block for what is not listed; ``spec`` is the cut a null threshold
means: the one chosen on the validation patches at training, or for an instance model (Mask R-CNN, US-Net) the merge
rule's 0.9 on the sum of its kept masks) and scored by the workflow's evaluation. The dataset must be validation
images: every one of its images must be among those the patch split held out of training (``split_stems`` of each
training dataset with the run's ``seed`` and ``patches.val_fraction``), so nothing here can be chosen on a test
split or on images the model was trained on. Prints a table with the best setting by ``--select``: one figure (the
higher the better, except Hausdorff), or ``glas_rank``, the GlaS challenge's ranking rule (the sum of the setting's
ranks in object F1, object Dice and object Hausdorff; ties go to the higher object F1). Writes every row to the
JSON. Scratch outputs go under ``<results>/postprocess_sweep/``.

A few validation images can make a setting look better by chance (MoNuSeg's 6: a threshold that won there by
two images lost on the test set). ``--min-wins F`` guards the choice of a per-image figure (``aji_mean``,
``pq_mean``, ``pixel_f1_mean``): a setting may replace the run's own only if it beats it on more than the fraction
``F`` of the images (0.5: a majority), so the grid must include the run's own setting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench import OBJECT_FIGURES, dataset_entry, merged_config, score  # noqa: E402

from histoflow.datasets import Dataset, resolve_datasets, split_stems  # noqa: E402
from histoflow.io import InputError, read_json, write_json  # noqa: E402
from histoflow.postprocess import default_threshold  # noqa: E402

LOWER_IS_BETTER = {"object_hausdorff_pooled"}
PER_IMAGE = {"aji_mean": "aji", "pq_mean": "pq", "pixel_f1_mean": "pixel_f1"}
"""The per-image figures (summary key → metrics.tsv column) that ``--min-wins`` can compare image by image."""
GLAS_RANKED = ("object_f1_pooled", "object_dice_pooled", "object_hausdorff_pooled")


def check_validation(datasets: dict[str, Dataset], name: str, seed: int, val_fraction: float) -> None:
    """Refuse ``name`` unless each of its images is one the patch split held out of a training dataset."""
    held_out = {d.images[s] for d in datasets.values() for s in split_stems(d.train, val_fraction, seed)[1]}
    d = datasets[name]
    outside = sorted(s for s in d.test if d.images[s] not in held_out)
    if outside:
        raise InputError(
            f"dataset {name!r}: {len(outside)} of its {len(d.test)} images ({', '.join(outside[:5])}"
            f"{', ...' if len(outside) > 5 else ''}) are not validation images (those the patch split holds out of "
            "training), so post-processing would be chosen on test or training images. Sweep a dataset of held-out "
            "training images, like glas_val in config/glas_cpu.yaml.")


def grid(base: dict[str, Any], values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``values`` (key → list) over ``base``, in the order given (last key varies fastest)."""
    keys = [k for k, v in values.items() if v]
    return [{**base, **dict(zip(keys, combo, strict=True))} for combo in itertools.product(*(values[k] for k in keys))]


def glas_rank(rows: list[dict[str, Any]]) -> list[int]:
    """Each row's sum of ranks (1 = best; equals share the better rank) in the three GlaS object figures."""
    total = [0] * len(rows)
    for k in GLAS_RANKED:
        sign = 1 if k in LOWER_IS_BETTER else -1
        values = [float("inf") if r[k] is None else sign * r[k] for r in rows]
        for i, v in enumerate(values):
            total[i] += 1 + sum(w < v for w in values)
    return total


def best(rows: list[dict[str, Any]], select: str) -> dict[str, Any]:
    """The best row by ``select``: the highest figure (lowest for a Hausdorff distance), or with ``"glas_rank"`` the
    lowest GlaS rank sum, ties to the higher object F1; the first of equals."""
    if select == "glas_rank":
        ranks = glas_rank(rows)
        f1 = [-(r["object_f1_pooled"] or 0.0) for r in rows]
        return rows[min(range(len(rows)), key=lambda i: (ranks[i], f1[i]))]
    sign = 1 if select in LOWER_IS_BETTER else -1
    return min(rows, key=lambda r: float("inf") if r[select] is None else sign * r[select])


def wins(row: dict[str, Any], own: dict[str, Any], select: str) -> int:
    """On how many images ``row``'s per-image ``select`` figure is higher than ``own``'s."""
    col = PER_IMAGE[select]
    mine, theirs = row["per_image"][col], own["per_image"][col]
    return sum(mine[k] > theirs[k] for k in theirs)


def record_wins(rows: list[dict[str, Any]], own: dict[str, Any], select: str) -> None:
    """Store in each row, as ``wins_over_own``, on how many images it beats ``own`` (the run's own setting)."""
    for r in rows:
        r["wins_over_own"] = wins(r, own, select)


def best_robust(rows: list[dict[str, Any]], select: str, own: dict[str, Any], min_wins: float) -> dict[str, Any]:
    """The best row by ``select`` among ``own`` and the rows that beat it (``wins_over_own``, see
    :func:`record_wins`) on more than the fraction ``min_wins`` of the images."""
    n = len(own["per_image"][PER_IMAGE[select]])
    return best([r for r in rows if r is own or r["wins_over_own"] > min_wins * n], select)


def own_row(rows: list[dict[str, Any]], postprocess: dict[str, Any]) -> dict[str, Any]:
    """The row whose swept values are the run's own ``postprocess:`` block (threshold ``null`` = the model's spec)."""
    for r in rows:
        if all(v == postprocess.get(k) for k, v in r["postprocess"].items()):
            return r
    raise InputError(f"--min-wins compares each setting with the run's own, {postprocess}, but the grid does not "
                     "include it: add its values (the threshold as 'spec' when the config's is null).")


def run(config: dict[str, Any], dataset: str, model: str, values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    results = Path(config["results"])
    datasets = resolve_datasets(config)
    if dataset not in datasets:
        raise InputError(f"--dataset {dataset!r}: no dataset of that name (datasets: {sorted(datasets)}).")
    check_validation(datasets, dataset, config["seed"], config["patches"]["val_fraction"])
    pred = results / "predictions" / model / dataset
    if not pred.is_dir():
        raise InputError(f"{pred}: no probability maps; predict them first, e.g. snakemake --configfile ... "
                         f"{results}/metrics/{model}/{dataset}_summary.json")
    spec_json = results / "models" / model / "spec.json"
    spec_threshold = default_threshold(read_json(spec_json))  # what a null threshold cuts at (0.9 for Mask R-CNN)
    rows = []
    for i, pp in enumerate(grid(dict(config["postprocess"]), values)):
        if pp.get("threshold") == "spec":
            pp["threshold"] = None
        scratch = results / "postprocess_sweep" / model / dataset / str(i)
        summary = score(pp, results / "normalized" / dataset, spec_json, pred, dataset_entry(datasets[dataset]),
                        scratch)
        swept = {k: pp[k] for k in values if values[k]}
        shown = dict(swept)
        if "threshold" in shown and shown["threshold"] is None:
            shown["threshold"] = f"spec ({spec_threshold})"
        per_image = pd.read_csv(scratch / "metrics.tsv", sep="\t", dtype={"image": str}).set_index("image")
        rows.append({"setting": shown, "postprocess": swept, **{k: summary.get(k) for k in OBJECT_FIGURES},
                     "per_image": {c: per_image[c].astype(float).to_dict() for c in PER_IMAGE.values()}})
        print({k: v for k, v in rows[-1].items() if k not in ("per_image", "postprocess")}, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], chosen: dict[str, Any]) -> str:
    keys = list(rows[0]["setting"])
    extra = ["glas_rank_sum"] + (["wins_over_own"] if "wins_over_own" in rows[0] else [])
    lines = ["| " + " | ".join(keys + list(OBJECT_FIGURES) + extra) + " |",
             "|" + "---|" * len(keys) + "---:|" * (len(OBJECT_FIGURES) + len(extra))]
    for r in rows:
        figs = ["–" if r[k] is None else f"{r[k]:.1f}" if "hausdorff" in k else f"{r[k]:.3f}" for k in OBJECT_FIGURES]
        mark = "**" if r is chosen else ""
        setting = [f"{mark}{r['setting'][k]}{mark}" for k in keys]
        lines.append("| " + " | ".join(setting + figs + [str(r.get(k, "–")) for k in extra]) + " |")
    return "\n".join(lines)


def parse_threshold(v: str) -> float | str:
    return v if v == "spec" else float(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configfile", nargs="+", type=Path, required=True)
    p.add_argument("--workdir", type=Path, default=Path("."), help="the folder the workflow ran in")
    p.add_argument("--dataset", required=True, help="a dataset of validation images (held out of the patch split)")
    p.add_argument("--model", default=None, help="the model whose maps to post-process (default: the first)")
    p.add_argument("--threshold", nargs="*", type=parse_threshold, default=[],
                   help="probability cuts; 'spec' = what a null threshold cuts at: the one chosen on the "
                        "validation patches at training, or an instance model's merge rule (0.9)")
    p.add_argument("--min-size", nargs="*", type=int, default=[])
    p.add_argument("--max-hole", nargs="*", type=int, default=[])
    p.add_argument("--h", nargs="*", type=float, default=[], help="watershed marker heights")
    p.add_argument("--select", default="object_f1_pooled", choices=(*OBJECT_FIGURES, "glas_rank"),
                   help="the figure the best setting maximises (minimises for Hausdorff), or glas_rank: the GlaS "
                        "challenge's sum of ranks in object F1, Dice and Hausdorff")
    p.add_argument("--min-wins", type=float, default=None, metavar="F",
                   help="keep the run's own setting unless another beats it on more than this fraction of the images "
                        f"(only with a per-image --select: {', '.join(PER_IMAGE)})")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.min_wins is not None and args.select not in PER_IMAGE:
        p.error(f"--min-wins compares image by image: --select one of {', '.join(PER_IMAGE)}")
    files = [f.resolve() for f in args.configfile]
    os.chdir(args.workdir)
    config = merged_config(files)
    model = args.model or next(iter(config["models"]))
    values = {"threshold": args.threshold, "min_size": args.min_size, "max_hole": args.max_hole, "h": args.h}
    if not any(values.values()):
        p.error("give at least one of --threshold, --min-size, --max-hole, --h")
    rows = run(config, args.dataset, model, values)
    for r, rank in zip(rows, glas_rank(rows), strict=True):
        r["glas_rank_sum"] = rank
    chosen = best(rows, args.select)
    own = None
    if args.min_wins is not None:
        own = own_row(rows, config["postprocess"])
        n = len(own["per_image"][PER_IMAGE[args.select]])
        record_wins(rows, own, args.select)
        top = chosen
        chosen = best_robust(rows, args.select, own, args.min_wins)
        if chosen is not top:
            print(f"best by {args.select} alone: {top['setting']}, but it beats the run's own setting on only "
                  f"{top['wins_over_own']} of {n} images (--min-wins {args.min_wins})")
    out = (args.out or REPO / "benchmarks" / "results" / f"postprocess_{Path(config['results']).name}.json").resolve()
    from _bench import device_name

    write_json(out, {"configfiles": [str(f.relative_to(REPO)) if f.is_relative_to(REPO) else f.name for f in files],
                     "dataset": args.dataset, "model": model, "select": args.select, "min_wins": args.min_wins,
                     "own": None if own is None else own["setting"], "chosen": chosen["setting"],
                     "device": device_name("cpu"), "date": dt.date.today().isoformat(), "rows": rows})
    print(markdown(rows, chosen))
    print(f"best by {args.select}: {chosen['setting']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
