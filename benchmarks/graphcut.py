"""Benchmark of histoflow.graphcut on a synthetic organ-like volume.

Times :func:`histoflow.graphcut.graphcut_banded` on an ``80 x 1024 x 1024`` volume and, for the
ratio, both :func:`graphcut_banded` and the full :func:`graphcut` on a ``20 x 512 x 512`` block
cut from the same field of view (slices 10-30, the ``y, x < 512`` quadrant, so that it holds
organ surface both across and within slices, with a band fraction similar to the whole volume's).
A full grid graph of all 80M voxels would need ~24 GB (the full cut of the 5.2M-voxel block
peaks at ~1.5 GB, ~290 bytes per voxel with 6-connected edges), so the full graph cut is only
measured on the block.

Synthetic data (:func:`make_volume`): a smooth, lobed ellipsoid ("organ") in a stack with voxel
spacing ``(dz, dy, dx) = (4, 1, 1)``. The probability map is a blurred version of the shape with
noise, ``prob = sigmoid((-signed_distance + noise) / width)`` with ``width = 2`` (physical units)
and i.i.d. Gaussian noise of standard deviation 2 in the same units, i.e. noise added in the logit
domain: confident far from the surface, uncertain within a few voxels of it, as a network's output
would be. The image is ``uint8``: 150 inside, 90 outside, a smooth bias field and noise (std 12).

Each case runs in a fresh process (``spawn``) so that its peak resident set size (RSS) is its own;
the peak is reset (``/proc/self/clear_refs``) after the data are generated, so ``peak_rss_gb``
is the data plus the graph cut, and ``data_rss_gb`` the data alone.

Usage::

    python benchmarks/graphcut.py            # 80 x 1024 x 1024 banded + 20 x 512 x 512 block ratio
    python benchmarks/graphcut.py --quick    # 20 x 256 x 256 and a 5 x 128 x 128 block (smoke test)

Prints a table and writes ``benchmarks/results/graphcut.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow"))

SPACING = (4.0, 1.0, 1.0)
PARAMS = {"gamma": 1.0, "sigma": 0.15, "delta": 0.2}
BAND = (0.05, 0.95)
MARGIN = 2


def make_volume(
    shape: tuple[int, int, int], seed: int = 0, crop: tuple[slice, slice, slice] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic organ volume: probability ``float32``, image ``uint8`` and truth ``bool`` ``(Z, H, W)``.

    ``shape`` is the field of view the organ is placed in; ``crop`` (slices with explicit starts
    and stops) returns only that block of it. Generated slice by slice so that no float64
    temporary of the whole volume exists.
    """
    nz, ny, nx = shape
    crop = crop or (slice(0, nz), slice(0, ny), slice(0, nx))
    zs, ys, xs = crop
    rng = np.random.default_rng(seed)
    dz = SPACING[0]
    # semi-axes in physical units (z in units of dx): the organ fills ~70 % of the field of view
    az, ay, ax = 0.38 * nz * dz, 0.36 * ny, 0.40 * nx
    cz, cy, cx = (nz - 1) / 2 * dz, (ny - 1) / 2, (nx - 1) / 2
    width, noise_std = 2.0, 2.0
    yy, xx = np.mgrid[ys, xs].astype(np.float32)
    yn, xn = (yy - cy) / ay, (xx - cx) / ax
    theta = np.arctan2(yn, xn)
    bias = (1.0 + 0.1 * np.sin(yy / ny * np.pi) * np.cos(xx / nx * 2 * np.pi)).astype(np.float32)
    out_shape = (zs.stop - zs.start,) + yy.shape
    prob = np.empty(out_shape, np.float32)
    image = np.empty(out_shape, np.uint8)
    truth = np.empty(out_shape, bool)
    for i, z in enumerate(range(zs.start, zs.stop)):
        zn = (z * dz - cz) / az
        # lobed radius: low-frequency modulation of the ellipsoid surface
        lobes = 1.0 + 0.12 * np.sin(3 * theta + 1.3 * zn) + 0.06 * np.cos(5 * theta - 2.0 * zn)
        rr = np.sqrt(zn * zn + yn * yn + xn * xn)
        r = rr / lobes
        # first-order signed distance (physical units) to the surface r = 1: (r - 1) / |grad r|
        grad = np.sqrt((zn / az) ** 2 + (yn / ay) ** 2 + (xn / ax) ** 2) / (np.maximum(rr, 1e-6) * lobes)
        sdf = (r - 1.0) / np.maximum(grad, 1e-6)
        inside = sdf < 0
        truth[i] = inside
        logit = (-sdf + rng.normal(0.0, noise_std, sdf.shape).astype(np.float32)) / width
        prob[i] = 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))
        img = np.where(inside, 150.0, 90.0) * bias + rng.normal(0.0, 12.0, sdf.shape)
        image[i] = np.clip(img, 0, 255).astype(np.uint8)
    return prob, image, truth


def _rss_gb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in GB from /proc (ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1))


def run_case(
    method: str, fov: tuple[int, int, int], crop: tuple[slice, slice, slice] | None, seed: int
) -> dict:
    """Generate the volume, run one graph cut and return timings, sizes and memory (child process)."""
    from histoflow.graphcut import energy, graphcut, graphcut_banded, uncertain_band

    prob, image, truth = make_volume(fov, seed, crop)
    shape = prob.shape
    band_frac = float(uncertain_band(prob, BAND, MARGIN).mean())
    uncertain_frac = float(((prob >= BAND[0]) & (prob <= BAND[1])).mean())
    data_rss = _rss_gb("VmRSS")
    reset = _reset_peak_rss()
    kw = dict(PARAMS, spacing=SPACING)
    t0 = time.perf_counter()
    if method == "banded":
        result = graphcut_banded(prob, image, band=BAND, margin=MARGIN, **kw)
    else:
        result = graphcut(prob, image, **kw)
    seconds = time.perf_counter() - t0
    row = {
        "method": method,
        "shape": list(shape),
        "crop_of": None if crop is None else {"fov": list(fov), "start": [c.start for c in crop]},
        "voxels": int(prob.size),
        "seconds": round(seconds, 3),
        "band_fraction": round(band_frac, 4),
        "uncertain_fraction": round(uncertain_frac, 4),
        "graph_nodes": int(prob.size if method == "full" else round(band_frac * prob.size)),
        "data_rss_gb": round(data_rss, 3),
        "peak_rss_gb": round(_rss_gb("VmHWM"), 3) if reset else None,
        "iou_threshold": round(_iou(prob > 0.5, truth), 4),
        "iou_graphcut": round(_iou(result, truth), 4),
    }
    if prob.size <= 20 * 512 * 512:  # energies are cheap enough to report on the small volume
        row["energy"] = energy(result, prob, image, **kw)
        np.save(_result_path(shape, method), np.packbits(result))
    return row


def _result_path(shape: tuple[int, int, int], method: str) -> Path:
    return (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / f"histoflow_graphcut_{method}_{'x'.join(map(str, shape))}.npy"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small volumes (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "graphcut.json")
    args = parser.parse_args(argv)
    large = (20, 256, 256) if args.quick else (80, 1024, 1024)
    nz, ny, nx = large
    block = (slice(nz // 8, nz // 8 + nz // 4), slice(0, ny // 2), slice(0, nx // 2))
    small = tuple(b.stop - b.start for b in block)
    cases = [("banded", block), ("full", block), ("banded", None)]
    ctx = mp.get_context("spawn")
    rows = []
    for method, crop in cases:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(run_case, (method, large, crop, 0)))
        print(f"done: {method} {rows[-1]['shape']}: {rows[-1]['seconds']:.2f} s", flush=True)

    small_rows = {r["method"]: r for r in rows if tuple(r["shape"]) == small}
    a = np.unpackbits(np.load(_result_path(small, "banded")))
    b = np.unpackbits(np.load(_result_path(small, "full")))
    for m in ("banded", "full"):
        _result_path(small, m).unlink()
    comparison = {
        "shape": list(small),
        "block_start": [b.start for b in block],
        "speedup_banded_vs_full": round(small_rows["full"]["seconds"] / small_rows["banded"]["seconds"], 2),
        "voxels_differing": int(np.count_nonzero(a != b)),
        "energy_banded": small_rows["banded"]["energy"],
        "energy_full": small_rows["full"]["energy"],
    }

    header = (
        f"{'method':<8} {'shape':>16} {'voxels':>11} {'band %':>7} {'seconds':>8} {'Mvox/s':>7} "
        f"{'peak RSS GB':>11} {'IoU thr':>8} {'IoU cut':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        shape_s = "x".join(map(str, r["shape"]))
        band_s = "100" if r["method"] == "full" else f"{100 * r['band_fraction']:.1f}"
        peak = "n/a" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f}"
        print(
            f"{r['method']:<8} {shape_s:>16} {r['voxels']:>11,} {band_s:>7} {r['seconds']:>8.2f} "
            f"{r['voxels'] / r['seconds'] / 1e6:>7.2f} {peak:>11} {r['iou_threshold']:>8.4f} "
            f"{r['iou_graphcut']:>8.4f}"
        )
    print(
        f"{'x'.join(map(str, small))} block: banded is {comparison['speedup_banded_vs_full']}x faster "
        "than full; "
        f"{comparison['voxels_differing']} voxels differ; energy banded {comparison['energy_banded']:.1f} "
        f"vs full {comparison['energy_full']:.1f}"
    )

    result = {
        "benchmark": "histoflow.graphcut",
        "params": dict(PARAMS, spacing=list(SPACING), band=list(BAND), margin=MARGIN, connectivity=6),
        "cases": rows,
        "comparison_small": comparison,
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "goal": "graphcut_banded <= 60 s and peak RSS < 8 GB on 80 x 1024 x 1024",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
