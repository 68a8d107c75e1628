"""Tests of histoflow.synthetic.fibres: the synthetic H&E muscle fibre generator (the pipeline's ground truth)."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage as ndi

from histoflow.synthetic.fibres import (
    FibreParams,
    _image_seed,
    demo_stems,
    make_demo_dataset,
    make_fibre_image,
)

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """Three default 256 x 256 images with their labels (generated once)."""
    return [make_fibre_image(seed) for seed in SEEDS]


def _interior_ids(labels: np.ndarray) -> np.ndarray:
    """Ids of the fibres that do not touch the image border."""
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    ids = np.arange(1, int(labels.max()) + 1)
    return ids[~np.isin(ids, border)]


def test_same_seed_is_byte_identical() -> None:
    img_a, lab_a = make_fibre_image(7)
    img_b, lab_b = make_fibre_image(7)
    assert img_a.tobytes() == img_b.tobytes()
    assert lab_a.tobytes() == lab_b.tobytes()


def test_different_seeds_differ(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    (img0, lab0), (img1, lab1) = samples[0], samples[1]
    assert not np.array_equal(img0, img1)
    assert not np.array_equal(lab0, lab1)


def test_dtypes_and_shapes() -> None:
    params = FibreParams(size=(96, 160), fibre_diameter=24.0)
    image, labels = make_fibre_image(3, params)
    assert image.shape == (96, 160, 3) and image.dtype == np.uint8
    assert labels.shape == (96, 160) and labels.dtype == np.int32


def test_size_list_is_normalised() -> None:
    assert FibreParams(size=[64, 80]).size == (64, 80)  # e.g. from a YAML config


def test_labels_are_contiguous(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for _, labels in samples:
        n = int(labels.max())
        assert n > 0
        np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))


def test_fibre_count_is_plausible(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    params = FibreParams()
    expected = params.size[0] * params.size[1] / (math.pi * params.fibre_diameter**2 / 4)
    for _, labels in samples:
        assert 0.5 * expected <= labels.max() <= 2.0 * expected


def test_fibres_never_touch(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for _, labels in samples:
        for a, b in (
            (labels[1:, :], labels[:-1, :]),  # vertical neighbours
            (labels[:, 1:], labels[:, :-1]),  # horizontal neighbours
            (labels[1:, 1:], labels[:-1, :-1]),  # diagonals
            (labels[1:, :-1], labels[:-1, 1:]),
        ):
            touching = (a > 0) & (b > 0) & (a != b)
            assert not touching.any()


def test_each_fibre_is_one_component(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for _, labels in samples:
        _, n_components = ndi.label(labels > 0)  # 4-connectivity
        assert n_components == labels.max()


def test_mean_fibre_area_matches_diameter(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    params = FibreParams()
    areas = []
    for _, labels in samples:
        counts = np.bincount(labels.ravel())
        areas.extend(counts[_interior_ids(labels)])
    expected = math.pi * params.fibre_diameter**2 / 4
    assert len(areas) >= 30
    assert 0.7 * expected <= np.mean(areas) <= 1.4 * expected


def test_boundary_colour_differs_from_fibre_interior(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for image, labels in samples:
        interior = ndi.binary_erosion(labels > 0, iterations=3)
        fibre_mean = image[interior].astype(float).mean(axis=0)
        boundary_mean = image[labels == 0].astype(float).mean(axis=0)
        assert np.linalg.norm(fibre_mean - boundary_mean) > 25.0
        # the boundary (endomysium / perimysium) is paler than the eosin-stained cytoplasm
        assert boundary_mean.sum() > fibre_mean.sum()
        # cytoplasm is pink: red above green
        assert fibre_mean[0] > fibre_mean[1] + 40


def test_nuclei_are_dark_and_controlled_by_parameter() -> None:
    params = FibreParams(size=(128, 128))
    image, _ = make_fibre_image(5, params)
    dark = image.astype(int).sum(axis=-1) < 300  # hematoxylin: dark purple
    assert dark.sum() > 20
    b = image[dark].astype(float).mean(axis=0)
    assert b[2] > b[1]  # blue-purple, not black or pink
    no_nuclei, _ = make_fibre_image(5, FibreParams(size=(128, 128), nuclei_per_fibre=0.0))
    assert (no_nuclei.astype(int).sum(axis=-1) < 300).sum() < 0.1 * dark.sum()


def test_make_demo_dataset_round_trip(tmp_path: Path) -> None:
    params = FibreParams(size=(64, 96), fibre_diameter=20.0, boundary_width=2.0)
    out_images, out_labels = tmp_path / "images", tmp_path / "labels"
    stems = make_demo_dataset(out_images, out_labels, n_images=2, seed=11, params=params)
    assert stems == demo_stems(2) == ["demo_000", "demo_001"]
    assert sorted(p.name for p in out_images.iterdir()) == ["demo_000.png", "demo_001.png"]
    assert sorted(p.name for p in out_labels.iterdir()) == ["demo_000.png", "demo_001.png"]  # no temp files
    generated = []
    for i, stem in enumerate(stems):
        image, labels = make_fibre_image(_image_seed(11, i), params)
        read_image = iio.imread(out_images / f"{stem}.png")
        read_labels = iio.imread(out_labels / f"{stem}.png")
        assert read_image.dtype == np.uint8 and read_labels.dtype == np.uint16
        np.testing.assert_array_equal(read_image, image)
        np.testing.assert_array_equal(read_labels, labels)
        generated.append(image)
    assert not np.array_equal(generated[0], generated[1])


def test_make_demo_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="different folders"):
        make_demo_dataset(tmp_path, tmp_path, n_images=1, seed=0, params=FibreParams(size=(32, 32)))
    with pytest.raises(ValueError, match="n_images"):
        make_demo_dataset(tmp_path / "a", tmp_path / "b", n_images=-1, seed=0, params=FibreParams())
    with pytest.raises(ValueError, match="seed"):
        make_demo_dataset(tmp_path / "a", tmp_path / "b", n_images=1, seed=-3, params=FibreParams())


def test_demo_stems() -> None:
    assert demo_stems(0) == []
    assert demo_stems(3) == ["demo_000", "demo_001", "demo_002"]
    assert demo_stems(1001)[-1] == "demo_1000"
    with pytest.raises(ValueError, match="n_images"):
        demo_stems(-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (16, 256)}, "size"),
        ({"size": (256,)}, "size"),
        ({"size": (64.5, 64)}, "size"),
        ({"fibre_diameter": -5.0}, "fibre_diameter"),
        ({"fibre_diameter": 4.0}, "fibre_diameter"),
        ({"diameter_cv": -0.1}, "diameter_cv"),
        ({"boundary_width": 0.0}, "boundary_width"),
        ({"boundary_width": 20.0}, "boundary_width"),
        ({"gap_fraction": 1.5}, "gap_fraction"),
        ({"nuclei_per_fibre": -1.0}, "nuclei_per_fibre"),
        ({"stain_jitter": 2.0}, "stain_jitter"),
        ({"illumination": -0.1}, "illumination"),
        ({"noise": float("nan")}, "noise"),
    ],
)
def test_bad_params_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FibreParams(**kwargs)


def test_bad_seed_raises() -> None:
    with pytest.raises(ValueError, match="seed"):
        make_fibre_image(-1)
    with pytest.raises(ValueError, match="seed"):
        make_fibre_image(1.5)  # type: ignore[arg-type]
