"""benchmarks/fibre_runtime.py on a tiny run: the paper's edge multiples, one whole-image forward each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fibre_runtime  # noqa: E402
import torch  # noqa: E402

from histoflow.device import resolve_precision  # noqa: E402


def test_edge_multiples_grow_the_pixels_as_k_squared():
    assert fibre_runtime.shapes("edge", 3) == [(1, 1), (2, 2), (3, 3)]
    assert fibre_runtime.shapes("area", 4) == [(1, 1), (1, 2), (1, 3), (2, 2)]


def test_tiny_whole_image_run_writes_rows_and_fits(tmp_path: Path) -> None:
    out = tmp_path / "runtime.json"
    fibre_runtime.main(["--device", "cpu", "--base", "32", "--multiples", "3", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["scale"] == "edge" and result["mode"] == "whole" and result["tile"] is None
    assert [r["pixels"] for r in result["rows"]] == [32 * 32 * k * k for k in (1, 2, 3)]
    assert all(r["vgg16_mdn_s"] > 0 and r["unet_s"] > 0 for r in result["rows"])
    assert set(result["fits"]) == {"vgg16_mdn", "unet"}
    assert out.with_suffix(".png").is_file()
    # the workflow's inference arithmetic: bf16 where this CPU has it (as predict), else fp32
    assert result["precision"] == resolve_precision("auto", torch.device("cpu"))


def test_precision_fp32_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "runtime.json"
    fibre_runtime.main(["--device", "cpu", "--base", "32", "--multiples", "2", "--precision", "fp32",
                        "--out", str(out)])
    assert json.loads(out.read_text())["precision"] == "fp32"
