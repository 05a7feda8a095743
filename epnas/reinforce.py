"""REINFORCE for the EPNAS policy (EPNAS §3.1, RENA §3), as pure named steps.

Storage shapes, stated once: an episode has ``N`` branches and ``T`` steps;
``rewards``, ``returns``, ``log_probs`` and ``entropies`` are ``[N, T]``; the baseline
is ``[T]`` (one moving average per step).

    R_{t,n} = Σ_{t' ≥ t} r_{t',n}                                  (returns_to_go)
    b_t     ← d·b_t + (1 − d)·mean_n R_{t,n}                        (MovingBaseline)
    g       = 1/N Σ_n Σ_t ∇ log π(a_{t,n} | X_{t,n}) (R_{t,n} − b_t)  (reinforce_loss: g = −∇loss)

The loop updates the baseline with the episode's returns first and then takes the
advantages against it (ENAS's order), so the first episode is centred on its own mean.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def returns_to_go(rewards: Tensor) -> Tensor:
    """``R[n, t] = Σ_{t' ≥ t} rewards[n, t']`` for ``rewards`` of shape ``[N, T]``."""
    return rewards.flip(-1).cumsum(-1).flip(-1)


class MovingBaseline:
    """Per-step moving average of the return: ``b_t ← decay·b_t + (1 − decay)·mean_n R_{t,n}``.

    The first update of step ``t`` sets ``b_t = mean_n R_{t,n}``.  ``values`` is a plain
    ``list[float]`` so the checkpoint can store it as JSON.
    """

    def __init__(self, decay: float, values: Iterable[float] = ()) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.values: list[float] = [float(v) for v in values]

    def update(self, returns: Tensor) -> Tensor:
        """Fold ``returns [N, T]`` into the averages; returns the updated baseline ``[T]``."""
        step_means = returns.detach().double().mean(dim=0).tolist()
        for t, mean in enumerate(step_means):
            if t < len(self.values):
                self.values[t] = self.decay * self.values[t] + (1 - self.decay) * mean
            else:
                self.values.append(mean)
        return self.tensor(len(step_means), dtype=returns.dtype)

    def tensor(self, steps: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The first ``steps`` averages as a tensor ``[T]`` (0 for a step never seen)."""
        padded = self.values[:steps] + [0.0] * max(0, steps - len(self.values))
        return torch.tensor(padded, dtype=dtype)


def reinforce_loss(
    log_probs: Tensor,
    returns: Tensor,
    baseline: Tensor,
    entropies: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> Tensor:
    """``loss = −1/N Σ_n Σ_t log π_{t,n}·(R_{t,n} − b_t) − w·1/N Σ_n Σ_t H_{t,n}``.

    ``−∇loss`` is the EPNAS gradient ``g`` plus the entropy bonus; the advantages are
    constants (no gradient flows into returns or baseline).
    """
    branches = log_probs.shape[0]
    advantages = (returns - baseline[None, :]).detach()
    pg_loss = -(log_probs * advantages).sum() / branches
    if entropies is None or entropy_weight == 0:
        return pg_loss
    entropy_bonus = entropies.sum() / branches
    return pg_loss - entropy_weight * entropy_bonus


def update(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    log_probs: Tensor,
    returns: Tensor,
    baseline: Tensor,
    entropies: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> dict[str, float]:
    """One REINFORCE step: zero_grad → backward → step.

    Returns ``{"loss", "entropy" (mean over N·T, 0 without entropies), "grad_norm"}``
    (the L2 norm of every parameter's gradient, before the step).
    """
    loss = reinforce_loss(log_probs, returns, baseline, entropies, entropy_weight)
    optimizer.zero_grad()
    loss.backward()
    grads = [p.grad.detach().flatten() for p in policy.parameters() if p.grad is not None]
    grad_norm = torch.cat(grads).norm().item() if grads else 0.0
    optimizer.step()
    mean_entropy = entropies.detach().mean().item() if entropies is not None else 0.0
    return {"loss": loss.item(), "entropy": mean_entropy, "grad_norm": grad_norm}
