"""Discriminative deep metric learning (DDML) on per-pixel features, and its 1×1 discriminating layer.

DDML follows Hu et al., CVPR 2014; the 1×1 discriminating layer turns the learned metric into a refined
foreground probability.

Used by the scribble stage: pixels under a user's foreground / background scribbles (plus training
pixels) give pairs; a small fully connected network ``f`` is trained so that pairs of the same class
are closer than a threshold τ and pairs of different classes farther, with the loss

    L = ½ Σ_ij g(1 − l_ij (τ − ‖f(x_i) − f(x_j)‖²)) + λ/2 Σ_layers (‖W‖² + ‖b‖²),
    g(z) = log(1 + exp(βz)) / β    (the generalized logistic loss),

``l_ij = +1`` for a same-class pair and ``−1`` otherwise. A logistic 1×1 layer is then trained on
``f(x)`` with ``f`` frozen, giving the refined probability ``h`` that the graph cut consumes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def generalized_logistic(z: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """``g(z) = log(1 + exp(βz)) / β`` (a smooth hinge; → max(z, 0) as β → ∞), numerically stable."""
    return F.softplus(z, beta=beta)


class MetricNet(nn.Module):
    """Fully connected embedding ``f``: ``(N, in_features)`` → ``(N, dims[-1])``.

    Tanh activations (as in DDML), the last layer linear.
    """

    def __init__(self, in_features: int, dims: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        if in_features < 1 or not dims:
            raise ValueError("MetricNet needs in_features >= 1 and at least one layer")
        layers: list[nn.Module] = []
        prev = in_features
        for i, d in enumerate(dims):
            layers.append(nn.Linear(prev, d))
            if i < len(dims) - 1:
                layers.append(nn.Tanh())
            prev = d
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def weight_decay_term(model: nn.Module) -> torch.Tensor:
    """Σ over layers of ‖W‖² + ‖b‖² (every parameter of ``model``)."""
    return sum((p**2).sum() for p in model.parameters())


def ddml_loss(
    fi: torch.Tensor, fj: torch.Tensor, same: torch.Tensor, tau: float = 2.0, beta: float = 2.0,
    lam: float = 0.0, model: nn.Module | None = None, reduction: str = "sum",
) -> torch.Tensor:
    """DDML loss for embedded pairs ``fi``, ``fj`` ``(P, D)`` with ``same`` ``(P,)`` bool (or ±1).

    ``reduction="sum"`` is the paper's ½ Σ; ``"mean"`` divides the pair term by P (better scaled for
    mini-batches). The regulariser λ/2 Σ(‖W‖² + ‖b‖²) is added when ``model`` is given.
    """
    if fi.shape != fj.shape or fi.ndim != 2 or same.shape != fi.shape[:1]:
        raise ValueError(f"need fi, fj (P, D) and same (P,), got {tuple(fi.shape)}, {tuple(fj.shape)}, "
                         f"{tuple(same.shape)}")
    l = same.float() * 2 - 1 if same.dtype == torch.bool else same.float()  # noqa: E741
    d2 = ((fi - fj) ** 2).sum(dim=1)
    pair = generalized_logistic(1 - l * (tau - d2), beta)
    loss = 0.5 * (pair.sum() if reduction == "sum" else pair.mean())
    if model is not None and lam > 0:
        loss = loss + lam / 2 * weight_decay_term(model)
    return loss


def sample_pairs(labels: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` ``(n_pairs,)`` each over ``labels`` ``(N,)`` (0/1).

    Half of them are same-class and half different-class when both classes exist.
    """
    labels = np.asarray(labels)
    idx = [np.flatnonzero(labels == c) for c in (0, 1)]
    if any(len(a) == 0 for a in idx):
        raise ValueError("need pixels of both classes (foreground and background scribbles)")
    half = n_pairs // 2
    c = rng.integers(0, 2, half)
    same_i = np.where(c == 0, rng.choice(idx[0], half), rng.choice(idx[1], half))
    same_j = np.where(c == 0, rng.choice(idx[0], half), rng.choice(idx[1], half))
    diff_i = rng.choice(idx[0], n_pairs - half)
    diff_j = rng.choice(idx[1], n_pairs - half)
    return np.concatenate([same_i, diff_i]), np.concatenate([same_j, diff_j])


def train_metric(
    features: np.ndarray, labels: np.ndarray, dims: tuple[int, ...] = (64, 32), tau: float = 2.0,
    beta: float = 2.0, lam: float = 1e-4, steps: int = 300, pairs_per_step: int = 512, lr: float = 1e-2,
    seed: int = 0,
) -> MetricNet:
    """Train ``f`` on labelled pixel features ``(N, F)`` / labels ``(N,)`` ∈ {0, 1} with the DDML loss."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    net = MetricNet(x.shape[1], dims)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        i, j = sample_pairs(labels, pairs_per_step, rng)
        same = torch.as_tensor(labels[i] == labels[j])
        loss = ddml_loss(net(x[i]), net(x[j]), same, tau, beta, lam, net, reduction="mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def train_discriminator(
    net: MetricNet, features: np.ndarray, labels: np.ndarray, steps: int = 200, lr: float = 5e-2, seed: int = 0,
) -> nn.Linear:
    """The 1×1 discriminating layer: logistic regression on ``f(x)`` with ``f`` frozen."""
    torch.manual_seed(seed)
    with torch.no_grad():
        z = net(torch.as_tensor(features, dtype=torch.float32))
    y = torch.as_tensor(labels, dtype=torch.float32)
    head = nn.Linear(z.shape[1], 1)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    pos = y.mean().clamp(1e-3, 1 - 1e-3)
    weight = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))  # class balance: scribbles are uneven
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(head(z)[:, 0], y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def refined_probability(net: MetricNet, head: nn.Linear, features: np.ndarray, batch: int = 65536) -> np.ndarray:
    """``h = σ(head(f(x)))`` for features ``(..., F)`` → probabilities ``(...)`` float32."""
    flat = torch.as_tensor(features.reshape(-1, features.shape[-1]), dtype=torch.float32)
    out = torch.cat([torch.sigmoid(head(net(flat[k : k + batch])))[:, 0] for k in range(0, len(flat), batch)])
    return out.numpy().reshape(features.shape[:-1]).astype(np.float32)
