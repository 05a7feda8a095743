"""What an ArchitectureSearch's ``status`` should say (pure: no cluster, no store, no clock).

Phases: ``Pending`` (accepted, loop not started) → ``Running`` → ``Succeeded`` | ``Failed``.
Conditions (``type``, ``status``, ``reason``, ``message``, ``lastTransitionTime``), as Jobs have
them: ``Running`` (True while the loop runs; False once it ended, reason = the final phase),
``Succeeded`` or ``Failed`` (present only once reached, True; removed when an extension runs
the search again), ``SpecChangeRefused``, ``Degraded`` (a transient error is being waited out;
False with reason ``Recovered`` once the search went on), ``NoFeasibleChild`` (True when a
search ended without a child that meets every constraint). ``lastTransitionTime`` only changes
when a condition's ``status`` does. ``SearchStatus`` is the status's schema (in the CRD, so
``kubectl explain architecturesearch.status`` describes every field).

Which spec changes a started search takes is ``epnas.pinning``'s rule, the same as ``epnas
search``'s: ``spec.parallelism`` live, extensions (budget up, final training) from the
checkpoint, anything else refused with the fields named (condition ``SpecChangeRefused``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, Field

from epnas.records import SearchSummary
from epnas.report import arch_text
from epnas.search import position_text

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


class Reason(StrEnum):
    STARTED = "Started"
    STEP_COMPLETED = "StepCompleted"
    COMPLETED = "Completed"
    INVALID_SPEC = "InvalidSpec"
    STORE_MISSING = "StoreMissing"
    STORE_UNAVAILABLE = "StoreUnavailable"
    LOOP_ERROR = "LoopError"
    ARGO_UNAVAILABLE = "ArgoUnavailable"
    SPEC_CHANGED = "SpecChanged"
    SPEC_UNCHANGED = "SpecUnchanged"
    TOO_MANY_FAILURES = "TooManyFailures"
    STORE_NOT_ALLOWED = "StoreNotAllowed"
    NOTHING_TO_RESUME = "NothingToResume"
    TRANSIENT_ERROR = "TransientError"
    RECOVERED = "Recovered"
    EXTENDED = "Extended"
    NO_FEASIBLE_CHILD = "NoFeasibleChild"
    FEASIBLE_CHILD_FOUND = "FeasibleChildFound"


class Condition(TypedDict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    lastTransitionTime: str


def set_condition(
    conditions: list[Condition], *, kind: str, status: bool, reason: Reason | str, message: str, now: str
) -> list[Condition]:
    """``conditions`` with ``kind`` set; its ``lastTransitionTime`` is kept when ``status`` did not change."""
    text: Literal["True", "False"] = "True" if status else "False"
    old = next((c for c in conditions if c["type"] == kind), None)
    since = old["lastTransitionTime"] if old and old["status"] == text else now
    new: Condition = {
        "type": kind,
        "status": text,
        "reason": str(getattr(reason, "value", reason)),
        "message": message,
        "lastTransitionTime": since,
    }
    return [c for c in conditions if c["type"] != kind] + [new]


def phase_conditions(
    conditions: list[Condition], *, phase: Phase, reason: Reason | str, message: str, now: str
) -> list[Condition]:
    """The Running / Succeeded / Failed conditions that go with ``phase``, as a Job's read:
    Running or Pending → ``Running`` True (Pending: False) with ``reason`` and ``message``, and no
    ``Succeeded``/``Failed``; Succeeded or Failed → that condition True with ``reason`` and
    ``message``, the other absent, and ``Running`` False with the phase as reason."""
    terminal = phase in ("Succeeded", "Failed")
    out = [c for c in conditions if c["type"] not in ("Succeeded", "Failed") or c["type"] == phase]
    if terminal:
        out = set_condition(out, kind=phase, status=True, reason=reason, message=message, now=now)
        verb = "succeeded" if phase == "Succeeded" else "failed"
        return set_condition(out, kind="Running", status=False, reason=phase, message=f"the search {verb}", now=now)
    return set_condition(out, kind="Running", status=phase == "Running", reason=reason, message=message, now=now)


def camel(key: str) -> str:
    """``size_bytes`` → ``sizeBytes`` (status keys are camelCase, like the rest of the API)."""
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def accuracy(value: float) -> float:
    """Accuracies in the status are rounded to 4 decimals (0.5967, not 0.5966666666666667)."""
    return round(float(value), 4)


def from_summary(summary: SearchSummary) -> dict[str, Any]:
    """Progress fields of the status from a loop summary (``epnas.search.summarize``)."""
    best, feasible = summary.get("best"), summary.get("bestFeasible")
    counts = summary["children"]
    finished = counts["succeeded"] + counts["failed"] + counts["cached"]
    out: dict[str, Any] = {
        "episode": summary["episode"],
        "step": summary["step"],
        "position": position_text(summary),
        "plannedChildren": summary.get("plannedChildren"),
        "progress": f"{finished}/{summary['plannedChildren']}" if summary.get("plannedChildren") else str(finished),
        "feasibleCount": summary["feasibleCount"],
        "children": {"succeeded": counts["succeeded"], "failed": counts["failed"], "cached": counts["cached"]},
        "store": summary.get("store"),
    }
    if best:
        out.update(
            bestChild=best["child"],
            bestHash=best["hash"],
            bestAccuracy=accuracy(best["valAccuracy"]),
            bestReward=round(float(best["reward"]), 4),
            bestMetrics={camel(k): v for k, v in best["metrics"].items()},
            bestArchitecture=arch_text(best["arch"]),
        )
    if feasible:
        out.update(
            bestFeasibleChild=feasible["child"],
            bestFeasibleHash=feasible["hash"],
            bestFeasibleAccuracy=accuracy(feasible["valAccuracy"]),
            bestFeasibleReward=round(float(feasible["reward"]), 4),
        )
    final = summary.get("finalModel")
    if final:  # finalTraining's best model: what `epnas export` takes by default
        out["finalModel"] = {
            "child": final["child"],
            "uri": final["uri"],
            "valAccuracy": accuracy(final["valAccuracy"]),
            "testAccuracy": accuracy(final["testAccuracy"]),
            "metrics": {camel(k): v for k, v in (final.get("metrics") or {}).items()},
        }
    return out


def no_feasible_message(summary: SearchSummary) -> str:
    """Why a search that ended has no model to ship, with its best infeasible child."""
    best = summary.get("best")
    tried = summary["children"]["succeeded"] + summary["children"]["cached"]
    text = f"none of the {tried} measured children met every constraint"
    if best:
        text += f"; the highest-reward child {best['child']} reached validation accuracy {best['valAccuracy']:.4f} but is infeasible"
    return text + "; loosen spec.constraints or raise spec.budget"


class _Status(BaseModel):
    """The status's schema only (``controller.crd`` puts it in the CRD); the status is written as dicts."""


class ChildCounts(_Status):
    """Children by outcome so far."""

    succeeded: int = Field(description="Children trained and measured.")
    failed: int = Field(description="Children whose trainer failed (they count against maxFailedChildren).")
    cached: int = Field(
        description="Children whose architecture was trained before in this search; the earlier result was reused."
    )


class FinalModel(_Status):
    """The best model of final training (spec.finalTraining): what `epnas export` takes by default."""

    child: str = Field(description="The searched child it was retrained from.")
    uri: str = Field(description="Where its weights, architecture and result are in the store.")
    valAccuracy: float = Field(description="Validation accuracy after final training, 0 to 1.")
    testAccuracy: float = Field(description="Test accuracy after final training, 0 to 1.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Its measured metrics (params, sizeBytes, flops, bytesMoved, computeIntensity).",
    )


class StatusCondition(_Status):
    """One condition, as Kubernetes objects have them."""

    type: str = Field(description="Running, Succeeded, Failed, SpecChangeRefused, Degraded or NoFeasibleChild.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One CamelCase word saying why (for example Completed, TooManyFailures, TransientError)."
    )
    message: str = Field(description="What happened, in words.")
    lastTransitionTime: str = Field(description="When status last changed (RFC 3339).")


class SearchStatus(_Status):
    """What the controller reports about the search; the controller alone writes it."""

    phase: Phase | None = Field(None, description="Pending (accepted, not started), Running, Succeeded or Failed.")
    reason: str | None = Field(
        None,
        description="Why the search is in its phase: the reason of its Running, Succeeded or Failed condition (for example StepCompleted, Completed, TooManyFailures, StoreMissing).",
    )
    message: str | None = Field(None, description="The same condition's message.")
    observedGeneration: int | None = Field(None, description="The spec generation the controller last acted on.")
    startTime: str | None = Field(None, description="When the search loop first started (RFC 3339).")
    completionTime: str | None = Field(
        None, description="When the search ended, Succeeded or Failed (RFC 3339); absent while it runs."
    )
    episode: int | None = Field(None, description="Episodes completed; while running, the 0-based episode in progress.")
    step: int | None = Field(None, description="Steps completed in the current episode.")
    position: str | None = Field(
        None,
        description="Where the search stands, in words: 'episode 2/3 (1 of 3 steps done)' or 'finished after 3 episodes'.",
    )
    plannedChildren: int | None = Field(
        None, description="Children the budget plans: episodes x stepsPerEpisode x branches."
    )
    progress: str | None = Field(None, description="Children finished of those planned, e.g. 12/36.")
    feasibleCount: int | None = Field(None, description="Children that met every constraint.")
    children: ChildCounts | None = Field(None, description="Children by outcome so far.")
    store: str | None = Field(
        None, description="Where this search's state lives: the store URI with namespace, name and uid appended."
    )
    bestChild: str | None = Field(None, description="The child with the highest reward, feasible or not.")
    bestHash: str | None = Field(None, description="Its architecture hash.")
    bestAccuracy: float | None = Field(None, description="Its validation accuracy, 0 to 1.")
    bestReward: float | None = Field(None, description="Its reward (accuracy penalised by constraint violations).")
    bestMetrics: dict[str, float] | None = Field(
        None, description="Its measured metrics: params, sizeBytes, flops, bytesMoved, computeIntensity."
    )
    bestArchitecture: str | None = Field(
        None, description="Its layers on one line; the full architecture is arch.json under the child in the store."
    )
    bestFeasibleChild: str | None = Field(None, description="The most accurate child that meets every constraint.")
    bestFeasibleHash: str | None = Field(None, description="Its architecture hash.")
    bestFeasibleAccuracy: float | None = Field(
        None, description="Its validation accuracy, 0 to 1 (the Best-Acc column)."
    )
    bestFeasibleReward: float | None = Field(None, description="Its reward.")
    finalModel: FinalModel | None = Field(None, description="The best model of final training, once it ran.")
    conditions: list[StatusCondition] | None = Field(None, description="The search's conditions.")
