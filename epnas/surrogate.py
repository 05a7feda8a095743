"""A Bayesian linear surrogate of validation accuracy, for ranking screened candidates.

    acc ≈ w · φ(X) + ε,   ε ~ N(0, σ_n²),   prior w ~ N(w₀, diag(σ_w²))
    φ(X) = [1, log10 params, log10 FLOPs, depth, log10 compute intensity]

and, appended by ``Encoder``, one count per *choice* the network is made of — ``op:gru``,
``stride_time:10``, ``channels:64``, ``skip`` (a layer's op, each of its fields' values, a skip
input; a cell branch's type and fields) — from a vocabulary fixed by the search space.

Every feature is analytic (``epnas.metrics``, ``epnas.arch``), so a candidate is scored before it is
trained.  The prior says what hardware-aware NAS keeps finding — within a budget, more
compute buys accuracy (``w₀`` = +0.1 per decade of FLOPs, nothing else; every choice
starts at 0 with a small ``CHOICE_STD``) — and the trained children of the search move the
posterior away from it as evidence comes in, per choice too: a search learns within a few
children that, say, a time stride of 10 ruins keyword spotting, which FLOPs cannot say:

    S⁻¹ = S₀⁻¹ + Φᵀ Φ / σ_n²,    m = S (S₀⁻¹ w₀ + Φᵀ y / σ_n²)

The shipped strategy ranks feasible, new candidates by ``w̃ · φ`` with one posterior
draw ``w̃ ~ N(m, S)`` per branch and morph (Thompson sampling): the ranking exploits what
the search has learned while branches still explore different networks.  Pure: no I/O;
draws come from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from epnas.arch import OP_FIELDS, Arch, field_values
from epnas.space import LayerSpace, ModuleSpace

FEATURES = ("bias", "log_params", "log_flops", "depth", "log_intensity")
PRIOR_MEAN = (0.0, 0.0, 0.1, 0.0, 0.0)
PRIOR_STD = (1.0, 0.05, 0.05, 0.02, 0.05)
NOISE_STD = 0.05
CHOICE_STD = 0.03
"""Prior standard deviation of one choice's effect on accuracy, per layer (or branch) that makes it."""


def features(params: float, flops: float, depth: int, intensity: float) -> list[float]:
    """``φ(X)`` from a network's metrics and depth (logs of values below 1 read 0)."""
    return [
        1.0,
        math.log10(max(params, 1.0)),
        math.log10(max(flops, 1.0)),
        float(depth),
        math.log10(max(intensity, 1.0)),
    ]


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


def fit(
    phi: Sequence[Sequence[float]],
    accuracy: Sequence[float],
    prior_mean: Sequence[float] = PRIOR_MEAN,
    prior_std: Sequence[float] = PRIOR_STD,
) -> Posterior:
    """The posterior after observing ``accuracy[i]`` at ``phi[i]`` (none: the prior)."""
    prior_precision = torch.diag(torch.tensor(prior_std, dtype=torch.float64) ** -2)
    w0 = torch.tensor(prior_mean, dtype=torch.float64)
    if len(phi) == 0:
        return Posterior(w0, torch.linalg.inv(prior_precision))
    x = torch.tensor(phi, dtype=torch.float64)
    y = torch.tensor(accuracy, dtype=torch.float64)
    precision = prior_precision + x.T @ x / NOISE_STD**2
    cov = torch.linalg.inv(precision)
    cov = (cov + cov.T) / 2  # symmetric to the last bit, for the Cholesky factor
    mean = cov @ (prior_precision @ w0 + x.T @ y / NOISE_STD**2)
    return Posterior(mean, cov)


# ---------------------------------------------------------------- choices


def choices(arch: Arch) -> list[str]:
    """The choices ``arch`` is made of, one entry per layer (or branch) and choice, in order:
    ``op:<op>`` and ``<field>:<value>`` for each of the op's fields (``OP_FIELDS``), ``skip`` for
    a second input; a branch's ``type:<type>``, ``channels``, ``width``, ``pool``, ``activation``."""
    out: list[str] = []
    if arch.layers is not None:
        fields = OP_FIELDS.get(arch.space, {})
        for layer in arch.layers:
            out.append(f"op:{layer.op}")
            out += [f"{name}:{getattr(layer, name)}" for name in fields.get(layer.op, ())]
            if layer.src2 is not None:
                out.append("skip")
    if arch.cell is not None:
        for branch in arch.cell.branches:
            out += [
                f"type:{branch.type}",
                f"channels:{branch.channels}",
                f"width:{branch.width}",
                f"pool:{branch.pool}",
                f"activation:{branch.activation}",
            ]
    return out


def vocabulary(space: LayerSpace | ModuleSpace) -> tuple[str, ...]:
    """Every choice a network of ``space`` can be made of (``choices``), in a fixed order."""
    keys: list[str] = []
    if isinstance(space, LayerSpace):
        for op in space.ops:
            keys.append(f"op:{op}")
            for name in OP_FIELDS[space.name][op]:
                keys += [f"{name}:{v}" for v in field_values(space, op, name)]
        keys.append("skip")
    else:
        keys += [f"type:{t}" for t in space.branch_types]
        keys += [f"channels:{v}" for v in space.channels] + [f"width:{v}" for v in space.widths]
        keys += [f"pool:{v}" for v in space.pool_widths] + [f"activation:{v}" for v in space.activations]
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class Encoder:
    """``φ(X)``: the five analytic features, then one count per choice of the space's vocabulary
    (a choice off the vocabulary, from a user's starting network, counts nowhere)."""

    keys: tuple[str, ...]

    @classmethod
    def for_space(cls, space: LayerSpace | ModuleSpace) -> Encoder:
        return cls(vocabulary(space))

    @property
    def prior_mean(self) -> list[float]:
        return [*PRIOR_MEAN, *(0.0 for _ in self.keys)]

    @property
    def prior_std(self) -> list[float]:
        return [*PRIOR_STD, *(CHOICE_STD for _ in self.keys)]

    def encode(self, arch: Arch, params: float, flops: float, intensity: float) -> list[float]:
        index = {k: i for i, k in enumerate(self.keys)}
        counts = [0.0] * len(self.keys)
        for choice in choices(arch):
            if choice in index:
                counts[index[choice]] += 1.0
        return [*features(params, flops, arch.depth, intensity), *counts]

    def fit(self, phi: Sequence[Sequence[float]], accuracy: Sequence[float]) -> Posterior:
        return fit(phi, accuracy, self.prior_mean, self.prior_std)

    def draw(self, posterior: Posterior, generator: torch.Generator) -> torch.Tensor:
        """A Thompson draw of the analytic weights with the choices' weights at their posterior mean:
        dozens of choice counts, each drawn, would drown the analytic ranking in noise before any
        evidence; at their mean they only move a ranking once children have shown an effect."""
        weights = posterior.draw(generator)
        weights[len(FEATURES) :] = posterior.mean[len(FEATURES) :]
        return weights
