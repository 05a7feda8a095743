"""Typed records the search loop keeps: one ``ChildRecord`` per child, the plan of a step
(``PlanItem``), trajectories for learning (``TrajectoryStep``) and the summary
(``SearchSummary``).

Nothing here does I/O; the loop stores these as JSON (``dataclasses.asdict`` or ``to_json``).
Each ``to_json`` writes the same keys the files have always had, and each ``from_json`` also
reads the forms earlier versions wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

ChildStatus = Literal["succeeded", "failed", "cached"]
"""``cached``: the same network (same ``Arch.hash``) was trained before and its result stands
for this child (``ChildRecord.cached_from`` names that child)."""

LoopPhase = Literal["Running", "Succeeded", "Failed"]
"""The phases the loop writes into its summary (a controller adds ``Pending`` before it starts)."""

ArchJSON = dict[str, Any]
"""An architecture as JSON, the form the store keeps: ``Arch.model_dump(mode="json",
exclude_none=True)``; ``epnas.arch.parse_arch`` reads it back."""

ActionJSON = dict[str, Any]
"""A morph action as JSON: ``epnas.morph.Action.to_dict()``; ``Action.from_dict`` reads it back."""


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
    arch: ArchJSON
    action: ActionJSON | None
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
class PlannedMove:
    """One morph of a planned child: ``action`` applied to ``arch`` (the network before it);
    ``applied`` is what it did (``insert``, ``keep`` …), ``degraded`` why it did less, if it did."""

    arch: ArchJSON
    action: ActionJSON
    applied: str
    degraded: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "action": self.action, "applied": self.applied, "degraded": self.degraded}

    def record(self) -> dict[str, Any]:
        """The move as a ``ChildRecord.moves`` entry: ``{"action", "applied", "degraded"}``."""
        return {"action": self.action, "applied": self.applied, "degraded": self.degraded}


@dataclass(frozen=True)
class PlanItem:
    """One child of a step's plan (``state/pending-step.json``), stored before any child starts
    so that a restarted run trains exactly the same children.

    ``arch`` is the child, ``parent_arch`` its branch's network; ``action``, ``applied`` and
    ``degraded`` summarise ``moves`` (the last action, every ``applied`` joined by ``+``, the
    first degradation)."""

    child: str
    parent_arch: ArchJSON
    arch: ArchJSON
    moves: tuple[PlannedMove, ...]

    @property
    def action(self) -> ActionJSON:
        return self.moves[-1].action

    @property
    def applied(self) -> str:
        return "+".join(m.applied for m in self.moves)

    @property
    def degraded(self) -> str | None:
        return next((m.degraded for m in self.moves if m.degraded), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "child": self.child,
            "parent_arch": self.parent_arch,
            "arch": self.arch,
            "action": self.action,
            "applied": self.applied,
            "degraded": self.degraded,
            "moves": [m.to_json() for m in self.moves],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanItem:
        """Also reads plans written before multi-morph children: no ``moves``, one morph from
        ``parent_arch`` described by ``action``, ``applied`` and ``degraded``."""
        moves = data.get("moves") or [
            {
                "arch": data["parent_arch"],
                "action": data["action"],
                "applied": data["applied"],
                "degraded": data["degraded"],
            }
        ]
        return cls(
            child=data["child"],
            parent_arch=data["parent_arch"],
            arch=data["arch"],
            moves=tuple(PlannedMove(m["arch"], m["action"], m["applied"], m["degraded"]) for m in moves),
        )


@dataclass(frozen=True)
class Move:
    """One morph: ``action`` applied to ``arch`` (the network before it, as JSON)."""

    arch: ArchJSON
    action: ActionJSON


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


# ---------------------------------------------------------------- the summary (state/summary.json)


class ChildCounts(TypedDict):
    """The history by status; ``trained`` is every child handed to an executor (not cached)."""

    total: int
    succeeded: int
    cached: int
    failed: int
    trained: int


class ChildBrief(TypedDict):
    """A child in the summary (``best``, ``bestFeasible``)."""

    child: str
    hash: str
    valAccuracy: float
    testAccuracy: float
    reward: float
    feasible: bool
    metrics: dict[str, Any]
    arch: ArchJSON


class FinalEntry(TypedDict):
    """One winner trained again by ``finalTraining`` (``summary.final``, ``summary.finalModel``):
    the accuracies and run facts when it ``succeeded``, a ``reason`` when it ``failed``."""

    child: str
    dir: str
    uri: str
    searchValAccuracy: float
    metrics: dict[str, Any]
    status: Literal["succeeded", "failed"]
    reason: NotRequired[str]
    valAccuracy: NotRequired[float]
    testAccuracy: NotRequired[float]
    epochsRun: NotRequired[int]
    trainSeconds: NotRequired[float]


class SearchSummary(TypedDict):
    """The search at a glance, as ``state/summary.json`` holds it (camelCase keys, JSON as is):
    written by ``epnas.search.summarize`` after every step, read by ``epnas status``, ``epnas
    report``, ``epnas export`` and the controller's status and metrics.  ``reason`` is there when
    the phase is ``Failed``; ``final`` and ``finalModel`` once final training ran."""

    search: str
    phase: LoopPhase
    episode: int
    step: int
    episodes: int
    stepsPerEpisode: int
    plannedChildren: int
    children: ChildCounts
    feasibleCount: int
    best: ChildBrief | None
    bestFeasible: ChildBrief | None
    store: str
    reason: NotRequired[str]
    final: NotRequired[list[FinalEntry]]
    finalModel: NotRequired[FinalEntry | None]
