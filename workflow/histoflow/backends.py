"""Inference backends: torch eager, ONNX Runtime and OpenVINO behind one predictor, chosen per model on a CPU.

``predict.backend: auto`` on a CPU runs the fastest installed backend that agrees with torch fp32 eager on the
job's own first batch of tiles (largest difference of the activated outputs within :data:`TOLERANCE`); a job too
small to repay the export stays on torch (:data:`AUTO_MIN_MEGAPIXELS`). The choice is made once per weights, tile
shape, precision and thread count and remembered in the model's ``exported/`` folder, beside the ONNX graph that
ONNX Runtime and OpenVINO both load; other weights (a new ``model.pt``) get another key, so their graph is
exported again and the stale files are removed. ONNX Runtime and OpenVINO are the optional extra ``.[cpu]``:
without them ``auto`` is torch, and naming one that is absent is an error that says what to install. On a GPU
every backend but torch is refused (``auto`` = torch).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .device import autocast, resolve_precision, use_channels_last
from .io import atomic_path, write_json

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: ``auto`` keeps torch for a job of fewer input megapixels than this: exporting and measuring (2-5 s on 2 cores)
#: would cost more than a 2x faster runtime saves at eager fp32's ~0.15-0.4 MP/s (docs/benchmarks.md).
AUTO_MIN_MEGAPIXELS = 2.0
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}  # largest |activated output - torch fp32 eager's| a backend may differ by
Runner = Callable[[torch.Tensor], torch.Tensor]


def backend_available(name: str) -> bool:
    """Whether backend ``name`` can run here (torch always; the others when their package is installed)."""
    return name == "torch" or (name in BACKENDS[2:] and importlib.util.find_spec(name) is not None)


def weights_key(model_file: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of ``model_file``: it changes exactly when the weights do."""
    digest = hashlib.sha256()
    with open(model_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def torch_runner(model: torch.nn.Module, device: torch.device, precision: str) -> Runner:
    """The model itself, under autocast in ``precision`` and in the faster memory format for inference."""
    fmt = torch.channels_last if use_channels_last(device, precision) else torch.contiguous_format
    model.to(memory_format=fmt)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            return model(x.contiguous(memory_format=fmt) if x.ndim == 4 else x)

    return run


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as an ONNX graph with a free batch axis; atomic."""
    net = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow fixed at export
        torch.onnx.export(net, (example.detach().cpu().float().contiguous(),), str(tmp), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return Path(path)


def onnx_graph(model: torch.nn.Module, example: torch.Tensor, cache_dir: Path, key: str) -> Path:
    """The cached ONNX graph of ``model`` for tiles shaped like ``example``; exported when missing.

    Files of other weights (another ``key``) are removed first: they can never be used again.
    """
    path = cache_dir / f"{key}-{'x'.join(map(str, example.shape[1:]))}.onnx"
    if not path.exists():
        for stale in cache_dir.glob("*"):
            if not stale.name.startswith(key) and stale.suffix in (".onnx", ".json"):
                stale.unlink(missing_ok=True)
        t0 = time.perf_counter()
        export_onnx(model, example, path)
        log.info("exported %s in %.1fs", path, time.perf_counter() - t0)
    return path


def onnxruntime_runner(graph: Path, threads: int) -> Runner:
    """ONNX Runtime's CPU execution provider on ``graph`` (fp32)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (y,) = session.run(None, {"x": x.detach().cpu().float().contiguous().numpy()})
        return torch.from_numpy(y)

    return run


def openvino_runner(graph: Path, threads: int, precision: str) -> Runner:
    """OpenVINO's CPU plugin on ``graph``, computing in ``precision`` (it would pick bf16 itself where it can)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: torch.Tensor) -> torch.Tensor:
        y = request.infer({0: x.detach().cpu().float().contiguous().numpy()})[output]
        return torch.from_numpy(np.array(y, copy=True))

    return run


def make_runner(name: str, model: torch.nn.Module, example: torch.Tensor, device: torch.device, precision: str,
                cache_dir: Path | None, key: str | None) -> Runner:
    """Backend ``name`` (not ``auto``) running ``model``; ``precision`` is already resolved (fp32 or bf16)."""
    if name == "torch":
        return torch_runner(model, device, precision)
    if device.type != "cpu":
        raise ValueError(f"predict.backend: {name} runs on a CPU, but this job runs on {device}; use backend: auto "
                         "or torch (or device: cpu)")
    if not backend_available(name):
        raise ImportError(f"predict.backend: {name} needs the {name} package: pip install -e '.[cpu]' "
                          "(or use backend: auto, which falls back to torch)")
    if cache_dir is None or key is None:
        raise ValueError(f"backend {name} needs the model's folder to cache its exported graph")
    graph = onnx_graph(model, example, cache_dir, key)
    threads = torch.get_num_threads()
    if name == "onnxruntime":
        if precision == "bf16":
            log.warning("ONNX Runtime's CPU provider computes in fp32: precision bf16 is not applied")
        return onnxruntime_runner(graph, threads)
    return openvino_runner(graph, threads, precision)


def _timed(run: Runner, x: torch.Tensor, repeats: int = 2) -> tuple[torch.Tensor, float]:
    run(x)  # warm-up: lazy initialisation, allocations, kernel selection
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run(x)
        best = min(best, time.perf_counter() - t0)
    return out, best


def choose_backend(model: torch.nn.Module, example: torch.Tensor, device: torch.device, precision: str,
                   cache_dir: Path | None, key: str | None,
                   activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid) -> tuple[str, Runner, dict]:
    """The fastest installed backend that agrees with torch fp32 eager on ``example`` (``auto``), and its runner.

    Returns ``(name, runner, record)``; ``record`` holds every candidate's seconds and largest difference, and
    is written to ``cache_dir`` so that later jobs with the same weights, tile shape, precision and threads
    build the chosen backend without measuring again. Off a CPU, or without a cache folder, it is torch.
    """
    if device.type != "cpu" or cache_dir is None or key is None:
        return "torch", torch_runner(model, device, precision), {"backend": "torch", "reason": "not a CPU job"}
    shape = "x".join(map(str, example.shape[1:]))
    record_path = cache_dir / f"{key}-{shape}-{precision}-t{torch.get_num_threads()}.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if backend_available(record["backend"]):
            return record["backend"], make_runner(record["backend"], model, example, device, precision, cache_dir,
                                                  key), record
    with torch.inference_mode(), autocast(device, "fp32"):  # fp32 even inside the caller's bf16 region
        reference = activation(model(example).float())
    candidates = [name for name in BACKENDS[1:] if backend_available(name)]
    measured: dict[str, dict[str, Any]] = {}
    runners: dict[str, Runner] = {}
    for name in candidates:
        try:
            run = runners[name] = make_runner(name, model, example, device, precision, cache_dir, key)
            out, seconds = _timed(run, example)
            diff = float((activation(out.float()) - reference).abs().max())
        except Exception as exc:  # noqa: BLE001 - an export or runtime that cannot take this model is skipped
            log.warning("backend %s skipped for this model: %s", name, exc)
            measured[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        tol = TOLERANCE["bf16" if precision == "bf16" and name != "onnxruntime" else "fp32"]
        measured[name] = {"seconds": seconds, "max_abs_diff": diff, "agrees": diff <= tol, "tolerance": tol}
    agreeing = [n for n in candidates if measured.get(n, {}).get("agrees")]
    best = min(agreeing, key=lambda n: measured[n]["seconds"]) if agreeing else "torch"
    record = {"backend": best, "precision": precision, "batch": int(example.shape[0]), "tile_shape": shape,
              "threads": torch.get_num_threads(), "candidates": measured}
    log.info("backend auto -> %s (%s)", best, ", ".join(
        f"{n} {m['seconds'] * 1e3:.0f} ms" if "seconds" in m else f"{n} failed" for n, m in measured.items()))
    record = publish_once(record_path, record)
    chosen = record["backend"]  # ours, or another job's that published first
    run = runners.get(chosen) or make_runner(chosen, model, example, device, precision, cache_dir, key)
    return chosen, run, record


def publish_once(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` to ``path`` unless another job got there first; return the record that is there.

    Jobs of one model that start together (the regions of a slide, the datasets of a run) each measure, but the
    first to publish decides for all of them, so no two parts of one result are computed by different backends.
    The file is complete before it appears (a hard link of a finished temporary file; exclusive on POSIX and NFS).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_json(tmp, record)
    try:
        os.link(tmp, path)
    except FileExistsError:
        theirs = json.loads(path.read_text())
        if theirs["backend"] != record["backend"]:
            log.info("another job chose %s first: using it", theirs["backend"])
        return theirs
    finally:
        tmp.unlink(missing_ok=True)
    return record


class ModelPredictor:
    """``model`` on a batch of tiles through ``predict.backend`` in ``predict.precision``, then ``activation``.

    The backend is built on the first batch (``auto`` measures on it, :func:`choose_backend`); :attr:`record`
    then says which backend and precision ran, for the job's log and the report. ``megapixels``, the input the
    job will run (tiles x tile area), lets ``auto`` keep torch for jobs under :data:`AUTO_MIN_MEGAPIXELS`.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, backend: str = "auto", precision: str = "auto",
                 cache_dir: str | Path | None = None, model_file: str | Path | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
                 megapixels: float | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"predict.backend must be one of {BACKENDS}, got {backend!r}")
        self.model, self.device, self.backend, self.activation = model.eval(), device, backend, activation
        self.precision = resolve_precision(precision, device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model_file = model_file
        self.megapixels = megapixels
        self.run: Runner | None = None
        self.record: dict[str, Any] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Activated outputs ``(B, K, t, t)`` of the batch ``x``."""
        if self.run is None:
            small = self.megapixels is not None and self.megapixels < AUTO_MIN_MEGAPIXELS
            if self.backend == "torch" or (self.backend == "auto" and small):
                name, self.run = "torch", torch_runner(self.model, self.device, self.precision)
                self.record = {"backend": name, "precision": self.precision}
                if self.backend == "auto":
                    self.record["reason"] = (f"a job of {self.megapixels:.2f} MP: exporting would cost more than "
                                             "it saves")
            else:  # hash the weights (the export cache's key) only where a graph may be exported or looked up
                key = weights_key(self.model_file) if self.model_file is not None and self.cache_dir else None
                if self.backend == "auto":
                    name, self.run, self.record = choose_backend(self.model, x, self.device, self.precision,
                                                                 self.cache_dir, key, self.activation)
                else:
                    name = self.backend
                    self.run = make_runner(name, self.model, x, self.device, self.precision, self.cache_dir, key)
                    self.record = {"backend": name, "precision": self.precision}
            log.info("inference backend %s, precision %s", name, self.precision)
        return self.activation(self.run(x).float()).to(x.device)


def job_megapixels(n_tiles: int, side: int, tta: str = "none") -> float:
    """Input megapixels a job runs through the model: ``n_tiles`` tiles of ``side``², times the TTA transforms."""
    return n_tiles * {"none": 1, "flips": 4, "dihedral": 8}[tta] * side * side / 1e6


def model_predictor(model: torch.nn.Module, device: torch.device, predict: dict[str, Any], model_dir: str | Path,
                    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    megapixels: float | None = None) -> ModelPredictor:
    """A trained model's :class:`ModelPredictor` for its ``predict:`` block (``backend``, ``precision``).

    The exported graphs and the backend choice are cached in ``<model_dir>/exported/``.
    """
    return ModelPredictor(model, device, predict.get("backend", "auto"), predict.get("precision", "auto"),
                          Path(model_dir) / "exported", Path(model_dir) / "model.pt", activation or torch.sigmoid,
                          megapixels)
