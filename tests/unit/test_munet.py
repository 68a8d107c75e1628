"""Tests for histoflow.models.munet: the multi-field-of-view U-Net (M-Unet).

Geometry, shape and argument checks, centre alignment of the branches, the receptive field reaching
the far context, gradients, save/load, and a tiny task that only the far context can solve.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from histoflow.models import available_models, build_model, load_model, save_model
from histoflow.models.munet import MUNet
from histoflow.models.unet import UNet

TINY = {"base_width": 4, "depth": 2, "feature_dim": 8}




def tiny(**kw) -> MUNet:
    torch.manual_seed(0)
    model = build_model("munet", **{**TINY, **kw})
    assert isinstance(model, MUNet)
    return model


def _chebyshev_from_centre(side: int) -> torch.Tensor:
    """(side, side) distance of each pixel (its far edge) from the tile centre: 1 for the central 2×2."""
    r = (torch.arange(side) - side // 2).abs()
    r = torch.maximum(r, (torch.arange(side) - (side // 2 - 1)).abs())
    return torch.maximum(r[:, None], r[None, :])


# --- registry, shapes, arguments ---------------------------------------------------------------


def test_registry_builds_munet_with_defaults():
    assert "munet" in available_models()
    model = build_model("munet")
    assert isinstance(model, MUNet)
    assert model.scales == (1, 2, 4)
    assert model.context_factor == 4
    assert model.size_multiple == 4 * 8  # f * max(2**depth, 2f) with depth=3, f=4
    assert all(isinstance(b, UNet) for b in model.branches)
    assert len(model.branches) == 3


@pytest.mark.parametrize(
    ("kw", "sides"),
    [
        ({"scales": (1, 2, 4)}, (32, 64, 96)),  # multiple 4 * max(4, 8) = 32
        ({"scales": (1, 2)}, (8, 24, 40)),  # 2 * max(4, 4) = 8
        ({"scales": (1,)}, (4, 12)),  # no context: a plain U-Net of the tile, 2**depth
        ({"scales": (1, 4), "depth": 1}, (32, 64)),  # 4 * max(2, 8) = 32
        ({"scales": (1, 2, 4, 8), "depth": 1}, (128,)),  # 8 * max(2, 16) = 128
    ],
)
def test_output_is_the_centre_region(kw, sides):
    model = tiny(in_channels=3, out_channels=2, **kw).eval()
    f = max(kw["scales"])
    assert model.context_factor == f
    for side in sides:
        assert model.output_size(side) == side // f
        x = torch.rand(2, 3, side, side)
        with torch.no_grad():
            y = model(x)
            feats = model.forward_features(x)
            branches = model.branch_features(x)
        assert y.shape == (2, 2, side // f, side // f)
        assert feats.shape == (2, TINY["feature_dim"], side // f, side // f)
        assert len(branches) == len(kw["scales"])
        assert all(b.shape == (2, TINY["base_width"], side // f, side // f) for b in branches)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("feature_dim", [1, 5, 32])
def test_forward_features_has_feature_dim_channels(feature_dim):
    model = tiny(feature_dim=feature_dim).eval()
    with torch.no_grad():
        assert model.forward_features(torch.rand(1, 3, 32, 32)).shape == (1, feature_dim, 8, 8)


@pytest.mark.parametrize("side", [0, 8, 16, 24, 48, 33, 100])
def test_invalid_input_side_raises(side):
    model = tiny().eval()  # multiple is 32
    with pytest.raises(ValueError, match="multiple of 32"):
        model.output_size(side)
    if side > 0:
        with pytest.raises(ValueError, match="multiple of 32"):
            model(torch.rand(1, 3, side, side))


@pytest.mark.parametrize("shape", [(1, 3, 32, 64), (3, 32, 32), (1, 1, 3, 32, 32)])
def test_non_square_or_unbatched_input_raises(shape):
    with pytest.raises(ValueError, match="square"):
        tiny()(torch.rand(*shape))


@pytest.mark.parametrize(
    "scales",
    [(), (2, 4), (1, 3), (1, 2, 6), (4, 2, 1), (1, 4, 2), (1, 1, 2), (1, 2.0), (True, 2), (0, 1), (-1, 1)],
)
def test_bad_scales_raise(scales):
    with pytest.raises(ValueError, match="scales"):
        build_model("munet", scales=scales, **TINY)


@pytest.mark.parametrize(
    "kw", [{"base_width": 0}, {"depth": 0}, {"feature_dim": 0}, {"in_channels": 0}, {"out_channels": 2.5}]
)
def test_bad_widths_raise(kw):
    with pytest.raises(ValueError):
        build_model("munet", **{**TINY, **kw})


def test_unknown_keyword_is_a_value_error():
    with pytest.raises(ValueError, match="bad parameters"):
        build_model("munet", widht=3)


# --- geometry: what each branch sees -----------------------------------------------------------


def test_branch_upsampling_equals_upsampling_the_whole_map_then_cropping():
    """The halo crop + up-sample + trim in ``branch_features`` is exact, border pixels included."""
    model = tiny().eval()
    side, p = 64, 16
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        got = model.branch_features(x)
        for s, branch, feat in zip(model.scales, model.branches, got, strict=True):
            a = (side - p * s) // 2
            full = branch(F.avg_pool2d(x[..., a : a + p * s, a : a + p * s], s))
            full = F.interpolate(full, scale_factor=s, mode="bilinear", align_corners=False)
            b = (p * s - p) // 2
            torch.testing.assert_close(feat, full[..., b : b + p, b : b + p], atol=1e-6, rtol=1e-6)


def test_scale_one_branch_is_the_unet_of_the_output_region():
    model = tiny().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.branch_features(x)[0], model.branches[0](x[..., 24:40, 24:40]))


def test_centre_alignment_each_branch_sees_its_centred_field_of_view():
    """f=4, S=64: scale 1 sees the centred 16², scale 2 the centred 32², scale 4 the whole tile."""
    model = tiny().eval()
    side = 64
    dist = _chebyshev_from_centre(side)
    torch.manual_seed(1)
    x = torch.rand(1, 3, side, side)
    with torch.no_grad():
        ref = model.branch_features(x)
        for radius, changed in ((side // 2, [False, False, True]), (side // 4, [False, True, True])):
            # perturb only the ring radius/2 < d <= radius (outside the next smaller field of view)
            ring = (dist > radius // 2) & (dist <= radius)
            x2 = torch.where(ring, torch.rand_like(x), x)
            got = model.branch_features(x2)
            assert [not torch.equal(g, r) for g, r in zip(got, ref, strict=True)] == changed, radius
        x3 = torch.where(dist <= side // 8, torch.rand_like(x), x)  # inside the output region
        assert all(not torch.equal(g, r) for g, r in zip(model.branch_features(x3), ref, strict=True))


def test_far_context_reaches_the_output_only_through_the_widest_branch(monkeypatch):
    model = tiny().eval()
    side = 64
    far = _chebyshev_from_centre(side) > side // 4  # outside the centred S/2 region
    torch.manual_seed(2)
    x = torch.rand(2, 3, side, side)
    x2 = torch.where(far, torch.rand_like(x), x)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x2))  # the far context does matter ...
        widest = model.branches[-1]
        monkeypatch.setattr(widest, "forward", lambda v: torch.zeros(v.shape[0], TINY["base_width"], 16, 16))
        torch.testing.assert_close(model(x), model(x2), atol=0, rtol=0)  # ... but only via scale 4


def test_receptive_field_reaches_far_context_unlike_a_plain_unet():
    """d(central output pixel)/d(input) is non-zero far beyond S/(2f) from the centre, to the border."""
    side, f = 64, 4
    p = side // f
    dist = _chebyshev_from_centre(side)
    model = tiny().eval()
    x = torch.rand(1, 3, side, side, requires_grad=True)
    model(x)[0, 0, p // 2, p // 2].backward()
    grad = x.grad.abs().sum(1)[0]
    assert grad[dist <= p // 2].sum() > 0
    assert grad[dist > p // 2].sum() > 0  # beyond the output region (half side S/(2f))
    assert grad[dist > side // 4].sum() > 0  # beyond scale 2's field of view
    border = dist > side // 2 - f  # the outermost ring of pooled pixels of the tile
    assert (grad[border] > 0).float().mean() > 0.5

    torch.manual_seed(0)
    plain = UNet(3, 1, base_width=TINY["base_width"], depth=TINY["depth"]).eval()
    x = torch.rand(1, 3, side, side, requires_grad=True)
    a = (side - p) // 2
    plain(x[..., a : a + p, a : a + p])[0, 0, p // 2, p // 2].backward()
    grad = x.grad.abs().sum(1)[0]
    assert grad[dist <= p // 2].sum() > 0
    assert grad[dist > p // 2].sum() == 0  # a U-Net of the output-size crop cannot see any context


# --- training plumbing -------------------------------------------------------------------------


# Without batch norm, width 4 can start with a whole branch behind dead ReLUs (seed 0 does): use 8.
@pytest.mark.parametrize("kw", [{}, {"norm": False, "base_width": 8}, {"scales": (1, 2), "out_channels": 3}])
def test_backward_gives_finite_gradients_on_all_parameters(kw):
    model = tiny(**kw).train()
    side = model.size_multiple
    loss = model(torch.rand(2, 3, side, side)).square().mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_batch_items_are_independent_in_eval_mode():
    model = tiny().eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.cat([model(x[i : i + 1]) for i in range(3)]))


def test_save_load_round_trip(tmp_path):
    kwargs = {"in_channels": 3, "out_channels": 2, "scales": (1, 2, 4), **TINY}
    torch.manual_seed(3)
    model = build_model("munet", **kwargs)
    model.train()
    model(torch.rand(4, 3, 32, 32))  # move the batch-norm running statistics away from their init
    model.eval()
    save_model(model, {"arch": "munet", "kwargs": kwargs, "tile_size": 64}, tmp_path)
    loaded, spec = load_model(tmp_path)
    assert isinstance(loaded, MUNet) and not loaded.training
    assert spec["kwargs"]["scales"] == [1, 2, 4]  # JSON list; the constructor accepts it
    assert loaded.scales == (1, 2, 4)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
        torch.testing.assert_close(loaded.forward_features(x), model.forward_features(x), atol=0, rtol=0)


# --- it learns from the far context ------------------------------------------------------------


def _ring_batch(n: int, gen: torch.Generator, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey noise tiles; label 1 (everywhere in the output) iff a bright ring lies in the far context.

    The centred S/2 region is constant grey in every tile, so only the scale-4 branch (f=4) can
    tell the classes apart: anything that sees only the output region is at chance.
    """
    c = torch.arange(side) + 0.5 - side / 2
    rad = (c[:, None] ** 2 + c[None, :] ** 2).sqrt()
    ring = ((rad >= 10) & (rad <= 14)).float()  # outside the centred 16² region, inside the tile
    label = torch.randint(0, 2, (n,), generator=gen).float()
    x = 0.5 + 0.1 * torch.randn(n, 1, side, side, generator=gen) + 0.4 * label[:, None, None, None] * ring
    q = side // 4
    x[..., q : side - q, q : side - q] = 0.5
    y = label[:, None, None, None].expand(n, 1, side // 4, side // 4)
    return x.expand(n, 3, side, side).contiguous(), y


@pytest.mark.slow
def test_learns_a_label_that_only_the_far_context_determines():
    torch.manual_seed(0)
    model = build_model("munet", **TINY)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        x, y = _ring_batch(16, gen)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _ring_batch(64, torch.Generator().manual_seed(1000))
    assert 0.3 < y[:, 0, 0, 0].mean() < 0.7
    assert torch.all(x[..., 8:24, 8:24] == 0.5)  # the output region carries no information
    with torch.no_grad():
        acc = ((model(x) > 0).float() == y).float().mean().item()
    assert acc > 0.9, acc


def test_separate_branches_train_each_branch_on_its_own_loss_only():
    """separate_branches: the fused loss reaches the fusion and head only; branch k's loss reaches branch k only.

    Known answer from the stop-gradient: d(fused)/d(branch parameters) = 0 and d(side_k)/d(branch j != k) = 0,
    while without the option the fused loss reaches every branch.
    """
    torch.manual_seed(0)
    model = MUNet(scales=(1, 2), base_width=4, depth=2, feature_dim=4, separate_branches=True).train()
    x = torch.rand(2, 3, 32, 32)
    fused, sides = model(x)
    assert fused.shape == (2, 1, 16, 16) and [s.shape for s in sides] == [(2, 1, 16, 16)] * 2

    def grads(loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in model.named_parameters()}

    g = grads(fused.square().mean())
    assert not any(v for n, v in g.items() if n.startswith(("branches.", "branch_heads."))), g
    assert all(v for n, v in g.items() if n.startswith(("fuse.0", "head."))), g
    g = grads(sides[1].square().mean())
    assert any(v for n, v in g.items() if n.startswith("branches.1.")) and g["branch_heads.1.weight"]
    assert not any(v for n, v in g.items() if n.startswith(("branches.0.", "branch_heads.0.", "fuse.", "head.")))
    model.eval()
    assert model(x).shape == (2, 1, 16, 16)  # inference: the fused logits only, as a joint M-Unet
    joint = MUNet(scales=(1, 2), base_width=4, depth=2, feature_dim=4).train()
    joint(x).square().mean().backward()
    assert all(p.grad is not None for n, p in joint.named_parameters() if n.startswith("branches."))
