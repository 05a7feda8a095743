"""Failing children: exit 2 fails the Job after one pod (podFailurePolicy), exit 1 is retried by
the Job's backoff; the search carries on and its status and Events count them."""

from __future__ import annotations

import collections

from kubernetes import client as k8s_client

from e2e_helpers import WRAPPER, events_of, search_jobs, wait_for_phase


def test_invalid_input_fails_at_once_and_faults_are_retried(control_plane, node_agent, minio, bucket, namespace, search_yaml,
                                                            start_controller, trainer_state):
    state = trainer_state(bucket)
    state.fail({"e000-s00-c01": {"exit": 2, "times": 99}, "e000-s00-c02": {"exit": 1, "times": 1}})
    ctl = start_controller(namespace, trainer_command=f"python {WRAPPER}")
    doc = search_yaml("flaky", bucket, budget={"episodes": 1, "stepsPerEpisode": 2, "branches": 3, "topK": 3})
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=doc)
    obj = wait_for_phase(control_plane, namespace, "flaky", ("Succeeded", "Failed"), timeout_s=600, proc=ctl)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["children"]["failed"] == 1 and status["children"]["succeeded"] + status["children"]["cached"] == 5, status

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
