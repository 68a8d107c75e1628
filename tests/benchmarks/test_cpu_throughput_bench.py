"""benchmarks/cpu_throughput.py on a tiny run: every variant is timed or its error recorded, the agreement with
eager fp32 is measured, and the summary keys the issue asks for are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import cpu_throughput  # noqa: E402


@pytest.mark.slow
def test_tiny_run_writes_rates_agreement_and_speedups(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    cpu_throughput.main(["--tile", "32", "--batch", "1", "--repeats", "1", "--models", "unet_32_4",
                         "--variants", "eager_fp32", "eager_fp32_cl", "bf16", "onnxruntime",
                         "--bf16-models", "unet_32_4", "--train-models", "unet_32_4", "--train-tile", "32",
                         "--train-batch", "2", "--probe-tile", "64", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["cpu_features"]) >= {"avx2", "avx512_bf16", "amx_bf16"}
    row = result["inference"]["models"]["unet_32_4"]
    assert row["eager_fp32"]["max_abs_diff"] == 0.0 and row["eager_fp32"]["mp_s"] > 0
    assert row["eager_fp32_cl"]["agrees"]  # a layout change computes the same within fp32 tolerance
    assert row["bf16"]["max_abs_diff"] <= cpu_throughput.TOLERANCE["bf16"]
    absent = ("ModuleNotFoundError", "ImportError")  # the optional [cpu] extra is not installed
    assert "mp_s" in row["onnxruntime"] or row["onnxruntime"]["error"].startswith(absent)
    train = result["training"]["models"]["unet_32_4"]
    assert set(train) == {*cpu_throughput.TRAINING, "loop"}
    # The project's loop is timed against the bare step of its own precision and layout.
    assert train["loop"]["variant"] in cpu_throughput.TRAINING and train["loop"]["mp_s"] > 0
    assert result["train_rate_fraction_of_model"] == train["loop"]["fraction_of_model"] > 0
    if not result["native_bf16"]:  # emulated bf16 is measured on a small probe beside fp32
        assert result["bf16_probe"]["inference_bf16_over_fp32"] > 0
    assert result["unet_32_4_infer_speedup_vs_fp32"] >= 1.0  # the best agreeing variant, eager fp32 included
    assert result["unet_32_4_train_speedup_vs_fp32"] >= 1.0
    assert result["unet_32_4_infer_best"] in row


def test_speedup_ignores_variants_that_disagree() -> None:
    row = {"eager_fp32": {"mp_s": 1.0, "agrees": True}, "fast_but_wrong": {"mp_s": 9.0, "agrees": False},
           "bf16": {"mp_s": 3.0, "agrees": True}, "missing": {"error": "ModuleNotFoundError: x"}}
    assert cpu_throughput.speedup(row, "eager_fp32") == (3.0, "bf16")
    assert cpu_throughput.speedup({"missing": {"error": "x"}}, "eager_fp32") == (None, None)


def test_bf16_runtimes_are_judged_at_the_bf16_tolerance() -> None:
    assert cpu_throughput.is_bf16("<Type: 'bfloat16'>")  # how OpenVINO reports its default precision on a BF16 CPU
    assert cpu_throughput.is_bf16("bf16") and not cpu_throughput.is_bf16("<Type: 'float32'>")
