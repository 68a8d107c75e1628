"""Augmentation: image and every target get the same transform; labels stay labels; presets parse."""

from __future__ import annotations

import pytest
import torch

from histoflow.augment import PRESETS, AugmentConfig, augment, augment_config, median3
from histoflow.train import TrainConfig


def _dihedral(t: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(t.flip(-1) if c & 4 else t, c & 3, dims=(-2, -1)) for c in range(8)]


def test_dihedral_preset_is_exact_and_aligned():
    gen = torch.Generator().manual_seed(0)
    n, size = 32, 9
    image = torch.stack([torch.randperm(3 * size * size, generator=gen).float() for _ in range(n)])
    image = image.reshape(n, 3, size, size) / (3 * size * size)
    label = (image[:, :1] > 0.5).float()
    weight = torch.arange(n * size * size, dtype=torch.float32).reshape(n, 1, size, size)
    before = (image.clone(), label.clone(), weight.clone())
    img_a, (lab_a, w_a) = augment(image, [label, weight], PRESETS["dihedral"], torch.Generator().manual_seed(3))
    for a, b in zip((image, label, weight), before, strict=True):
        assert torch.equal(a, b)  # inputs untouched
    assert torch.equal(lab_a, (img_a[:, :1] > 0.5).float())
    codes = []
    for i in range(n):
        matches = [c for c, t in enumerate(_dihedral(image[i])) if torch.equal(t, img_a[i])]
        assert len(matches) == 1  # an exact dihedral transform, no interpolation
        assert torch.equal(w_a[i], _dihedral(weight[i])[matches[0]])  # the same one for the targets
        codes.append(matches[0])
    assert len(set(codes)) >= 6
    again = augment(image, [label, weight], PRESETS["dihedral"], torch.Generator().manual_seed(3))
    assert torch.equal(again[0], img_a) and torch.equal(again[1][1], w_a)


def _block_image(n: int = 6, size: int = 64):
    """Instance labels made of 8×8 blocks (ids 1..64) and an image whose channels encode the id."""
    ids = torch.arange(1, 65, dtype=torch.int64).reshape(1, 1, 8, 8)
    labels = ids.repeat_interleave(size // 8, -1).repeat_interleave(size // 8, -2).repeat(n, 1, 1, 1)
    image = (labels.float() / 64).repeat(1, 3, 1, 1)
    return image, labels


@pytest.mark.parametrize("preset", ["glas_unet", "rescrnet"])
def test_continuous_transforms_keep_image_and_labels_aligned(preset):
    cfg = augment_config({"preset": preset, "noise_p": 0.0, "blur_sharpen_p": 0.0, "padding": "zeros"})
    image, labels = _block_image()
    weights = torch.ones(labels.shape)
    img_a, (lab_a, w_a) = augment(image, [labels, weights], cfg, torch.Generator().manual_seed(1))
    assert lab_a.dtype == torch.int64 and set(lab_a.unique().tolist()) <= set(range(65))
    # Where the warped labels are locally constant (3x3), the bilinear image must encode that id (up to
    # a sliver of a neighbouring block in a bilinear 2x2 footprint: < 0.05 of one id step).
    pad = torch.nn.functional.pad(lab_a.float(), (1, 1, 1, 1), value=-1.0)  # the patch border is not flat
    win = pad.unfold(2, 3, 1).unfold(3, 3, 1)
    flat = (win.amax(dim=(-1, -2)) == win.amin(dim=(-1, -2))) & (lab_a > 0)
    assert flat.float().mean() > 0.3
    torch.testing.assert_close(img_a[:, :1][flat] * 64, lab_a[flat].float(), atol=0.05, rtol=0)
    # Pixels that came from outside the patch get weight 0 (ignored by the loss) and label 0.
    assert torch.equal((w_a == 0), (lab_a == 0))
    assert not torch.equal(lab_a, labels)  # something actually moved


def test_elastic_displacement_strength_follows_alpha():
    image, labels = _block_image(n=4)
    moved = []
    for alpha in (15.0, 60.0):
        cfg = AugmentConfig(elastic_p=1.0, elastic_alpha=(alpha, alpha), elastic_sigma=3.0)
        _, (lab_a,) = augment(image, [labels], cfg, torch.Generator().manual_seed(0))
        moved.append((lab_a != labels).float().mean().item())
    assert 0 < moved[0] < moved[1]


def test_intensity_only_presets_leave_targets_alone():
    image, labels = _block_image(n=4)
    cfg = AugmentConfig(noise_p=1.0, brightness_p=1.0, contrast_p=1.0, hue_p=1.0, stain_p=1.0, blur_sharpen_p=1.0)
    img_a, (lab_a,) = augment(image, [labels], cfg, torch.Generator().manual_seed(0))
    assert torch.equal(lab_a, labels)
    assert not torch.allclose(img_a, image) and img_a.min() >= 0 and img_a.max() <= 1


def test_stain_jitter_keeps_white_background_white():
    white = torch.ones(2, 3, 8, 8)
    out, _ = augment(white, [], AugmentConfig(stain_p=1.0, stain_sigma=0.3), torch.Generator().manual_seed(0))
    assert torch.allclose(out, white, atol=0.02)


def test_presets_parse_from_config():
    glas = augment_config("glas_unet")
    assert (glas.crop_fraction, glas.crop_p, glas.flip_p, glas.rotate_deg, glas.elastic_p) == (0.75, 0.5, 0.5,
                                                                                                 (-90.0, 90.0), 1.0)
    assert (glas.elastic_alpha, glas.elastic_sigma, glas.noise_sd, glas.noise_p) == ((5.0, 10.0), 3.0,
                                                                                      (0.01, 0.03), 0.2)
    assert augment_config("rescrnet").repeats == 15
    assert augment_config(True) == PRESETS["dihedral"] and augment_config(False) == PRESETS["none"]
    over = augment_config({"preset": "glas_unet", "rotate_p": 0.9, "rotate_deg": [-10, 10]})
    assert over.rotate_p == 0.9 and over.rotate_deg == (-10, 10) and over.elastic_p == 1.0
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        augment_config("glass_unet")
    with pytest.raises(ValueError, match="unknown augmentation field"):
        augment_config({"preset": "none", "rotaet_p": 1})
    with pytest.raises(ValueError):
        TrainConfig(augment="bogus")


def test_median_blur_removes_a_speck_and_keeps_a_step_edge():
    x = torch.zeros(1, 2, 7, 8)
    x[0, 0, 3, 3] = 1.0  # an isolated pixel: a mean filter would smear it to 1/9 around
    x[0, 1, :, 4:] = 1.0  # a vertical step edge
    m = median3(x)
    assert m[0, 0].abs().max() == 0
    torch.testing.assert_close(m[0, 1], x[0, 1])
    ramp = torch.arange(12.0).view(1, 1, 3, 4)  # the median of a 3 x 3 window of a linear ramp is its centre
    assert m.shape == x.shape and median3(ramp)[0, 0, 1, 1:3].tolist() == [5.0, 6.0]
