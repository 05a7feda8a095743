"""Status computation, condition bookkeeping, spec-change refusal and event decisions (pure)."""

from __future__ import annotations

import pytest

from controller import status as st
from controller.main import decide

SUMMARY = {
    "search": "s",
    "phase": "Running",
    "episode": 1,
    "step": 2,
    "episodes": 2,
    "stepsPerEpisode": 2,
    "children": {"total": 9, "succeeded": 6, "cached": 1, "failed": 2},
    "feasibleCount": 4,
    "best": {
        "child": "e001-s01-c00",
        "hash": "h1",
        "valAccuracy": 0.9,
        "testAccuracy": 0.8,
        "reward": 0.7,
        "feasible": False,
        "metrics": {"params": 10},
        "arch": {"space": "image-layer", "layers": []},
    },
    "bestFeasible": {
        "child": "e000-s00-c01",
        "hash": "h2",
        "valAccuracy": 0.6,
        "testAccuracy": 0.5,
        "reward": 0.6,
        "feasible": True,
        "metrics": {"params": 5},
        "arch": {},
    },
    "store": "s3://b/p/s",
}


def test_from_summary() -> None:
    out = st.from_summary(SUMMARY)
    assert out["episode"] == 1 and out["step"] == 2 and out["feasibleCount"] == 4
    assert out["children"] == {"succeeded": 6, "failed": 2, "cached": 1}
    assert (out["bestHash"], out["bestAccuracy"], out["bestReward"], out["bestMetrics"]) == (
        "h1",
        0.9,
        0.7,
        {"params": 10},
    )
    assert (out["bestFeasibleHash"], out["bestFeasibleAccuracy"], out["bestFeasibleReward"]) == ("h2", 0.6, 0.6)
    empty = st.from_summary({**SUMMARY, "best": None, "bestFeasible": None})
    assert "bestHash" not in empty and "bestFeasibleAccuracy" not in empty and "finalModel" not in out
    final = {
        "child": "e000-s00-c01",
        "dir": "final/e000-s00-c01",
        "uri": "s3://b/p/s/final/e000-s00-c01",
        "status": "succeeded",
        "valAccuracy": 0.7,
        "testAccuracy": 0.65,
        "epochsRun": 20,
        "metrics": {"params": 5},
    }
    assert st.from_summary({**SUMMARY, "final": [final], "finalModel": final})["finalModel"] == {
        "child": "e000-s00-c01",
        "uri": "s3://b/p/s/final/e000-s00-c01",
        "valAccuracy": 0.7,
        "testAccuracy": 0.65,
        "metrics": {"params": 5},
    }


def test_conditions_keep_transition_time_until_status_changes() -> None:
    c = st.phase_conditions([], phase="Running", reason=st.Reason.STARTED, message="go", now="t1")
    assert {x["type"]: x["status"] for x in c} == {"Running": "True"}  # no Succeeded/Failed before either happens
    c = st.phase_conditions(c, phase="Running", reason=st.Reason.STEP_COMPLETED, message="step", now="t2")
    running = next(x for x in c if x["type"] == "Running")
    assert (
        running["lastTransitionTime"] == "t1" and running["reason"] == "StepCompleted" and running["message"] == "step"
    )
    c = st.phase_conditions(c, phase="Succeeded", reason=st.Reason.COMPLETED, message="done", now="t3")
    by = {x["type"]: x for x in c}
    assert set(by) == {"Running", "Succeeded"}
    assert by["Running"] == {
        "type": "Running",
        "status": "False",
        "reason": "Succeeded",
        "message": "the search succeeded",
        "lastTransitionTime": "t3",
    }
    assert by["Succeeded"] == {
        "type": "Succeeded",
        "status": "True",
        "reason": "Completed",
        "message": "done",
        "lastTransitionTime": "t3",
    }
    # an extension runs it again: Succeeded goes, Running is True again
    c = st.phase_conditions(c, phase="Running", reason=st.Reason.STARTED, message="again", now="t4")
    assert {x["type"]: (x["status"], x["lastTransitionTime"]) for x in c} == {"Running": ("True", "t4")}
    failed = st.phase_conditions(
        c, phase="Failed", reason=st.Reason.TOO_MANY_FAILURES, message="12 of 20 failed", now="t5"
    )
    assert {x["type"]: (x["status"], x["reason"]) for x in failed} == {
        "Running": ("False", "Failed"),
        "Failed": ("True", "TooManyFailures"),
    }


def test_status_reads_as_katib_does_rounded_camel_case_one_line_architecture() -> None:
    layers = [
        {"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"},
        {"op": "maxpool", "src1": 1, "width": 2},
    ]
    summary = {
        **SUMMARY,
        "plannedChildren": 16,
        "best": {
            **SUMMARY["best"],
            "valAccuracy": 0.5966666666666667,
            "reward": 0.51234567,
            "metrics": {"params": 10, "size_bytes": 40, "compute_intensity": 1.5},
            "arch": {"space": "image-layer", "layers": layers},
        },
    }
    out = st.from_summary(summary)

    assert out["bestAccuracy"] == 0.5967 and out["bestReward"] == 0.5123
    assert out["bestMetrics"] == {"params": 10, "sizeBytes": 40, "computeIntensity": 1.5}
    assert out["bestArchitecture"] == "conv2d(channels 16, width 3, relu) → maxpool(width 2)"
    assert out["progress"] == "9/16" and out["plannedChildren"] == 16
    assert out["position"] == "episode 2/2 (2 of 2 steps done)"
    assert (
        st.from_summary({**summary, "phase": "Succeeded", "episode": 2, "step": 0})["position"]
        == "finished after 2 episodes"
    )


def test_no_feasible_message_names_the_best_infeasible_child() -> None:
    message = st.no_feasible_message(SUMMARY)

    assert "none of the 7 measured children met every constraint" in message
    assert "e001-s01-c00" in message and "0.9000" in message and "spec.constraints" in message


def test_status_schema_describes_every_field_the_status_holds() -> None:
    from controller.crd import crd

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    final = {"child": "c", "uri": "s3://b/f", "valAccuracy": 0.7, "testAccuracy": 0.6, "metrics": {"params": 5}}
    written = {
        **st.from_summary({**SUMMARY, "plannedChildren": 16, "finalModel": final}),
        "phase": "Running",
        "reason": "Started",
        "message": "m",
        "observedGeneration": 1,
        "startTime": "t",
        "completionTime": "t",
        "conditions": [],
    }
    assert set(written) <= set(schema["properties"]), set(written) - set(schema["properties"])
    assert all(field.get("description") for field in schema["properties"].values())
    assert schema["x-kubernetes-preserve-unknown-fields"] is True


def obj(phase=None, generation=1, observed=None, deleting=False) -> dict:
    meta = {"name": "s", "namespace": "n", "uid": "u", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {"phase": phase, "observedGeneration": observed} if phase else {}
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(
    ("event", "o", "running", "action"),
    [
        ("ADDED", obj(), False, "start"),
        ("ADDED", obj("Running", observed=1), False, "start"),  # a restarted controller resumes
        ("ADDED", obj("Pending", observed=1), False, "start"),
        ("ADDED", obj("Succeeded", observed=1), False, "skip"),  # never re-run unless edited
        (
            "MODIFIED",
            obj("Succeeded", generation=2, observed=1),
            False,
            "start",
        ),  # extended: continues from its checkpoint
        ("ADDED", obj("Failed", observed=1), False, "skip"),
        ("MODIFIED", obj("Failed", generation=2, observed=1), False, "start"),  # the user fixed the spec
        ("MODIFIED", obj("Running", observed=1), True, "observe"),
        ("MODIFIED", obj("Running", deleting=True), True, "stop"),
        ("DELETED", obj("Running"), True, "stop"),
    ],
)
def test_decide(event, o, running, action) -> None:
    assert decide(event, o, running=running) == action
