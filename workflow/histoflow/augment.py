"""Training augmentation, batched on the training device, identical for image and every target.

Geometric transforms (flips, 90° rotations, rotation by any angle, scale, shear, shift, crop-and-
resize, elastic deformation) are composed into **one sampling grid per sample** and applied with a
single :func:`torch.nn.functional.grid_sample` call per tensor: bilinear for the image, nearest for
masks, instance labels, boundary and weight maps (so labels stay labels and instance ids are
preserved). Intensity transforms (noise, blur / sharpen, brightness, contrast, hue, H&E stain
perturbation) touch the image only. Everything runs on whatever device the batch is on, so on a GPU
augmentation does not starve the model; on CPU it costs a few milliseconds per batch.

Presets reproduce the seed papers' recipes (:data:`PRESETS`); any field can be overridden from the
config (``train.augment: {preset: glas_unet, rotate_p: 0.8}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .stain.colour import RGB_FROM_HED


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``*_p``) and ranges of each transform. All default to off."""

    flip_p: float = 0.0  # horizontal and vertical flips, each with this probability
    rot90_p: float = 0.0  # a random multiple of 90°
    rotate_p: float = 0.0
    rotate_deg: tuple[float, float] = (-90.0, 90.0)
    scale_p: float = 0.0
    scale: tuple[float, float] = (0.8, 1.2)  # zoom factor (>1 zooms in)
    shear_p: float = 0.0
    shear_deg: tuple[float, float] = (-10.0, 10.0)
    shift_p: float = 0.0
    shift: float = 0.1  # fraction of the patch size
    crop_p: float = 0.0
    crop_fraction: float = 0.75  # crop this fraction of the side, resize back to the patch
    elastic_p: float = 0.0
    elastic_alpha: tuple[float, float] = (5.0, 10.0)  # field strength (Simard / imgaug convention)
    elastic_sigma: float = 3.0  # smoothness of the displacement field (pixels)
    padding: str = "reflection"  # grid_sample padding for the image: reflection | border | zeros
    noise_p: float = 0.0
    noise_sd: tuple[float, float] = (0.01, 0.03)
    blur_sharpen_p: float = 0.0  # 3x3 median blur, blended half and half with a sharpened image
    brightness_p: float = 0.0
    brightness: float = 0.1
    contrast_p: float = 0.0
    contrast: float = 0.2
    hue_p: float = 0.0
    hue: float = 0.05  # fraction of a full hue turn
    stain_p: float = 0.0  # H&E concentration perturbation (Tellez et al. 2018)
    stain_sigma: float = 0.05
    repeats: int = 1  # augmented copies of each patch per epoch (Res-CR-Net trains 15-fold)

    @property
    def continuous(self) -> bool:
        """Any transform that needs resampling (everything but flips and 90° rotations)."""
        return any(getattr(self, f) > 0 for f in ("rotate_p", "scale_p", "shear_p", "shift_p", "crop_p", "elastic_p"))


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "dihedral": AugmentConfig(flip_p=0.5, rot90_p=0.75),
    # GlaS U-Net seed: crop to 75 % p=0.5, flips p=0.5, rotation -90..90 p=0.5, elastic 5-10 sigma 3
    # p=1, Gaussian noise 0.01-0.03 p=0.2, median blur then sharpening p=0.2.
    "glas_unet": AugmentConfig(
        crop_p=0.5, crop_fraction=0.75, flip_p=0.5, rotate_p=0.5, rotate_deg=(-90.0, 90.0), elastic_p=1.0,
        elastic_alpha=(5.0, 10.0), elastic_sigma=3.0, noise_p=0.2, noise_sd=(0.01, 0.03), blur_sharpen_p=0.2,
    ),
    # Res-CR-Net seed: shear, rotation, shift, mirror, scale in/out, reflect padding, 15-fold per epoch.
    "rescrnet": AugmentConfig(
        shear_p=0.5, shear_deg=(-10.0, 10.0), rotate_p=0.5, rotate_deg=(-45.0, 45.0), shift_p=0.5, shift=0.1,
        flip_p=0.5, scale_p=0.5, scale=(0.8, 1.2), padding="reflection", repeats=15,
    ),
    # Colour robustness for H&E across labs / scanners.
    "he_colour": AugmentConfig(flip_p=0.5, rot90_p=0.75, stain_p=0.8, brightness_p=0.5, contrast_p=0.5, hue_p=0.3),
}


def augment_config(spec: bool | str | dict[str, Any] | AugmentConfig | None) -> AugmentConfig:
    """Parse ``train.augment`` from the config.

    Accepts ``true`` (= ``dihedral``), ``false``, a preset name, or ``{preset: name, <field>: value, ...}``.
    Unknown names and fields raise ValueError.
    """
    if isinstance(spec, AugmentConfig):
        return spec
    if spec is None or spec is False:
        return PRESETS["none"]
    if spec is True:
        return PRESETS["dihedral"]
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"train.augment must be a boolean, a preset name or a mapping, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("preset", "none")
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose from {', '.join(PRESETS)}")
    valid = {f.name for f in fields(AugmentConfig)}
    bad = sorted(set(spec) - valid)
    if bad:
        raise ValueError(f"unknown augmentation field(s) {bad}; valid: {', '.join(sorted(valid))}")
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return replace(PRESETS[name], **spec)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=g) * (hi - lo) + lo).to(device)


def _coin(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=g) < p).to(device)


def sample_grid(n: int, size: tuple[int, int], cfg: AugmentConfig, g: torch.Generator,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Sampling grids ``(n, H, W, 2)`` in ``grid_sample``'s normalised coordinates (align_corners=False).

    The grids combine the continuous transforms of ``cfg`` (rotation, shear, scale, crop, shift, elastic);
    all random draws come from ``g`` (on the CPU, so results do not depend on the device).
    """
    device = torch.device(device)
    h, w = size
    eye = torch.eye(2).repeat(n, 1, 1).to(device)
    a = eye.clone()
    t = torch.zeros(n, 2, device=device)

    def compose(m: torch.Tensor, on: torch.Tensor) -> None:
        nonlocal a
        a = torch.where(on[:, None, None], m @ a, a)

    on = _coin(n, cfg.rotate_p, g, device)
    compose(_rotation(_uniform(n, *cfg.rotate_deg, g, device) * math.pi / 180), on)
    on = _coin(n, cfg.shear_p, g, device)
    sh = torch.tan(_uniform(n, *cfg.shear_deg, g, device) * math.pi / 180)
    compose(torch.stack([torch.stack([torch.ones_like(sh), sh], 1), torch.stack([torch.zeros_like(sh),
            torch.ones_like(sh)], 1)], 1), on)
    on = _coin(n, cfg.scale_p, g, device)
    s = 1.0 / _uniform(n, *cfg.scale, g, device)
    compose(torch.diag_embed(torch.stack([s, s], 1)), on)
    on = _coin(n, cfg.crop_p, g, device)
    c = torch.full((n,), cfg.crop_fraction, device=device)
    compose(torch.diag_embed(torch.stack([c, c], 1)), on)
    # a crop may sit anywhere inside the patch: shift within the remaining margin
    t = t + torch.where(on[:, None], (torch.rand(n, 2, generator=g).to(device) * 2 - 1) * (1 - c[:, None]), 0.0)
    on = _coin(n, cfg.shift_p, g, device)
    t = t + torch.where(on[:, None], (torch.rand(n, 2, generator=g).to(device) * 2 - 1) * 2 * cfg.shift, 0.0)

    theta = torch.cat([a, t[:, :, None]], dim=2)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    on = _coin(n, cfg.elastic_p, g, device)
    if bool(on.any()):
        alpha = _uniform(n, *cfg.elastic_alpha, g, device) * on.float()
        grid = grid + _elastic(n, h, w, alpha, cfg.elastic_sigma, g, device)
    return grid


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)


def _elastic(n: int, h: int, w: int, alpha: torch.Tensor, sigma: float, g: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """Smooth random displacement (Simard et al. 2003) in normalised grid units ``(n, H, W, 2)``.

    Uniform noise in [-1, 1] per pixel and axis, blurred by a normalised Gaussian of ``sigma`` pixels, times
    ``alpha`` (pixels) — the convention of Simard et al., imgaug and the seed recipes, where alpha 5–10 with
    sigma 3 moves pixels by about 0.3–0.6 px RMS (smooth, tissue-like wobble).
    """
    noise = (torch.rand(n, 2, h, w, generator=g) * 2 - 1).to(device)
    radius = max(int(3 * sigma), 1)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    field = noise.reshape(n * 2, 1, h, w)
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="reflect" if w > radius else "replicate"),
                     k.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect" if h > radius else "replicate"),
                     k.view(1, 1, -1, 1))
    field = field.reshape(n, 2, h, w) * alpha.view(n, 1, 1, 1)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=device).view(1, 2, 1, 1)
    return (field * scale).permute(0, 2, 3, 1)


def warp(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str = "zeros") -> torch.Tensor:
    """Resample ``(N, C, H, W)`` on ``grid``; integer tensors go through float and back exactly."""
    dtype = x.dtype
    y = F.grid_sample(x.float(), grid, mode=mode, padding_mode=padding, align_corners=False)
    return y.round().to(dtype) if not dtype.is_floating_point else y


def augment(
    image: torch.Tensor, targets: list[torch.Tensor], cfg: AugmentConfig, g: torch.Generator,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Augment a batch: ``image (N, 3, H, W)`` float in [0, 1] and its ``targets``.

    ``targets`` are ``(N, C, H, W)`` each (masks, labels, boundaries, weights), warped with nearest sampling
    and zero outside the patch (weight 0 there, so the loss ignores pixels that came from outside). Returns
    new tensors.
    """
    n, _, h, w = image.shape
    if cfg.flip_p > 0 or cfg.rot90_p > 0:
        image, *targets = random_dihedral([image, *targets], cfg, g)
    if cfg.continuous:
        grid = sample_grid(n, (h, w), cfg, g, image.device)
        image = warp(image, grid, "bilinear", cfg.padding)
        targets = [warp(t, grid, "nearest", "zeros") for t in targets]
    return intensity(image, cfg, g), targets


def random_dihedral(tensors: list[torch.Tensor], cfg: AugmentConfig, g: torch.Generator) -> list[torch.Tensor]:
    """Exact flips and 90° rotations, the same for every tensor of a sample.

    Flips are horizontal and vertical, each with ``flip_p``; rotations (``rot90_p``) are by a random multiple
    of 90°. Pure pixel permutations: no resampling. Rotations by 90° or 270° need square patches (non-square
    samples are only flipped).
    """
    n = tensors[0].shape[0]
    fx = (torch.rand(n, generator=g) < cfg.flip_p).tolist()
    fy = (torch.rand(n, generator=g) < cfg.flip_p).tolist()
    rot = torch.rand(n, generator=g) < cfg.rot90_p
    k = torch.where(rot, torch.randint(1, 4, (n,), generator=g), 0).tolist()
    square = tensors[0].shape[-1] == tensors[0].shape[-2]
    out = [t.clone() for t in tensors]
    for i in range(n):
        for t in out:
            s = t[i]
            if fx[i]:
                s = s.flip(-1)
            if fy[i]:
                s = s.flip(-2)
            if k[i] and (square or k[i] == 2):
                s = torch.rot90(s, k[i], dims=(-2, -1))
            t[i] = s
    return out


def intensity(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Image-only transforms on ``(N, 3, H, W)`` in [0, 1]."""
    n, dev = x.shape[0], x.device
    if cfg.stain_p > 0:
        x = _stain_jitter(x, _coin(n, cfg.stain_p, g, dev), cfg.stain_sigma, g)
    if cfg.brightness_p > 0:
        on = _coin(n, cfg.brightness_p, g, dev).float().view(n, 1, 1, 1)
        x = x + on * _uniform(n, -cfg.brightness, cfg.brightness, g, dev).view(n, 1, 1, 1)
    if cfg.contrast_p > 0:
        on = _coin(n, cfg.contrast_p, g, dev).float().view(n, 1, 1, 1)
        f = 1 + on * _uniform(n, -cfg.contrast, cfg.contrast, g, dev).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * f + mean
    if cfg.hue_p > 0:
        on = _coin(n, cfg.hue_p, g, dev)
        x = torch.where(on.view(n, 1, 1, 1), _hue_rotate(x, _uniform(n, -cfg.hue, cfg.hue, g, dev)), x)
    if cfg.blur_sharpen_p > 0:
        on = _coin(n, cfg.blur_sharpen_p, g, dev).view(n, 1, 1, 1)
        blurred = median3(x)
        sharpened = x + (x - blurred) * _uniform(n, 0.2, 0.5, g, dev).view(n, 1, 1, 1)
        x = torch.where(on, 0.5 * blurred + 0.5 * sharpened, x)
    if cfg.noise_p > 0:
        on = _coin(n, cfg.noise_p, g, dev).float().view(n, 1, 1, 1)
        sd = _uniform(n, *cfg.noise_sd, g, dev).view(n, 1, 1, 1)
        x = x + on * sd * torch.randn(x.shape, generator=g).to(dev)
    return x.clamp(0, 1)


def median3(x: torch.Tensor) -> torch.Tensor:
    """3 × 3 median filter of ``(N, C, H, W)`` per channel, edges replicated (the GlaS U-Net paper's median blur).

    An isolated pixel disappears and a straight step edge stays where it is, unlike a mean filter's.
    """
    n, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3)  # (N, C * 9, H * W)
    return patches.view(n, c, 9, h * w).median(dim=2).values.view(n, c, h, w)


# Ruifrok-Johnston H, E and DAB optical-density vectors (the DAB row completes the basis), for the stain perturbation.
_HE = torch.tensor(RGB_FROM_HED, dtype=torch.float32)


def _stain_jitter(x: torch.Tensor, on: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Per stain c' = c·α + β with α ~ U(1−σ, 1+σ), β ~ U(−σ, σ) in H&E optical-density space."""
    n, dev = x.shape[0], x.device
    m = _HE / _HE.norm(dim=1, keepdim=True)
    m_inv = torch.linalg.inv(m).to(dev)
    m = m.to(dev)
    od = -torch.log(x.clamp_min(1 / 255))  # (N, 3, H, W)
    conc = torch.einsum("nchw,cs->nshw", od, m_inv)
    alpha = 1 + (torch.rand(n, 3, 1, 1, generator=g).to(dev) * 2 - 1) * sigma
    beta = (torch.rand(n, 3, 1, 1, generator=g).to(dev) * 2 - 1) * sigma
    conc2 = conc * alpha + beta * (conc > 0.05).float()  # keep background background
    y = torch.exp(-torch.einsum("nshw,sc->nchw", conc2, m))
    return torch.where(on.view(n, 1, 1, 1), y, x)


def _hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``turns`` (fraction of 360°) with the YIQ rotation (luma preserved)."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    rgb = torch.linalg.inv(yiq)
    th = turns * 2 * math.pi
    c, s = torch.cos(th), torch.sin(th)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, c, -s], 1),
                       torch.stack([zero, s, c], 1)], 1)  # (N, 3, 3)
    mat = rgb @ rot @ yiq
    return torch.einsum("nij,njhw->nihw", mat, x)


def augmentation_examples(
    images: np.ndarray, target: np.ndarray, spec: Any, seed: int, n: int = 6, labels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` training patches as training augments them, with their target.

    ``spec`` is ``train.augment``. Returns ``uint8 (n, H, W, 3)`` images and ``(n, H, W)`` targets
    (``labels``: the target is an instance label map, moved as integers), for the figure that shows a user
    what the model trained on.
    """
    from .train import images_to_tensor  # train imports this module

    k = min(n, len(images))
    x = images_to_tensor(images[:k])
    y = torch.from_numpy(target[:k])[:, None]
    y = y.long() if labels else y.float()
    xa, (ya,) = augment(x, [y], augment_config(spec), torch.Generator().manual_seed(seed))
    return (xa.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), ya[:, 0].numpy()
