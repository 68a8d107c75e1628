"""The working resolution (patches.scale): resizing helpers, the patch store at a scale, and prediction back in
the images' own pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoflow.config import ConfigError, check_models, validate_config
from histoflow.io import write_image, write_labels
from histoflow.patches import extract_dataset_patches, read_patch_group, read_store_attrs
from histoflow.resample import resize_image, resize_labels, resize_probability, scaled_shape, working_shape


def test_scaled_shape_rounds_each_side_and_keeps_one_pixel():
    assert scaled_shape((522, 775, 3), 0.5) == (261, 388)  # 387.5 rounds to even: 388
    assert scaled_shape((3, 2), 0.1) == (1, 1)
    assert scaled_shape((10, 20), 2.0) == (20, 40)


def test_resize_image_keeps_dtype_and_constant_regions():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = (200, 100, 50)  # two flat halves
    half = resize_image(img, (20, 30))
    assert half.dtype == np.uint8 and half.shape == (20, 30, 3)
    # away from the edge between the halves, a flat region stays exactly flat
    assert (half[:, :12] == (200, 100, 50)).all() and (half[:, 18:] == 0).all()
    assert resize_image(img, (40, 60)) is img  # the identity is free


def test_resize_image_anti_aliases_when_shrinking():
    # a one-pixel checkerboard has no content at half resolution: anti-aliased it becomes its mean (127.5), not
    # one of its two phases (all 0 or all 255, which plain sampling would give)
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    half = resize_image(board, (32, 32))
    assert abs(float(half[4:-4, 4:-4].mean()) - 127.5) < 2 and half[4:-4, 4:-4].std() < 10


def test_resize_labels_only_uses_input_values():
    labels = np.zeros((50, 50), np.int32)
    labels[5:25, 5:25] = 7
    labels[30:45, 28:48] = 300
    half = resize_labels(labels, (25, 25))
    assert half.dtype == np.int32 and set(np.unique(half)) == {0, 7, 300}
    # the 20 x 20 square becomes 10 x 10 and the 15 x 20 block 7 or 8 x 10 (nearest neighbour)
    assert (half == 7).sum() == 100 and (half == 300).sum() in (70, 80)


def test_resize_probability_back_to_the_image_size():
    prob = np.full((13, 20), 0.25, np.float32)
    up = resize_probability(prob, (26, 40))
    assert up.dtype == np.float32 and up.shape == (26, 40) and np.allclose(up, 0.25)
    classes = np.random.default_rng(0).dirichlet([1, 1, 1], size=(13, 20)).transpose(2, 0, 1).astype(np.float32)
    up = resize_probability(classes, (26, 40))
    assert up.shape == (3, 26, 40) and np.allclose(up.sum(0), 1.0, atol=1e-5)  # bilinear keeps the sum


def _dataset(tmp_path, n=2, side=64):
    rng = np.random.default_rng(0)
    images, masks = {}, {}
    (tmp_path / "img").mkdir()
    for i in range(n):
        image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        labels = np.zeros((side, side), np.int32)
        labels[8:40, 8:40] = 1  # a 32 x 32 object: 16 x 16 at half resolution
        labels[44:60, 44:60] = 2
        write_image(tmp_path / "img" / f"s{i}.png", image)
        write_labels(tmp_path / f"m{i}.png", labels)
        images[f"s{i}"], masks[f"s{i}"] = str(tmp_path / "img" / f"s{i}.png"), str(tmp_path / f"m{i}.png")
    return {"d": {"train": sorted(images), "images": images, "masks": masks, "mask_type": "instance"}}


def test_patch_store_at_half_resolution(tmp_path):
    datasets = _dataset(tmp_path)
    cfg = validate_config({"patches": {"size": 32, "mode": "grid", "overlap": 0, "val_fraction": 0.5,
                                       "scale": 0.5}})["patches"]
    store = tmp_path / "p.h5"
    counts, _ = extract_dataset_patches(datasets, {"d": tmp_path / "img"}, cfg, 0, store)
    assert read_store_attrs(store)["scale"] == 0.5
    # each 64 x 64 image is 32 x 32 at half resolution: exactly one 32 px grid patch per image
    assert counts == {"train": 1, "val": 1}
    train = read_patch_group(store, "train", ("images", "masks"))
    assert train["images"].shape[1:3] == (32, 32)
    assert train["masks"].sum() == 16 * 16 + 8 * 8  # the two objects at half their side


def test_scale_is_refused_where_it_cannot_apply():
    check_models(validate_config({"patches": {"scale": 0.5}, "models": {"u": {"arch": "unet"}}}))
    with pytest.raises(ConfigError, match=r"models.m: mask_rcnn .* patches.scale: 0.5"):
        check_models(validate_config({"patches": {"scale": 0.5}, "models": {"m": {"arch": "mask_rcnn"}}}))
    with pytest.raises(ConfigError, match=r"patches.scale: 0.5 - slides"):
        check_models(validate_config({"patches": {"scale": 0.5}, "slides": {"images": {"s": "s.svs"}, "model": "u"},
                                      "models": {"u": {"arch": "unet"}}}))
    with pytest.raises(ConfigError, match="patches.scale"):
        validate_config({"patches": {"scale": 0}})
    with pytest.raises(ConfigError, match=r"models.m: mask_rcnn .* patches.long_side: 512"):
        check_models(validate_config({"patches": {"long_side": 512}, "models": {"m": {"arch": "mask_rcnn"}}}))
    with pytest.raises(ConfigError, match=r"long_side: 512 .* patches.scale: 0.5"):
        check_models(validate_config({"patches": {"long_side": 512, "scale": 0.5}, "models": {"u": {"arch": "unet"}}}))


def test_long_side_gives_each_image_its_own_scale():
    """The GlaS U-Net paper resizes every image to 512 px: a 522 x 775 GlaS image becomes 345 x 512."""
    assert working_shape((522, 775, 3), long_side=512) == (345, 512)  # 522 * 512 / 775 = 344.9
    assert working_shape((430, 567), long_side=512) == (388, 512)  # 430 * 512 / 567 = 388.3
    assert working_shape((100, 50), long_side=512) == (512, 256)  # smaller images are enlarged
    assert working_shape((522, 775), scale=0.5) == (261, 388)  # without long_side: the one scale (387.5 -> 388)


def test_patch_store_with_long_side(tmp_path):
    datasets = _dataset(tmp_path)  # 64 x 64 images
    cfg = validate_config({"patches": {"size": 32, "mode": "grid", "overlap": 0, "val_fraction": 0.5,
                                       "long_side": 32}})["patches"]
    store = tmp_path / "p.h5"
    counts, _ = extract_dataset_patches(datasets, {"d": tmp_path / "img"}, cfg, 0, store)
    assert read_store_attrs(store)["long_side"] == 32 and counts == {"train": 1, "val": 1}
    assert read_patch_group(store, "train", ("masks",))["masks"].sum() == 16 * 16 + 8 * 8


def test_predict_at_the_training_scale_writes_the_image_size(tmp_path, monkeypatch):
    """run_predict with a spec trained at scale 0.5: the network sees the half-size image, the probability map
    comes back at the full size (and an all-constant network gives the same constant everywhere)."""
    import torch

    from histoflow.models import build_model, save_model
    from histoflow.stages.predict import run_predict

    model = build_model("unet", in_channels=3, out_channels=1, base_width=4, depth=2)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    spec = {"arch": "unet", "kwargs": {"in_channels": 3, "out_channels": 1, "base_width": 4, "depth": 2},
            "threshold": 0.5, "target": "masks", "boundary_width": 1, "classes": [], "scale": 0.5}
    save_model(model, spec, tmp_path / "model")
    (tmp_path / "norm").mkdir()
    write_image(tmp_path / "norm" / "a.png", np.full((90, 70, 3), 128, np.uint8))
    predict = {"tile": 32, "overlap": 8, "batch_size": 4, "blend": "gaussian", "tta": "none", "backend": "torch",
               "precision": "fp32"}
    import histoflow.tiling

    seen, tiled = [], histoflow.tiling.predict_tiled
    monkeypatch.setattr(histoflow.tiling, "predict_tiled",
                        lambda predictor, x, **kw: seen.append(tuple(x.shape)) or tiled(predictor, x, **kw))
    run_predict(tmp_path / "model", tmp_path / "norm", ["a"], predict, "cpu", tmp_path / "out")
    from histoflow.io import read_image

    prob = read_image(tmp_path / "out" / "a.tif")
    assert prob.shape == (90, 70) and np.allclose(prob, 0.5)  # sigmoid(0) everywhere, at the image's size
    assert seen == [(3, 45, 35)]  # the network saw the image at half its size
    assert json.loads((tmp_path / "out" / "backend.json").read_text())["backend"] == "torch"
    seen.clear()
    save_model(model, {**spec, "scale": 1.0, "long_side": 45}, tmp_path / "model_ls")
    run_predict(tmp_path / "model_ls", tmp_path / "norm", ["a"], predict, "cpu", tmp_path / "out_ls")
    assert seen == [(3, 45, 35)]  # long side 90 -> 45
    assert read_image(tmp_path / "out_ls" / "a.tif").shape == (90, 70)


def test_tiles_of_job_counts_the_tiles_at_the_working_resolution(tmp_path):
    """Tile 64, overlap 16 (stride 48; the last tile moves back to end at the edge, a side under 64 is padded):
    100 px -> starts 0, 36 (2); 300 px -> 0, 48, 96, 144, 192, 236 (6); 64 and 40 px -> 1 each.
    At scale 0.5: 50 -> 1, 150 -> 0, 48, 86 (3), 32 and 20 -> 1 each."""
    from histoflow.stages.predict import tiles_of_job

    for stem, shape in (("a", (100, 300)), ("b", (64, 64)), ("c", (40, 40))):
        write_image(tmp_path / f"{stem}.png", np.zeros((*shape, 3), np.uint8))
    predict = {"tile": 64, "overlap": 16}
    assert tiles_of_job(tmp_path, ["a", "b", "c"], predict) == 2 * 6 + 1 + 1
    assert tiles_of_job(tmp_path, ["a", "b", "c"], predict, scale=0.5) == 1 * 3 + 1 + 1
