"""Typed records the search loop keeps: one ``ChildRecord`` per child, trajectories for learning.

Nothing here does I/O; the loop stores these as JSON (``dataclasses.asdict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ChildStatus = Literal["succeeded", "failed", "cached"]


@dataclass
class ChildRecord:
    """One child in the history: where it came from, what it is, how it did.

    ``action`` is the last morph's action; ``moves`` lists every morph from the parent to
    this child (one for the paper's strategies, up to ``screening.maxMorphs`` for ``epnas``),
    each ``{"action", "applied", "degraded"}``.  ``status`` is ``cached`` when the same
    network (same ``hash``) was trained before and its result stands for this child.
    """

    child: str
    episode: int
    step: int
    branch: int
    parent: str
    hash: str
    arch: dict
    action: dict | None
    applied: str
    degraded: str | None
    status: ChildStatus
    val_accuracy: float = 0.0
    test_accuracy: float = 0.0
    reward: float = 0.0
    feasible: bool = False
    metrics: dict = field(default_factory=dict)
    violations: dict = field(default_factory=dict)
    exit_code: int | None = None
    reason: str = ""
    train_seconds: float = 0.0
    moves: list[dict] = field(default_factory=list)
    cached_from: str | None = None
    parent_hash: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChildRecord:
        """A stored record; fields added later take their defaults."""
        return cls(**data)


def ranked_children(records: list[ChildRecord]) -> list[ChildRecord]:
    """Evaluated children, each network once: feasible ones by validation accuracy, then the rest
    by reward (ties: the earlier child)."""
    best: dict[str, ChildRecord] = {}
    key = lambda r: (not r.feasible, -(r.val_accuracy if r.feasible else r.reward), r.child)  # noqa: E731
    for r in sorted((r for r in records if r.status != "failed"), key=key):
        best.setdefault(r.hash, r)
    return list(best.values())


@dataclass(frozen=True)
class Move:
    """One morph: ``action`` applied to ``arch`` (the network before it, as JSON)."""

    arch: dict
    action: dict


@dataclass(frozen=True)
class TrajectoryStep:
    """What a branch did at one step, for the policy update: its morphs and the child's reward."""

    moves: tuple[Move, ...]
    reward: float

    def to_json(self) -> dict[str, Any]:
        return {"moves": [{"arch": m.arch, "action": m.action} for m in self.moves], "reward": self.reward}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrajectoryStep:
        """Also reads the one-morph form of earlier checkpoints, ``{"arch", "action", "reward"}``."""
        if "moves" in data:
            moves = tuple(Move(m["arch"], m["action"]) for m in data["moves"])
        else:
            moves = (Move(data["arch"], data["action"]),)
        return cls(moves, float(data["reward"]))
