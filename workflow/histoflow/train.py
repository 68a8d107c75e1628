"""Training loop: BCE + Dice or weighted BCE, deep supervision, AdamW, cosine schedule, resumable.

The loss is BCE + Dice (optionally weight-mapped) or the fibre network's weighted BCE.

The loop is a handful of small functions rather than a trainer class:

- :func:`segmentation_loss` / :func:`weighted_bce_loss` – the losses on logits and targets;
  :func:`loss_weights` builds the per-pixel weights from the patch store's precomputed terms and
  :func:`training_loss` sums the loss over a deeply supervised model's outputs;
- augmentation (:mod:`histoflow.augment`) – presets applied identically to image and targets,
  batched on the training device;
- :func:`train_model` – epochs, validation, checkpoints (every epoch, atomic, resumed from
  automatically), training curves and the validation-chosen threshold.

``precision`` (auto, fp32 or bf16) chooses bf16 autocast where the device computes in bf16
(:func:`histoflow.device.resolve_precision`) and the memory format follows
:func:`histoflow.device.use_channels_last`; losses are computed in fp32. On a CPU a run is deterministic for a
given seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .augment import augment, augment_config
from .device import PRECISIONS, autocast, prepare_model, to_device, use_channels_last
from .io import atomic_path

log = logging.getLogger(__name__)

TARGETS = ("masks", "boundaries", "interiors", "classes", "instances")
LOSSES = ("bce_dice", "weighted_bce", "tanimoto", "cross_entropy")
OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass
class TrainConfig:
    """Training hyper-parameters (the ``train:`` block of a model in ``config.yaml``)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    use_weight_map: bool = True
    target: str = "masks"
    loss: str = "bce_dice"
    class_balance: bool = True
    boundary_weighting: bool = True
    reliability: float | None = None
    fuse_weight: float = 1.0
    side_weights: list[float] | None = None
    class_weights: list[float] | None = None
    tanimoto_smooth: float = 1e-5
    recalibrate_bn: bool = True
    augment: bool | str | dict = True  # true = "dihedral"; a preset name; or {preset: ..., field: value}
    seed: int = 0
    max_steps_per_epoch: int | None = None
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    lr_steps: list[int] | None = None
    lr_gamma: float = 0.1
    branch_lr: dict[str, float] | None = None
    branch_optimizer: dict[str, str] | None = None
    grad_clip: float | None = None
    precision: str = "auto"
    thresholds: list[float] = field(default_factory=lambda: [round(t, 2) for t in np.arange(0.1, 0.91, 0.05)])

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"train.target must be one of {TARGETS}, got {self.target!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "weighted_bce" and self.target == "classes":
            raise ValueError("train.loss weighted_bce is binary: use tanimoto, cross_entropy or bce_dice for classes")
        if self.reliability is not None and not 0.5 < self.reliability <= 1:
            raise ValueError(f"train.reliability must be in (0.5, 1] or null, got {self.reliability}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("train.epochs, train.batch_size must be >= 1 and train.lr > 0")
        for where, name in [("optimizer", self.optimizer), *((f"branch_optimizer.{k}", v)
                                                              for k, v in (self.branch_optimizer or {}).items())]:
            if name not in OPTIMIZERS:
                raise ValueError(f"train.{where} must be one of {OPTIMIZERS}, got {name!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"train.schedule must be cosine or step, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        augment_config(self.augment)  # fail early on an unknown preset or field


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (histoflow's own NumPy code takes explicit Generators)."""
    random.seed(seed)
    torch.manual_seed(seed)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 (N, H, W, 3)`` → ``float32 (N, 3, H, W)`` in [0, 1] (the model's input convention), contiguous.

    Contiguous, not the channels_last strides a bare permute leaves: the input's layout decides every
    convolution's, and fp32 training on a CPU is 20-25 % slower in channels_last.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return x.contiguous().float().div_(255.0)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice over the batch, ignoring pixels where ``valid`` is 0."""
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).sum()
    return 1 - (2 * inter + eps) / (p.sum() + t.sum() + eps)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """``bce_weight`` × weighted BCE + ``dice_weight`` × soft Dice.

    Shapes: ``logits``/``target``/``weights`` ``(N, 1, H, W)``. Pixels with weight 0 (padding) are
    ignored by both terms; BCE is normalised by the summed weights.
    """
    logits = logits.float()
    if weights is None:
        weights = torch.ones_like(target)
    valid = (weights > 0).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * weights).sum() / weights.sum().clamp_min(1e-6)
    return bce_weight * bce + dice_weight * soft_dice_loss(logits, target, valid)


def cross_entropy_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, class_weights: list[float] | None = None
) -> torch.Tensor:
    """Pixel-weighted cross-entropy normalised by ``Σ weights``.

    Softmax over ``C > 1`` classes with ``target`` class indices ``(N, 1, H, W)`` (optionally
    class-weighted), else sigmoid BCE.
    """
    if logits.shape[1] == 1:
        return weighted_bce_loss(logits, target.float(), weights)
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    ce = F.cross_entropy(logits.float(), target[:, 0].long(), weight=cw, reduction="none")[:, None]
    return (ce * weights).sum() / weights.sum().clamp_min(1e-6)


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                         eps: float = 1.0) -> torch.Tensor:
    """1 − mean over classes of the soft Dice of the softmax, ignoring pixels where ``valid`` is 0."""
    p = torch.softmax(logits.float(), dim=1) * valid
    y = F.one_hot(target[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    inter = (p * y).sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (p.sum((0, 2, 3)) + y.sum((0, 2, 3)) + eps)).mean()


def reliability_mask(logits: torch.Tensor, target: torch.Tensor, level: float) -> torch.Tensor:
    """The reliability switch: 0 where the label is a likely annotation error, else 1.

    A label counts as a likely error where the network predicts the opposite of it with probability above
    ``level``. Computed without gradient, so the switched-off pixels stay in the forward pass but send
    nothing back.
    """
    with torch.no_grad():
        p = torch.sigmoid(logits.float())
        contrary = torch.where(target > 0.5, 1.0 - p, p)
        return (contrary <= level).to(logits.dtype if logits.is_floating_point() else torch.float32)


def weighted_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, reliability: float | None = None
) -> torch.Tensor:
    """Pixelwise cross-entropy weighted by ``f(x) = weights × switch``, normalised by ``Σ weights``.

    ``weights`` (``(N, 1, H, W)``) carries the precomputed terms (class balance × boundary distance,
    0 on padding, see :func:`loss_weights`); ``reliability`` turns on :func:`reliability_mask`.
    Switched-off pixels keep their share of the normaliser, so forgiving a pixel never raises the
    weight of the others.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    w = weights if reliability is None else weights * reliability_mask(logits, target, reliability)
    return (bce * w).sum() / weights.sum().clamp_min(1e-6)


def loss_weights(data: dict[str, np.ndarray], cfg: TrainConfig) -> np.ndarray:
    """Per-pixel loss weights ``float32 (N, P, P)`` for ``cfg`` from the patch store's fields.

    ``bce_dice``: the U-Net weight map (``use_weight_map``) or its valid-pixel mask. ``weighted_bce``:
    valid mask × ``balance_<target>`` (``class_balance``) × ``distance_weights``
    (``boundary_weighting``).
    """
    w = data["weights"].astype(np.float32)
    valid = (w > 0).astype(np.float32)
    if cfg.loss != "weighted_bce":
        return w if cfg.use_weight_map else valid
    if cfg.class_balance:
        valid = valid * data[f"balance_{cfg.target}"]
    if cfg.boundary_weighting:
        valid = valid * data["distance_weights"]
    return valid.astype(np.float32)


def loss_fields(cfg: TrainConfig) -> tuple[str, ...]:
    """The patch-store fields training with ``cfg`` reads."""
    fields = ["images", cfg.target, "weights"]
    if cfg.loss == "weighted_bce":
        fields += [f"balance_{cfg.target}"] * cfg.class_balance + ["distance_weights"] * cfg.boundary_weighting
    return tuple(fields)


def split_outputs(out: torch.Tensor | tuple) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(fused, sides)`` of a model's output: a plain tensor has no side outputs."""
    if isinstance(out, torch.Tensor):
        return out, []
    fused, sides = out
    return fused, list(sides)


def training_loss(out: torch.Tensor | tuple, target: torch.Tensor, weights: torch.Tensor,
                  cfg: TrainConfig) -> torch.Tensor:
    """The configured loss on a model's output.

    ``L(out)`` for a plain tensor; with deep supervision (``(fused, sides)``, training mode)
    ``fuse_weight × L(fused) + Σ side_weights[k] × L(side_k)`` (side weights default to 1).
    """

    def one(logits: torch.Tensor) -> torch.Tensor:
        if cfg.loss == "weighted_bce":
            return weighted_bce_loss(logits, target, weights, cfg.reliability)
        if cfg.loss == "tanimoto":
            from .semantic import tanimoto_loss

            return tanimoto_loss(logits, target, weights, cfg.class_weights, cfg.tanimoto_smooth)
        if cfg.loss == "cross_entropy":
            return cross_entropy_loss(logits, target, weights, cfg.class_weights)
        if logits.shape[1] > 1:  # bce_dice on classes: softmax cross-entropy + soft Dice
            return (cfg.bce_weight * cross_entropy_loss(logits, target, weights, cfg.class_weights)
                    + cfg.dice_weight * multiclass_dice_loss(logits, target, (weights > 0).float()))
        return segmentation_loss(logits, target, weights, cfg.bce_weight, cfg.dice_weight)

    if isinstance(out, torch.Tensor):
        return one(out)
    fused, sides = out
    side_w = cfg.side_weights if cfg.side_weights is not None else [1.0] * len(sides)
    if len(side_w) != len(sides):
        raise ValueError(f"train.side_weights has {len(side_w)} entries but the model has {len(sides)} side outputs")
    terms = [(cfg.fuse_weight, fused), *zip(side_w, sides, strict=True)]
    return sum(w * one(o) for w, o in terms if w > 0)


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGUSR1/SIGTERM after writing a checkpoint; rerunning resumes it."""


class StopOnSignal:
    """Context manager: SIGUSR1 / SIGTERM set ``signum`` instead of killing the process.

    SLURM sends SIGUSR1 a configurable time before the time limit (``--signal=USR1@300``) and
    SIGTERM on preemption or ``scancel``; the training loop polls ``signum`` after each step, writes a
    checkpoint and raises :class:`TrainingInterrupted`. Outside the main thread (where handlers
    cannot be installed) it does nothing.
    """

    SIGNALS = ("SIGUSR1", "SIGTERM")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: checkpointing after the current step", signum)
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def params_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])


def lr_lambda(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 1 % of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def predict_batches(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int,
                    precision: str = "auto") -> torch.Tensor:
    """Sigmoid probabilities ``(N, 1, H, W)`` on CPU for a stack of input tensors."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        with autocast(device, precision):
            out.append(torch.sigmoid(model(to_device(images[i : i + batch_size], device)).float()).cpu())
    return torch.cat(out)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int,
                          precision: str = "auto") -> int:
    """Recompute every BatchNorm layer's running mean/variance as the exact average over ``images``.

    One pass, no gradient, dropout off; returns the number of BatchNorm layers.

    The running statistics are exponential averages collected while the weights were still moving,
    so after a short schedule they lag the final network and eval-mode predictions suffer (most in deep
    residual nets without pooling, e.g. Res-CR-Net); re-estimating them with the final weights removes
    that mismatch, as stochastic weight averaging does.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) == 0:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    for i in range(0, len(images), batch_size):
        with autocast(device, precision):
            model(to_device(images[i : i + batch_size], device))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(bns)


def centre_crop(t, size: tuple[int, int]):
    """The centred ``size`` window of the last two axes of ``t`` (tensor or array).

    Used for the targets of a model whose output covers only the centre of its input (multi-field-of-view
    nets).
    """
    h, w = t.shape[-2:]
    oh, ow = int(size[0]), int(size[1])
    if (oh, ow) == (h, w):
        return t
    if oh > h or ow > w or (h - oh) % 2 or (w - ow) % 2:
        raise ValueError(f"cannot centre-crop {(h, w)} to {(oh, ow)}")
    y, x = (h - oh) // 2, (w - ow) // 2
    return t[..., y : y + oh, x : x + ow]


def choose_threshold(prob: np.ndarray, target: np.ndarray, valid: np.ndarray,
                     thresholds: list[float]) -> tuple[float, float]:
    """Threshold maximising pixel Dice on the validation patches; returns ``(threshold, dice)``."""
    p, t = prob[valid], target[valid].astype(bool)
    best = (0.5, -1.0)
    for th in thresholds:
        pb = p >= th
        denom = pb.sum() + t.sum()
        dice = 1.0 if denom == 0 else 2.0 * (pb & t).sum() / denom
        if dice > best[1]:
            best = (float(th), float(dice))
    return best


def make_optimizers(
    model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LRScheduler]]:
    """One optimizer (and scheduler) per parameter group of the model.

    A model with ``param_groups()`` (US-Net: segmentation, detection, refinement) gets one optimizer
    per branch, each with its own learning rate from ``cfg.branch_lr`` (default ``cfg.lr``) and its own type
    from ``cfg.branch_optimizer`` (default ``cfg.optimizer``; US-Net's paper pairs Adam for the detector with
    SGD for the U-Net); others get one. Types: ``adamw`` (decoupled weight decay), ``adam`` (weight decay as an
    L2 term, Keras' and the papers' Adam) or ``sgd`` (with ``cfg.momentum``). ``cfg.schedule``:
    ``cosine`` (linear warm-up, cosine decay to 1 %) or ``step`` (warm-up, then × ``lr_gamma`` at each
    epoch listed in ``lr_steps``), stepped every optimisation step.
    """
    groups = model.param_groups() if hasattr(model, "param_groups") else {"all": list(model.parameters())}
    for key in ("branch_lr", "branch_optimizer"):
        unknown = set(getattr(cfg, key) or {}) - set(groups)
        if unknown:
            raise ValueError(f"train.{key} names {sorted(unknown)}, but the model's branches are {sorted(groups)}")
    total, warmup = steps_per_epoch * cfg.epochs, cfg.warmup_epochs * steps_per_epoch
    milestones = sorted(cfg.lr_steps or [])

    def factor(step: int) -> float:
        if cfg.schedule == "cosine":
            return lr_lambda(step, total, warmup)
        warm = (step + 1) / warmup if step < warmup else 1.0
        return warm * cfg.lr_gamma ** sum(step >= m * steps_per_epoch for m in milestones)

    opts, scheds = [], []
    for name, params in groups.items():
        lr = (cfg.branch_lr or {}).get(name, cfg.lr)
        kind = (cfg.branch_optimizer or {}).get(name, cfg.optimizer)
        if kind == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif kind == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        opts.append(opt)
        scheds.append(torch.optim.lr_scheduler.LambdaLR(opt, factor))
    return opts, scheds


def run_epochs(
    model: nn.Module,
    step_loss: Any,
    n: int,
    cfg: TrainConfig,
    device: torch.device,
    checkpoint: Path,
    run_key: Any = None,
    validate: Any = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """The resumable epoch loop shared by every model; returns the history (one row per epoch).

    ``step_loss(idx, gen)`` computes the training loss of the samples ``idx`` (a tensor of indices
    into the ``n`` training samples; ``gen`` the loop's generator, for augmentation);
    ``validate()`` returns the epoch's validation figures. Each epoch visits every sample
    ``augment.repeats`` times in a seeded random order. ``checkpoint`` is written after every epoch,
    and mid-epoch when SIGUSR1/SIGTERM arrives (then :class:`TrainingInterrupted` is raised). When it
    exists and was written for the same ``run_key`` and settings, training resumes from it with the
    same optimizers, schedulers (the learning rate does not reset), RNG state, epoch and step, so an
    interrupted and resumed run ends with the same weights as an uninterrupted one (bitwise on CPU).
    A checkpoint from other settings is ignored (and overwritten). Every history row has the epoch's ``seconds``
    and ``elapsed``, the loop's wall-clock since the run began, summed over the jobs of a resumed run.
    """
    if n == 0:
        raise ValueError("the patch store has no training patches: add images or lower val_fraction")
    key = params_hash({"run": run_key, "train": asdict(cfg)})
    aug = augment_config(cfg.augment)
    steps = math.ceil(n * aug.repeats / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    opts, scheds = make_optimizers(model, cfg, steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    start_epoch, start_step, perm, losses = 0, 0, None, []
    elapsed_before = 0.0  # seconds the loop ran in earlier jobs of a resumed run
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            for obj, saved in zip([*opts, *scheds], state["optimizers"] + state["schedulers"], strict=True):
                obj.load_state_dict(saved)
            gen.set_state(state["generator"])
            _set_rng_state(state["rng"])
            history = state["history"]
            start_epoch = state["epoch"]
            elapsed_before = float(state.get("elapsed", 0.0))
            if state.get("step"):  # interrupted inside an epoch
                start_step, perm, losses = state["step"], state["perm"], state["losses"]
            log.info("resuming from %s at epoch %d/%d, step %d", checkpoint, start_epoch + 1 if start_step
                     else start_epoch, cfg.epochs, start_step)
        else:
            log.warning("ignoring %s: it was written for other settings", checkpoint)

    loop_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - loop_start

    def snapshot(epoch_done: int, **mid_epoch: Any) -> dict[str, Any]:
        return {"key": key, "epoch": epoch_done, "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in opts], "schedulers": [s.state_dict() for s in scheds],
                "generator": gen.get_state(), "rng": _rng_state(), "history": history, "elapsed": elapsed(),
                **mid_epoch}

    with StopOnSignal() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            if start_step == 0:
                perm = torch.cat([torch.randperm(n, generator=gen) for _ in range(aug.repeats)])
                losses = []
            bar = tqdm(range(start_step, steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                       mininterval=10)
            for step in bar:
                idx = perm[(step * cfg.batch_size) % len(perm) :][: cfg.batch_size]
                loss = step_loss(idx, gen)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"the training loss became {float(loss.detach())} at epoch {epoch + 1}, "
                        f"step {step + 1}: the run "
                        f"diverged. Lower train.lr (now {cfg.lr}), add warm-up (train.warmup_epochs) or clip "
                        "gradients (train.grad_clip); the last good epoch's checkpoint is kept.")
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                for opt, sched in zip(opts, scheds, strict=True):
                    opt.step()
                    sched.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                if stop.signum is not None and step + 1 < steps:
                    save_checkpoint(checkpoint, snapshot(epoch, step=step + 1, perm=perm, losses=losses))
                    raise TrainingInterrupted(
                        f"stopped by signal {stop.signum} at epoch {epoch + 1}, step {step + 1}; checkpoint "
                        f"saved to {checkpoint}: rerun the job to resume"
                    )
            start_step = 0
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": opts[0].param_groups[0]["lr"]}
            if validate is not None:
                row.update(validate())
            row["seconds"] = time.perf_counter() - t0
            row["elapsed"] = elapsed()  # training wall-clock so far, summed over the jobs of a resumed run
            history.append(row)
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            save_checkpoint(checkpoint, snapshot(epoch + 1))
            if stop.signum is not None and epoch + 1 < cfg.epochs:
                raise TrainingInterrupted(f"stopped by signal {stop.signum} after epoch {epoch + 1}; checkpoint "
                                          f"saved to {checkpoint}: rerun the job to resume")
    return history


def train_model(
    model: nn.Module,
    train_data: dict[str, np.ndarray],
    val_data: dict[str, np.ndarray] | None,
    cfg: TrainConfig,
    device: torch.device,
    checkpoint: Path,
    run_key: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a segmentation ``model`` in place and return ``{"history": [...], "threshold": t, "val_dice": d}``.

    ``train_data``/``val_data`` are dicts of arrays as read by
    :func:`histoflow.patches.read_patch_group`; the loop, its checkpoints and resumption are
    :func:`run_epochs`'. After training, BatchNorm statistics are re-estimated
    (``recalibrate_bn``) and the binary threshold maximising validation Dice is chosen.
    """
    seed_everything(cfg.seed)
    x_train = images_to_tensor(train_data["images"])
    y_train = torch.from_numpy(train_data[cfg.target]).float()[:, None]
    w_train = torch.from_numpy(loss_weights(train_data, cfg))[:, None]
    aug = augment_config(cfg.augment)
    channels_last = use_channels_last(device, cfg.precision, training=True)
    model = prepare_model(model, device, channels_last)

    def step_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb, yb, wb = to_device(x_train[idx], device, channels_last), y_train[idx].to(device), w_train[idx].to(device)
        xb, (yb, wb) = augment(xb, [yb, wb], aug, gen)
        with autocast(device, cfg.precision):
            out = model(xb)
        size = split_outputs(out)[0].shape[-2:]
        return training_loss(out, centre_crop(yb, size), centre_crop(wb, size), cfg)

    has_val = val_data is not None and len(val_data["images"]) > 0
    history = run_epochs(model, step_loss, len(x_train), cfg, device, checkpoint, run_key,
                         (lambda: _validate(model, val_data, cfg, device)) if has_val else None, progress)

    if cfg.recalibrate_bn and recalibrate_batchnorm(model, x_train, device, cfg.batch_size, cfg.precision):
        row = _validate(model, val_data, cfg, device) if has_val else {}
        if history and row:
            history[-1].update({f"{k}_recalibrated": v for k, v in row.items()})
        log.info("BatchNorm statistics re-estimated on the %d training patches%s", len(x_train),
                 f": validation Dice {row['val_dice']:.4f}" if row else "")
    threshold, val_dice = 0.5, float("nan")
    if cfg.target == "classes":  # argmax, no threshold: the validation score is the mean class Dice
        last = history[-1] if history else {}
        val_dice = last.get("val_dice_recalibrated", last.get("val_dice", float("nan")))
    elif has_val:
        prob = predict_batches(model, images_to_tensor(val_data["images"]), device, cfg.batch_size,
                               cfg.precision)[:, 0].numpy()
        target = centre_crop(val_data[cfg.target], prob.shape[-2:])
        valid = centre_crop(val_data["weights"], prob.shape[-2:]) > 0
        threshold, val_dice = choose_threshold(prob, target, valid, cfg.thresholds)
        log.info("validation-chosen threshold %.2f (pixel Dice %.4f)", threshold, val_dice)
    return {"history": history, "threshold": threshold, "val_dice": val_dice}


SCORE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def instance_precision(precision: str, device: torch.device) -> str:
    """An instance model's precision: ``auto`` stays fp32 on a CPU (bf16 detection heads are unvalidated there)."""
    return "fp32" if precision == "auto" and device.type == "cpu" else precision


def train_instances(
    model: nn.Module,
    train_data: dict[str, np.ndarray],
    val_data: dict[str, np.ndarray] | None,
    cfg: TrainConfig,
    device: torch.device,
    checkpoint: Path,
    run_key: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train an instance model (Mask R-CNN, US-Net; see :mod:`histoflow.detection`) in place.

    The patches' instance labels are augmented with the image (nearest sampling keeps ids) and
    turned into boxes and masks by the model's ``instance_losses``; the loop is :func:`run_epochs`'.
    Each epoch reports the validation AJI and pixel Dice of the detections at score 0.5; at the end
    the detection score threshold maximising the validation AJI is chosen from
    :data:`SCORE_THRESHOLDS`. Returns ``{"history", "score_threshold", "val_aji", "val_dice"}``.
    """
    seed_everything(cfg.seed)
    x_train = images_to_tensor(train_data["images"])
    l_train = torch.from_numpy(train_data["labels"].astype(np.int64))[:, None]
    aug = augment_config(cfg.augment)
    precision = instance_precision(cfg.precision, device)
    model = prepare_model(model, device)

    def step_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb, lb = to_device(x_train[idx], device), l_train[idx].to(device)
        xb, (lb,) = augment(xb, [lb], aug, gen)
        with autocast(device, precision):
            terms = model.instance_losses(xb, lb[:, 0])
        return sum(v.float() for v in terms.values())

    has_val = val_data is not None and len(val_data["images"]) > 0
    val_found: list = []  # the detections of the last validation, reused to choose the threshold

    def detect_val() -> list:  # down to the lowest threshold the final choice considers
        return detect_patches(model, val_data["images"], device, cfg.batch_size, min(SCORE_THRESHOLDS), precision)

    def validate() -> dict[str, float]:
        val_found[:] = detect_val()
        scores = validate_instances(val_found, val_data["labels"], (0.5,))
        return {"val_aji": scores[0.5]["aji"], "val_dice": scores[0.5]["dice"]}

    history = run_epochs(model, step_loss, len(x_train), cfg, device, checkpoint, run_key,
                         validate if has_val else None, progress)
    result: dict[str, Any] = {"history": history, "score_threshold": 0.5, "val_aji": float("nan"),
                              "val_dice": float("nan")}
    if has_val:
        found = val_found or detect_val()
        scores = validate_instances(found, val_data["labels"], SCORE_THRESHOLDS)
        best = max(SCORE_THRESHOLDS, key=lambda t: (scores[t]["aji"], -abs(t - 0.5)))
        result.update(score_threshold=best, val_aji=scores[best]["aji"], val_dice=scores[best]["dice"])
        log.info("validation AJI by detection score threshold: %s; chosen %.2f",
                 ", ".join(f"{t}: {v['aji']:.4f}" for t, v in scores.items()), best)
    return result


@torch.no_grad()
def detect_patches(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int,
                   min_score: float = 0.0, precision: str = "auto") -> list:
    """The model's detections (:class:`histoflow.detection.Detections`) scoring at least ``min_score``.

    ``images`` are ``uint8 (N, H, W, 3)`` patches.
    """
    model.eval()
    x = images_to_tensor(images)
    found = []
    for i in range(0, len(x), batch_size):
        with autocast(device, precision):
            found += model.detect(to_device(x[i : i + batch_size], device), min_score=min_score)
    return found


def validate_instances(
    found: list, labels: np.ndarray, score_thresholds: tuple[float, ...], nms_iou: float = 0.5,
    mask_threshold: float = 0.5,
) -> dict[float, dict[str, float]]:
    """Mean AJI and pooled pixel Dice on the validation patches, for each detection score threshold.

    The AJI is averaged over the patches with objects. Both score the instances made from the detections
    ``found`` on each validation patch against its ``labels``.
    """
    from .detection import filter_detections, instance_labels
    from .metrics import aji

    out = {}
    for t in score_thresholds:
        ajis, inter, total = [], 0, 0
        for dets, gt in zip(found, labels, strict=True):
            pred = instance_labels(filter_detections(dets, t, nms_iou), gt.shape, mask_threshold)
            if gt.any():
                ajis.append(aji(pred, gt))
            inter += int(((pred > 0) & (gt > 0)).sum())
            total += int((pred > 0).sum() + (gt > 0).sum())
        out[t] = {"aji": float(np.mean(ajis)) if ajis else float("nan"),
                  "dice": 2 * inter / total if total else 1.0}
    return out


def _validate(model: nn.Module, val: dict[str, np.ndarray], cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    from .semantic import class_metrics, confusion_matrix

    x = images_to_tensor(val["images"])
    y = torch.from_numpy(val[cfg.target]).float()[:, None]
    w = torch.from_numpy(loss_weights(val, cfg))[:, None]
    model.eval()
    total, dice_num, dice_den, confusion = 0.0, 0.0, 0.0, None
    with torch.no_grad():
        for i in range(0, len(x), cfg.batch_size):
            with autocast(device, cfg.precision):
                logits = model(to_device(x[i : i + cfg.batch_size], device)).float().cpu()
            yb = centre_crop(y[i : i + cfg.batch_size], logits.shape[-2:])
            wb = centre_crop(w[i : i + cfg.batch_size], logits.shape[-2:])
            total += float(training_loss(logits, yb, wb, cfg)) * len(yb)
            if logits.shape[1] > 1:  # per-class pixel counts of the argmax
                keep = (wb[:, 0] > 0).numpy()
                cm = confusion_matrix(logits.argmax(1).numpy()[keep], yb[:, 0].long().numpy()[keep], logits.shape[1])
                confusion = cm if confusion is None else confusion + cm
                continue
            pb = (logits > 0).float() * (wb > 0)
            dice_num += float(2 * (pb * yb).sum())
            dice_den += float(pb.sum() + (yb * (wb > 0)).sum())
    if confusion is not None:
        return {"val_loss": total / len(x), "val_dice": class_metrics(confusion)["mean_dice"]}
    return {"val_loss": total / len(x), "val_dice": dice_num / dice_den if dice_den else 1.0}


def write_history_tsv(history: list[dict[str, float]], path: str | os.PathLike[str]) -> None:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def train_with_oom_fallback(model, train, val, cfg, dev, checkpoint: Path, run_key: Any, train_fn=None):
    """``train_fn`` (default :func:`train_model`), restarted with half the batch size on CUDA out-of-memory.

    Each restart begins from the initial weights. A job that asked for too large a batch still finishes (more
    slowly, with a warning in its log) instead of failing after the queue wait; ``cfg.batch_size`` is updated
    to the size that worked.
    """
    import copy

    from .device import retry_halving_on_oom

    train_fn = train_fn or train_model
    initial = copy.deepcopy(model.state_dict())

    def attempt(batch_size: int) -> dict[str, Any]:
        cfg.batch_size = batch_size
        return train_fn(model, train, val, cfg, dev, checkpoint, run_key=run_key)

    result, _ = retry_halving_on_oom(
        attempt, cfg.batch_size, "out of GPU memory with batch_size=1: lower patches.size or the model width",
        on_retry=lambda: model.load_state_dict(initial),
    )
    return result
