"""The per-pixel transform of the stain-matrix methods: NumPy (threaded, cache-sized chunks) and torch kernels."""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .colour import _OD_LUT32, _OD_SCALE

_BACKENDS = ("auto", "numpy", "torch")


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


_NUMPY_CHUNK = 1 << 16  # pixels per step of the NumPy kernel: its float32 temporaries stay in cache


_TORCH_CHUNK = 1 << 22


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; without an NVIDIA driver torch is not even imported (slow)."""
    if "torch" not in sys.modules and not any(
        os.path.exists(path) for path in ("/dev/nvidiactl", "/proc/driver/nvidia/version")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class _PixelMap:
    """Per-pixel map of a stain-matrix normalization, from source OD to target OD.

    ``kind == "linear"``: ``od_out = od @ matrix`` with ``matrix`` (3, 3) (least-squares unmixing,
    rescaling and recomposition folded into one matrix). ``kind == "nn_lasso"``: concentrations
    ``c`` (2,) per pixel minimise ``0.5 ||od - c @ stains||^2 + lam * sum(c)`` subject to
    ``c >= 0`` (closed form, :func:`_nn_lasso_2`), then ``od_out = c @ out`` with ``out`` (2, 3)
    the target stain matrix with its rows scaled by the concentration ratios.
    """

    kind: str
    matrix: np.ndarray | None = None
    stains: np.ndarray | None = None
    lam: float = 0.0
    out: np.ndarray | None = None


def _nn_lasso_2(b0: Any, b1: Any, gram: np.ndarray, xp: Any) -> tuple[Any, Any]:
    """Exact non-negative lasso for two stains, vectorised over pixels.

    Minimises ``f(c) = 0.5 c^T G c - b^T c`` over ``c >= 0`` per pixel, with ``G`` (2, 2) the Gram
    matrix of the stain vectors and ``b_j = s_j . od - lam`` (``lam = 0``: non-negative least
    squares). ``f`` is convex: if the unconstrained minimiser ``G^-1 b`` (the 2x2 normal
    equations) is non-negative it is the answer. Otherwise the minimum lies on a face, where the
    single-stain minimiser is ``c_j = max(b_j, 0) / G_jj``. For stains that are not negatively
    correlated (``G_01 >= 0``, always so for non-negative stain vectors) the KKT conditions show
    that the face is the one of the negative coefficient: a negative ``c_0`` becomes 0 and ``c_1``
    its single-stain value, and vice versa (both negative happens only when ``b <= 0``, giving 0).
    For ``G_01 < 0`` both faces are evaluated and the one with the lower ``f =
    -max(b_j, 0)^2 / (2 G_jj)`` is taken.

    Parameters
    ----------
    b0, b1 : array
        ``(n,)`` float arrays (NumPy, or torch tensors with ``xp`` the torch module); not modified.
    gram : np.ndarray
        ``(2, 2)`` symmetric positive-definite Gram matrix.
    xp : module
        ``numpy`` or ``torch``.

    Returns
    -------
    tuple of arrays
        ``(c0, c1)``, each ``(n,)``, non-negative.
    """
    g00, g01, g11 = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    inv_det = 1.0 / (g00 * g11 - g01 * g01)
    c0 = (b0 * (g11 * inv_det)) - (b1 * (g01 * inv_det))
    c1 = (b1 * (g00 * inv_det)) - (b0 * (g01 * inv_det))
    if g01 >= 0.0:
        neg0, neg1 = c0 < 0, c1 < 0
        c0 = xp.where(neg1, b0 * (1.0 / g00), c0)
        c1 = xp.where(neg0, b1 * (1.0 / g11), c1)
    else:
        inside = (c0 >= 0) & (c1 >= 0)
        p0, p1 = _relu(b0 * 1.0, xp), _relu(b1 * 1.0, xp)
        first = p0 * p0 * g11 >= p1 * p1 * g00  # face c1 = 0 has the lower objective
        zero = xp.zeros_like(c0)
        c0 = xp.where(inside, c0, xp.where(first, p0 * (1.0 / g00), zero))
        c1 = xp.where(inside, c1, xp.where(first, zero, p1 * (1.0 / g11)))
    return _relu(c0, xp), _relu(c1, xp)


def _nn_lasso_2_inplace(b0: np.ndarray, b1: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_nn_lasso_2` for NumPy temporaries and ``G_01 >= 0`` with fewer temporaries; overwrites b."""
    g00, g01, g11 = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    inv_det = 1.0 / (g00 * g11 - g01 * g01)
    dtype = b0.dtype.type
    tmp = b1 * dtype(g01 * inv_det)
    c0 = b0 * dtype(g11 * inv_det)
    c0 -= tmp
    np.multiply(b0, dtype(g01 * inv_det), out=tmp)
    c1 = b1 * dtype(g00 * inv_det)
    c1 -= tmp
    neg0 = c0 < 0
    neg1 = c1 < 0
    if g00 != 1.0:
        b0 *= dtype(1.0 / g00)
    if g11 != 1.0:
        b1 *= dtype(1.0 / g11)
    np.copyto(c0, b0, where=neg1)
    np.copyto(c1, b1, where=neg0)
    return np.maximum(c0, 0.0, out=c0), np.maximum(c1, 0.0, out=c1)


def _relu(a: Any, xp: Any) -> Any:
    """``max(a, 0)`` in place (``a`` must be a temporary)."""
    if xp is np:
        return np.maximum(a, 0.0, out=a)
    return a.clamp_min_(0.0)


def _worker_count() -> int:
    """CPU cores this process may use (its affinity mask), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _run_pixel_map_numpy(pixels: np.ndarray, pm: _PixelMap) -> np.ndarray:
    """``(N, 3)`` uint8 -> ``(N, 3)`` uint8 through ``pm``, float32, in cache-sized chunks.

    The pixels are split into one contiguous range per CPU core, run in threads (NumPy releases
    the GIL inside its loops). Every pixel goes through the same element-wise operations whatever
    the range or chunk it falls in, so the result does not depend on the image's size or tiling.
    The intensity ``256 exp(-od) - 1`` is rounded as ``floor(256 exp(-od) - 0.5)``.
    """
    out = np.empty_like(pixels)
    lut = _OD_LUT32
    log_scale = np.float32(math.log(_OD_SCALE))
    if pm.kind == "linear":
        coef = -np.asarray(pm.matrix, dtype=np.float32).T  # (3 out, 3 in)
    else:
        stains = np.asarray(pm.stains, dtype=np.float32)
        coef = -np.asarray(pm.out, dtype=np.float32).T  # (3 out, 2 stains)
        gram = np.asarray(pm.stains, dtype=np.float64) @ np.asarray(pm.stains, dtype=np.float64).T
        lam = np.float32(pm.lam)

    def run(lo: int, hi: int) -> None:
        for start in range(lo, hi, _NUMPY_CHUNK):
            stop = min(hi, start + _NUMPY_CHUNK)
            chunk = pixels[start:stop]
            od = [lut[chunk[:, 0]], lut[chunk[:, 1]], lut[chunk[:, 2]]]
            if pm.kind == "linear":
                terms = od
            else:
                b0 = od[0] * stains[0, 0]
                b0 += od[1] * stains[0, 1]
                b0 += od[2] * stains[0, 2]
                b0 -= lam
                b1 = od[0] * stains[1, 0]
                b1 += od[1] * stains[1, 1]
                b1 += od[2] * stains[1, 2]
                b1 -= lam
                solve = _nn_lasso_2_inplace if gram[0, 1] >= 0 else functools.partial(_nn_lasso_2, xp=np)
                terms = list(solve(b0, b1, gram))
            tmp = np.empty_like(terms[0])
            for ch in range(3):
                # x = ln 256 - od_out, capped at ln 256 (od_out >= 0); intensity = exp(x) - 1
                x = terms[0] * coef[ch, 0]
                for j in range(1, len(terms)):
                    np.multiply(terms[j], coef[ch, j], out=tmp)
                    x += tmp
                x += log_scale
                np.minimum(x, log_scale, out=x)
                np.exp(x, out=x)
                x -= np.float32(0.5)
                np.maximum(x, 0.0, out=x)
                out[start:stop, ch] = x  # truncation = floor, as x >= 0

    _parallel_ranges(pixels.shape[0], run)
    return out


def _parallel_ranges(n: int, run: Callable[[int, int], Any]) -> list[Any]:
    """``run(lo, hi)`` over contiguous ranges covering ``[0, n)``, in one thread per CPU core.

    Four ranges per thread, taken as threads become free, keep the cores balanced when another
    process takes one of them for a while. Results come back in range order. Small inputs (fewer
    than four chunks per core) run in the calling thread.
    """
    workers = min(_worker_count(), max(1, n // (4 * _NUMPY_CHUNK)))
    if workers <= 1:
        return [run(0, n)]
    parts = min(4 * workers, max(1, n // _NUMPY_CHUNK))
    edges = [round(i * n / parts / _NUMPY_CHUNK) * _NUMPY_CHUNK for i in range(parts)] + [n]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, edges[:-1], edges[1:]))


def _run_pixel_map_torch(pixels: np.ndarray, pm: _PixelMap, device: str) -> np.ndarray:
    """Torch twin of :func:`_run_pixel_map_numpy` (float32) on ``device``."""
    import torch

    dev = torch.device(device)
    lut = torch.tensor(_OD_LUT32, device=dev)
    log_scale = math.log(_OD_SCALE)
    if pm.kind == "linear":
        coef = torch.as_tensor(-np.asarray(pm.matrix, dtype=np.float32), device=dev)  # (3 in, 3 out)
    else:
        stains_t = torch.as_tensor(np.asarray(pm.stains, dtype=np.float32).T.copy(), device=dev)  # (3, 2)
        coef = torch.as_tensor(-np.asarray(pm.out, dtype=np.float32), device=dev)  # (2, 3)
        gram = np.asarray(pm.stains, dtype=np.float64) @ np.asarray(pm.stains, dtype=np.float64).T
    with warnings.catch_warnings():  # a read-only input is fine: the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(pixels)
    on_cpu = dev.type == "cpu"
    result = torch.empty(pixels.shape, dtype=torch.uint8) if on_cpu else None
    parts = []
    chunk_size = _TORCH_CHUNK if not on_cpu else 1 << 18
    with torch.inference_mode():
        for start in range(0, pixels.shape[0], chunk_size):
            chunk = src[start : start + chunk_size].to(dev, non_blocking=True)
            od = lut[chunk.long()]  # (n, 3)
            if pm.kind == "linear":
                x = od @ coef
            else:
                b = od @ stains_t - float(pm.lam)  # (n, 2)
                c0, c1 = _nn_lasso_2(b[:, 0], b[:, 1], gram, torch)
                x = torch.stack((c0, c1), dim=1) @ coef
            x = x.add_(log_scale).clamp_max_(log_scale).exp_().sub_(0.5).clamp_min_(0.0).to(torch.uint8)
            if result is not None:
                result[start : start + chunk.shape[0]] = x
            else:
                parts.append(x)
        if result is None:
            result = torch.cat(parts).cpu() if parts else torch.empty(pixels.shape, dtype=torch.uint8)
        return result.numpy()


_BLAS_BLOCK = 8192  # rows per product: OpenBLAS runs products this small in the calling thread


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a long ``(n, k)`` by a small ``(k, m)`` matrix, in blocks of rows.

    OpenBLAS starts its own threads for large products; beside other busy processes (or this
    module's worker threads) its spinning threads can make a millisecond product take tens of
    milliseconds. Products of at most :data:`_BLAS_BLOCK` rows stay in the calling thread.
    """
    if a.shape[0] <= _BLAS_BLOCK:
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    for start in range(0, a.shape[0], _BLAS_BLOCK):
        np.matmul(a[start : start + _BLAS_BLOCK], b, out=out[start : start + _BLAS_BLOCK])
    return out


def _gram(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x @ y.T`` for ``(p, n)`` and ``(q, n)`` with long ``n``, summed over blocks (see :func:`_mul`)."""
    out = np.zeros((x.shape[0], y.shape[0]), dtype=np.result_type(x, y))
    for start in range(0, x.shape[1], _BLAS_BLOCK):
        out += x[:, start : start + _BLAS_BLOCK] @ y[:, start : start + _BLAS_BLOCK].T
    return out

