"""DDML: the loss on hand values, pair sampling, and a metric that separates two classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histoflow.ddml import (
    MetricNet,
    ddml_loss,
    generalized_logistic,
    refined_probability,
    sample_pairs,
    train_discriminator,
    train_metric,
    weight_decay_term,
)


def test_generalized_logistic_hand_values():
    z = torch.tensor([0.0, 1.0, -1.0, 50.0])
    beta = 2.0
    expected = [math.log(2) / 2, math.log(1 + math.e**2) / 2, math.log(1 + math.e**-2) / 2, 50.0]
    torch.testing.assert_close(generalized_logistic(z, beta), torch.tensor(expected), atol=1e-6, rtol=0)


def test_ddml_loss_hand_values():
    # pair 1: same class, distance² = 1, tau = 2 -> z = 1 - (2 - 1) = 0 -> g = ln2/β
    # pair 2: different class, distance² = 4 -> z = 1 + (2 - 4) = -1 -> g = ln(1 + e^-β)/β
    fi = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    fj = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    same = torch.tensor([True, False])
    beta = 2.0
    expected = 0.5 * (math.log(2) / beta + math.log(1 + math.exp(-beta)) / beta)
    assert float(ddml_loss(fi, fj, same, tau=2.0, beta=beta)) == pytest.approx(expected)
    assert float(ddml_loss(fi, fj, torch.tensor([1.0, -1.0]), tau=2.0, beta=beta)) == pytest.approx(expected)
    assert float(ddml_loss(fi, fj, same, tau=2.0, beta=beta, reduction="mean")) == pytest.approx(expected / 2)


def test_ddml_regulariser_is_half_lambda_sum_of_squares():
    net = MetricNet(3, (2,))
    with torch.no_grad():
        net.net[0].weight.fill_(1.0)
        net.net[0].bias.fill_(2.0)
    # ‖W‖² = 6 (2×3 ones), ‖b‖² = 8 (two 2s) -> λ/2 × 14
    assert float(weight_decay_term(net).detach()) == pytest.approx(14.0)
    f = torch.zeros(1, 2)
    base = float(ddml_loss(f, f, torch.tensor([True])))
    assert float(ddml_loss(f, f, torch.tensor([True]), lam=0.1, model=net).detach()) == pytest.approx(base + 0.7)


def test_sample_pairs_balanced_and_errors():
    labels = np.array([0] * 30 + [1] * 10)
    i, j = sample_pairs(labels, 1000, np.random.default_rng(0))
    same = labels[i] == labels[j]
    assert len(i) == 1000 and same[:500].all() and not same[500:].any()
    with pytest.raises(ValueError, match="both classes"):
        sample_pairs(np.zeros(5, int), 10, np.random.default_rng(0))


def test_metric_and_discriminator_separate_two_classes():
    rng = np.random.default_rng(0)
    # two classes that differ only along a direction hidden among noisy features
    n = 400
    labels = rng.integers(0, 2, n)
    feats = rng.normal(0, 1, (n, 8)).astype(np.float32)
    feats[:, 3] += np.where(labels == 1, 2.0, -2.0)
    net = train_metric(feats, labels, dims=(16, 8), tau=2.0, steps=200, seed=0)
    with torch.no_grad():
        z = net(torch.as_tensor(feats))
    d2 = torch.cdist(z, z) ** 2
    same = torch.as_tensor(labels[:, None] == labels[None, :])
    assert d2[same].mean() < 2.0 < d2[~same].mean()
    head = train_discriminator(net, feats, labels, steps=200)
    prob = refined_probability(net, head, feats)
    assert prob.shape == (n,) and ((prob > 0.5) == labels).mean() > 0.95
