"""The controller on a cluster that misbehaves: injected API errors, an API outage longer than a
call's retries, and two replicas whose leader is SIGKILLed.  Each must end with the search
Succeeded, exactly one Job per trained child ever created, and every child's result in MinIO.

The faults come from ``harness.faultproxy.FaultProxy`` between the controller and the real
kube-apiserver; the Jobs are made into pods by the real Job controller and run by the node agent.
"""

from __future__ import annotations

import json
import time

import pytest
from e2e_helpers import LEASE, read_search, s3_keys, search_jobs, store_prefix, wait_for_phase
from harness.faultproxy import FaultProxy
from kubernetes import client as k8s_client

BUDGET = {"episodes": 1, "stepsPerEpisode": 2, "branches": 3, "topK": 3}
CHILDREN = 6


@pytest.fixture
def proxy(control_plane, tmp_path):
    """Requested before ``start_controller``, so it outlives the controllers at teardown."""
    fault_proxy = FaultProxy(control_plane, tmp_path)
    yield fault_proxy
    fault_proxy.stop()


def jobs_path(namespace: str) -> str:
    return rf"^/apis/batch/v1/namespaces/{namespace}/jobs(\?|$)"


def assert_every_child_once(control_plane, minio, bucket, namespace, name, status, jobs_seen) -> None:
    assert sum(status["children"].values()) == CHILDREN and status["children"]["failed"] == 0, status
    names = list(jobs_seen.uids.values())
    trained = status["children"]["succeeded"]
    assert len(names) == len(set(names)) == trained == CHILDREN - status["children"]["cached"], sorted(names)
    assert len(search_jobs(control_plane, namespace, name)) == trained
    keys = s3_keys(minio, bucket, store_prefix(control_plane, namespace, name) + "children/")
    assert len([k for k in keys if k.endswith("/result.json")]) == CHILDREN


def test_injected_api_errors_are_retried_and_a_lost_create_answer_adopts_the_job(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, proxy, start_controller, job_log
):
    """500 and 429 on Job creates and lists, a create that happened but whose answer was lost,
    and a 500 on a status patch: none fails the search, no Job is created twice."""
    jobs_seen = job_log(namespace)
    proxy.fail("create-500", "POST", jobs_path(namespace), 500, times=2)
    proxy.fail("create-lost", "POST", jobs_path(namespace), 500, times=1, forward=True)
    proxy.fail("create-429", "POST", jobs_path(namespace), 429, times=1)
    proxy.fail("list-503", "GET", jobs_path(namespace) + r"(?!.*watch=true)", 503, times=2)
    proxy.fail("status-500", "PATCH", r"/architecturesearches/hurt/status$", 500, times=1)
    ctl = start_controller(namespace, kubeconfig=proxy.kubeconfig)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("hurt", bucket, budget=BUDGET))

    obj = wait_for_phase(control_plane, namespace, "hurt", ("Succeeded", "Failed"), timeout_s=600, proc=ctl)
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    assert proxy.injected == {"create-500": 2, "create-lost": 1, "create-429": 1, "list-503": 2, "status-500": 1}
    assert_every_child_once(control_plane, minio, bucket, namespace, "hurt", status, jobs_seen)
    log = ctl.output()
    assert log.count("retrying in") >= 7, log[-3000:]
    assert "adopting existing Job" in log  # the create whose answer was lost: its retry got 409


def test_an_api_outage_longer_than_the_retries_degrades_the_search_and_it_recovers(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, proxy, start_controller, job_log
):
    """Every Job call answers 503 for 25 s (a call gives up after about 15 s of retrying): the
    search shows Degraded=True with a TransientError Event, then resumes and succeeds."""
    jobs_seen = job_log(namespace)
    ctl = start_controller(namespace, kubeconfig=proxy.kubeconfig)
    proxy.block("outage", "GET", jobs_path(namespace), 503, seconds=25)
    proxy.block("outage-create", "POST", jobs_path(namespace), 503, seconds=25)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("outage", bucket, budget=BUDGET))

    degraded = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and degraded is None:
        conditions = {
            c["type"]: c
            for c in (read_search(control_plane, namespace, "outage").get("status") or {}).get("conditions") or []
        }
        if conditions.get("Degraded", {}).get("status") == "True":
            degraded = conditions["Degraded"]
        time.sleep(0.5)
    assert degraded is not None and degraded["reason"] == "TransientError" and "503" in degraded["message"], (
        ctl.output()[-3000:]
    )
    assert read_search(control_plane, namespace, "outage")["status"]["phase"] in ("Pending", "Running")

    obj = wait_for_phase(control_plane, namespace, "outage", ("Succeeded", "Failed"), timeout_s=600, proc=ctl)
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Degraded"]["status"] == "False" and conditions["Degraded"]["reason"] == "Recovered"
    assert proxy.injected["outage"] + proxy.injected.get("outage-create", 0) >= 6
    assert_every_child_once(control_plane, minio, bucket, namespace, "outage", status, jobs_seen)
    core = k8s_client.CoreV1Api(control_plane.api_client())
    reasons = [e.reason for e in core.list_namespaced_event(namespace).items if e.involved_object.name == "outage"]
    assert "TransientError" in reasons
    assert 'epnas_search_retries_total{reason="kubernetes"}' in ctl.get("/metrics")[1]


def lease_holder(control_plane, namespace: str) -> dict:
    api = k8s_client.CoordinationV1Api(control_plane.api_client())
    try:
        return api.read_namespaced_lease("epnas-controller", namespace).spec.to_dict()
    except k8s_client.ApiException:
        return {}


def test_two_replicas_one_leader_and_a_killed_leader_hands_over_without_duplicate_jobs(
    control_plane, node_agent, minio, bucket, namespace, search_yaml, start_controller, job_log
):
    jobs_seen = job_log(namespace)
    first = start_controller(namespace)
    deadline = time.monotonic() + 30
    while not lease_holder(control_plane, namespace).get("holder_identity"):
        assert time.monotonic() < deadline, first.output()[-2000:]
        time.sleep(0.2)
    second = start_controller(namespace)
    deadline = time.monotonic() + 30
    while second.get("/readyz")[0] != 200:
        assert time.monotonic() < deadline, second.output()[-2000:]
        time.sleep(0.2)
    assert first.get("/readyz") == (200, "ok: leader\n") and second.get("/readyz") == (
        200,
        "standby: another replica leads\n",
    )
    assert "epnas_controller_leader 0.0" in second.get("/metrics")[1]

    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=search_yaml("relay", bucket, budget=BUDGET))
    deadline = time.monotonic() + 300
    while not search_jobs(control_plane, namespace, "relay"):
        assert time.monotonic() < deadline, first.output()[-3000:]
        time.sleep(0.2)
    assert "relay" not in second.output()  # the standby ran nothing

    holder_before = lease_holder(control_plane, namespace)["holder_identity"]
    first.kill()
    killed = time.monotonic()
    while lease_holder(control_plane, namespace).get("holder_identity") in (holder_before, None, ""):
        assert time.monotonic() - killed < 60, second.output()[-3000:]
        time.sleep(0.1)
    handover_s = time.monotonic() - killed
    print(f"leader hand-over after SIGKILL: {handover_s:.1f} s (lease {LEASE[0]} s, retry {LEASE[2]} s)")
    assert handover_s <= LEASE[0] + 2 * LEASE[2] + 2

    obj = wait_for_phase(control_plane, namespace, "relay", ("Succeeded", "Failed"), timeout_s=600, proc=second)
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    assert_every_child_once(control_plane, minio, bucket, namespace, "relay", status, jobs_seen)
    assert lease_holder(control_plane, namespace)["lease_transitions"] == 1

    # a clean stop releases the Lease: a new replica leads within a retry period or two
    third = start_controller(namespace)
    assert second.terminate() == 0
    stopped = time.monotonic()
    while third.get("/readyz") != (200, "ok: leader\n"):
        assert time.monotonic() - stopped < 15, third.output()[-2000:]
        time.sleep(0.1)
    print(f"leader hand-over after SIGTERM: {time.monotonic() - stopped:.1f} s")
