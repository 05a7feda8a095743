"""The resource-aware reward (EPNAS Eq. 2–3, RENA Eq. 3).

    V_i = max( max(0, U_i / C_ui − 1),  max(0, C_li / U_i − 1) )
    r   = P · Π_i p_i ** V_i

``P`` is validation accuracy, ``U_i`` the metric, ``C_li``/``C_ui`` the optional
lower/upper bounds and ``p_i`` the base penalty (0.9).  A model is feasible when
every ``V_i`` is 0, and then ``r = P``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from epnas.metrics import Metrics
from epnas.spec import Constraint


@dataclass(frozen=True)
class Reward:
    reward: float
    feasible: bool
    violations: dict[str, float] = field(default_factory=dict)


def violation(usage: float, lower: float | None, upper: float | None) -> float:
    """``V`` of EPNAS Eq. 2; a non-positive usage under a lower bound is infinitely violating."""
    over = max(0.0, usage / upper - 1) if upper is not None else 0.0
    if lower is None:
        under = 0.0
    elif usage <= 0:
        under = math.inf
    else:
        under = max(0.0, lower / usage - 1)
    return max(over, under)


def compute_reward(accuracy: float, metrics: Metrics, constraints: list[Constraint]) -> Reward:
    """``r = P · Π p_i^V_i`` and whether every constraint holds."""
    factor = 1.0
    violations: dict[str, float] = {}
    for constraint in constraints:
        v = violation(metrics.value(constraint.metric), constraint.min, constraint.max)
        violations[constraint.metric] = v
        factor *= 0.0 if math.isinf(v) else constraint.penalty**v
    return Reward(reward=accuracy * factor, feasible=all(v == 0 for v in violations.values()), violations=violations)
