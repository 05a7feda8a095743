"""EPNAS Eq. 2–3 against hand-computed numbers and its monotonicity."""

from __future__ import annotations

import math
import random

import pytest

from epnas.metrics import Metrics
from epnas.reward import compute_reward, violation
from epnas.spec import Constraint


def metrics(params: int = 1000, flops: int = 10_000, intensity: float = 5.0) -> Metrics:
    return Metrics(
        params=params,
        size_bytes=4 * params,
        flops=flops,
        bytes_moved=int(flops / intensity) if intensity else 0,
        compute_intensity=intensity,
    )


def test_reward_is_accuracy_when_every_constraint_holds() -> None:
    cons = [Constraint(metric="modelSize", max=2000), Constraint(metric="computeIntensity", min=2, max=10)]
    r = compute_reward(0.87, metrics(), cons)
    assert r.reward == 0.87 and r.feasible and r.violations == {"modelSize": 0.0, "computeIntensity": 0.0}


def test_by_hand() -> None:
    """size 1000 over max 500: V = 1; intensity 5 under min 20: V = 3; p = 0.9 and 0.5."""
    cons = [Constraint(metric="modelSize", max=500), Constraint(metric="computeIntensity", min=20, penalty=0.5)]
    r = compute_reward(0.8, metrics(), cons)
    assert r.reward == pytest.approx(0.8 * 0.9**1 * 0.5**3)
    assert not r.feasible


@pytest.mark.parametrize("metric, bound", [("modelSize", "max"), ("flops", "max"), ("computeIntensity", "min")])
def test_reward_strictly_decreases_as_a_violation_grows(metric: str, bound: str) -> None:
    con = Constraint(metric=metric, **{bound: 100.0})
    usages = [200, 300, 500, 1000] if bound == "max" else [50, 30, 10, 1]
    rewards = []
    for u in usages:
        m = metrics(params=int(u), flops=int(u), intensity=u)
        rewards.append(compute_reward(0.9, m, [con]).reward)
    assert all(a > b for a, b in zip(rewards, rewards[1:])), rewards


def test_matches_the_formula_on_random_inputs() -> None:
    rng = random.Random(5)
    for _ in range(500):
        m = metrics(params=rng.randint(1, 10**6), flops=rng.randint(1, 10**9), intensity=rng.uniform(0.1, 200))
        cons = []
        expected = acc = rng.random()
        for metric in ("modelSize", "flops", "computeIntensity"):
            lo = rng.choice([None, rng.uniform(0.1, 100)])
            hi = rng.choice([None, (lo or 0) + rng.uniform(1, 10**6)])
            if lo is None and hi is None:
                continue
            p = rng.uniform(0.05, 0.95)
            cons.append(Constraint(metric=metric, min=lo, max=hi, penalty=p))
            u = m.value(metric)
            v = max(max(0, u / hi - 1) if hi else 0, max(0, lo / u - 1) if lo else 0)
            expected *= p**v
        assert compute_reward(acc, m, cons).reward == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_zero_usage_under_a_lower_bound_gives_zero_reward() -> None:
    assert math.isinf(violation(0, 1.0, None))
    assert compute_reward(0.9, metrics(intensity=0.0), [Constraint(metric="computeIntensity", min=1)]).reward == 0.0
