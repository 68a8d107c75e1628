"""CPU throughput of the project's networks, every precision / layout / backend side by side in one run.

    python benchmarks/cpu_throughput.py [--tile 512] [--batch 2] [--repeats 3] [--models unet_32_4 ...]
                                        [--train-models unet_16_3 unet_32_4] [--quick]

Same weights (seeded), same tiles (synthetic H&E fibre crops), one process, models and variants
interleaved so that drifting load on a shared machine hits them alike. Inference variants: torch eager
fp32, eager fp32 channels_last, bf16 autocast, bf16 + channels_last, ``torch.compile`` (inductor, fp32),
ONNX Runtime (CPU execution provider, fp32 graph) and OpenVINO (its default CPU precision, recorded);
a variant whose package is absent or that fails is recorded with its error, never silently dropped.
Each variant's output (sigmoid probabilities) is compared with eager fp32: it *agrees* when the largest
absolute difference is at most 1e-3 for an fp32 variant and 2e-2 for a bf16 one. Training variants
(fp32, channels_last, bf16, bf16 + channels_last) time a full step: forward, BCE loss in fp32, backward,
Adam. The project's own loop (``histoflow.train.train_model``, augmentation and weighted loss included) runs
on the same batches; ``train_rate_fraction_of_model`` is its step rate over the bare step's in the same
precision and memory format.

Prints two tables and writes ``benchmarks/results/cpu_throughput.json`` with the CPU's features
(AVX2, AVX-512, AVX512-BF16, AMX), per model and variant the megapixels per second and the agreement,
and ``unet_32_4_infer_speedup_vs_fp32`` / ``unet_32_4_train_speedup_vs_fp32`` (the fastest agreeing
variant over eager fp32, same run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from _bench import best_time, cpu_features, device_name, package_versions  # noqa: E402

from histoflow.models import build_model  # noqa: E402
from histoflow.synthetic.fibres import FibreParams, make_fibre_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: name -> (architecture, parameters); ``usnet`` is timed on its segmentation part (the U-Net backbone).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "unet_16_3": ("unet", {"base_width": 16, "depth": 3}),
    "unet_32_4": ("unet", {"base_width": 32, "depth": 4}),
    "unet_64_4": ("unet", {"base_width": 64, "depth": 4}),
    "vgg16_mdn": ("vgg16_mdn", {"base_width": 64, "decoder_width": 32}),
    "rescrnet": ("rescrnet", {}),
    "usnet_seg": ("usnet", {}),
}
INFERENCE = ("eager_fp32", "eager_fp32_cl", "bf16", "bf16_cl", "compile_fp32", "onnxruntime", "openvino")
TRAINING = ("fp32", "fp32_cl", "bf16", "bf16_cl")
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}
#: A variant slower than this per call (emulated bf16 can be 20-100x slower than fp32) is timed once.
SLOW_S = 15.0


def build(name: str) -> torch.nn.Module:
    arch, params = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, out_channels=1, **params).eval()
    return model.backbone if name == "usnet_seg" else model


def tiles(n: int, tile: int) -> torch.Tensor:
    """``n`` crops of a synthetic H&E fibre image, float32 ``(n, 3, tile, tile)`` in [0, 1]."""
    image, _ = make_fibre_image(7, FibreParams(size=(tile, tile * n)))
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return torch.stack([x[:, :, i * tile : (i + 1) * tile] for i in range(n)]).contiguous()


def is_bf16(precision: str) -> bool:
    """Whether a runtime's recorded precision is bf16 (OpenVINO writes ``<Type: 'bfloat16'>``)."""
    return "bf16" in precision or "bfloat16" in precision


def torch_runner(model: torch.nn.Module, x: torch.Tensor, bf16: bool, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = model.to(memory_format=fmt)
    xi = x.contiguous(memory_format=fmt)

    def run() -> np.ndarray:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return torch.sigmoid(m(xi).float()).numpy()

    return run


def compile_runner(model: torch.nn.Module, x: torch.Tensor):
    compiled = torch.compile(model.to(memory_format=torch.contiguous_format))

    def run() -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(compiled(x)).numpy()

    return run


def onnx_file(model: torch.nn.Module, x: torch.Tensor, folder: Path) -> Path:
    path = folder / "model.onnx"
    torch.onnx.export(model.to(memory_format=torch.contiguous_format), (x,), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    return path


def onnxruntime_runner(model: torch.nn.Module, x: torch.Tensor, folder: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_file(model, x, folder)), opts, providers=["CPUExecutionProvider"])
    xn = x.numpy()

    def run() -> np.ndarray:
        (y,) = session.run(None, {"x": xn})
        return 1.0 / (1.0 + np.exp(-y))

    return run


def openvino_runner(model: torch.nn.Module, x: torch.Tensor, info: dict[str, Any]):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(ov.convert_model(model.to(memory_format=torch.contiguous_format),
                                                   example_input=x), "CPU",
                                  {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    info["precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()
    xn = x.numpy()

    def run() -> np.ndarray:
        y = request.infer({0: xn})[compiled.output(0)]
        return 1.0 / (1.0 + np.exp(-y))

    return run


def inference_row(name: str, x: torch.Tensor, repeats: int, variants: tuple[str, ...]) -> dict[str, Any]:
    model = build(name)
    reference = torch_runner(model, x, bf16=False, channels_last=False)()
    megapixels = x.shape[0] * x.shape[2] * x.shape[3] / 1e6
    row: dict[str, Any] = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            info: dict[str, Any] = {}
            try:
                t_setup = time.perf_counter()
                if variant.startswith(("eager", "bf16")):
                    run = torch_runner(build(name), x, bf16=variant.startswith("bf16"),
                                       channels_last=variant.endswith("_cl"))
                elif variant == "compile_fp32":
                    run = compile_runner(build(name), x)
                    run()  # compilation happens on the first call
                elif variant == "onnxruntime":
                    run = onnxruntime_runner(build(name), x, Path(tmp))
                else:
                    run = openvino_runner(build(name), x, info)
                info["setup_s"] = round(time.perf_counter() - t_setup, 2)
                diff = float(np.abs(run() - reference).max())
                seconds = best_time(run, repeats, warmup=True, slow_s=SLOW_S)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot run is a result, recorded
                row[variant] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                print(f"  {name} {variant}: {row[variant]['error']}", flush=True)
                continue
            bf16 = variant.startswith("bf16") or is_bf16(info.get("precision", ""))
            row[variant] = {"mp_s": round(megapixels / seconds, 3), "seconds": round(seconds, 4),
                            "max_abs_diff": diff, "agrees": diff <= TOLERANCE["bf16" if bf16 else "fp32"], **info}
            print(f"  {name} {variant}: {row[variant]['mp_s']:.2f} MP/s, max |diff| {diff:.1e}", flush=True)
    return row


def bare_step(name: str, x: torch.Tensor, variant: str):
    """One bare training step of model ``name`` on ``x`` in ``variant`` (forward, fp32 BCE, backward, Adam)."""
    fmt = torch.channels_last if variant.endswith("_cl") else torch.contiguous_format
    model = build(name).train().to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xi = x.contiguous(memory_format=fmt)
    y = (x.mean(1, keepdim=True) < 0.7).float()
    bf16 = variant.startswith("bf16")

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(xi)
        # deep supervision (vgg16_mdn in training: fused map and side outputs): every output's loss, as in training
        outs = [out[0], *out[1]] if isinstance(out, tuple) else [out]
        loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o.float(), y) for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def training_row(name: str, x: torch.Tensor, repeats: int, variants: tuple[str, ...] = TRAINING) -> dict[str, Any]:
    megapixels = x.shape[0] * x.shape[2] * x.shape[3] / 1e6
    row: dict[str, Any] = {v: {"error": "not run: no BF16 instructions on this CPU (emulated; see bf16_probe)"}
                           for v in TRAINING if v not in variants}
    for variant in variants:
        try:
            seconds = best_time(bare_step(name, x, variant), repeats, warmup=True, slow_s=SLOW_S)
        except Exception as exc:  # recorded, never silently dropped (like the inference variants)
            row[variant] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(f"  {name} train {variant}: failed: {row[variant]['error']}", flush=True)
            continue
        row[variant] = {"mp_s": round(megapixels / seconds, 3), "seconds": round(seconds, 4)}
        print(f"  {name} train {variant}: {row[variant]['mp_s']:.2f} MP/s", flush=True)
    return row


def loop_row(name: str, x: torch.Tensor, steps: int = 4) -> dict[str, Any]:
    """The project's own training loop (:func:`histoflow.train.train_model`: dihedral augmentation on the
    batch, BCE + Dice with the weight map, AdamW, cosine schedule, its precision ``auto`` and memory format)
    on the same batches, per step, against the bare step of the same precision and layout.

    Two epochs of ``steps`` steps, the second timed (the first warms up allocator and kernels); then ``steps``
    bare steps after one warm-up, timed alike (mean per step, not best: the loop's figure is a mean too).
    """
    from histoflow.device import resolve_precision, use_channels_last
    from histoflow.train import TrainConfig, train_model

    cpu = torch.device("cpu")
    precision = resolve_precision("auto", cpu)
    variant = precision + ("_cl" if use_channels_last(cpu, precision, training=True) else "")
    n = x.shape[0]
    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    masks = (x.mean(1) < 0.7).to(torch.uint8).numpy()
    data = {"images": np.concatenate([images] * steps), "masks": np.concatenate([masks] * steps),
            "boundaries": np.zeros_like(np.concatenate([masks] * steps)),
            "weights": np.ones((n * steps, *masks.shape[1:]), np.float32)}
    cfg = TrainConfig(epochs=2, batch_size=n, max_steps_per_epoch=steps, recalibrate_bn=False, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        history = train_model(build(name).train(), data, None, cfg, cpu, Path(tmp) / "ckpt.pt",
                              progress=False)["history"]
    loop_s = history[-1]["seconds"] / steps
    step = bare_step(name, x, variant)
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    bare_s = (time.perf_counter() - t0) / steps
    megapixels = n * x.shape[2] * x.shape[3] / 1e6
    row = {"variant": variant, "mp_s": round(megapixels / loop_s, 3), "seconds": round(loop_s, 4),
           "bare_mp_s": round(megapixels / bare_s, 3), "fraction_of_model": round(bare_s / loop_s, 3)}
    print(f"  {name} train loop ({variant}): {row['mp_s']:.2f} MP/s, {row['fraction_of_model']} of the bare step "
          f"({row['bare_mp_s']:.2f} MP/s)", flush=True)
    return row


def bf16_probe(repeats: int, tile: int = 128, name: str = "unet_32_4") -> dict[str, Any]:
    """fp32 against emulated bf16 on a small input, where the CPU has no BF16 instructions (full-size bf16
    runs would take many minutes): 1 x ``tile``² inference and 2 x (``tile`` / 2)² training steps."""
    x = tiles(1, tile)
    probe: dict[str, Any] = {"model": name, "tile": tile,
                             "inference": inference_row(name, x, repeats, ("eager_fp32", "bf16")),
                             "training": training_row(name, tiles(2, tile // 2), repeats, ("fp32", "bf16"))}
    for part, base in (("inference", "eager_fp32"), ("training", "fp32")):
        rows = probe[part]
        probe[f"{part}_bf16_over_fp32"] = round(rows["bf16"]["mp_s"] / rows[base]["mp_s"], 4)
    print(f"  bf16 probe: inference x{probe['inference_bf16_over_fp32']}, training x{probe['training_bf16_over_fp32']}"
          " of fp32", flush=True)
    return probe


def speedup(row: dict[str, Any], base: str) -> tuple[float | None, str | None]:
    """The fastest agreeing variant's rate over ``base``'s, and its name."""
    ok = {k: v["mp_s"] for k, v in row.items() if isinstance(v, dict) and "mp_s" in v and v.get("agrees", True)}
    if base not in ok:
        return None, None
    best = max(ok, key=ok.get)
    return round(ok[best] / ok[base], 3), best


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["unet_32_4", "unet_64_4", "vgg16_mdn", "rescrnet", "usnet_seg"],
                    choices=sorted(MODELS))
    ap.add_argument("--train-models", nargs="*", default=["unet_16_3", "unet_32_4"], choices=sorted(MODELS))
    ap.add_argument("--train-tile", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=list(INFERENCE), choices=INFERENCE)
    ap.add_argument("--bf16-models", nargs="*", default=None, choices=sorted(MODELS),
                    help="models whose bf16 variants run at full size (default: all where the CPU has BF16 "
                         "instructions, else none: emulated bf16 is 20-100x slower than fp32, so it is measured "
                         "on a small probe instead, see bf16_probe)")
    ap.add_argument("--skip", nargs="*", default=[], metavar="MODEL:VARIANT",
                    help="variants not to run, recorded as such (e.g. rescrnet:compile_fp32: inductor compiles its "
                         "unrolled ConvLSTM for over 5 minutes on 2 cores)")
    ap.add_argument("--probe-tile", type=int, default=128, help="tile of the bf16 probe (CPUs without BF16)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_throughput.json")
    args = ap.parse_args(argv)

    x = tiles(args.batch, args.tile)
    native_bf16 = any(cpu_features()[k] for k in ("avx512_bf16", "amx_bf16"))
    bf16_models = args.bf16_models if args.bf16_models is not None else (list(args.models) if native_bf16 else [])
    result: dict[str, Any] = {
        "device": device_name("cpu"), "cpu_features": cpu_features(), "torch_threads": torch.get_num_threads(),
        "versions": package_versions(["torch", "onnxruntime", "openvino", "numpy"]),
        "date": dt.date.today().isoformat(), "inference": {"tile": args.tile, "batch": args.batch, "models": {}},
        "training": {"tile": args.train_tile, "batch": args.train_batch, "models": {}},
        "tolerance": TOLERANCE, "native_bf16": native_bf16,
    }
    for name in args.models:
        print(f"inference {name}", flush=True)
        skipped = {v for v in args.variants if f"{name}:{v}" in args.skip}
        variants = tuple(v for v in args.variants
                         if (name in bf16_models or not v.startswith("bf16")) and v not in skipped)
        result["inference"]["models"][name] = inference_row(name, x, args.repeats, variants)
        for v in args.variants:
            if v in skipped:
                result["inference"]["models"][name][v] = {"error": "not run: --skip"}
            elif v not in variants:
                result["inference"]["models"][name][v] = {"error": "not run: no BF16 instructions on this CPU "
                                                                   "(emulated; see bf16_probe)"}
        write(args.out, result)  # a long run keeps what it measured
    xt = tiles(args.train_batch, args.train_tile)
    for name in args.train_models:
        print(f"training {name}", flush=True)
        row = training_row(name, xt, args.repeats, TRAINING if native_bf16 else ("fp32", "fp32_cl"))
        row["loop"] = loop_row(name, xt)
        result["training"]["models"][name] = row
        write(args.out, result)
    if not native_bf16:
        result["bf16_probe"] = bf16_probe(args.repeats, args.probe_tile)
    if "unet_32_4" in result["inference"]["models"]:
        s, best = speedup(result["inference"]["models"]["unet_32_4"], "eager_fp32")
        result["unet_32_4_infer_speedup_vs_fp32"], result["unet_32_4_infer_best"] = s, best
    if "unet_32_4" in result["training"]["models"]:
        row = result["training"]["models"]["unet_32_4"]
        s, best = speedup({k: v for k, v in row.items() if k != "loop"}, "fp32")
        result["unet_32_4_train_speedup_vs_fp32"], result["unet_32_4_train_best"] = s, best
        result["train_rate_fraction_of_model"] = row["loop"].get("fraction_of_model")

    print(f"\ninference, {args.batch} x {args.tile}², MP/s (* = disagrees with eager fp32 beyond tolerance)")
    print("| model | " + " | ".join(args.variants) + " |")
    print("|---|" + "---:|" * len(args.variants))
    for name, row in result["inference"]["models"].items():
        cells = [("n/a" if "error" in row[v] else f"{row[v]['mp_s']:.2f}{'' if row[v]['agrees'] else '*'}")
                 for v in args.variants]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if result["training"]["models"]:
        print(f"\ntraining steps, {args.train_batch} x {args.train_tile}², MP/s")
        print("| model | " + " | ".join(TRAINING) + " | histoflow loop | loop / bare step |")
        print("|---|" + "---:|" * (len(TRAINING) + 2))
        for name, row in result["training"]["models"].items():
            loop = row["loop"]
            print(f"| {name} | " + " | ".join("n/a" if "error" in row[v] else f"{row[v]['mp_s']:.2f}" for v in TRAINING)
                  + f" | {loop['mp_s']:.2f} ({loop['variant']}) | {loop.get('fraction_of_model')} |")
    write(args.out, result)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
