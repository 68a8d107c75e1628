"""Test-time augmentation: exact for equivariant predictors, equivariant for any predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoflow.tiling import DIHEDRAL, _dihedral, predict_tiled, tta_predictor


@pytest.mark.parametrize("name", DIHEDRAL)
def test_each_transform_is_inverted(name):
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    assert torch.equal(_dihedral(_dihedral(x, name), name, inverse=True), x)


def test_the_eight_transforms_are_distinct():
    x = torch.arange(16.0).reshape(4, 4)
    assert len({tuple(_dihedral(x, n).flatten().tolist()) for n in DIHEDRAL}) == 8


@pytest.mark.parametrize("preset", ["none", "flips", "dihedral"])
def test_identity_model_returns_the_input_exactly(preset):
    x = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tta_predictor(lambda t: t, preset)(x), x)


def test_tta_through_the_tiler_is_exact_for_x_plus_1():
    img = np.random.default_rng(0).random((3, 45, 61)).astype(np.float32)
    out = predict_tiled(tta_predictor(lambda t: t + 1, "dihedral"), img, tile=32, overlap=8, batch_size=3)
    np.testing.assert_allclose(out, img + 1, atol=1e-6)


def test_dihedral_tta_makes_any_predictor_equivariant():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)  # a generic, non-symmetric filter
    f = tta_predictor(lambda t: conv(t).detach(), "dihedral")
    x = torch.rand(1, 1, 12, 12)
    for n in DIHEDRAL:
        torch.testing.assert_close(f(_dihedral(x, n)), _dihedral(f(x), n), atol=1e-5, rtol=0)
    assert not torch.allclose(conv(x.flip(-1)).detach(), conv(x).detach().flip(-1))  # the raw filter is not


def test_unknown_transform_is_rejected():
    with pytest.raises(ValueError, match="unknown TTA transform"):
        tta_predictor(lambda t: t, ("identity", "mirror"))
