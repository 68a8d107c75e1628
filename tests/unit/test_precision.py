"""precision: auto|fp32|bf16 per device (CPU capabilities mocked), and the bf16 CPU path training and predicting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import disk_patches, tiny_unet

from histoflow.device import autocast, resolve_precision, use_channels_last
from histoflow.tiling import predict_tiled
from histoflow.train import TrainConfig, instance_precision, train_model

CPU = torch.device("cpu")
# /proc/cpuinfo flags of the two 2-core EPYCs this project has measured on (abridged).
AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
ZEN4 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(("flags", "auto"), [(AVX2_ONLY, "fp32"), (ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"),
                                             (set(), "fp32")])
def test_auto_is_bf16_exactly_where_the_cpu_computes_in_bf16(flags, auto):
    assert resolve_precision("auto", CPU, flags) == auto
    # An explicit choice is what it says, whatever the CPU.
    assert resolve_precision("fp32", CPU, flags) == "fp32"
    assert resolve_precision("bf16", CPU, flags) == "bf16"


def test_auto_reads_the_cpus_own_flags(monkeypatch):
    import histoflow.device as device

    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(ZEN4))
    assert resolve_precision("auto", CPU) == "bf16"
    assert torch.is_autocast_enabled("cpu") is False
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(AVX2_ONLY))
    with autocast(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_fp32_switches_off_an_enclosing_bf16_region():
    with autocast(CPU, "bf16"):
        with autocast(CPU, "fp32"):
            assert not torch.is_autocast_enabled("cpu")
            y = torch.nn.functional.linear(torch.ones(1, 4), torch.ones(2, 4))
        assert y.dtype == torch.float32


def test_unknown_precision_and_bf16_on_mps_are_errors():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="not supported on mps"):
        resolve_precision("bf16", torch.device("mps"))
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="half")


def test_memory_format_follows_the_cpu_measurements():
    # Inference: channels_last; training: only in bf16 (fp32 channels_last training was 20 % slower).
    assert use_channels_last(CPU, "fp32") and use_channels_last(CPU, "bf16")
    assert not use_channels_last(CPU, "fp32", training=True)
    assert use_channels_last(CPU, "bf16", training=True)


def test_instance_models_stay_fp32_on_a_cpu_under_auto():
    assert instance_precision("auto", CPU) == "fp32"
    assert instance_precision("bf16", CPU) == "bf16"


def test_bf16_cpu_training_and_prediction_run_and_agree_with_fp32(tmp_path):
    # Tiny on purpose: on a CPU without bf16 instructions this path is emulated (~90x slower than fp32).
    train, val = disk_patches(8, seed=0, size=24), disk_patches(4, seed=1, size=24)
    results, models = {}, {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(epochs=3, batch_size=4, lr=0.03, seed=0, precision=precision, augment=False)
        models[precision] = tiny_unet()
        results[precision] = train_model(models[precision], train, val, cfg, CPU, tmp_path / f"{precision}.pt",
                                         progress=False)
    h32, h16 = results["fp32"]["history"], results["bf16"]["history"]
    assert all(np.isfinite(h["train_loss"]) for h in h16)
    # Same seed, same data: the bf16 run follows the fp32 one closely over three epochs.
    assert h16[-1]["train_loss"] == pytest.approx(h32[-1]["train_loss"], rel=0.05)
    # The bf16-trained model predicts through the tiled path in bf16 as well; it agrees with its own fp32 output.
    model = models["bf16"].eval()
    image = torch.from_numpy(disk_patches(1, seed=5, size=40)["images"][0]).permute(2, 0, 1).float() / 255

    def predictor(b):
        return torch.sigmoid(model(b).float())

    p16 = predict_tiled(predictor, image, tile=16, overlap=4, batch_size=4, precision="bf16")
    p32 = predict_tiled(predictor, image, tile=16, overlap=4, batch_size=4, precision="fp32")
    assert p16.shape == p32.shape == (1, 40, 40)
    assert np.abs(p16 - p32).max() < 0.02 and not np.array_equal(p16, p32)  # bf16 did run, and stayed close


def test_training_batches_reach_the_model_in_the_chosen_memory_format(tmp_path):
    # A bare permute of NHWC patches leaves channels_last strides, and a convolution follows its input's layout:
    # fp32 CPU training ran channels_last (20-25 % slower) until the batches were made contiguous.
    from histoflow.device import to_device
    from histoflow.train import images_to_tensor

    patches = disk_patches(4, seed=0, size=24)
    assert images_to_tensor(patches["images"]).is_contiguous()
    nhwc = torch.zeros(2, 8, 8, 3).permute(0, 3, 1, 2)
    assert to_device(nhwc, CPU, channels_last=False).is_contiguous()
    assert to_device(nhwc.contiguous(), CPU, channels_last=True).is_contiguous(memory_format=torch.channels_last)

    seen = []
    model = tiny_unet()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous()))
    train_model(model, patches, None, TrainConfig(epochs=1, batch_size=2, precision="fp32"), CPU,
                tmp_path / "c.pt", progress=False)
    assert seen and all(seen)  # fp32 on a CPU: contiguous (use_channels_last(..., training=True) is False)
