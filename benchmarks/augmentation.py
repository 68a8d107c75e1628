"""Training step rate with and without augmentation, side by side in one run.

    python benchmarks/augmentation.py [--device cuda] [--preset glas_unet] [--steps 30]

Prints a table and writes benchmarks/results/augmentation.json with ``train_rate_ratio_aug_vs_none``
(steps/s with augmentation ÷ without). The U-Net is Ronneberger's (base width 64, depth 4) on CUDA
and a small one (16, 3) on CPU so the CPU run finishes in a minute; batches of 256² patches.
Runs are interleaved (none, aug, none, aug, ...) so drifting machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from histoflow.augment import augment, augment_config  # noqa: E402
from histoflow.device import autocast, prepare_model, resolve_device, to_device  # noqa: E402
from histoflow.models import build_model  # noqa: E402
from histoflow.train import segmentation_loss  # noqa: E402


def step_rate(model, opt, x, y, w, aug, steps: int, device) -> float:
    g = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        xb, (yb, wb) = augment(x, [y, w], aug, g)
        with autocast(device):
            loss = segmentation_loss(model(xb), yb, wb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="glas_unet")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "augmentation.json"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    width, depth, batch, size = (64, 4, 16, 256) if cuda else (16, 3, 4, 256)
    steps = args.steps or (50 if cuda else 5)
    model = prepare_model(build_model("unet", base_width=width, depth=depth), device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = to_device(torch.rand(batch, 3, size, size), device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    w = torch.ones_like(y)
    none, aug = augment_config("none"), augment_config(args.preset)
    step_rate(model, opt, x, y, w, aug, 2, device)  # warm-up (cuDNN autotune, allocator)
    rates = {"none": [], "aug": []}
    for _ in range(args.rounds):
        rates["none"].append(step_rate(model, opt, x, y, w, none, steps, device))
        rates["aug"].append(step_rate(model, opt, x, y, w, aug, steps, device))
    best = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}  # median: robust to load spikes
    result = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "preset": args.preset,
        "model": f"unet base_width={width} depth={depth}", "batch": batch, "patch": size, "steps": steps,
        "rates_steps_per_s": rates, "train_rate_none": best["none"], "train_rate_aug": best["aug"],
        "train_rate_ratio_aug_vs_none": best["aug"] / best["none"],
    }
    print(f"{'setting':<12}{'steps/s (median of ' + str(args.rounds) + ')':>26}")
    print(f"{'none':<12}{best['none']:>26.3f}")
    print(f"{args.preset:<12}{best['aug']:>26.3f}")
    print(f"ratio aug/none: {result['train_rate_ratio_aug_vs_none']:.3f} on {result['device']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
