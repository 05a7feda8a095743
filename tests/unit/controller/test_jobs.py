"""The Job manifest builder and the reading of finished Jobs (pure)."""

from __future__ import annotations

import datetime
import json

import pytest

from controller.jobs import (
    Owner,
    failure_reason,
    finished,
    job_manifest,
    job_name,
    last_termination,
    outcome_of,
    step_selector,
    stuck_pods,
)
from epnas.executors.base import ChildRun
from epnas.spec import SearchSpec

OWNER = Owner("digits-quick", "ns1", "uid-123")
RUN = ChildRun(
    search="digits-quick",
    child="e000-s01-c02",
    arch_uri="s3://b/p/digits-quick/children/e000-s01-c02/arch.json",
    out_uri="s3://b/p/digits-quick/children/e000-s01-c02",
    weights_uri="s3://b/p/digits-quick/weights/",
    timeout_s=60,
    episode=0,
    step=1,
    index=2,
)


def spec(**trainer) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "trainer": {
                "image": "epnas/trainer:1",
                "gpu": 1,
                "cpu": "4",
                "memory": "16Gi",
                "backoffLimit": 3,
                "activeDeadlineSeconds": 900,
                "ttlSecondsAfterFinished": 120,
                "nodeSelector": {"epnas.io/pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {}},
                **trainer,
            },
            "store": {
                "uri": "s3://b/p",
                "endpoint": "http://minio:9000",
                "secretName": "store-creds",
                "region": "eu-1",
            },
        }
    )


def test_name_labels_owner_and_job_spec() -> None:
    job = job_manifest(RUN, spec=spec(), owner=OWNER)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    meta = job["metadata"]
    assert (
        meta["name"] == job_name("digits-quick", "e000-s01-c02") == "digits-quick-e000-s01-c02"
        and meta["namespace"] == "ns1"
    )
    labels = {
        "epnas.io/search": "digits-quick",
        "epnas.io/episode": "0",
        "epnas.io/step": "1",
        "epnas.io/child": "e000-s01-c02",
    }
    assert meta["labels"] == labels and job["spec"]["template"]["metadata"]["labels"] == labels
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "epnas.io/v1alpha1",
            "kind": "ArchitectureSearch",
            "name": "digits-quick",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    s = job["spec"]
    assert (s["backoffLimit"], s["ttlSecondsAfterFinished"]) == (3, 120)
    # the time limit is the pod's, counted from its start: a child queued for a GPU node does not time out
    assert "activeDeadlineSeconds" not in s and s["template"]["spec"]["activeDeadlineSeconds"] == 900
    assert s["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
    assert step_selector("digits-quick", 0, 1) == "epnas.io/search=digits-quick,epnas.io/episode=0,epnas.io/step=1"


def test_pod_placement_resources_and_security() -> None:
    pod = job_manifest(RUN, spec=spec(), owner=OWNER)["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"epnas.io/pool": "gpu"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}] and pod["volumes"] == [
        {"name": "tmp", "emptyDir": {}}
    ]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
    }
    assert container["image"] == "epnas/trainer:1" and container["command"] == ["python", "-m", "child_trainer"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["args"] == [
        "--arch",
        RUN.arch_uri,
        "--out",
        RUN.out_uri,
        "--weights",
        RUN.weights_uri,
        "--termination-log",
        "$(EPNAS_TERMINATION_LOG)",
        "--device",
        "cuda",
        "--endpoint",
        "http://minio:9000",
    ]


def test_cpu_only_children_get_no_gpu_and_train_on_cpu() -> None:
    container = job_manifest(RUN, spec=spec(gpu=0), owner=OWNER)["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"]) and container["args"][-3:] == [
        "cpu",
        "--endpoint",
        "http://minio:9000",
    ]


def test_store_credentials_are_secret_refs_never_literals() -> None:
    container = job_manifest(RUN, spec=spec(), owner=OWNER)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "store-creds", "key": key}}}
    assert env["EPNAS_S3_ENDPOINT"]["value"] == "http://minio:9000"
    assert env["EPNAS_TERMINATION_LOG"]["value"] == "/dev/termination-log"
    assert all("value" not in e for e in container["env"] if e["name"].startswith("AWS_") and e["name"] != "AWS_REGION")
    assert not any("secret" in a.lower() or "key" in a.lower() for a in container["args"])


def job(conditions: list[dict], **status) -> dict:
    return {
        "metadata": {"name": "s-e000-s00-c00"},
        "status": {"conditions": conditions, "startTime": "2026-01-01T00:00:00Z", **status},
    }


def pod(code: int, started: str, message: str = "", reason: str = "Error", pod_reason: str | None = None) -> dict:
    terminated = {"exitCode": code, "startedAt": started, "message": message, "reason": reason}
    status = {"containerStatuses": [{"state": {"terminated": terminated}}]}
    return {"status": {**status, "reason": pod_reason} if pod_reason else status}


@pytest.mark.parametrize(
    ("conditions", "state", "reason"),
    [
        ([], None, "Failed"),
        ([{"type": "Complete", "status": "True"}], "Complete", "Failed"),
        ([{"type": "FailureTarget", "status": "True"}], None, "Failed"),
        ([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], "Failed", "PodFailurePolicy"),
        ([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], "Failed", "BackoffLimitExceeded"),
        ([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}], "Failed", "DeadlineExceeded"),
    ],
)
def test_finished_and_reason(conditions, state, reason) -> None:
    assert finished(job(conditions)) == state and failure_reason(job(conditions)) == reason


def test_outcomes() -> None:
    done = job(
        [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:30Z"}],
        succeeded=1,
        failed=1,
        completionTime="2026-01-01T00:00:30Z",
    )
    ok = outcome_of("c", done, [])
    assert (ok.exit_code, ok.reason, ok.attempts, ok.seconds) == (0, "Completed", 2, 30.0) and ok.succeeded
    failed = job(
        [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "lastTransitionTime": "2026-01-01T00:01:00Z",
            }
        ],
        failed=3,
    )
    pods = [
        pod(1, "2026-01-01T00:00:01Z", "old"),
        pod(137, "2026-01-01T00:00:40Z", json.dumps({"exitCode": 1, "message": "boom"})),
    ]
    bad = outcome_of("c", failed, pods)
    assert (bad.exit_code, bad.reason, bad.stderr_tail, bad.attempts, bad.seconds) == (
        137,
        "BackoffLimitExceeded",
        "boom",
        3,
        60.0,
    )
    assert last_termination([]) == (None, "", "")


@pytest.mark.parametrize(
    ("pods", "reason", "detail"),
    [
        (
            [pod(137, "2026-01-01T00:00:40Z", reason="OOMKilled")],
            "OOMKilled",
            "the last attempt ended OOMKilled (BackoffLimitExceeded)",
        ),
        (
            [pod(137, "2026-01-01T00:00:40Z", pod_reason="DeadlineExceeded")],
            "DeadlineExceeded",
            "the last attempt ended DeadlineExceeded (BackoffLimitExceeded)",
        ),
        ([pod(1, "2026-01-01T00:00:40Z", json.dumps({"message": "boom"}))], "BackoffLimitExceeded", "boom"),
    ],
)
def test_a_failed_child_keeps_the_kubelets_telling_reason(pods, reason, detail) -> None:
    failed = job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=3)
    outcome = outcome_of("c", failed, pods)

    assert (outcome.reason, outcome.stderr_tail) == (reason, detail)


@pytest.mark.parametrize(("code", "reason"), [(2, "InvalidInput"), (3, "Diverged")])
def test_the_trainers_own_verdict_is_the_reason_as_on_one_machine(code, reason) -> None:
    """Exit 2 and 3 fail the Job by its podFailurePolicy; the child's reason is the trainer's
    (the local executor's words), the Job's kept in the detail."""
    failed = job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], failed=1)
    outcome = outcome_of(
        "c", failed, [pod(code, "2026-01-01T00:00:40Z", json.dumps({"message": "loss became non-finite"}))]
    )

    assert (outcome.exit_code, outcome.reason, outcome.stderr_tail) == (
        code,
        reason,
        "loss became non-finite (Job PodFailurePolicy)",
    )
    bare = outcome_of("c", failed, [pod(code, "2026-01-01T00:00:40Z", "")])
    assert (bare.reason, bare.stderr_tail) == (reason, "the Job ended PodFailurePolicy")


def test_placement_and_identity_fields_reach_the_pod() -> None:
    pod_spec = job_manifest(
        RUN,
        spec=spec(priorityClassName="gpu-batch", imagePullSecrets=["regcred"], serviceAccountName="trainer"),
        owner=OWNER,
    )["spec"]["template"]["spec"]
    assert pod_spec["priorityClassName"] == "gpu-batch"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}] and pod_spec["serviceAccountName"] == "trainer"
    plain = job_manifest(RUN, spec=spec(), owner=OWNER)["spec"]["template"]["spec"]
    assert not {"priorityClassName", "imagePullSecrets", "serviceAccountName"} & set(plain)


def waiting_pod(
    job: str, reason: str, *, scheduled: str | None = "2026-01-01T00:00:00Z", phase="Pending", init=False
) -> dict:
    status = {
        "phase": phase,
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}]
        if scheduled
        else [],
    }
    status["initContainerStatuses" if init else "containerStatuses"] = [
        {"state": {"waiting": {"reason": reason, "message": f"{reason}!"}}}
    ]
    return {"metadata": {"labels": {"job-name": job}}, "status": status}


def test_stuck_pods_are_those_waiting_on_a_node_for_a_start_that_never_comes() -> None:
    now = datetime.datetime(2026, 1, 1, 0, 5, 0)
    pods = [
        waiting_pod("a", "ErrImagePull"),
        waiting_pod("b", "CreateContainerConfigError", init=True),
        waiting_pod("c", "ContainerCreating"),  # normal start: not stuck
        waiting_pod("d", "ImagePullBackOff", scheduled="2026-01-01T00:04:30Z"),  # on its node 30 s only
        waiting_pod("e", "ErrImagePull", scheduled=None),  # still queued for a node: never counts
        waiting_pod("f", "InvalidImageName", phase="Failed"),
    ]

    stuck = stuck_pods(pods, now=now, deadline_s=60)

    assert set(stuck) == {"a", "b"}
    assert stuck["a"] == (
        "ErrImagePull",
        "the pod waited 300 s on its node in ErrImagePull (ErrImagePull!); its Job was deleted",
    )
    assert stuck["b"][0] == "CreateContainerConfigError"
    assert set(stuck_pods(pods, now=now, deadline_s=10)) == {"a", "b", "d"}
    assert stuck_pods(pods, now=now, deadline_s=301) == {}
