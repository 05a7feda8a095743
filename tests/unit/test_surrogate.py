"""The Bayesian linear surrogate against closed-form cases."""

from __future__ import annotations

import math

import pytest
import torch

from epnas import surrogate


def test_features_by_hand() -> None:
    assert surrogate.features(1000, 1e6, 3, 10) == [1.0, 3.0, 6.0, 3.0, 1.0]
    assert surrogate.features(0, 0, 1, 0.5) == [1.0, 0.0, 0.0, 1.0, 0.0]  # logs of values below 1 read 0


def test_no_data_is_the_prior() -> None:
    posterior = surrogate.fit([], [])
    assert posterior.mean.tolist() == list(surrogate.PRIOR_MEAN)
    assert torch.allclose(posterior.cov.diagonal(), torch.tensor(surrogate.PRIOR_STD, dtype=torch.float64) ** 2)
    # the prior ranks by FLOPs alone: +0.1 per decade
    more, fewer = surrogate.features(1e4, 1e6, 3, 5), surrogate.features(1e4, 1e5, 3, 5)
    assert (posterior.predict([more, fewer]) @ torch.tensor([1.0, -1.0], dtype=torch.float64)).item() == pytest.approx(0.1)


def test_one_observation_matches_the_closed_form() -> None:
    # one point: m = w0 + S0 φ (y − φ·w0) / (σ_n² + φᵀ S0 φ)   (the rank-one update)
    phi = surrogate.features(5000, 2e5, 2, 4)
    y = 0.9
    s0 = torch.diag(torch.tensor(surrogate.PRIOR_STD, dtype=torch.float64) ** 2)
    w0 = torch.tensor(surrogate.PRIOR_MEAN, dtype=torch.float64)
    x = torch.tensor(phi, dtype=torch.float64)
    gain = s0 @ x / (surrogate.NOISE_STD**2 + x @ s0 @ x)
    expected = w0 + gain * (y - x @ w0)
    posterior = surrogate.fit([phi], [y])
    assert torch.allclose(posterior.mean, expected, atol=1e-12)


def test_evidence_overrides_the_prior() -> None:
    # twenty children where accuracy FALLS with FLOPs: the posterior must learn the sign
    phi = [surrogate.features(1e4, 10 ** (4 + k / 10), 3, 5) for k in range(20)]
    acc = [0.95 - 0.2 * k / 10 for k in range(20)]
    posterior = surrogate.fit(phi, acc)
    assert posterior.mean[2].item() < 0
    low, high = posterior.predict([phi[0], phi[-1]]).tolist()
    assert low > high


def test_draws_are_deterministic_and_spread_around_the_mean() -> None:
    posterior = surrogate.fit([surrogate.features(1e4, 1e5, 3, 5)], [0.8])
    a = posterior.draw(torch.Generator().manual_seed(1))
    b = posterior.draw(torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    draws = torch.stack([posterior.draw(torch.Generator().manual_seed(s)) for s in range(2000)])
    assert torch.allclose(draws.mean(0), posterior.mean, atol=4 * math.sqrt(posterior.cov.diagonal().max().item() / 2000))
