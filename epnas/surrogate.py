"""A Bayesian linear surrogate of validation accuracy, for ranking screened candidates.

    acc ≈ w · φ(X) + ε,   ε ~ N(0, σ_n²),   prior w ~ N(w₀, diag(σ_w²))
    φ(X) = [1, log10 params, log10 FLOPs, depth, log10 compute intensity]

Every feature is analytic (``epnas.metrics``), so a candidate is scored before it is
trained.  The prior says what hardware-aware NAS keeps finding — within a budget, more
compute buys accuracy (``w₀`` = +0.1 per decade of FLOPs, nothing else) — and the trained
children of the search move the posterior away from it as evidence comes in:

    S⁻¹ = S₀⁻¹ + Φᵀ Φ / σ_n²,    m = S (S₀⁻¹ w₀ + Φᵀ y / σ_n²)

The shipped strategy ranks feasible, new candidates by ``w̃ · φ`` with one posterior
draw ``w̃ ~ N(m, S)`` per branch and morph (Thompson sampling): the ranking exploits what
the search has learned while branches still explore different networks.  Pure: no I/O;
draws come from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

FEATURES = ("bias", "log_params", "log_flops", "depth", "log_intensity")
PRIOR_MEAN = (0.0, 0.0, 0.1, 0.0, 0.0)
PRIOR_STD = (1.0, 0.05, 0.05, 0.02, 0.05)
NOISE_STD = 0.05


def features(params: float, flops: float, depth: int, intensity: float) -> list[float]:
    """``φ(X)`` from a network's metrics and depth (logs of values below 1 read 0)."""
    return [1.0, math.log10(max(params, 1.0)), math.log10(max(flops, 1.0)), float(depth), math.log10(max(intensity, 1.0))]


@dataclass(frozen=True)
class Posterior:
    """``N(mean, cov)`` over the weights ``w``."""

    mean: torch.Tensor
    cov: torch.Tensor

    def predict(self, phi: Sequence[Sequence[float]]) -> torch.Tensor:
        """Posterior mean accuracy ``m · φ`` of each row of ``phi``."""
        return torch.tensor(phi, dtype=torch.float64) @ self.mean

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """One weight vector ``w̃ = m + L z``, ``L Lᵀ = S``, ``z ~ N(0, I)``."""
        z = torch.randn(len(self.mean), generator=generator, dtype=torch.float64)
        return self.mean + torch.linalg.cholesky(self.cov) @ z


def fit(phi: Sequence[Sequence[float]], accuracy: Sequence[float]) -> Posterior:
    """The posterior after observing ``accuracy[i]`` at ``phi[i]`` (none: the prior)."""
    prior_precision = torch.diag(torch.tensor(PRIOR_STD, dtype=torch.float64) ** -2)
    w0 = torch.tensor(PRIOR_MEAN, dtype=torch.float64)
    if len(phi) == 0:
        return Posterior(w0, torch.linalg.inv(prior_precision))
    x = torch.tensor(phi, dtype=torch.float64)
    y = torch.tensor(accuracy, dtype=torch.float64)
    precision = prior_precision + x.T @ x / NOISE_STD**2
    cov = torch.linalg.inv(precision)
    cov = (cov + cov.T) / 2  # symmetric to the last bit, for the Cholesky factor
    mean = cov @ (prior_precision @ w0 + x.T @ y / NOISE_STD**2)
    return Posterior(mean, cov)
