"""Tests for histoflow.stain on synthetic H&E images with known stain vectors.

Images are composed with Beer-Lambert in the module's OD convention, ``I = 256 exp(-OD) - 1``,
from smooth concentration maps: an eosin-stained disk of tissue with hematoxylin nuclei (pure
hematoxylin in their cores, mixtures at their rims), white background, plus Gaussian noise of
1 grey level, rounded to uint8.
"""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pytest
from skimage import color

from histoflow import stain

H_TRUE = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E_TRUE = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])
# a differently stained lab: bluer hematoxylin, more purple eosin
H_OTHER = np.array([0.55, 0.76, 0.35]) / np.linalg.norm([0.55, 0.76, 0.35])
E_OTHER = np.array([0.20, 0.95, 0.23]) / np.linalg.norm([0.20, 0.95, 0.23])

MAX_ANGLE_DEG = 3.0


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def concentration_maps(size: int = 128, seed: int = 0, n_nuclei: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin concentrations, each (size, size) float64, zero outside a tissue disk."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre, radius = (size - 1) / 2, 0.42 * size
    tissue = (yy - centre) ** 2 + (xx - centre) ** 2 < radius**2
    eosin = 2.6 + 0.4 * np.sin(3 * np.pi * xx / size) * np.cos(2 * np.pi * yy / size)  # in [2.2, 3.0]
    nuclei = np.zeros((size, size))
    angles = rng.uniform(0, 2 * np.pi, n_nuclei)
    dists = radius * np.sqrt(rng.uniform(0, 0.8, n_nuclei))
    for a, d in zip(angles, dists, strict=True):
        cy, cx = centre + d * np.sin(a), centre + d * np.cos(a)
        nuclei = np.maximum(nuclei, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2)))
    share = np.minimum(1.0, 1.6 * nuclei) * tissue  # 1 in nucleus cores
    return 1.6 * share, eosin * (1 - share) * tissue


def compose(h: np.ndarray, e: np.ndarray, h_vec: np.ndarray, e_vec: np.ndarray, seed: int = 0) -> np.ndarray:
    """Beer-Lambert RGB uint8 (H, W, 3) from concentration maps and unit stain vectors."""
    od = h[..., None] * h_vec + e[..., None] * e_vec
    intensity = 256.0 * np.exp(-od) - 1.0
    intensity += np.random.default_rng(seed + 100).normal(0.0, 1.0, intensity.shape)
    return np.clip(np.rint(intensity), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_a() -> np.ndarray:
    h, e = concentration_maps(seed=0)
    return compose(h, e, H_TRUE, E_TRUE, seed=0)


@pytest.fixture(scope="module")
def image_b() -> np.ndarray:
    """Other tissue, other stain vectors, stronger hematoxylin and weaker eosin."""
    h, e = concentration_maps(seed=1)
    return compose(1.3 * h, 0.85 * e, H_OTHER, E_OTHER, seed=1)


@pytest.fixture()
def background() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.clip(np.rint(248 + rng.normal(0, 2, (64, 64, 3))), 0, 255).astype(np.uint8)


# ---- Macenko -------------------------------------------------------------------------------


def test_macenko_recovers_known_stain_vectors_h_first(image_a: np.ndarray) -> None:
    norm = stain.MacenkoNormalizer().fit(image_a)
    s = norm.stain_matrix
    assert s.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 1.0)
    assert angle_deg(s[0], H_TRUE) < MAX_ANGLE_DEG
    assert angle_deg(s[1], E_TRUE) < MAX_ANGLE_DEG
    # max concentrations close to the composed maxima (1.6 for H, ~3.0 for E)
    np.testing.assert_allclose(norm.max_concentrations, [1.6, 3.0], rtol=0.1)


def test_macenko_self_transform_is_near_identity(image_a: np.ndarray) -> None:
    norm = stain.MacenkoNormalizer().fit(image_a)
    out = norm.transform(image_a)
    assert out.dtype == np.uint8 and out.shape == image_a.shape
    diff = np.abs(out.astype(int) - image_a.astype(int))
    assert diff.mean() < 1.5  # only the noise off the stain plane is removed (noise sigma = 1)


def test_macenko_maps_other_stains_to_target(image_a: np.ndarray, image_b: np.ndarray) -> None:
    norm = stain.MacenkoNormalizer().fit(image_a)
    target = norm.stain_matrix
    before = np.array(norm.fit_source(image_b)["stain_matrix"])
    assert max(angle_deg(before[i], target[i]) for i in range(2)) > 3 * MAX_ANGLE_DEG  # test is meaningful
    out = norm.transform(image_b)
    after = norm.fit_source(out)
    assert after["tissue"] is True
    s_out = np.array(after["stain_matrix"])
    assert angle_deg(s_out[0], target[0]) < MAX_ANGLE_DEG
    assert angle_deg(s_out[1], target[1]) < MAX_ANGLE_DEG
    np.testing.assert_allclose(after["max_concentrations"], norm.max_concentrations, rtol=0.05)


def test_transform_before_fit_raises(image_a: np.ndarray) -> None:
    with pytest.raises(stain.NotFittedError, match="not fitted"):
        stain.MacenkoNormalizer().transform(image_a)
    with pytest.raises(ValueError, match="not fitted"):
        stain.ReinhardNormalizer().transform(image_a)


# ---- Reinhard ------------------------------------------------------------------------------


def test_reinhard_matches_target_lab_statistics(image_a: np.ndarray, image_b: np.ndarray) -> None:
    norm = stain.ReinhardNormalizer().fit(image_a)
    out = norm.transform(image_b)
    assert out.dtype == np.uint8 and out.shape == image_b.shape
    lab_a = color.rgb2lab(image_a).reshape(-1, 3)
    lab_b = color.rgb2lab(image_b).reshape(-1, 3)
    lab_out = color.rgb2lab(out).reshape(-1, 3)
    assert np.abs(lab_b.mean(0) - lab_a.mean(0)).max() > 3  # source really differs
    np.testing.assert_allclose(lab_out.mean(0), lab_a.mean(0), atol=1.0)  # LAB units
    np.testing.assert_allclose(lab_out.std(0), lab_a.std(0), rtol=0.05)


def test_reinhard_tissue_only_uses_tissue_statistics(image_a: np.ndarray) -> None:
    norm = stain.ReinhardNormalizer(tissue_only=True).fit(image_a)
    mask = stain.luminosity_tissue_mask(image_a)
    lab = color.rgb2lab(image_a)[mask]
    fitted = norm.to_dict()["fitted"]
    # LAB is computed in float32 (statistics accumulated in float64): float32 precision
    np.testing.assert_allclose(fitted["mean"], lab.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fitted["std"], lab.std(0), rtol=1e-5)


def test_fast_lab_matches_skimage() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (50_000, 3), dtype=np.uint8)
    rgb[:256] = np.arange(256, dtype=np.uint8)[:, None]  # greys, black and white included
    lab = np.stack(stain.colour._lab32(rgb), axis=1)
    expected = color.rgb2lab(rgb[None])[0]
    np.testing.assert_allclose(lab, expected, atol=2e-3)  # LAB units
    out = np.empty_like(rgb)
    stain.colour._lab32_to_rgb(*(lab[:, c].copy() for c in range(3)), out=out)
    assert np.abs(out.astype(int) - rgb).max() <= 1  # round trip, 8-bit
    shifted = expected + [5.0, -20.0, 30.0]  # partly out of gamut: clipped like skimage
    shifted[:, 0] = np.clip(shifted[:, 0], 0, 100)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.clip(np.rint(color.lab2rgb(shifted[None])[0] * 255), 0, 255)
    stain.colour._lab32_to_rgb(*(shifted[:, c].astype(np.float32) for c in range(3)), out=out)
    assert np.abs(out.astype(int) - ref).max() <= 1


# ---- serialisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,params",
    [
        ("macenko", {"beta": 0.12, "alpha": 2.0, "percentile": 98.0}),
        ("vahadane", {"regularizer": 0.05, "concentration_regularizer": 0.0, "max_pixels": 5000, "seed": 3}),
        ("reinhard", {"tissue_only": True}),
        ("none", {}),
    ],
)
def test_dict_and_file_round_trip(
    method: str, params: dict, image_a: np.ndarray, image_b: np.ndarray, tmp_path
) -> None:
    norm = stain.get_normalizer(method, **params).fit(image_a)
    expected = norm.transform(image_b)
    d = json.loads(json.dumps(norm.to_dict()))  # must be JSON-serialisable
    assert d["method"] == method
    for key, value in params.items():
        assert d["params"][key] == value
    again = stain.StainNormalizer.from_dict(d)
    assert type(again) is type(norm) and again.get_params() == norm.get_params()
    np.testing.assert_array_equal(again.transform(image_b), expected)

    path = stain.save_normalizer(norm, tmp_path / "sub" / "stain.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["stain.json"]  # no temp file left
    loaded = stain.load_normalizer(path)
    np.testing.assert_array_equal(loaded.transform(image_b), expected)


def test_from_dict_rejects_bad_input() -> None:
    good = stain.MacenkoNormalizer().to_dict()
    with pytest.raises(ValueError, match="'reinhard'"):
        stain.MacenkoNormalizer.from_dict({**good, "method": "reinhard"})
    with pytest.raises(ValueError, match="unknown parameter"):
        stain.StainNormalizer.from_dict({**good, "params": {"gamma": 1}})
    with pytest.raises(ValueError, match="shape"):
        stain.StainNormalizer.from_dict(
            {**good, "fitted": {"stain_matrix": [[1, 0, 0]], "max_concentrations": [1, 1]}}
        )


def test_load_normalizer_bad_json(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        stain.load_normalizer(path)


# ---- robustness ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["macenko", "vahadane", "reinhard"])
def test_background_passes_through_and_cannot_be_target(
    method: str, image_a: np.ndarray, background: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    norm = stain.get_normalizer(method).fit(image_a)
    with caplog.at_level(logging.WARNING, logger="histoflow.stain"):
        out = norm.transform(background)
    np.testing.assert_array_equal(out, background)
    assert any(r.levelno == logging.WARNING and "unchanged" in r.getMessage() for r in caplog.records)

    empty = np.zeros((0, 5, 3), np.uint8)
    assert norm.transform(empty).shape == (0, 5, 3)

    with pytest.raises(ValueError, match="no usable tissue.*another target"):
        stain.get_normalizer(method).fit(background)


def test_identity_returns_input(image_a: np.ndarray) -> None:
    norm = stain.get_normalizer("none")
    np.testing.assert_array_equal(norm.transform(image_a), image_a)
    grey = image_a[..., 0]
    np.testing.assert_array_equal(norm.fit(grey).transform(grey), np.repeat(grey[..., None], 3, axis=-1))


@pytest.mark.parametrize("method", ["macenko", "vahadane", "reinhard"])
def test_tiles_with_shared_source_params_match_whole_image(
    method: str, image_a: np.ndarray, image_b: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    norm = stain.get_normalizer(method).fit(image_a)
    whole = norm.transform(image_b)
    source = json.loads(json.dumps(norm.fit_source(image_b)))
    rows, cols = (0, 61, image_b.shape[0]), (0, 70, image_b.shape[1])
    stitched = np.zeros_like(whole)
    for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
        for c0, c1 in zip(cols[:-1], cols[1:], strict=True):
            stitched[r0:r1, c0:c1] = norm.transform(image_b[r0:r1, c0:c1], source_params=source)
    assert np.abs(stitched.astype(int) - whole.astype(int)).max() <= 1

    # a background-only tile is transformed with the shared estimate, not passed through with a warning
    with caplog.at_level(logging.WARNING, logger="histoflow.stain"):
        corner = norm.transform(image_b[:12, :12], source_params=source)
    assert not caplog.records
    assert corner.shape == (12, 12, 3)


def test_source_params_validation(image_a: np.ndarray, background: np.ndarray) -> None:
    norm = stain.MacenkoNormalizer().fit(image_a)
    with pytest.raises(ValueError, match="reinhard"):
        norm.transform(image_a, source_params=stain.ReinhardNormalizer().fit_source(image_a))
    with pytest.raises(ValueError, match="max_concentrations"):
        norm.transform(image_a, source_params={"method": "macenko", "stain_matrix": [[1, 0, 0], [0, 1, 0]]})
    no_tissue = norm.fit_source(background)
    assert no_tissue["tissue"] is False
    np.testing.assert_array_equal(norm.transform(image_a, source_params=no_tissue), image_a)


# ---- helpers -------------------------------------------------------------------------------


def test_to_rgb_uint8_conversions() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expected = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_array_equal(stain.to_rgb_uint8(grey), expected)
    np.testing.assert_array_equal(stain.to_rgb_uint8(grey[..., None]), expected)

    rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    assert stain.to_rgb_uint8(rgb) is rgb
    opaque = np.concatenate([rgb, np.full((3, 4, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(stain.to_rgb_uint8(opaque), rgb)
    transparent = opaque.copy()
    transparent[0, 0, 3] = 0  # fully transparent -> white
    transparent[0, 1, 3] = 128  # half -> halfway to white
    out = stain.to_rgb_uint8(transparent)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], np.rint(rgb[0, 1].astype(float) * 128 / 255 + 255 * 127 / 255))
    np.testing.assert_array_equal(out[1:], rgb[1:])

    np.testing.assert_array_equal(stain.to_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(stain.to_rgb_uint8(rgb / 255.0), rgb)
    np.testing.assert_array_equal(stain.to_rgb_uint8(rgb.astype(np.int64)), rgb)
    assert stain.to_rgb_uint8(np.ones((2, 2), np.float32)).tolist() == [[[255] * 3] * 2] * 2


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 3, 4, 3), np.uint8),  # 4-D
        np.zeros((3, 4, 2), np.uint8),  # two channels
        np.zeros(5, np.uint8),  # 1-D
        np.full((3, 4, 3), 1.5),  # float above 1
        np.full((3, 4), np.nan),  # NaN
        np.full((3, 4, 3), 300, np.int32),  # integer above 255
        np.zeros((3, 4), bool),
    ],
)
def test_to_rgb_uint8_rejects(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"tile: .*expected"):
        stain.to_rgb_uint8(bad, name="tile")


def test_get_normalizer_names_and_params() -> None:
    assert stain.available_normalizers() == ["macenko", "none", "reinhard", "vahadane"]
    assert isinstance(stain.get_normalizer("Macenko"), stain.MacenkoNormalizer)
    assert isinstance(stain.get_normalizer("vahadane"), stain.VahadaneNormalizer)
    with pytest.raises(ValueError, match="'macenko', 'none', 'reinhard', 'vahadane'"):
        stain.get_normalizer("vahadanee")
    with pytest.raises(ValueError, match="unknown parameter"):
        stain.get_normalizer("macenko", gamma=2)
    with pytest.raises(ValueError, match="alpha"):
        stain.get_normalizer("macenko", alpha=60)
    with pytest.raises(ValueError, match="beta"):
        stain.MacenkoNormalizer(beta=-0.1)
    with pytest.raises(ValueError, match="backend"):
        stain.VahadaneNormalizer(backend="cupy")
    with pytest.raises(ValueError, match="device"):
        stain.VahadaneNormalizer(device="gpu0")
    with pytest.raises(ValueError, match="max_pixels"):
        stain.VahadaneNormalizer(max_pixels=10)
    with pytest.raises(ValueError, match="regularizer"):
        stain.VahadaneNormalizer(regularizer=-1)


def test_tissue_mask_and_luminosity(image_a: np.ndarray) -> None:
    mask = stain.luminosity_tissue_mask(image_a)
    assert mask.dtype == bool and mask.shape == image_a.shape[:2]
    assert not mask[:5, :5].any() and mask[64, 64]
    dim = np.rint(image_a * 0.85).astype(np.uint8)  # background ~217 instead of ~255
    fixed = stain.standardize_luminosity(dim)
    assert fixed.shape == dim.shape and fixed.dtype == np.uint8
    assert fixed[:5, :5].mean() > 250
    with pytest.raises(ValueError, match="luminosity_threshold"):
        stain.luminosity_tissue_mask(image_a, luminosity_threshold=0)


# ---- Vahadane ------------------------------------------------------------------------------


def test_vahadane_recovers_known_stain_vectors_h_first(image_a: np.ndarray) -> None:
    norm = stain.VahadaneNormalizer().fit(image_a)
    s = norm.stain_matrix
    assert s.shape == (2, 3) and np.all(s >= 0)
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 1.0)
    assert angle_deg(s[0], H_TRUE) < MAX_ANGLE_DEG
    assert angle_deg(s[1], E_TRUE) < MAX_ANGLE_DEG
    np.testing.assert_allclose(norm.max_concentrations, [1.6, 3.0], rtol=0.1)


def test_vahadane_self_transform_is_near_identity_and_maps_other_stains(
    image_a: np.ndarray, image_b: np.ndarray
) -> None:
    norm = stain.VahadaneNormalizer().fit(image_a)
    out = norm.transform(image_a)
    assert out.dtype == np.uint8 and out.shape == image_a.shape
    # noise off the stain plane is removed and the lasso shrinks concentrations by 0.01 OD
    assert np.abs(out.astype(int) - image_a.astype(int)).mean() < 2.0

    after = norm.fit_source(norm.transform(image_b))
    s_out = np.array(after["stain_matrix"])
    assert angle_deg(s_out[0], norm.stain_matrix[0]) < MAX_ANGLE_DEG
    assert angle_deg(s_out[1], norm.stain_matrix[1]) < MAX_ANGLE_DEG
    np.testing.assert_allclose(after["max_concentrations"], norm.max_concentrations, rtol=0.05)


def _nn_lasso_reference(b: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Brute force: the best of the interior solution and the two faces, checked by the objective."""
    out = np.zeros_like(b)
    for i, bi in enumerate(b):
        candidates = [np.zeros(2), np.linalg.solve(gram, bi)]
        candidates += [
            np.array([max(bi[0], 0) / gram[0, 0], 0.0]),
            np.array([0.0, max(bi[1], 0) / gram[1, 1]]),
        ]
        feasible = [c for c in candidates if np.all(c >= -1e-12)]
        out[i] = min(feasible, key=lambda c: 0.5 * c @ gram @ c - bi @ c)
    return out


@pytest.mark.parametrize("g01", [0.9, 0.3, 0.0, -0.4])
def test_nn_lasso_closed_form_is_exact(g01: float) -> None:
    gram = np.array([[1.2, g01], [g01, 0.8]])
    b = np.random.default_rng(0).normal(0, 1, (500, 2))
    c0, c1 = stain.kernels._nn_lasso_2(b[:, 0].copy(), b[:, 1].copy(), gram, np)
    expected = _nn_lasso_reference(b, gram)
    np.testing.assert_allclose(np.stack([c0, c1], 1), expected, atol=1e-12)
    if g01 >= 0:  # the transform's in-place variant
        c0, c1 = stain.kernels._nn_lasso_2_inplace(b[:, 0].copy(), b[:, 1].copy(), gram)
        np.testing.assert_allclose(np.stack([c0, c1], 1), expected, atol=1e-12)


def test_vahadane_dictionary_learning_is_deterministic_and_decreases_objective(image_a: np.ndarray) -> None:
    od = stain.rgb_to_od(image_a).reshape(-1, 3)
    od = od[np.all(od >= 0.15, axis=1)]
    init = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])

    def objective(atoms: np.ndarray) -> float:
        w = atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1.0)
        b = od @ w.T - 0.1
        h = np.stack(stain.kernels._nn_lasso_2(b[:, 0], b[:, 1], w @ w.T, np), 1)
        return float(0.5 * np.sum((od - h @ w) ** 2) + 0.1 * h.sum())

    one, n_one = stain.matrix._dictionary_learning_2(od, init, 0.1, 1, 1e-9)
    many, n_many = stain.matrix._dictionary_learning_2(od, init, 0.1, 300, 1e-7)
    assert n_one == 1 and 1 < n_many < 300
    assert objective(many) <= objective(one) <= objective(init)
    again, _ = stain.matrix._dictionary_learning_2(od, init, 0.1, 300, 1e-7)
    np.testing.assert_array_equal(again, many)


def test_sample_is_seeded(image_a: np.ndarray) -> None:
    big = np.tile(image_a, (4, 4, 1))  # 512 x 512, more opaque pixels than max_pixels
    one = stain.VahadaneNormalizer(max_pixels=2000, seed=1).fit_source(big)
    assert stain.VahadaneNormalizer(max_pixels=2000, seed=1).fit_source(big) == one
    other = stain.VahadaneNormalizer(max_pixels=2000, seed=2).fit_source(big)
    assert other != one
    for i in range(2):  # another sample, the same stains
        assert angle_deg(np.array(one["stain_matrix"][i]), np.array(other["stain_matrix"][i])) < 1.0


# ---- torch backend -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_torch_backend_matches_numpy(method: str, image_a: np.ndarray, image_b: np.ndarray) -> None:
    pytest.importorskip("torch")
    ref = stain.get_normalizer(method, backend="numpy").fit(image_a)
    tor = stain.get_normalizer(method, backend="torch", device="cpu").fit(image_a)
    assert tor.to_dict()["params"]["backend"] == "torch"
    a, b = ref.transform(image_b), tor.transform(image_b)
    assert a.shape == b.shape and b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


# ---- whole slides --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slide() -> np.ndarray:
    from histoflow.synthetic.fibres import FibreParams, make_fibre_image

    image, _ = make_fibre_image(3, FibreParams(size=(1024, 1536)))
    return image


def _grid(shape: tuple[int, ...], tile: tuple[int, int]) -> list[tuple[slice, slice]]:
    return [
        (slice(r, min(r + tile[0], shape[0])), slice(c, min(c + tile[1], shape[1])))
        for r in range(0, shape[0], tile[0])
        for c in range(0, shape[1], tile[1])
    ]


@pytest.mark.parametrize("method", ["reinhard", "macenko", "vahadane"])
def test_whole_slide_in_tiles_equals_one_piece(method: str, slide: np.ndarray, image_a: np.ndarray) -> None:
    norm = stain.get_normalizer(method).fit(image_a)
    if method != "reinhard":
        norm.max_pixels = 20_000  # fewer than the slide's tissue pixels: the sample really is a sample
    cells = _grid(slide.shape, (300, 416))  # edge tiles are smaller
    order = np.random.default_rng(0).permutation(len(cells))  # tiles may arrive in any order
    source = stain.fit_source_from_tiles(
        norm, ((slide[cells[i]], (cells[i][0].start, cells[i][1].start)) for i in order)
    )
    assert source["tissue"] is True
    whole_source = norm.fit_source(slide)
    for key in norm._STAT_SHAPES:
        np.testing.assert_allclose(source[key], whole_source[key], rtol=1e-12, atol=1e-12)

    whole = norm.transform(slide)
    stitched = np.zeros_like(whole)
    for cell in cells:
        stitched[cell] = norm.transform(slide[cell], source_params=source)
    assert np.abs(stitched.astype(int) - whole.astype(int)).max() <= 1
    assert np.abs(whole.astype(int) - slide.astype(int)).mean() > 1  # something was normalized

    # tiles without positions are stacked below each other: full-width strips rebuild the slide
    strips = [slide[r : r + 256] for r in range(0, slide.shape[0], 256)]
    from_strips = stain.fit_source_from_tiles(norm, strips)
    if method == "reinhard":  # exact running moments, up to float rounding
        for key in norm._STAT_SHAPES:
            np.testing.assert_allclose(from_strips[key], whole_source[key], rtol=1e-12)
    else:  # the same pixels are sampled
        assert from_strips == json.loads(json.dumps(whole_source))


def test_fit_source_from_tiles_background_and_errors(
    image_a: np.ndarray, background: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    norm = stain.VahadaneNormalizer().fit(image_a)
    with caplog.at_level(logging.WARNING, logger="histoflow.stain"):
        source = stain.fit_source_from_tiles(norm, [background, background])
    assert source == {"method": "vahadane", "tissue": False}
    assert any("no usable tissue" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(norm.transform(image_a, source_params=source), image_a)
    with pytest.raises(ValueError, match="tile 0: the origin"):
        stain.fit_source_from_tiles(norm, [(image_a, (-1, 0))])
    with pytest.raises(ValueError, match="tile 1"):
        stain.fit_source_from_tiles(norm, [image_a, np.zeros((3, 3, 2), np.uint8)])
    with pytest.raises(ValueError, match="StainNormalizer"):
        stain.fit_source_from_tiles("macenko", [image_a])  # type: ignore[arg-type]


# ---- stain augmentation --------------------------------------------------------------------


def test_augment_stain(image_a: np.ndarray, background: np.ndarray) -> None:
    np.testing.assert_array_equal(stain.augment_stain(image_a, 0, sigma_alpha=0, sigma_beta=0), image_a)
    out = stain.augment_stain(image_a, np.random.default_rng(1))
    assert out.shape == image_a.shape and out.dtype == np.uint8
    unstained = image_a.min(axis=-1) > 220  # OD < 0.15 in every channel: background
    assert unstained.sum() > 1000 and (~unstained).sum() > 1000
    np.testing.assert_array_equal(out[unstained], image_a[unstained])
    assert np.abs(out[~unstained].astype(int) - image_a[~unstained].astype(int)).mean() > 2
    np.testing.assert_array_equal(stain.augment_stain(image_a, 1), out)  # int seed = default_rng(seed)

    # with its own stain matrix the perturbation acts on the concentrations: alpha scales H and E
    s = stain.MacenkoNormalizer().fit(image_a).stain_matrix
    sources = [
        stain.augment_stain(image_a, k, sigma_alpha=0.3, sigma_beta=0.0, stain_matrix=s) for k in range(3)
    ]
    assert len({x.tobytes() for x in sources}) == 3

    np.testing.assert_array_equal(stain.augment_stain(background, 0), background)  # no tissue: unchanged
    with pytest.raises(ValueError, match="sigma_alpha"):
        stain.augment_stain(image_a, 0, sigma_alpha=1.5)
    with pytest.raises(ValueError, match="stain_matrix"):
        stain.augment_stain(image_a, 0, stain_matrix=np.ones((3, 3)))
    with pytest.raises(ValueError, match="rng"):
        stain.augment_stain(image_a, "seed")  # type: ignore[arg-type]
