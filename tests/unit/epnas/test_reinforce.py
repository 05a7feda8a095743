"""REINFORCE math against numbers computed by hand; batch equals one-by-one."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from epnas.reinforce import MovingBaseline, reinforce_loss, returns_to_go, update


def test_returns_to_go_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    # row 0: 1+2+3, 2+3, 3;  row 1: 0.5+0-1, 0-1, -1
    assert returns_to_go(rewards).tolist() == [[6.0, 5.0, 3.0], [-0.5, -1.0, -1.0]]


def test_moving_baseline_by_hand():
    baseline = MovingBaseline(0.9)
    first = baseline.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert first.tolist() == pytest.approx([2.0, 3.0])  # the first update is the mean
    second = baseline.update(torch.tensor([[5.0, 0.0], [7.0, 0.0], [0.0, 0.0]]))
    # step 0: 0.9·2 + 0.1·4 = 2.2;  step 1: 0.9·3 + 0.1·0 = 2.7
    assert second.tolist() == pytest.approx([2.2, 2.7])
    # a longer episode starts the new step at its mean
    third = baseline.update(torch.tensor([[0.0, 0.0, 8.0]]))
    assert third.tolist() == pytest.approx([0.9 * 2.2, 0.9 * 2.7, 8.0])
    restored = MovingBaseline(0.9, json.loads(json.dumps(baseline.values)))
    assert restored.values == baseline.values
    assert restored.tensor(2).tolist() == pytest.approx([0.9 * 2.2, 0.9 * 2.7])


def test_moving_baseline_rejects_a_bad_decay():
    with pytest.raises(ValueError):
        MovingBaseline(1.0)


class TwoParameterPolicy(nn.Module):
    """A toy whose log-probabilities are simple functions of θ = (a, c):
    log π(a_t,n) = a·x_t,n + c·y_t,n with fixed features x, y."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.5, -1.0]))
        self.x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
        self.y = torch.tensor([[0.0, 1.0], [2.0, 4.0]])

    def log_probs(self) -> torch.Tensor:
        return self.theta[0] * self.x + self.theta[1] * self.y


def test_reinforce_gradient_on_a_two_by_two_toy():
    # N = 2 branches, T = 2 steps.
    # rewards r = [[1, 2], [0, 4]] → R = [[3, 2], [4, 4]];  baseline b = [3, 1]
    # advantages A = R − b = [[0, 1], [1, 3]]
    # g = 1/N Σ A_tn ∇ log π_tn,  ∇_a log π = x,  ∇_c log π = y
    #   g_a = ½ (0·1 + 1·2 + 1·3 + 3·(−1)) = ½ · 2 = 1
    #   g_c = ½ (0·0 + 1·1 + 1·2 + 3·4)    = ½ · 15 = 7.5
    # loss = −(g-shaped surrogate) → ∇loss = −g = (−1, −7.5)
    policy = TwoParameterPolicy()
    returns = returns_to_go(torch.tensor([[1.0, 2.0], [0.0, 4.0]]))
    assert returns.tolist() == [[3.0, 2.0], [4.0, 4.0]]
    loss = reinforce_loss(policy.log_probs(), returns, torch.tensor([3.0, 1.0]))
    loss.backward()
    assert policy.theta.grad.tolist() == pytest.approx([-1.0, -7.5])


def test_entropy_bonus_by_hand():
    # entropies H = [[h, 2h], [0, h]] with h = θ² at θ = 3 → Σ H = 4θ², ∂/∂θ = 8θ = 24
    # bonus term = −w · (1/N) Σ H → ∂loss/∂θ = −0.5 · ½ · 24 = −6; the pg term is 0 here
    theta = torch.tensor(3.0, requires_grad=True)
    h = theta**2
    entropies = torch.stack([torch.stack([h, 2 * h]), torch.stack([h * 0, h])])
    log_probs = torch.zeros(2, 2)
    loss = reinforce_loss(log_probs, torch.ones(2, 2), torch.zeros(2), entropies, entropy_weight=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(-0.5 * 0.5 * 36.0)
    assert theta.grad.item() == pytest.approx(-6.0)


def test_advantages_carry_no_gradient():
    # A = R − b = 2θ − θ = θ = 2 is a constant: loss = −φ·2, so ∂/∂φ = −2 and θ gets nothing
    theta = torch.tensor(2.0, requires_grad=True)
    phi = torch.tensor(0.3, requires_grad=True)
    reinforce_loss(phi.view(1, 1), 2 * theta.view(1, 1), theta.view(1)).backward()
    assert phi.grad.item() == pytest.approx(-2.0)
    assert theta.grad is None


def test_batch_equals_the_sum_of_one_by_one_losses():
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(3, 4, generator=generator)
    returns = torch.randn(3, 4, generator=generator)
    entropies = torch.rand(3, 4, generator=generator)
    baseline = torch.randn(4, generator=generator)
    batch = reinforce_loss(log_probs, returns, baseline, entropies, 0.1)
    one_by_one = sum(
        reinforce_loss(
            log_probs[n, t].view(1, 1), returns[n, t].view(1, 1), baseline[t].view(1), entropies[n, t].view(1, 1), 0.1
        )
        for n in range(3)
        for t in range(4)
    )
    # each single loss divides by N = 1, the batch by N = 3
    assert batch.item() == pytest.approx(one_by_one.item() / 3, abs=1e-6)


def test_update_steps_the_optimizer_and_reports():
    policy = TwoParameterPolicy()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    returns = returns_to_go(torch.tensor([[1.0, 2.0], [0.0, 4.0]]))
    entropies = torch.full((2, 2), 0.25)
    stats = update(policy, optimizer, policy.log_probs(), returns, torch.tensor([3.0, 1.0]), entropies, 0.0)
    # θ ← θ − 0.1·∇loss = (0.5, −1) + 0.1·(1, 7.5)
    assert policy.theta.tolist() == pytest.approx([0.6, -0.25])
    assert stats["grad_norm"] == pytest.approx((1.0 + 7.5**2) ** 0.5)
    assert stats["entropy"] == pytest.approx(0.25)
    # loss at θ = (0.5, −1): log π = [[0.5, 0], [−0.5, −4.5]]; −½ Σ log π·A = −½ (0 + 0 − 0.5 − 13.5) = 7
    assert stats["loss"] == pytest.approx(7.0)
