"""What every benchmark records about where it ran: the CPU or GPU and the package versions.

Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder on sys.path).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> dict[str, bool]:
    """The instruction-set extensions that decide CPU precision, from /proc/cpuinfo (False where unknown)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    have = set(flags.split(":", 1)[-1].split())
    return {"avx2": "avx2" in have, "avx512f": "avx512f" in have, "avx512_bf16": "avx512_bf16" in have,
            "amx_bf16": "amx_bf16" in have, "avx512_vnni": "avx512_vnni" in have}


def best_time(fn: Callable[[], Any], repeats: int, warmup: bool = False, slow_s: float = float("inf")) -> float:
    """The best wall-clock seconds of ``repeats`` calls of ``fn``, after one untimed call with ``warmup``.

    A warm-up slower than ``slow_s`` leaves one timed call.
    """
    if warmup:
        t0 = time.perf_counter()
        fn()
        if time.perf_counter() - t0 > slow_s:
            repeats = 1
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device, else ``"<cpu model> (<n> cores)"``."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()} ({usable_cpus()} cores)"


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each installed package's (missing packages are left out)."""
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
