"""Device selection, numeric precision and memory format per device (bf16 autocast, channels_last).

``precision: auto`` is bf16 autocast where the hardware computes in bf16 – CUDA GPUs that support it and CPUs
reporting AVX512-BF16 or AMX-BF16 – and fp32 elsewhere: on a CPU without those instructions bf16 is emulated
and about 90x slower than fp32 (``benchmarks/results/cpu_throughput.json``, ``bf16_probe``). Losses, metrics and
thresholds are computed in fp32 whatever the precision.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else MPS, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device: {device} was requested but no CUDA GPU is visible. Set device: auto (or cpu) in "
            "config.yaml, or run the job on a GPU node (profiles/slurm requests one for train/predict)."
        )
    return dev


PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bf16 arithmetic


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (Linux), None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the CPU reports (``/proc/cpuinfo`` on Linux; empty where it is not readable)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def usable_cpus() -> int:
    """The cores this process may use: its affinity, as SLURM and taskset set it."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_name() -> str:
    """``"<CPU model> (<n> cores)"``, as spec.json and the benchmarks record a CPU."""
    return f"{cpu_model()} ({usable_cpus()} cores)"


def resolve_precision(precision: str, device: torch.device, flags: Collection[str] | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: the arithmetic ``precision`` (auto, fp32 or bf16) means on ``device``.

    ``auto`` is bf16 on a CUDA GPU with bf16 support and on a CPU whose ``flags`` (default :func:`cpu_flags`)
    include AVX512-BF16 or AMX-BF16, fp32 otherwise (MPS included). An explicit ``bf16`` is honoured
    everywhere but MPS, with a warning on a CPU that would emulate it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type == "cuda":
        return "fp32" if precision == "fp32" or not torch.cuda.is_bf16_supported() else "bf16"
    if device.type != "cpu":
        if precision == "bf16":
            raise ValueError(f"precision: bf16 is not supported on {device.type}; use auto or fp32")
        return "fp32"
    native = bool(BF16_CPU_FLAGS & set(cpu_flags() if flags is None else flags))
    if precision == "bf16" and not native:
        _warn_emulated_bf16()
    return "bf16" if precision == "bf16" or (precision == "auto" and native) else "fp32"


@functools.lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:  # once per process, not once per batch
    log.warning("precision: bf16 on a CPU without AVX512-BF16/AMX: emulated, far slower than fp32")


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast where ``precision`` resolves to bf16 on ``device`` (:func:`resolve_precision`), else fp32.

    fp32 disables an enclosing autocast too, so an fp32 model called inside a bf16 region stays fp32.
    """
    if device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def use_channels_last(device: torch.device, precision: str = "auto", training: bool = False) -> bool:
    """Whether convolutions run faster in channels_last on ``device``, as measured (``docs/benchmarks.md``).

    Always on CUDA; on a CPU for inference (1.2-1.6x in fp32 eager on the 2-core EPYC) and for bf16
    training (1.6x bf16 contiguous for a U-Net 16/4 step on the AVX512-BF16 EPYC), but not for fp32 training,
    where it was 20 % slower on the AVX2 EPYC (on the AVX512 one it was 1.5x faster: a per-CPU choice, left as
    measured on the CPU that trains in fp32).
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return not training or resolve_precision(precision, device) == "bf16"


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool | None = None) -> torch.nn.Module:
    """Move to ``device`` in the memory format of :func:`use_channels_last` (for training unless told)."""
    model = model.to(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool | None = None) -> torch.Tensor:
    """``x`` on ``device``; a 4-D batch in the model's memory format: channels_last or not (CUDA unless told).

    Both ways: a batch sliced from a permuted array has channels_last strides, and convolutions follow their
    input's layout, so a contiguous model fed such a batch would run channels_last anyway.
    """
    x = x.to(device, non_blocking=True)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x


def load_for_inference(model_dir: str | os.PathLike[str],
                       device: str = "auto") -> tuple[torch.nn.Module, dict[str, Any], torch.device]:
    """A trained model folder (``model.pt`` + ``spec.json``) ready for inference on ``device``.

    ``device`` is resolved by :func:`resolve_device`; the memory format is :func:`use_channels_last`'s for
    inference. Returns ``(model, spec, device)``.
    """
    from .models import load_model

    dev = resolve_device(device)
    model, spec = load_model(Path(model_dir), dev)
    return prepare_model(model, dev, use_channels_last(dev)), spec, dev


def retry_halving_on_oom(
    fn: Callable[[int], T], batch_size: int, message: str, on_retry: Callable[[], None] | None = None
) -> tuple[T, int]:
    """``fn(batch_size)``, called again with half the batch size on CUDA out-of-memory.

    Returns the result and the batch size that worked (callers that run many batches keep it).
    With a batch of one still out of memory, raises ``RuntimeError(message)``: ``message`` names the
    setting to lower. ``on_retry`` runs before each retry (e.g. to roll back a partial step).
    """
    while True:
        try:
            return fn(batch_size), batch_size
        except torch.cuda.OutOfMemoryError:
            if batch_size <= 1:
                raise RuntimeError(message) from None
            batch_size = max(batch_size // 2, 1)
            log.warning("out of GPU memory: retrying with batch_size=%d", batch_size)
            if on_retry is not None:
                on_retry()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
