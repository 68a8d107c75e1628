"""What every benchmark records about where it ran: the CPU or GPU and the package versions.

Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder on sys.path), after they put
``workflow/`` on it: the CPU facts come from :mod:`histoflow.device`, as the workflow records them.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Callable, Iterable
from typing import Any

from histoflow.device import cpu_flags, cpu_model, cpu_name, usable_cpus  # noqa: F401 - cpu_model, usable_cpus: stain.py


def cpu_features() -> dict[str, bool]:
    """The instruction-set extensions that decide CPU precision (from ``histoflow.device.cpu_flags``)."""
    have = cpu_flags()
    return {k: k in have for k in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")}


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


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device, else ``"<cpu model> (<n> cores)"`` (``histoflow.device.cpu_name``)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each installed package's (missing packages are left out)."""
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def merged_config(files: Iterable[Any]) -> dict[str, Any]:
    """The config Snakemake builds from ``--configfile a.yaml b.yaml`` (later files update earlier ones), validated."""
    from pathlib import Path

    import yaml

    from histoflow.config import validate_config

    def update(base: dict, new: dict) -> dict:
        for k, v in new.items():
            base[k] = update(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    config: dict[str, Any] = {}
    for f in files:
        update(config, yaml.safe_load(Path(f).read_text()) or {})
    return validate_config(config)


OBJECT_FIGURES = ("object_f1_pooled", "object_dice_pooled", "object_hausdorff_pooled", "aji_mean", "pq_mean",
                  "pixel_f1_mean")
"""The instance figures the accuracy benchmarks print: GlaS object F1 / Dice / Hausdorff, AJI, PQ, pixel F1."""


def dataset_entry(d: Any) -> dict[str, Any]:
    """A resolved :class:`histoflow.datasets.Dataset` as the dict the workflow's stages take."""
    return {"images": d.images, "masks": d.masks, "mask_type": d.mask_type, "train": d.train, "test": d.test,
            "pixel_size_um": d.pixel_size_um, "class_values": d.class_values, "palette": d.palette}


def score(postprocess: dict[str, Any], normalized: Any, spec_json: Any, pred: Any, ds: dict[str, Any],
          out: Any) -> dict[str, float]:
    """Post-process the probability maps in ``pred`` with the ``postprocess:`` block and evaluate them as the workflow
    does; writes ``instances/``, ``metrics.tsv`` and ``summary.json`` under ``out`` and returns the summary."""
    from pathlib import Path

    from histoflow.stages.evaluate import run_evaluate
    from histoflow.stages.postprocess import run_postprocess

    out = Path(out)
    run_postprocess(pred, spec_json, postprocess, out / "instances", normalized)
    return run_evaluate(out / "instances", ds, out / "metrics.tsv", out / "summary.json", pred)
