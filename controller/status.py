"""What an ArchitectureSearch's ``status`` should say (pure: no cluster, no store, no clock).

Phases: ``Pending`` (accepted, loop not started) → ``Running`` → ``Succeeded`` | ``Failed``.
Conditions (``type``, ``status``, ``reason``, ``message``, ``lastTransitionTime``):
``Running``, ``Succeeded``, ``Failed``, ``SpecChangeRefused``, ``Degraded`` (a transient error
is being waited out; False with reason ``Recovered`` once the search went on).  ``lastTransitionTime`` only
changes when a condition's ``status`` does.

Which spec changes a started search takes is ``epnas.pinning``'s rule, the same as ``epnas
search``'s: ``spec.parallelism`` live, extensions (budget up, final training) from the
checkpoint, anything else refused with the fields named (condition ``SpecChangeRefused``).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal, TypedDict

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


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
    STORE_NOT_ALLOWED = "StoreNotAllowed"
    NOTHING_TO_RESUME = "NothingToResume"
    TRANSIENT_ERROR = "TransientError"
    RECOVERED = "Recovered"
    EXTENDED = "Extended"


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


