"""Tests for histoflow.models: the registry, the U-Net's shapes, gradients and size, and save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histoflow.models import available_models, build_model, load_model, register_model, save_model
from histoflow.models.unet import UNet


def tiny(**kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model("unet", base_width=4, depth=2, **kw)


def test_registry_lists_unet():
    assert "unet" in available_models()
    assert available_models() == sorted(available_models())
    assert isinstance(tiny(), UNet)


@pytest.mark.parametrize(("size", "out_channels"), [((37, 53), 1), ((37, 53), 2), ((1, 1), 1), ((16, 5), 3)])
def test_unet_output_has_input_size(size, out_channels):
    model = tiny(in_channels=3, out_channels=out_channels).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, out_channels, *size)
    assert torch.isfinite(y).all()


def test_unet_batch_items_are_independent_in_eval_mode():
    model = tiny().eval()
    x = torch.rand(3, 3, 24, 20)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"norm": False}, {"dropout": 0.2}])
def test_unet_backward_gives_finite_gradients_everywhere(kw):
    model = tiny(**kw).train()
    x = torch.rand(2, 3, 37, 53)
    loss = model(x).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def _unet_params(c_in: int, c_out: int, base: int, depth: int, norm: bool) -> int:
    """Parameter count of the U-Net by hand: 3x3 convs (+bias or BN), 2x2 up-convs, 1x1 head."""

    def conv3(a: int, b: int) -> int:
        return 9 * a * b + (2 * b if norm else b)  # BN has weight + bias; conv then has no bias

    def block(a: int, b: int) -> int:
        return conv3(a, b) + conv3(b, b)

    widths = [base * 2**i for i in range(depth + 1)]
    total, cin = 0, c_in
    for w in widths[:-1]:
        total += block(cin, w)
        cin = w
    total += block(widths[-2], widths[-1])
    for i in range(depth, 0, -1):
        total += 4 * widths[i] * widths[i - 1] + widths[i - 1]  # ConvTranspose2d(2, stride 2)
        total += block(2 * widths[i - 1], widths[i - 1])
    return total + widths[0] * c_out + c_out


def test_ronneberger_widths_parameter_count():
    n_bn = sum(p.numel() for p in build_model("unet", base_width=64, depth=4).parameters())
    n_plain = sum(p.numel() for p in build_model("unet", base_width=64, depth=4, norm=False).parameters())
    # The paper's U-Net (3 input channels, 1 output, no batch norm) has 31,031,745 parameters;
    # batch norm adds 2 x 2944 (= 5,888) affine parameters.
    assert n_plain == 31_031_745 == _unet_params(3, 1, 64, 4, norm=False)
    assert n_bn == 31_037_633 == _unet_params(3, 1, 64, 4, norm=True)
    assert 31.0e6 < n_plain < n_bn < 31.1e6
    assert sum(p.numel() for p in tiny().parameters()) == _unet_params(3, 1, 4, 2, norm=True)


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model architecture 'resnet'.*unet"):
        build_model("resnet")
    with pytest.raises(ValueError, match="bad parameters for model 'unet'"):
        build_model("unet", base_widht=4)
    with pytest.raises(ValueError, match="depth and base_width"):
        build_model("unet", depth=0)


def test_register_model_rejects_a_second_factory_under_the_same_name():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("unet")(lambda: nn.Identity())
    # Re-registering the very same factory is harmless (e.g. a module imported twice).
    assert register_model("unet")(UNet) is UNet


def test_save_load_round_trip(tmp_path):
    model = tiny(out_channels=2)
    # Train-mode step so BatchNorm running stats differ from their defaults and must be saved too.
    model.train()(torch.rand(2, 3, 16, 16))
    model.eval()
    spec = {"arch": "unet", "kwargs": {"base_width": 4, "depth": 2, "out_channels": 2},
            "threshold": 0.35, "tile": 64}
    save_model(model, spec, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.pt", "spec.json"]
    loaded, spec_back = load_model(tmp_path / "m")
    assert spec_back == spec
    assert not loaded.training
    x = torch.rand(2, 3, 23, 31)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_save_model_needs_arch_and_kwargs(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        save_model(tiny(), {"kwargs": {}}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resunet_is_the_unet_with_residual_blocks():
    """Same levels, widths and output size; each block adds its input (or its 1×1 projection) to two convolutions.

    Known answer: with the body's last BatchNorm scaled to 0 the block returns ReLU(shortcut(x)) - the identity on
    a non-negative input of unchanged width.
    """
    from histoflow.models.unet import ResUNet, _ResBlock

    torch.manual_seed(0)
    model = build_model("resunet", base_width=4, depth=2)
    assert isinstance(model, ResUNet) and "resunet" in available_models()
    assert model(torch.rand(1, 3, 20, 28)).shape == (1, 1, 20, 28)
    assert [type(b) for b in model.down] == [_ResBlock, _ResBlock]
    assert isinstance(model.down[0].shortcut[0], torch.nn.Conv2d)  # 3 -> 4 channels: a projection
    block = _ResBlock(8, 8, norm=True).eval()
    assert len(block.shortcut) == 0  # same width: the identity
    torch.nn.init.zeros_(block.body[-1].weight)
    x = torch.rand(2, 8, 6, 6)
    torch.testing.assert_close(block(x), x)
    # 2 x (3x3 convs) per level like the U-Net, plus one 1x1 projection (+BN) where the width changes
    plain = sum(p.numel() for p in build_model("unet", base_width=4, depth=2).parameters())
    res = sum(p.numel() for p in model.parameters())
    projections = [3 * 4, 4 * 8, 8 * 16, 16 * 8, 8 * 4]  # encoder 3->4, 4->8, bottleneck 8->16, decoder 16->8, 8->4
    assert res - plain == sum(projections) + 2 * sum([4, 8, 16, 8, 4])  # + each projection's BN weight and bias
