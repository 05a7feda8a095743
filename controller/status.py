"""What an ArchitectureSearch's ``status`` should say (pure: no cluster, no store, no clock).

Phases: ``Pending`` (accepted, loop not started) → ``Running`` → ``Succeeded`` | ``Failed``.
Conditions (``type``, ``status``, ``reason``, ``message``, ``lastTransitionTime``):
``Running``, ``Succeeded``, ``Failed``, ``SpecChangeRefused``.  ``lastTransitionTime`` only
changes when a condition's ``status`` does.

Spec changes after a search started are refused (the store's ``search.yaml`` stays the source
of truth) except ``spec.parallelism``, which only bounds how many Jobs run at once and so
changes neither the children nor their results: ``refused_changes`` lists the rest.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal, TypedDict

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
LIVE_FIELDS = frozenset({"parallelism"})


class Reason(str, Enum):
    STARTED = "Started"
    STEP_COMPLETED = "StepCompleted"
    COMPLETED = "Completed"
    INVALID_SPEC = "InvalidSpec"
    STORE_MISSING = "StoreMissing"
    STORE_UNAVAILABLE = "StoreUnavailable"
    LOOP_ERROR = "LoopError"
    SPEC_CHANGED = "SpecChanged"
    SPEC_UNCHANGED = "SpecUnchanged"
    TOO_MANY_FAILURES = "TooManyFailures"


class Condition(TypedDict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    lastTransitionTime: str


def set_condition(conditions: list[Condition], *, kind: str, status: bool, reason: Reason | str, message: str, now: str) -> list[Condition]:
    """``conditions`` with ``kind`` set; its ``lastTransitionTime`` is kept when ``status`` did not change."""
    text = "True" if status else "False"
    old = next((c for c in conditions if c["type"] == kind), None)
    since = old["lastTransitionTime"] if old and old["status"] == text else now
    new: Condition = {"type": kind, "status": text, "reason": str(getattr(reason, "value", reason)), "message": message, "lastTransitionTime": since}
    return [c for c in conditions if c["type"] != kind] + [new]


def phase_conditions(conditions: list[Condition], *, phase: Phase, reason: Reason | str, message: str, now: str) -> list[Condition]:
    """The Running / Succeeded / Failed conditions that go with ``phase``: the one matching the
    phase carries ``reason`` and ``message``; the others are False with the phase as reason."""
    out = conditions
    for kind in ("Running", "Succeeded", "Failed"):
        if kind == phase:
            out = set_condition(out, kind=kind, status=True, reason=reason, message=message, now=now)
        else:
            out = set_condition(out, kind=kind, status=False, reason=phase, message=f"the search is {phase}", now=now)
    return out


def from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """Progress fields of the status from a loop summary (``epnas.search.summarize``)."""
    best = summary.get("best") or {}
    feasible = summary.get("bestFeasible") or {}
    counts = summary["children"]
    out: dict[str, Any] = {
        "episode": summary["episode"],
        "step": summary["step"],
        "feasibleCount": summary["feasibleCount"],
        "children": {"succeeded": counts["succeeded"], "failed": counts["failed"], "cached": counts["cached"]},
        "store": summary.get("store"),
    }
    if best:
        out.update(
            bestChild=best["child"],
            bestHash=best["hash"],
            bestAccuracy=best["valAccuracy"],
            bestReward=best["reward"],
            bestMetrics=best["metrics"],
            bestArchitecture=best["arch"],
        )
    if feasible:
        out.update(bestFeasibleChild=feasible["child"], bestFeasibleHash=feasible["hash"],
                   bestFeasibleAccuracy=feasible["valAccuracy"], bestFeasibleReward=feasible["reward"])
    final = summary.get("finalModel")
    if final:  # finalTraining's best model: what `epnas export` takes by default
        out["finalModel"] = {"child": final["child"], "uri": final["uri"], "valAccuracy": final["valAccuracy"],
                             "testAccuracy": final["testAccuracy"], "metrics": final.get("metrics", {})}
    return out


def refused_changes(original: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Top-level ``spec`` fields (camelCase) that differ between the search as it started and the
    live object, except the ones safe to change live (``LIVE_FIELDS``); sorted."""
    keys = (set(original) | set(live)) - LIVE_FIELDS
    return sorted(k for k in keys if original.get(k) != live.get(k))
