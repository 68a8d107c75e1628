"""Inference backends: each agrees with torch fp32 eager; auto chooses and remembers; the graph follows the weights."""

from __future__ import annotations

import json

import pytest
import torch

from histoflow.backends import BACKENDS, ModelPredictor, backend_available, model_predictor, weights_key
from histoflow.models import build_model
from histoflow.tiling import predict_tiled

CPU = torch.device("cpu")
# Largest |probability difference| to torch fp32 eager allowed of an fp32 backend on this tiny model: ONNX Runtime
# and OpenVINO reorder the same fp32 sums (measured ~1e-7 on U-Nets up to 31 M parameters).
TOL = 1e-5
RUNTIMES = [pytest.param(name, marks=pytest.mark.skipif(not backend_available(name), reason=f"{name} not installed"))
            for name in BACKENDS[1:]]


@pytest.fixture()
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, out_channels=1, base_width=4, depth=2).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    return model, tmp_path


@pytest.mark.parametrize("name", RUNTIMES)
def test_every_backend_agrees_with_torch_fp32(model_dir, name):
    model, folder = model_dir
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = torch.sigmoid(model(x))
    net = ModelPredictor(model, CPU, name, "fp32", folder / "exported", folder / "model.pt")
    assert (net(x) - reference).abs().max() < TOL
    # The batch axis is free: a short last batch of tiles runs through the same graph.
    assert (net(x[:1]) - reference[:1]).abs().max() < TOL
    assert net.record["backend"] == name and net.record["precision"] == "fp32"


def test_tiled_prediction_through_a_backend_equals_torch(model_dir):
    model, folder = model_dir
    image = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(2))
    expected = predict_tiled(lambda b: torch.sigmoid(model(b)), image, tile=32, overlap=8, batch_size=4,
                             precision="fp32")
    net = model_predictor(model, CPU, {"backend": "auto", "precision": "fp32"}, folder)
    got = predict_tiled(net, image, tile=32, overlap=8, batch_size=4, precision=net.precision)
    assert abs(got - expected).max() < TOL


def test_auto_measures_once_and_remembers_its_choice(model_dir, monkeypatch):
    import histoflow.backends as backends

    model, folder = model_dir
    x = torch.rand(2, 3, 32, 32)
    first = ModelPredictor(model, CPU, "auto", "fp32", folder / "exported", folder / "model.pt")
    first(x)
    record = first.record
    assert record["backend"] in BACKENDS[1:] and record["candidates"]["torch"]["agrees"]
    installed = [n for n in BACKENDS[1:] if backend_available(n)]
    assert sorted(record["candidates"]) == sorted(installed)
    # The chosen backend is the fastest of those that agree.
    agreeing = {n: m["seconds"] for n, m in record["candidates"].items() if m.get("agrees")}
    assert record["backend"] == min(agreeing, key=agreeing.get)
    saved = list((folder / "exported").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["backend"] == record["backend"]

    # A second job with the same weights and tiles builds the remembered backend without measuring.
    monkeypatch.setattr(backends, "_timed", lambda *a, **k: pytest.fail("measured again"))
    second = ModelPredictor(model, CPU, "auto", "fp32", folder / "exported", folder / "model.pt")
    second(x)
    assert second.record == record


def test_auto_without_the_optional_runtimes_is_torch(model_dir, monkeypatch):
    import histoflow.backends as backends

    model, folder = model_dir
    monkeypatch.setattr(backends, "backend_available", lambda name: name == "torch")
    net = ModelPredictor(model, CPU, "auto", "fp32", folder / "exported", folder / "model.pt")
    net(torch.rand(1, 3, 32, 32))
    assert net.record["backend"] == "torch" and list(net.record["candidates"]) == ["torch"]
    with pytest.raises(ImportError, match=r"pip install -e '\.\[cpu\]'"):
        ModelPredictor(model, CPU, "onnxruntime", "fp32", folder / "exported", folder / "model.pt")(
            torch.rand(1, 3, 32, 32))


def test_a_backend_that_disagrees_is_not_chosen(model_dir, monkeypatch):
    import histoflow.backends as backends

    model, folder = model_dir
    real = backends.make_runner

    def broken_runtimes(name, *args):
        run = real(name, *args)
        return run if name == "torch" else (lambda x: run(x) + 1.0)  # shifts every logit: out of tolerance

    monkeypatch.setattr(backends, "make_runner", broken_runtimes)
    net = ModelPredictor(model, CPU, "auto", "fp32", folder / "exported", folder / "model.pt")
    net(torch.rand(2, 3, 32, 32))
    assert net.record["backend"] == "torch"
    assert all(not m["agrees"] for n, m in net.record["candidates"].items() if n != "torch" and "agrees" in m)


@pytest.mark.skipif(not backend_available("onnxruntime"), reason="onnxruntime not installed")
def test_the_exported_graph_is_rebuilt_when_the_weights_change(model_dir):
    model, folder = model_dir
    x = torch.rand(2, 3, 32, 32)
    ModelPredictor(model, CPU, "onnxruntime", "fp32", folder / "exported", folder / "model.pt")(x)
    (old,) = (folder / "exported").glob("*.onnx")
    assert old.name.startswith(weights_key(folder / "model.pt"))

    with torch.no_grad():  # retrained: other weights in model.pt
        for p in model.parameters():
            p.add_(0.1)
    torch.save(model.state_dict(), folder / "model.pt")
    net = ModelPredictor(model, CPU, "onnxruntime", "fp32", folder / "exported", folder / "model.pt")
    with torch.inference_mode():
        reference = torch.sigmoid(model(x))
    assert (net(x) - reference).abs().max() < TOL  # the new weights, not the cached old graph
    (new,) = (folder / "exported").glob("*.onnx")  # and the stale graph is gone
    assert new != old and new.name.startswith(weights_key(folder / "model.pt"))


def test_gpu_jobs_use_torch_and_refuse_cpu_runtimes(model_dir):
    from histoflow.backends import make_runner

    model, folder = model_dir
    with pytest.raises(ValueError, match="runs on a CPU"):
        make_runner("openvino", model, torch.rand(1, 3, 32, 32), torch.device("cuda"), "fp32", folder, "k")
    with pytest.raises(ValueError, match="predict.backend must be one of"):
        ModelPredictor(model, CPU, "tensorrt")


def test_auto_keeps_torch_for_a_job_too_small_to_repay_the_export(model_dir):
    from histoflow.backends import AUTO_MIN_MEGAPIXELS

    model, folder = model_dir
    net = ModelPredictor(model, CPU, "auto", "fp32", folder / "exported", folder / "model.pt",
                         megapixels=AUTO_MIN_MEGAPIXELS / 2)
    net(torch.rand(1, 3, 32, 32))
    assert net.record["backend"] == "torch" and "MP" in net.record["reason"]
    assert not (folder / "exported").exists()  # nothing exported, nothing measured


def test_the_first_job_to_publish_its_choice_decides_for_all(tmp_path):
    from histoflow.backends import publish_once

    path = tmp_path / "key-3x32x32-fp32-t2.json"
    first = publish_once(path, {"backend": "openvino", "seconds": 1})
    # A job that measured at the same time and found ONNX Runtime faster adopts the published choice.
    second = publish_once(path, {"backend": "onnxruntime", "seconds": 2})
    assert first == second == {"backend": "openvino", "seconds": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind


def test_job_megapixels_counts_tiles_and_tta_transforms():
    from histoflow.backends import job_megapixels

    # 10 tiles of 256² = 0.65536 MP; flips run each tile 4 times.
    assert job_megapixels(10, 256) == pytest.approx(0.65536)
    assert job_megapixels(10, 256, "flips") == pytest.approx(4 * 0.65536)
    assert job_megapixels(10, 256, "dihedral") == pytest.approx(8 * 0.65536)


def test_auto_compares_with_an_fp32_reference_even_inside_a_bf16_region(model_dir):
    from histoflow.device import autocast

    model, folder = model_dir
    net = ModelPredictor(model, CPU, "auto", "bf16", folder / "exported", folder / "model.pt")
    with torch.inference_mode(), autocast(CPU, "bf16"):  # as predict_tiled calls it with precision bf16
        net(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    torch_bf16 = net.record["candidates"]["torch"]
    # torch in bf16 differs from the fp32 reference (a bf16 reference would make this exactly 0) but agrees
    assert 0 < torch_bf16["max_abs_diff"] <= torch_bf16["tolerance"]
