"""Whole-slide inference: end-to-end throughput, raw model throughput, MONAI, peak memory, scaling.

    python benchmarks/wsi_inference.py --device cuda      # H100: Ronneberger U-Net (31 M), 10k² and 30k² slides
    python benchmarks/wsi_inference.py --device cuda --rss-sizes 10000 30000 100000   # + the 100k² memory run
    python benchmarks/wsi_inference.py --device cpu --out benchmarks/results/wsi_inference_cpu.json  # small sizes
    python benchmarks/wsi_inference.py --scaling          # runtime vs image size, 1x .. 9x a base size (PNG + JSON)

Synthetic pyramidal TIFF slides (JPEG tiles, 4 levels, 0.5 µm/px, ~45 % tissue; made once per size
and kept in ``--workdir``) go through histoflow's whole-slide path, each size in a fresh process
(so its peak resident memory is its own): tissue detection on a thumbnail, then
:func:`histoflow.wsi.predict_slide` -- tiles read from the JPEG TIFF and Macenko-normalized in
DataLoader workers, batched inference (bf16 autocast + channels_last on CUDA, optionally
``torch.compile``; fp32 on CPU), Gaussian-blended accumulation, normalized rows written to a zarr
store -- then the probability map's pyramidal OME-TIFF. Figures:

* ``end_to_end_mpps``: megapixels of tissue processed (slide pixels under the tiles that were run)
  per second of wall time from opening the slide to the last zarr row written (tissue detection,
  reading, normalization, model, stitching, writing). The OME-TIFF export is timed separately.
* ``raw_forward_mpps``: the same model's batched forward pass alone in the same process and
  precision, input pixels per second (``eager``: the uncompiled model through ``--backend``, as the
  workflow's ``predict.backend`` runs it (on a CPU ``auto`` = the fastest installed of torch, ONNX Runtime and
  OpenVINO); on CUDA also ``compiled``). With overlap o on
  tiles of t, ``end_to_end / raw`` can reach at most ((t - o) / t)² (every slide pixel is computed
  about that many times); ``e2e_fraction_of_raw`` reports the ratio.
* ``monai_speedup``: MONAI's ``sliding_window_inference`` (Gaussian mode, same tile, overlap,
  batch size, model and precision, the slide read whole into memory first) wall time divided by
  ours on the same slide, MONAI with its default eager model (fp32 on a CPU) and, as
  ``monai_speedup_same_backend``, with our model exactly as we run it; ``monai_speedup_all_tiles`` runs
  ours on every tile (no tissue detection), so it measures the pipeline alone. Needs
  ``pip install monai`` (``.[bench]``); skipped without it, and above ``--monai-max`` (MONAI holds the
  whole slide, as float, in memory).
* ``peak_rss_gb``: peak resident memory of the process that ran that size (``ru_maxrss``);
  ``peak_rss_worker_gb``: that of its largest DataLoader worker (each worker holds a few tiles).

Results go to ``benchmarks/results/wsi_inference.json`` (``--out``), with the device name.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from _bench import device_name, package_versions  # noqa: E402

MODELS = {
    # name: (base_width, depth); ronneberger = the 2015 paper's widths 64..1024, 31 M parameters
    "ronneberger": (64, 4),
    "small": (16, 3),
    "tiny": (4, 2),
}
MPP = 0.5


def build(name: str, device: str):
    import torch

    from histoflow.device import prepare_model
    from histoflow.models import build_model

    base, depth = MODELS[name]
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, out_channels=1, base_width=base, depth=depth).eval()
    return prepare_model(model, torch.device(device))


def n_params(name: str) -> float:
    from histoflow.models import build_model

    base, depth = MODELS[name]
    model = build_model("unet", in_channels=3, out_channels=1, base_width=base, depth=depth)
    return sum(p.numel() for p in model.parameters()) / 1e6


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def slide_file(workdir: Path, size: int) -> Path:
    """The synthetic slide of ``size``² pixels (made once, then reused)."""
    from histoflow.synthetic.slides import write_synthetic_slide

    path = workdir / f"slide_{size}.tif"
    if not path.exists():
        t0 = time.perf_counter()
        levels = max(1, min(4, int(np.log2(max(size, 1) / 512)) + 1))
        write_synthetic_slide(path, size, size, mpp=MPP, levels=levels, tile=256, workers=os.cpu_count() or 1)
        print(f"  made {path.name} ({size}x{size}, {levels} levels) in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def fitted_normalizer():
    from histoflow.stain import get_normalizer
    from histoflow.synthetic.fibres import FibreParams, make_fibre_image
    from histoflow.wsi import cpu_normalizer

    target, _ = make_fibre_image(123, FibreParams(size=(512, 512)))
    return cpu_normalizer(get_normalizer("macenko").fit(target))


def backend_predictor(args: argparse.Namespace, model: Any, name: str) -> Any:
    """The model as the workflow runs it: :class:`histoflow.backends.ModelPredictor` (sigmoid applied) with
    ``--backend`` and precision ``auto``; its exported graph and choice are cached beside its weights in
    ``--workdir`` (a seeded model, so every child process gets the same key)."""
    import torch

    from histoflow.backends import ModelPredictor

    folder = Path(args.workdir) / "models" / name
    if not (folder / "model.pt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / "model.pt")
    return ModelPredictor(model, torch.device(args.device), args.backend, "auto", folder / "exported",
                          folder / "model.pt")


def compiled(model: Any, device: str, batch: int, tile: int) -> Any:
    """``torch.compile`` the model and compile it now (a warm-up batch), outside every timing."""
    import torch

    from histoflow.device import autocast

    cm = torch.compile(model)
    x = torch.rand(batch, 3, tile, tile, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(torch.device(device)):
        for _ in range(3):
            cm(x)
    sync(device)
    return cm


# --------------------------------------------------------------------------------------------------
# one size, in its own process


def child_setup(args: argparse.Namespace) -> tuple[Path, Any]:
    """What both measuring children do first: CPU threads, the slide file, the model on its device
    (cuDNN autotuning on CUDA, compiled with --compile)."""
    import torch

    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    path = slide_file(Path(args.workdir), args.size)
    model = build(args.model, args.device)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if args.compile:
        model = compiled(model, args.device, args.batch_size, args.tile)
    return path, model


def child(args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end run of one slide (this process's peak RSS is the figure)."""
    import torch

    from histoflow.wsi import (
        limit_malloc_retention,
        open_slide,
        plan_grid,
        predict_slide,
        tissue_mask,
        write_ome_pyramid,
    )

    limit_malloc_retention()  # as the workflow's predict_slide_region job does
    device = args.device
    path, model = child_setup(args)
    if args.compile:
        def predictor(x):
            return torch.sigmoid(model(x))
    else:
        predictor = backend_predictor(args, model, args.model)

    norm = fitted_normalizer() if args.stain else None
    out = Path(args.workdir) / f"prob_{args.size}_{args.model}.zarr"
    # warm-up outside the timing: CUDA context, cuDNN autotuning on the tile shape
    predict_slide(np.full((args.tile, args.tile, 3), 200, np.uint8), predictor, Path(args.workdir) / "warm.zarr",
                  tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=device,
                  progress=False, static_batches=args.compile)
    sync(device)
    t0 = time.perf_counter()
    slide = open_slide(path, mpp=MPP)
    tissue = None
    if args.tissue:
        tissue, thumb = tissue_mask(slide, thumbnail_size=2048)
    source = norm.fit_source(thumb if args.tissue else slide.thumbnail(2048)[0]) if norm is not None else None
    grid = plan_grid(slide.shape, args.tile, args.overlap, tissue, 0.01)
    t_tissue = time.perf_counter() - t0
    stats = predict_slide(slide, predictor, out, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                          device=device, num_workers=args.workers, normalizer=norm, stain_source=source, grid=grid,
                          progress=args.progress, static_batches=args.compile, name=f"{args.size}²")
    sync(device)
    wall = time.perf_counter() - t0
    export_s = None
    if args.export:
        from histoflow.wsi import open_group

        t1 = time.perf_counter()
        write_ome_pyramid(open_group(out)["prob"], Path(args.workdir) / f"prob_{args.size}.ome.tif", mpp=MPP)
        export_s = time.perf_counter() - t1
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kB
    workers_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # the largest worker
    return {
        "size": args.size, "model": args.model, "tissue_detection": args.tissue, "stain": args.stain,
        "backend": "torch.compile" if args.compile else predictor.record.get("backend"),
        "compiled": args.compile, "workers": args.workers, "tiles": stats["tiles"], "tiles_total": stats["tiles_total"],
        "tissue_megapixels": stats["megapixels"], "end_to_end_s": round(wall, 3),
        "tissue_detection_s": round(t_tissue, 3), "end_to_end_mpps": round(stats["megapixels"] / wall, 3),
        "tiles_per_s": round(stats["tiles"] / wall, 2),
        "export_ome_tiff_s": None if export_s is None else round(export_s, 3),
        "peak_rss_gb": round(rss_gb, 3), "peak_rss_worker_gb": round(workers_gb, 3) if args.workers else None,
    }


def monai_child(args: argparse.Namespace) -> dict[str, Any]:
    """MONAI sliding_window_inference (Gaussian) over the whole slide read into memory."""
    import tifffile
    import torch
    from monai.inferers import sliding_window_inference

    from histoflow.device import autocast

    device = args.device
    path, model = child_setup(args)
    if args.same_backend:  # the model exactly as our pipeline runs it
        predictor = backend_predictor(args, model, args.model)
    else:  # MONAI's default: the eager model (fp32 on a CPU)
        def predictor(x):
            if device.startswith("cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
            return torch.sigmoid(model(x))

    with torch.inference_mode(), autocast(torch.device(device)):  # warm-up
        predictor(torch.rand(args.batch_size, 3, args.tile, args.tile, device=device))
    sync(device)
    t0 = time.perf_counter()
    image = tifffile.imread(path, level=0)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0)
    t_read = time.perf_counter() - t0
    with torch.inference_mode(), autocast(torch.device(device)):
        out = sliding_window_inference(x, (args.tile, args.tile), args.batch_size, predictor,
                                       overlap=args.overlap / args.tile, mode="gaussian", sw_device=device,
                                       device="cpu")
    sync(device)
    wall = time.perf_counter() - t0
    del out, x, image
    return {"size": args.size, "monai_s": round(wall, 3), "monai_read_s": round(t_read, 3),
            "monai_backend": predictor.record.get("backend") if args.same_backend else "torch eager",
            "monai_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)}


def run_child(args: argparse.Namespace, size: int, model: str, kind: str = "e2e", **over: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_child", kind, "--_size", str(size), "--model", model,
           "--device", args.device, "--tile", str(args.tile), "--overlap", str(args.overlap),
           "--batch-size", str(args.batch_size), "--workers", str(over.get("workers", args.workers)),
           "--workdir", str(args.workdir), "--threads", str(args.threads or 0), "--backend", args.backend]
    for flag, on in (("--compile", over.get("compile", False)), ("--no-tissue", not over.get("tissue", True)),
                     ("--no-stain", not args.stain), ("--export", over.get("export", False)),
                     ("--progress", args.progress), ("--same-backend", over.get("same_backend", False))):
        if on:
            cmd.append(flag)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    sys.stderr.write("".join(line + "\n" for line in proc.stderr.splitlines() if "made slide" in line))
    for line in proc.stdout.splitlines():
        if line.startswith("  made "):
            print(line, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# raw forward, scaling


def raw_forward(args: argparse.Namespace, model_name: str, compile_model: bool) -> float:
    """Input megapixels per second of the batched forward alone (best of --repeats timings)."""
    import torch

    from histoflow.device import autocast

    device = args.device
    model = build(model_name, device)
    if compile_model:
        model = compiled(model, device, args.batch_size, args.tile)
    x = torch.rand(args.batch_size, 3, args.tile, args.tile, device=device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        x = x.contiguous(memory_format=torch.channels_last)
    if compile_model:
        def predictor(b):
            return torch.sigmoid(model(b))
    else:  # the backend the end-to-end run uses (--backend)
        predictor = backend_predictor(args, model, model_name)
    n = max(1, args.forward_batches)
    best = float("inf")
    with torch.inference_mode(), autocast(torch.device(device)):
        for _ in range(2):
            predictor(x)
        sync(device)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                predictor(x)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return n * args.batch_size * args.tile**2 / 1e6 / best


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    """predict_slide on in-memory images of 1x .. 9x a base area (same model, every tile run)."""
    import torch

    from histoflow.synthetic.slides import synthetic_slide_region, texture_bank
    from histoflow.wsi import Slide, predict_slide

    device = args.device
    model = build(args.model, device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True

    def predictor(x):
        return torch.sigmoid(model(x))

    bank = texture_bank(4, 512, 0)
    base = args.scaling_base
    rows = []
    work = Path(args.workdir)
    predict_slide(np.full((args.tile, args.tile, 3), 200, np.uint8), predictor, work / "warm.zarr", tile=args.tile,
                  overlap=args.overlap, batch_size=args.batch_size, device=device, progress=False)
    for k in range(1, 10):
        side = int(round(base * np.sqrt(k) / 16)) * 16
        image = synthetic_slide_region(0, 0, side, side, 1, side, side, bank)
        image[image == 242] = 200  # no glass: a cut-out of tissue, as the seed's images
        sync(device)
        t0 = time.perf_counter()
        predict_slide(Slide.from_array(image), predictor, work / "scaling.zarr", tile=args.tile,
                      overlap=args.overlap, batch_size=args.batch_size, device=device, progress=False)
        sync(device)
        sec = time.perf_counter() - t0
        rows.append({"factor": k, "side": side, "megapixels": round(side * side / 1e6, 3), "seconds": round(sec, 3)})
        print(f"  {k}x: {side}x{side} ({side * side / 1e6:.2f} MP) in {sec:.2f} s", flush=True)
    mp = np.array([r["megapixels"] for r in rows])
    sec = np.array([r["seconds"] for r in rows])
    slope, intercept = np.polyfit(mp, sec, 1)
    r2 = 1 - ((sec - (slope * mp + intercept)) ** 2).sum() / ((sec - sec.mean()) ** 2).sum()
    return {"base": base, "model": args.model, "rows": rows, "seconds_per_megapixel": round(float(slope), 4),
            "intercept_s": round(float(intercept), 3), "r2": round(float(r2), 4)}


def plot_scaling(result: dict[str, Any], device_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mp = [r["megapixels"] for r in result["rows"]]
    sec = [r["seconds"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.plot(mp, sec, "o", label="histoflow predict_slide")
    xs = np.linspace(0, max(mp) * 1.05, 50)
    ax.plot(xs, result["seconds_per_megapixel"] * xs + result["intercept_s"], "-", lw=1,
            label=f"linear fit, R² = {result['r2']:.3f}")
    for r in result["rows"]:
        ax.annotate(f"{r['factor']}×", (r["megapixels"], r["seconds"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7)
    ax.set_xlabel("image size (megapixels)")
    ax.set_ylabel("runtime (s)")
    ax.set_title(f"U-Net ({result['model']}) tiled inference, {device_name}", fontsize=9)
    ax.legend(fontsize=8)
    ax.set_xlim(0)
    ax.set_ylim(0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    return package_versions(("torch", "numpy", "tifffile", "imagecodecs", "zarr", "openslide-python", "monai"))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cuda or cpu (default cpu)")
    parser.add_argument("--model", choices=sorted(MODELS), default=None,
                        help="U-Net widths for throughput (default: ronneberger on cuda, small on cpu)")
    parser.add_argument("--rss-model", choices=sorted(MODELS), default=None,
                        help="model for the memory-only sizes (default: --model on cuda, tiny on cpu)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="slide edges for throughput (default: 10000 30000 on cuda, 4096 8192 on cpu)")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=None,
                        help="further slide edges measured for peak memory (default 10000 30000; add 100000)")
    parser.add_argument("--tile", type=int, default=None, help="tile edge (default 1024 on cuda, 512 on cpu)")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 on cuda, 4 on cpu")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 2 on cuda, 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on cpu (0 = torch's default)")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-stain", dest="stain", action="store_false", help="skip stain normalization")
    parser.add_argument("--no-monai", action="store_true")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                        help="inference backend of our runs and the raw forward (histoflow.backends; default auto)")
    parser.add_argument("--same-backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--monai-max", type=int, default=10000, help="largest slide edge MONAI is run on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward-batches", type=int, default=None, help="batches per raw-forward timing")
    parser.add_argument("--scaling", action="store_true", help="runtime vs size (1x..9x) only: PNG + JSON")
    parser.add_argument("--scaling-base", type=int, default=None, help="base edge (default 4096 cuda, 768 cpu)")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "histoflow-wsi-bench")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--progress", action="store_true", help="per-slide progress bars")
    # internal: one size in a child process
    parser.add_argument("--_child", choices=["e2e", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--_size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-tissue", dest="tissue", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible")
    args.model = args.model or ("ronneberger" if cuda else "small")
    args.tile = args.tile or (1024 if cuda else 512)
    args.batch_size = args.batch_size or (16 if cuda else 4)
    if args.workers is None:
        args.workers = max(1, min(12, (os.cpu_count() or 4) - 2)) if cuda else 1
    args.forward_batches = args.forward_batches or (20 if cuda else 2)
    if args.compile is None:
        args.compile = cuda
    args.workdir.mkdir(parents=True, exist_ok=True)

    if args._child:
        args.size = args._size
        result = child(args) if args._child == "e2e" else monai_child(args)
        print(json.dumps(result))
        return None

    name = device_name(args.device)
    if args.scaling:
        args.scaling_base = args.scaling_base or (4096 if cuda else 768)
        print(f"runtime vs size on {name}: model {args.model}, tile {args.tile}, overlap {args.overlap}")
        result = scaling(args)
        tag = "cuda" if cuda else "cpu"
        png = REPO / "benchmarks" / "results" / f"wsi_scaling_{tag}.png"
        plot_scaling(result, name, png)
        out = args.out or REPO / "benchmarks" / "results" / f"wsi_scaling_{tag}.json"
        report = {"benchmark": "histoflow.wsi runtime vs image size", "device": args.device, "device_name": name,
                  "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "versions": versions(),
                  **result, "plot": str(png.relative_to(REPO))}
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{result['seconds_per_megapixel']} s/MP (R² {result['r2']}); wrote {out} and {png}")
        return report

    sizes = args.sizes if args.sizes is not None else ([10000, 30000] if cuda else [4096, 8192])
    rss_sizes = args.rss_sizes if args.rss_sizes is not None else [10000, 30000]
    rss_model = args.rss_model or (args.model if cuda else "tiny")
    print(f"device: {name}; model {args.model} ({n_params(args.model):.1f} M parameters), tile {args.tile}, "
          f"overlap {args.overlap}, batch {args.batch_size}, workers {args.workers}, compile {args.compile}",
          flush=True)

    raw = {"eager": round(raw_forward(args, args.model, False), 2)}
    if args.compile:
        raw["compiled"] = round(raw_forward(args, args.model, True), 2)
    print(f"raw batched forward: {raw} MP/s", flush=True)
    best_raw = max(raw.values())

    per_size: dict[str, dict[str, Any]] = {}
    for size in sizes:
        r = run_child(args, size, args.model, compile=args.compile, export=True)
        r["e2e_fraction_of_raw"] = round(r["end_to_end_mpps"] / best_raw, 3)
        r["raw_forward_mpps"] = raw
        per_size[str(size)] = r
        print(f"  {size}²: {r['tiles']} tiles, {r['tissue_megapixels']:.1f} MP tissue in {r['end_to_end_s']:.2f} s = "
              f"{r['end_to_end_mpps']:.2f} MP/s end to end ({r['e2e_fraction_of_raw']:.2f} of raw), "
              f"OME-TIFF {r['export_ome_tiff_s']} s, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)

    monai: dict[str, Any] | None = None
    if not args.no_monai:
        try:
            importlib.metadata.version("monai")
        except importlib.metadata.PackageNotFoundError:
            print("MONAI not installed: monai_speedup skipped (pip install monai)")
        else:
            eligible = [s for s in sizes if s <= args.monai_max]
            if eligible:
                size = eligible[0]
                # eager model on both sides: MONAI's last, smaller batch would recompile a compiled model
                m = run_child(args, size, args.model, kind="monai", compile=False)
                same = run_child(args, size, args.model, kind="monai", compile=False, same_backend=True)
                ours_all = run_child(args, size, args.model, compile=False, tissue=False)
                ours = run_child(args, size, args.model, compile=False) if args.compile else per_size[str(size)]
                monai = {**m, "ours_s": ours["end_to_end_s"], "ours_all_tiles_s": ours_all["end_to_end_s"],
                         "model_compiled": False, "ours_backend": ours.get("backend"),
                         "monai_same_backend_s": same["monai_s"], "monai_same_backend": same["monai_backend"],
                         "monai_speedup": round(m["monai_s"] / ours["end_to_end_s"], 2),
                         "monai_speedup_same_backend": round(same["monai_s"] / ours["end_to_end_s"], 2),
                         "monai_speedup_all_tiles": round(m["monai_s"] / ours_all["end_to_end_s"], 2)}
                per_size[str(size)]["monai_speedup"] = monai["monai_speedup"]
                per_size[str(size)]["monai_speedup_all_tiles"] = monai["monai_speedup_all_tiles"]
                print(f"  MONAI sliding_window_inference on {size}²: {m['monai_s']:.2f} s "
                      f"(read {m['monai_read_s']:.2f} s, "
                      f"peak RSS {m['monai_peak_rss_gb']:.2f} GB); ours {ours['end_to_end_s']:.2f} s -> "
                      f"{monai['monai_speedup']}x, every tile {ours_all['end_to_end_s']:.2f} s -> "
                      f"{monai['monai_speedup_all_tiles']}x; MONAI with our {same['monai_backend']} model "
                      f"{same['monai_s']:.2f} s -> {monai['monai_speedup_same_backend']}x", flush=True)

    rss: dict[str, dict[str, Any]] = {}
    for size in rss_sizes:
        if str(size) in per_size and rss_model == args.model:
            rss[str(size)] = per_size[str(size)]
            continue
        r = run_child(args, size, rss_model, compile=False)
        rss[str(size)] = r
        print(f"  memory run {size}² ({rss_model}): {r['tissue_megapixels']:.1f} MP in {r['end_to_end_s']:.1f} s, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)

    print("\n| slide | model | tiles | tissue MP | end to end (s) | end to end MP/s | of raw | MONAI speed-up "
          "| peak RSS (GB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, r in {**per_size, **{k: v for k, v in rss.items() if k not in per_size}}.items():
        print(f"| {size}² | {r['model']} | {r['tiles']} | {r['tissue_megapixels']:.1f} | {r['end_to_end_s']:.2f} | "
              f"{r['end_to_end_mpps']:.2f} | {r.get('e2e_fraction_of_raw', '')} | {r.get('monai_speedup', '')} | "
              f"{r['peak_rss_gb']:.2f} |")
    report = {
        "benchmark": "histoflow.wsi end-to-end whole-slide inference",
        "device": args.device, "device_name": name, "cpu": device_name("cpu"), "versions": versions(),
        "model": {"name": args.model, "arch": "unet", "base_width": MODELS[args.model][0],
                  "depth": MODELS[args.model][1], "params_m": round(n_params(args.model), 2)},
        "rss_model": rss_model, "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size,
        "workers": args.workers, "compile": args.compile, "stain": args.stain, "mpp": MPP,
        "precision": "bf16 autocast, channels_last" if cuda else "auto (fp32 without BF16 instructions)",
        "backend": args.backend,
        "raw_forward_mpps": raw,
        "end_to_end_mpps": {s: r["end_to_end_mpps"] for s, r in per_size.items()},
        "e2e_fraction_of_raw": {s: r["e2e_fraction_of_raw"] for s, r in per_size.items()},
        "e2e_fraction_ceiling": round(((args.tile - args.overlap) / args.tile) ** 2, 3),
        "monai_speedup": None if monai is None else monai["monai_speedup"],
        "monai": monai,
        "peak_rss_gb": {s: r["peak_rss_gb"] for s, r in {**per_size, **rss}.items()},
        "sizes": per_size, "rss_runs": rss,
    }
    out = args.out or REPO / "benchmarks" / "results" / "wsi_inference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
