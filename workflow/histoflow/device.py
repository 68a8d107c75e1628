"""Device selection and the CUDA fast paths (bf16 autocast, channels_last)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU stays fp32 for exact, reproducible tests)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to ``device``; channels_last memory format on CUDA (faster convolutions with bf16)."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def load_for_inference(model_dir: str | os.PathLike[str],
                       device: str = "auto") -> tuple[torch.nn.Module, dict[str, Any], torch.device]:
    """A trained model folder (``model.pt`` + ``spec.json``) ready for inference on ``device``.

    ``device`` is resolved by :func:`resolve_device`; channels_last on CUDA. Returns ``(model, spec, device)``.
    """
    from .models import load_model

    dev = resolve_device(device)
    model, spec = load_model(Path(model_dir), dev)
    return prepare_model(model, dev), spec, dev


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
