"""Failing children: exit 2 fails the Job after one pod (podFailurePolicy), exit 1 is retried by
the Job's backoff; the search carries on and its status and Events count them."""

from __future__ import annotations

import collections
import time

from e2e_helpers import WRAPPER, events_of, search_jobs, wait_for_phase
from kubernetes import client as k8s_client


def test_invalid_input_fails_at_once_and_faults_are_retried(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, trainer_state
):
    state = trainer_state(bucket)
    state.fail({"e000-s00-c01": {"exit": 2, "times": 99}, "e000-s00-c02": {"exit": 1, "times": 1}})
    ctl = start_controller(namespace, trainer_command=f"python {WRAPPER}")
    doc = search_yaml("flaky", bucket, budget={"episodes": 1, "stepsPerEpisode": 2, "branches": 3, "topK": 3})
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=doc)
    obj = wait_for_phase(control_plane, namespace, "flaky", ("Succeeded", "Failed"), timeout_s=600, proc=ctl)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["children"]["failed"] == 1 and status["children"]["succeeded"] + status["children"]["cached"] == 5, (
        status
    )

    jobs = {j.metadata.name: j for j in search_jobs(control_plane, namespace, "flaky")}
    invalid, flaky = jobs["flaky-e000-s00-c01"], jobs["flaky-e000-s00-c02"]
    failed = next(c for c in invalid.status.conditions if c.type == "Failed")
    assert failed.status == "True" and failed.reason == "PodFailurePolicy"
    assert invalid.status.failed == 1 and not invalid.status.succeeded
    assert flaky.status.failed == 1 and flaky.status.succeeded == 1
    starts = collections.Counter(state.lines("starts"))
    assert starts["e000-s00-c01"] == 1 and starts["e000-s00-c02"] == 2
    core = k8s_client.CoreV1Api(control_plane.api_client())
    assert len(core.list_namespaced_pod(namespace, label_selector="job-name=flaky-e000-s00-c01").items) == 1

    # the step after the failure ran, and the failure is reported with its exit code and reason
    assert any(name.startswith("flaky-e000-s01-") for name in jobs)
    child_failed = [e.message for e in events_of(control_plane, namespace, "flaky") if e.reason == "ChildFailed"]
    assert len(child_failed) == 1 and "e000-s00-c01" in child_failed[0] and "exit code 2" in child_failed[0]
    assert "PodFailurePolicy" in child_failed[0] and "test rule" in child_failed[0]


def test_a_search_without_a_feasible_child_says_so(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    """Constraints no network meets: the search ends Succeeded (it ran) with NoFeasibleChild True,
    a Warning Event naming the best infeasible child, and no Best-Acc."""
    ctl = start_controller(namespace)
    doc = search_yaml(
        "hopeless",
        bucket,
        constraints=[{"metric": "modelSize", "max": 2}],
        budget={"episodes": 1, "stepsPerEpisode": 1, "branches": 2, "topK": 2},
    )
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=doc)
    status = wait_for_phase(control_plane, namespace, "hopeless", ("Succeeded", "Failed"), timeout_s=300, proc=ctl)[
        "status"
    ]

    assert status["phase"] == "Succeeded" and status["feasibleCount"] == 0 and "bestFeasibleAccuracy" not in status, (
        status
    )
    condition = next(c for c in status["conditions"] if c["type"] == "NoFeasibleChild")
    assert condition["status"] == "True" and condition["reason"] == "NoFeasibleChild"
    assert (
        "none of the 2 measured children met every constraint" in condition["message"]
        and status["bestChild"] in condition["message"]
    )
    assert status["message"] == "search finished without a feasible child: no child met every constraint"
    warnings = [e for e in events_of(control_plane, namespace, "hopeless") if e.reason == "NoFeasibleChild"]
    assert len(warnings) == 1 and warnings[0].type == "Warning" and "spec.constraints" in warnings[0].message
    row = control_plane.kubectl("get", "nas", "hopeless", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:5] == ["Succeeded", "2/2", "0", "NoFeasibleChild"], row  # no BEST-ACC, FEASIBLE 0, REASON
    assert status["reason"] == "NoFeasibleChild"


def test_a_diverging_search_fails_with_the_reason_on_the_cluster(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    """A learning rate that blows the loss up: every child exits 3 (Diverged), its Job fails after
    one pod (never retried), and the search ends Failed (TooManyFailures) with the reason in its
    status, a Warning Event and the REASON column, as `epnas search` ends with exit 1."""
    ctl = start_controller(namespace)
    doc = search_yaml(
        "diverging",
        bucket,
        childTraining={"lr": 1.0e30},
        budget={"episodes": 1, "stepsPerEpisode": 2, "branches": 2, "topK": 2},
    )
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=doc)
    status = wait_for_phase(control_plane, namespace, "diverging", ("Succeeded", "Failed"), timeout_s=300, proc=ctl)[
        "status"
    ]

    assert status["phase"] == "Failed" and status["reason"] == "TooManyFailures", status
    assert "every child of episode 0 step 0 failed" in status["message"] and "Diverged" in status["message"], status[
        "message"
    ]
    assert {c["type"]: c["status"] for c in status["conditions"] if c["type"] in ("Running", "Failed")} == {
        "Running": "False",
        "Failed": "True",
    }
    jobs = search_jobs(control_plane, namespace, "diverging")
    assert jobs and all(j.metadata.name.startswith("diverging-e000-s00-") for j in jobs), jobs  # no second step
    for job in jobs:
        failed = next(c for c in job.status.conditions if c.type == "Failed")
        assert failed.reason == "PodFailurePolicy" and job.status.failed == 1 and not job.status.succeeded, job.status
    warnings = [
        e.message
        for e in events_of(control_plane, namespace, "diverging")
        if e.reason == "Failed" and e.type == "Warning"
    ]
    assert len(warnings) == 1 and warnings[0].startswith("TooManyFailures: every child of episode 0 step 0 failed"), (
        warnings
    )
    row = control_plane.kubectl("get", "nas", "diverging", "-n", namespace, "--no-headers").stdout.split()
    assert row[1] == "Failed" and "TooManyFailures" in row, row


def test_children_stuck_before_their_trainer_starts_fail_fast_with_the_reason(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller
):
    """A trainer image no node can pull and a store Secret that does not exist: each child's pod
    waits on its node (ErrImagePull, CreateContainerConfigError); after trainer.startDeadlineSeconds
    the child fails with that reason and its Job is deleted, instead of holding the step until
    activeDeadlineSeconds (600 s here)."""
    ctl = start_controller(namespace)
    tiny = {"episodes": 1, "stepsPerEpisode": 1, "branches": 2, "topK": 2}
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=search_yaml(
            "badimage",
            bucket,
            budget=tiny,
            trainer={"image": "registry.invalid/epnas/trainer:nope", "startDeadlineSeconds": 3},
        ),
    )
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=search_yaml(
            "nosecret", bucket, budget=tiny, store={"secretName": "no-such-secret"}, trainer={"startDeadlineSeconds": 3}
        ),
    )
    started = time.monotonic()
    for name, reason, named in (
        ("badimage", "ErrImagePull", "registry.invalid/epnas/trainer:nope"),
        ("nosecret", "CreateContainerConfigError", "no-such-secret"),
    ):
        status = wait_for_phase(control_plane, namespace, name, ("Succeeded", "Failed"), timeout_s=120, proc=ctl)[
            "status"
        ]
        assert status["phase"] == "Failed" and status["reason"] == "TooManyFailures", status
        assert (
            reason in status["message"] and named in status["message"] and "its Job was deleted" in status["message"]
        ), status
        failed = [e.message for e in events_of(control_plane, namespace, name) if e.reason == "ChildFailed"]
        assert failed and all(reason in m for m in failed), failed
        deadline = time.monotonic() + 60
        while search_jobs(control_plane, namespace, name):  # deleted by the controller (background propagation)
            assert time.monotonic() < deadline, "the stuck Jobs were not deleted"
            time.sleep(0.5)
    assert time.monotonic() - started < 120  # far inside activeDeadlineSeconds
