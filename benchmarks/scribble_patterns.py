"""The M-Unet paper's robustness experiments on a finished volume run: several scribble patterns (its Table I averages
three per volume) and IoU against the number of annotated slices (its Figure 7: 1 to 6 slices, three patterns each).

    python benchmarks/scribble_patterns.py --config config/volume_demo.yaml [--volume organ] [--patterns 3]
        [--slices 1 2 3 4 5 6] [--every 5]

It reuses the run's own products (run the config first): the M-Unet features of the target stack and of the
training slices (``features.h5``), the graph-cut parameters chosen on the validation stack
(``graphcut_params.json``) and the target's labels, which only score. For each number of annotated slices ``n``
and pattern ``p``: simulated scribbles (``make_scribbles``, seed ``p``: four strokes per class on a slice, as the
paper's "four or five curves") on ``n`` slices drawn (seed ``p``) from the target's every ``--every``-th slices,
DDML fitted on them plus the training pixels (as the workflow's ``ddml`` rule), then one 3-D graph cut with them as
seeds. Voxel IoU, precision, recall and F1 of DDML's ``h > 0.5`` and of the cut, mean ± sd over the patterns per
``n``. Prints a table and writes ``benchmarks/results/scribble_patterns_<name>.json`` and a plot (Figure 7's axes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from _bench import device_name, merged_config  # noqa: E402

from histoflow.stages.volumes import fit_ddml, voxel_scores  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pattern_scribbles(labels: np.ndarray, n_slices: int, every: int, pattern: int,
                      strokes: int = 4) -> tuple[np.ndarray, list[int]]:
    """Scribbles on ``n_slices`` of the every ``every``-th slices (drawn with seed ``pattern``), and those slices.

    Raises ``ValueError`` when the stack has fewer candidate slices than ``n_slices``.
    """
    from histoflow.scribbles import make_scribbles

    candidates = list(range(0, len(labels), every))
    if n_slices > len(candidates):
        raise ValueError(f"{n_slices} annotated slices asked for, but every {every}-th slice gives only "
                         f"{len(candidates)}; lower --every")
    chosen = sorted(np.random.default_rng(pattern).choice(candidates, n_slices, replace=False).tolist())
    seeds = np.zeros(labels.shape, np.uint8)
    for z in chosen:
        seeds[z] = make_scribbles(labels[z], every=1, strokes_per_class=strokes, seed=pattern * 1000 + z)
    return seeds, chosen


def run_case(target_f: np.ndarray, images: np.ndarray, truth: np.ndarray, train_f: np.ndarray,
             train_y: np.ndarray, seeds: np.ndarray, ddml: dict, params: dict, spacing, banded: bool,
             seed: int) -> dict[str, float]:
    """DDML on these scribbles and the 3-D graph cut with them: the scores of both against ``truth``."""
    from histoflow.ddml import refined_probability
    from histoflow.graphcut import graphcut, graphcut_banded

    net, head = fit_ddml(target_f, seeds, train_f, train_y, ddml, seed, "simulated scribbles")
    h = refined_probability(net, head, target_f)
    cut = graphcut_banded if banded else graphcut
    mask = cut(h, images, gamma=params["gamma"], sigma=params["sigma"], delta=params["delta"], seeds=seeds,
               spacing=tuple(spacing) if spacing else None)
    return {**{f"ddml_{k}": v for k, v in voxel_scores(h > 0.5, truth).items()},
            **{f"graphcut_{k}": v for k, v in voxel_scores(mask, truth).items()}}


def load_run(config: dict, volume: str) -> dict:
    """What the experiment reads from a finished volume run of ``config`` (validated, defaults filled)."""
    import h5py

    from histoflow.volume import read_stack, stack_paths

    spec = config["volumes"][volume]
    base = Path(config["results"]) / "volumes" / volume
    target = (base / "normalized" / "target" if spec["stain"] != "none"
              else Path(stack_paths(spec, base / "data")["target"]))
    features = base / "features.h5"
    for path in (features, base / "graphcut_params.json", target):
        if not path.exists():
            raise SystemExit(f"{path}: not found; run the config's volume stage first (snakemake --configfile ...)")
    with h5py.File(features, "r") as h5:
        target_f = h5["target/features"][...].astype(np.float32)
        train_f = h5["train/features"][...].astype(np.float32)
        train_y = h5["train/labels"][...]
    images, truth = read_stack(target)
    if truth is None:
        raise SystemExit(f"{target}: the target stack has no labels to score against")
    return {"target_f": target_f, "train_f": train_f, "train_y": train_y, "images": images, "truth": truth > 0,
            "params": json.loads((base / "graphcut_params.json").read_text())["best"]}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sd over the patterns of every score, per number of annotated slices."""
    out = []
    for n in sorted({r["n_slices"] for r in rows}):
        group = [r for r in rows if r["n_slices"] == n]
        keys = [k for k in group[0] if k.startswith(("ddml_", "graphcut_"))]
        out.append({"n_slices": n, "patterns": len(group),
                    **{f"{k}_mean": float(np.mean([r[k] for r in group])) for k in keys},
                    **{f"{k}_sd": float(np.std([r[k] for r in group])) for k in keys}})
    return out


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    n = [s["n_slices"] for s in summary]
    for key, label in (("graphcut_iou", "M-Unet + DDML + graph cut"), ("ddml_iou", "M-Unet + DDML")):
        ax.errorbar(n, [s[f"{key}_mean"] for s in summary], yerr=[s[f"{key}_sd"] for s in summary], marker="o",
                    capsize=3, label=label)
    ax.set_xlabel("annotated slices")
    ax.set_ylabel("IoU (mean ± sd over scribble patterns)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", required=True, help="the run's config file(s), in Snakemake's order")
    ap.add_argument("--volume", default=None, help="volume name (default: the config's first)")
    ap.add_argument("--patterns", type=int, default=3)
    ap.add_argument("--slices", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--every", type=int, default=None, help="candidate slice interval (default: scribble_every)")
    ap.add_argument("--name", default=None, help="output name (default: the volume's)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    config = merged_config(args.config)
    volume = args.volume or next(iter(config["volumes"]))
    spec = config["volumes"][volume]
    every = args.every or spec["scribble_every"]
    run = load_run(config, volume)
    rows = []
    for n in args.slices:
        for p in range(args.patterns):
            seeds, chosen = pattern_scribbles(run["truth"].astype(np.uint8), n, every, p)
            scores = run_case(run["target_f"], run["images"], run["truth"], run["train_f"], run["train_y"], seeds,
                              config["ddml"], run["params"], spec.get("spacing_um"), config["graphcut"]["banded"],
                              config["seed"])
            rows.append({"n_slices": n, "pattern": p, "slices": chosen, **scores})
            print(f"n={n} pattern={p} slices={chosen}: IoU DDML {scores['ddml_iou']:.4f}, "
                  f"graph cut {scores['graphcut_iou']:.4f}", flush=True)
    summary = summarize(rows)
    print(f"\n{'slices':>6} {'DDML IoU':>16} {'graph-cut IoU':>16} {'graph-cut F1':>16}")
    for s in summary:
        print(f"{s['n_slices']:>6} {s['ddml_iou_mean']:>9.4f} ± {s['ddml_iou_sd']:.3f} "
              f"{s['graphcut_iou_mean']:>9.4f} ± {s['graphcut_iou_sd']:.3f} "
              f"{s['graphcut_f1_mean']:>9.4f} ± {s['graphcut_f1_sd']:.3f}")
    name = args.name or volume
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = {"config": args.config, "volume": volume, "every": every, "device": device_name("cpu"),
              "graphcut_params": run["params"], "rows": rows, "summary": summary}
    (args.out_dir / f"scribble_patterns_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, args.out_dir / f"scribble_patterns_{name}.png",
         f"{name}: IoU against annotated slices ({args.patterns} scribble patterns each)")
    print(f"\nwrote {args.out_dir / f'scribble_patterns_{name}.json'}")
    return result


if __name__ == "__main__":
    main()
