"""Model registry and factory.

Architectures register themselves under a name with :func:`register_model`; the workflow builds
them from the ``models:`` section of ``config.yaml`` with :func:`build_model`. A trained model is
saved as ``model.pt`` (state dict) next to ``spec.json`` (architecture name + keyword arguments +
inference metadata), so :func:`load_model` can rebuild it without the config that trained it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator that registers a model constructor under ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture, e.g. ``build_model("unet", in_channels=3, base_width=16)``."""
    _load_builtin()
    if arch not in _REGISTRY:
        raise ValueError(f"unknown model architecture {arch!r}; available: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[arch](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad parameters for model {arch!r}: {exc}") from exc


def save_model(model: nn.Module, spec: dict[str, Any], folder: str | os.PathLike[str]) -> None:
    """Write ``model.pt`` and ``spec.json`` atomically into ``folder``.

    ``spec`` must hold ``arch`` and ``kwargs`` (what :func:`build_model` needs); other keys
    (threshold, input normalisation, tile size, ...) are inference metadata.
    """
    folder = Path(folder)
    if "arch" not in spec or "kwargs" not in spec:
        raise ValueError("spec needs 'arch' and 'kwargs'")
    with atomic_path(folder / "model.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    write_json(folder / "spec.json", spec)


def load_model(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved model in eval mode on ``device``; returns ``(model, spec)``."""
    folder = Path(folder)
    spec = read_json(folder / "spec.json")
    model = build_model(spec["arch"], **spec["kwargs"])
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), spec


def load_initial_weights(model: nn.Module, path: str | os.PathLike[str], whole_model: bool = False) -> None:
    """Initialise ``model`` from a local weights file.

    ``whole_model``: the file is a trained model of the same architecture (stage 1 of a two-stage
    model) and every weight must match. Otherwise (``models.*.weights``, e.g. ImageNet encoder weights)
    the architecture's ``load_pretrained`` reads it when it has one (VGG16 encoders check the file's
    layout), else it is loaded as a state dict, non-strictly.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: initial weights not found (models.*.weights in config.yaml).")
    if whole_model:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        log.info("initialised from %s", path)
    elif hasattr(model, "load_pretrained"):
        model.load_pretrained(path)
    else:
        missing, unexpected = model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True),
                                                    strict=False)
        log.info("initialised from %s (missing %d, unexpected %d keys)", path, len(missing), len(unexpected))


def _load_builtin() -> None:
    # Importing the modules runs their @register_model decorators (no other side effects).
    from . import fibrenet, maskrcnn, munet, rescrnet, unet, usnet  # noqa: F401
