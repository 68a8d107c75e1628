"""Stain-normalization throughput: histoflow vs staintools 2.1.2 and torchstain, side by side.

    python benchmarks/stain.py                      # CPU; writes benchmarks/results/stain.json
    python benchmarks/stain.py --device cuda        # also histoflow's torch backend and torchstain on the GPU

Every implementation is fitted once to the same target image (fit time reported separately) and
then normalizes the same real source images (GlaS and MoNuSeg from the repository's sibling
``shared/datasets`` when present, synthetic H&E otherwise). The timed ``transform`` of one
image includes estimating that image's own staining, as staintools' and torchstain's
``transform``/``normalize`` do; histoflow's ``apply`` column reuses a source estimate made
beforehand (``fit_source``), which is how whole slides are normalized tile by tile.
Throughput = pixels of all source images / sum over images of the best of ``--repeats`` runs, in
megapixels per second. Nothing is pinned: every library uses the machine's cores as it does by
default (histoflow: one NumPy thread per core in the per-pixel transform; torch: its intra-op
threads; SPAMS: OpenMP on all cores).

Needs the ``stain-ref`` extra for the reference rows (``pip install -e ".[stain-ref]"``); rows
whose library is missing are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from _bench import cpu_model, package_versions, usable_cpus  # noqa: E402

from histoflow import stain  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
TARGET = "glas/train/images/train_1.webp"
SOURCES = [
    "glas/testA/images/testA_5.webp",
    "glas/testA/images/testA_20.webp",
    "glas/testB/images/testB_3.webp",
    "glas/train/images/train_40.webp",
    "monuseg/train/images/TCGA-18-5592-01Z-00-DX1.webp",
    "monuseg/test/images/TCGA-2Z-A9J9-01A-01-TS1.webp",
]


def load_images() -> tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]:
    """(kind, target, [(name, source)]) -- real images when available, else synthetic H&E."""
    if (SHARED / TARGET).is_file() and all((SHARED / s).is_file() for s in SOURCES):
        from PIL import Image

        def read(rel: str) -> np.ndarray:
            with Image.open(SHARED / rel) as im:
                return np.ascontiguousarray(np.asarray(im.convert("RGB")))

        return "real (GlaS + MoNuSeg)", read(TARGET), [(Path(s).stem, read(s)) for s in SOURCES]
    from histoflow.synthetic.fibres import FibreParams, make_fibre_image

    target, _ = make_fibre_image(0, FibreParams(size=(522, 775)))
    sources = [(f"synthetic_{i}", make_fibre_image(i, FibreParams(size=(768, 768)))[0]) for i in range(1, 5)]
    return "synthetic (histoflow.synthetic.fibres)", target, sources


def best_of(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] | None = None) -> float:
    """Best wall time of ``repeats`` runs of ``fn`` (after one untimed warm-up), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - start)
    return best


class Row:
    """One implementation: name, method, and callables for fit / transform / (optional) apply."""

    def __init__(
        self,
        library: str,
        method: str,
        backend: str,
        fit: Callable[[np.ndarray], None],
        transform: Callable[[np.ndarray], Callable[[], Any]],
        apply: Callable[[np.ndarray], Callable[[], Any]] | None = None,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self.library, self.method, self.backend = library, method, backend
        self.fit, self.transform, self.apply, self.sync = fit, transform, apply, sync


def histoflow_rows(device: str | None) -> list[Row]:
    rows = []
    configs = [("reinhard", "numpy", {}), ("macenko", "numpy", {"backend": "numpy"})]
    configs.append(("vahadane", "numpy", {"backend": "numpy"}))
    if device is not None:
        configs += [
            (m, f"torch-{device}", {"backend": "torch", "device": device}) for m in ("macenko", "vahadane")
        ]
    for method, backend, params in configs:
        norm = stain.get_normalizer(method, **params)

        def transform(img: np.ndarray, norm: stain.StainNormalizer = norm) -> Callable[[], Any]:
            return lambda: norm.transform(img)

        def apply(img: np.ndarray, norm: stain.StainNormalizer = norm) -> Callable[[], Any]:
            source = norm.fit_source(img)
            return lambda: norm.transform(img, source_params=source)

        sync = _cuda_sync if backend.startswith("torch-cuda") else None
        rows.append(Row("histoflow", method, backend, norm.fit, transform, apply, sync))
    return rows


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def staintools_rows(calls: int) -> list[Row]:
    try:
        import staintools
    except ImportError as exc:
        print(f"staintools rows skipped: {exc}", file=sys.stderr)
        return []
    rows = []
    for method in ("reinhard", "macenko", "vahadane"):
        norm = (
            staintools.ReinhardColorNormalizer()
            if method == "reinhard"
            else staintools.StainNormalizer(method)
        )

        def transform(img: np.ndarray, norm: Any = norm) -> Callable[[], Any]:
            # staintools writes into its input (0 -> 1): give it a private copy made before timing
            copies = [img.copy() for _ in range(calls)]
            return lambda: norm.transform(copies.pop() if copies else img.copy())

        rows.append(Row("staintools", method, "numpy+spams", lambda t, n=norm: n.fit(t.copy()), transform))
    return rows


def torchstain_rows(devices: list[str]) -> list[Row]:
    try:
        import torch
        import torchstain
    except ImportError as exc:
        print(f"torchstain rows skipped: {exc}", file=sys.stderr)
        return []
    rows = []
    for device in devices:
        norm = torchstain.normalizers.MacenkoNormalizer(backend="torch")

        def to_tensor(img: np.ndarray, device: str = device) -> Any:
            return torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous().to(device)

        def fit(target: np.ndarray, norm: Any = norm, to_tensor: Any = to_tensor) -> None:
            norm.fit(to_tensor(target))

        def transform(img: np.ndarray, norm: Any = norm, to_tensor: Any = to_tensor) -> Callable[[], Any]:
            tensor = to_tensor(img)
            return lambda: norm.normalize(tensor, stains=False)

        sync = _cuda_sync if device.startswith("cuda") else None
        rows.append(Row("torchstain", "macenko", f"torch-{device}", fit, transform, sync=sync))
    return rows


def cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"model": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus()}
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def versions() -> dict[str, str]:
    return package_versions(("histoflow", "numpy", "scikit-image", "torch", "staintools", "spams-bin", "torchstain",
                             "opencv-python"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default=None, help="torch device for the torch rows, e.g. cuda (default: cpu)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image; the best counts")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stain.json")
    parser.add_argument("--no-reference", action="store_true", help="skip staintools and torchstain")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = args.device or "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible")

    cpu = cpu_info()  # load average before this benchmark adds its own
    kind, target, sources = load_images()
    total_mp = sum(img.shape[0] * img.shape[1] for _, img in sources) / 1e6
    print(
        f"images: {kind}; target {target.shape[1]}x{target.shape[0]}; {len(sources)} sources, {total_mp:.2f} MP"
    )

    rows = histoflow_rows(device)
    if not args.no_reference:
        rows += staintools_rows(args.repeats + 1)
        rows += torchstain_rows(["cpu"] if device == "cpu" else ["cpu", device])

    results = []
    for row in rows:
        fit_s = best_of(lambda row=row: row.fit(target), 1, row.sync)
        transform_s = sum(best_of(row.transform(img), args.repeats, row.sync) for _, img in sources)
        apply_s = None
        if row.apply is not None:
            apply_s = sum(best_of(row.apply(img), args.repeats, row.sync) for _, img in sources)
        result = {
            "library": row.library,
            "method": row.method,
            "backend": row.backend,
            "fit_ms": round(fit_s * 1e3, 1),
            "transform_s": round(transform_s, 4),
            "transform_mp_per_s": round(total_mp / transform_s, 2),
            "apply_mp_per_s": None if apply_s is None else round(total_mp / apply_s, 2),
        }
        results.append(result)
        print(
            f"  {row.library:10s} {row.method:9s} {row.backend:12s} fit {result['fit_ms']:8.1f} ms   "
            f"transform {result['transform_mp_per_s']:8.2f} MP/s"
            + ("" if apply_s is None else f"   apply {result['apply_mp_per_s']:8.2f} MP/s"),
            flush=True,
        )

    def mps(library: str, method: str, backend: str) -> float | None:
        for r in results:
            if (r["library"], r["method"], r["backend"]) == (library, method, backend):
                return r["transform_mp_per_s"]
        return None

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a / b, 2)

    report: dict[str, Any] = {
        "benchmark": "histoflow.stain",
        "images": kind,
        "sources": [{"name": n, "shape": list(img.shape)} for n, img in sources],
        "source_megapixels": round(total_mp, 3),
        "repeats": args.repeats,
        "timing": "transform = per-image source estimation + per-pixel transform (best of repeats, "
        "summed over images); apply = per-pixel transform with a precomputed source estimate; "
        "fit (target) reported separately",
        "cpu": cpu,
        "versions": versions(),
        "results": results,
        "vahadane_speedup_vs_staintools": ratio(
            mps("histoflow", "vahadane", "numpy"), mps("staintools", "vahadane", "numpy+spams")
        ),
        "macenko_speedup_vs_staintools": ratio(
            mps("histoflow", "macenko", "numpy"), mps("staintools", "macenko", "numpy+spams")
        ),
        "reinhard_speedup_vs_staintools": ratio(
            mps("histoflow", "reinhard", "numpy"), mps("staintools", "reinhard", "numpy+spams")
        ),
        "macenko_speedup_vs_torchstain": ratio(
            mps("histoflow", "macenko", "numpy"), mps("torchstain", "macenko", "torch-cpu")
        ),
    }
    if device != "cpu":
        report["device"] = device
        report["macenko_speedup_vs_torchstain_" + device.replace(":", "")] = ratio(
            mps("histoflow", "macenko", f"torch-{device}"), mps("torchstain", "macenko", f"torch-{device}")
        )
    print("speed-ups (same run): " + ", ".join(f"{k} = {v}" for k, v in report.items() if "speedup" in k))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
