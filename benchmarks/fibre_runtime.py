"""Whole-slide runtime of the fibre network against the U-Net, as the VGG16 paper's Table 2 measures it.

    python benchmarks/fibre_runtime.py [--device cuda] [--base 1024] [--repeats 2]
    python benchmarks/fibre_runtime.py --scale area --mode tiled        # this project's earlier table

The paper's protocol (the default): images of 1×, 2×, …, 9× a base image's **edge** (k·base × k·base, so up to
81× the pixels; its DNN-SNM row grows exactly as k²), each segmented by **one whole-image forward pass**, by
the VGG16 multi-decoder network (``vgg16_mdn``) and by the U-Net at the same sizes, side by side in one run
(models alternate for every size, so drifting machine load hits both alike). ``--scale area`` takes 1…9× the
base *area* instead and ``--mode tiled`` the workflow's tiled inference (``predict_tiled``: Gaussian-blended
overlapping tiles, batched), which is what bounds memory on real slides. Full widths on CUDA (VGG16: base
width 64; U-Net: Ronneberger's 64 / depth 4); on CPU, --small (default there) uses 16-wide versions. Both run in
the workflow's inference arithmetic (``--precision auto``: bf16 autocast where the device has it, channels_last
where it is faster, as ``predict`` does); ``--precision fp32`` measures fp32. The
crops come from one large synthetic muscle section. Prints a table, fits time = a + b · pixels (near-linear
is expected), and writes ``benchmarks/results/fibre_runtime[_area][_tiled][_cpu].json`` and a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from _bench import best_time, device_name  # noqa: E402

from histoflow.device import (  # noqa: E402
    autocast,
    prepare_model,
    resolve_device,
    resolve_precision,
    to_device,
    use_channels_last,
)
from histoflow.models import build_model  # noqa: E402
from histoflow.synthetic.fibres import FibreParams, make_fibre_image  # noqa: E402
from histoflow.tiling import predict_tiled  # noqa: E402

# (rows, cols) in base units for 1x ... 9x the base area
AREA_SHAPES = [(1, 1), (1, 2), (1, 3), (2, 2), (1, 5), (2, 3), (1, 7), (2, 4), (3, 3)]


def shapes(scale: str, multiples: int) -> list[tuple[int, int]]:
    """(rows, cols) in base units of the sizes 1x … ``multiples``x: of the base's edge (``edge``) or area."""
    if scale == "edge":
        return [(k, k) for k in range(1, multiples + 1)]
    return AREA_SHAPES[:multiples]


def models(small: bool) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    w = 16 if small else 64
    return {
        "vgg16_mdn": build_model("vgg16_mdn", base_width=w, decoder_width=16 if small else 32),
        "unet": build_model("unet", base_width=w, depth=3 if small else 4),
    }


def time_one(model, x: torch.Tensor, device, tile: int, overlap: int, batch: int, repeats: int,
             mode: str = "whole", precision: str = "fp32", channels_last: bool = False) -> float:
    """Best wall-clock seconds of segmenting ``x (3, H, W)``: one forward of the whole image, or tiled, in the
    arithmetic ``precision`` means on ``device`` (:func:`histoflow.device.autocast`), the whole image in the
    model's memory format (``channels_last``)."""
    def run():
        with torch.inference_mode(), autocast(device, precision):
            if mode == "whole":
                torch.sigmoid(model(to_device(x[None], device, channels_last)))
            else:
                predict_tiled(lambda b: torch.sigmoid(model(b)), x, tile=tile, overlap=overlap, batch_size=batch,
                              device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return best_time(run, repeats)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--base", type=int, default=None, help="base image edge (default 1024 on CUDA, 256 on CPU)")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="16-wide models (the default on CPU)")
    ap.add_argument("--scale", choices=["edge", "area"], default="edge",
                    help="1..9x the base's edge (the paper) or its area")
    ap.add_argument("--mode", choices=["whole", "tiled"], default="whole",
                    help="one whole-image forward (the paper) or the workflow's tiled inference")
    ap.add_argument("--multiples", type=int, default=9)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 autocast where the device has it (as the workflow's predict)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    small = args.small or not cuda
    base = args.base or (1024 if cuda else 256)
    tile = args.tile or (512 if cuda else 256)
    batch = args.batch or (16 if cuda else 2)
    repeats = args.repeats or (3 if cuda else 1)
    stem = "fibre_runtime" + ("_area" if args.scale == "area" else "") + ("_tiled" if args.mode == "tiled" else "")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / (
        f"{stem}.json" if cuda else f"{stem}_cpu.json")
    sizes = shapes(args.scale, args.multiples)

    rows_max, cols_max = max(r for r, _ in sizes), max(c for _, c in sizes)
    slide, _ = make_fibre_image(0, FibreParams(size=(rows_max * base, cols_max * base)))
    x_slide = torch.from_numpy(slide).permute(2, 0, 1).float().div_(255.0)
    precision = resolve_precision(args.precision, device)
    channels_last = use_channels_last(device, precision)
    nets = {k: prepare_model(m, device, channels_last=channels_last).eval() for k, m in models(small).items()}
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in nets.items()}
    # warm-up (cuDNN autotuning, allocator) on the base image
    for m in nets.values():
        time_one(m, x_slide[:, :base, :base], device, tile, overlap=args.overlap, batch=batch, repeats=1,
                 mode=args.mode, precision=precision, channels_last=channels_last)

    results = []
    print(f"{'size':>5} {'pixels':>12} " + " ".join(f"{k + ' (s)':>14}" for k in nets) + f" {'ratio':>7}")
    for k, (r, c) in enumerate(sizes, start=1):
        x = x_slide[:, : r * base, : c * base]
        row = {"multiple": k, "height": r * base, "width": c * base, "pixels": r * c * base * base}
        for name, m in nets.items():
            row[f"{name}_s"] = time_one(m, x, device, tile, args.overlap, batch, repeats, args.mode, precision,
                                        channels_last)
        row["ratio_mdn_vs_unet"] = row["vgg16_mdn_s"] / row["unet_s"]
        results.append(row)
        print(f"{k:>4}x {row['pixels']:>12,d} " + " ".join(f"{row[f'{n}_s']:>14.3f}" for n in nets)
              + f" {row['ratio_mdn_vs_unet']:>7.2f}")

    px = np.array([r["pixels"] for r in results], float)
    fits = {}
    for name in nets:
        t = np.array([r[f"{name}_s"] for r in results])
        b, a = np.polyfit(px, t, 1)
        pred = a + b * px
        r2 = 1 - ((t - pred) ** 2).sum() / ((t - t.mean()) ** 2).sum()
        fits[name] = {"intercept_s": float(a), "s_per_megapixel": float(b * 1e6), "r2": float(r2),
                      "megapixels_per_s_at_9x": float(px[-1] / 1e6 / t[-1])}
        print(f"{name}: time = {a:.3f} s + {b * 1e6:.3f} s/MP (R² {r2:.4f}); "
              f"{fits[name]['megapixels_per_s_at_9x']:.2f} MP/s at {len(results)}x")

    name = device_name(str(device))
    result = {
        "device": str(device), "device_name": name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "base": base, "scale": args.scale, "mode": args.mode,
        "tile": tile if args.mode == "tiled" else None, "overlap": args.overlap, "batch": batch,
        "models_m_params": params, "small_models": small, "repeats": repeats, "rows": results, "fits": fits,
        "precision": precision, "channels_last": channels_last,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    how = "whole image" if args.mode == "whole" else f"tile {tile}"
    plot(results, fits, out.with_suffix(".png"), f"{name}, {precision}, {how}, {args.scale} multiples of {base}²")
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(results: list[dict], fits: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    px = np.array([r["pixels"] for r in results]) / 1e6
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, f in fits.items():
        t = [r[f"{name}_s"] for r in results]
        ax.plot(px, t, "o", label=f"{name} ({f['s_per_megapixel']:.3g} s/MP, R² {f['r2']:.3f})")
        ax.plot(px, f["intercept_s"] + f["s_per_megapixel"] * px, "-", alpha=0.5)
    for r in results:
        ax.annotate(f"{r['multiple']}×", (r["pixels"] / 1e6, r["vgg16_mdn_s"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("image size (megapixels)")
    ax.set_ylabel("inference time (s)")
    ax.set_title(f"whole-slide runtime: {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
