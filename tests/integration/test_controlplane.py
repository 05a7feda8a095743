"""Smoke tests of the real control plane plus node agent.

Each test asserts on what the real controllers produced (Job conditions and counters, the
pods the Job controller made, objects the garbage collector removed), not on anything the
harness wrote itself.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

import pytest
from harness import binaries, manifests, procs, waits
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

TESTS_DIR = pathlib.Path(__file__).resolve().parents[1]
SERVER_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "minio")


# -- Jobs through the real Job controller


def test_job_running_print_completes(batch, core, namespace, node_agent):
    batch.create_namespaced_job(namespace, manifests.python_job("hello", "print(1)"))

    job = waits.wait_for_job_finished(batch, namespace, "hello")
    pods = waits.job_pods(core, namespace, "hello")

    assert waits.job_condition(job, "Complete") is not None
    assert job.status.succeeded == 1 and not job.status.failed
    assert len(pods) == 1
    assert pods[0].status.phase == "Succeeded"
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 0
    assert node_agent.container_log(namespace, pods[0].metadata.name).strip() == "1"


def test_job_exiting_1_with_backoff_limit_1_fails_after_two_pods(batch, core, namespace, node_agent):
    job_body = manifests.python_job("fails", "import sys; sys.exit(1)", backoffLimit=1)
    batch.create_namespaced_job(namespace, job_body)

    job = waits.wait_for_job_finished(batch, namespace, "fails", timeout_s=180)
    pods = waits.job_pods(core, namespace, "fails")

    failed = waits.job_condition(job, "Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert job.status.failed == 2
    assert len(pods) == 2
    assert {pod.status.phase for pod in pods} == {"Failed"}
    assert {pod.status.container_statuses[0].state.terminated.exit_code for pod in pods} == {1}


def test_pod_failure_policy_fails_job_on_exit_code_2_after_one_pod(batch, core, namespace, node_agent):
    job_body = manifests.python_job(
        "invalid-input",
        "import sys; sys.exit(2)",
        backoffLimit=5,
        podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}]},
    )
    batch.create_namespaced_job(namespace, job_body)

    job = waits.wait_for_job_finished(batch, namespace, "invalid-input")
    pods = waits.job_pods(core, namespace, "invalid-input")

    failed = waits.job_condition(job, "Failed")
    assert failed is not None and failed.reason == "PodFailurePolicy"
    assert len(pods) == 1
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 2


def test_deleting_owner_garbage_collects_owned_job_and_its_pod(batch, core, namespace, node_agent):
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    job_body = manifests.python_job("owned", "import time; time.sleep(600)")
    job_body["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    ]
    batch.create_namespaced_job(namespace, job_body)
    pod = waits.wait_until(
        lambda: next((p for p in waits.job_pods(core, namespace, "owned") if p.status.phase == "Running"), None),
        timeout_s=60,
        what="the owned Job's pod to run",
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    waits.wait_for_deleted(
        lambda: batch.read_namespaced_job("owned", namespace),
        timeout_s=60,
        what="the garbage collector to delete the owned Job",
    )
    waits.wait_for_deleted(
        lambda: core.read_namespaced_pod(pod.metadata.name, namespace),
        timeout_s=60,
        what="the owned Job's pod to be deleted",
    )
    assert waits.job_pods(core, namespace, "owned") == []


# -- the node agent's scheduling


def _assert_stays_pending(core: k8s_client.CoreV1Api, namespace: str, name: str) -> k8s_client.V1Pod:
    scheduled = waits.wait_until(
        lambda: _pod_scheduled_condition(core.read_namespaced_pod(name, namespace)),
        timeout_s=30,
        what=f"PodScheduled condition on {name}",
    )
    time.sleep(2)  # the node agent retries on every change; give it time to (wrongly) bind
    pod = core.read_namespaced_pod(name, namespace)
    assert scheduled.status == "False" and scheduled.reason == "Unschedulable"
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    return pod


def _pod_scheduled_condition(pod: k8s_client.V1Pod) -> k8s_client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)


def test_pod_whose_node_selector_the_node_lacks_stays_pending(core, namespace, node_agent):
    body = manifests.python_pod("picky", "print(1)", nodeSelector={"epnas.io/pool": "cpu-only"})
    core.create_namespaced_pod(namespace, body)

    pod = _assert_stays_pending(core, namespace, "picky")

    assert "node affinity/selector" in _pod_scheduled_condition(pod).message


def test_taint_keeps_intolerant_pods_off_and_lets_tolerant_pods_on(core, namespace, node_agent):
    taint = {"key": "epnas.io/dedicated", "value": "search", "effect": "NoSchedule"}
    node_agent.set_taints([taint])
    toleration = {"key": "epnas.io/dedicated", "operator": "Equal", "value": "search", "effect": "NoSchedule"}
    core.create_namespaced_pod(namespace, manifests.python_pod("intolerant", "print(1)"))
    core.create_namespaced_pod(namespace, manifests.python_pod("tolerant", "print(1)", tolerations=[toleration]))

    waits.wait_until(
        lambda: core.read_namespaced_pod("tolerant", namespace).status.phase == "Succeeded",
        timeout_s=60,
        what="the tolerant pod to succeed",
    )
    _assert_stays_pending(core, namespace, "intolerant")


def test_gpu_request_beyond_allocatable_stays_pending(core, namespace, node_agent):
    body = manifests.python_pod("greedy", "print(1)")
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "8"}}
    core.create_namespaced_pod(namespace, body)

    pod = _assert_stays_pending(core, namespace, "greedy")

    assert "Insufficient nvidia.com/gpu" in _pod_scheduled_condition(pod).message


def test_node_is_ready_with_gpu_allocatable(core, node_agent):
    node = core.read_node(node_agent.config.name)

    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert node.status.allocatable["nvidia.com/gpu"] == "4"
    assert node.metadata.labels["epnas.io/pool"] == "gpu"


# -- the node agent's kubelet side


def test_pod_env_from_secret_configmap_and_downward_api_and_termination_message(core, namespace, node_agent):
    core.create_namespaced_secret(namespace, {"metadata": {"name": "store"}, "stringData": {"secret-key": "s3cr3t"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"level": "debug"}})
    code = (
        "import json, os\n"
        "keys = ['SECRET', 'LEVEL', 'POD', 'NS', 'IP', 'NODE', 'GREETING']\n"
        "summary = {k: os.environ[k] for k in keys}\n"
        "summary['tmp_is_volume'] = os.environ['TMPDIR'] == json.loads(os.environ['EPNAS_MOUNTS'])['/tmp']\n"
        "open(os.environ.get('EPNAS_TERMINATION_LOG', '/dev/termination-log'), 'w').write(json.dumps(summary))\n"
    )
    body = manifests.python_pod("env", code, volumes=[{"name": "scratch", "emptyDir": {}}])
    body["spec"]["containers"][0].update(
        volumeMounts=[{"name": "scratch", "mountPath": "/tmp"}],
        env=[
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "store", "key": "secret-key"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "GREETING", "value": "hello $(POD)"},
        ],
    )
    core.create_namespaced_pod(namespace, body)

    pod = waits.wait_until(
        lambda: (p := core.read_namespaced_pod("env", namespace)).status.phase in ("Succeeded", "Failed") and p,
        timeout_s=60,
        what="the env pod to finish",
    )

    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded", node_agent.container_log(namespace, "env")
    assert terminated.reason == "Completed"
    assert json.loads(terminated.message) == {
        "SECRET": "s3cr3t",
        "LEVEL": "debug",
        "POD": "env",
        "NS": namespace,
        "IP": "127.0.0.1",
        "NODE": node_agent.config.name,
        "GREETING": "hello env",
        "tmp_is_volume": True,
    }


def test_pod_gets_a_real_service_account_token_in_its_projected_volume(core, namespace, node_agent):
    code = (
        "import json, os, ssl, urllib.request\n"
        "sa = json.loads(os.environ['EPNAS_MOUNTS'])['/var/run/secrets/kubernetes.io/serviceaccount']\n"
        "token = open(os.path.join(sa, 'token')).read()\n"
        "url = 'https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews' % (\n"
        "    os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])\n"
        "request = urllib.request.Request(url, method='POST', data=json.dumps({\n"
        "    'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}).encode(),\n"
        "    headers={'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'})\n"
        "context = ssl.create_default_context(cafile=os.path.join(sa, 'ca.crt'))\n"
        "review = json.load(urllib.request.urlopen(request, context=context))\n"
        "namespace = open(os.path.join(sa, 'namespace')).read()\n"
        "user = review['status']['userInfo']['username']\n"
        "open(os.environ['EPNAS_TERMINATION_LOG'], 'w').write(json.dumps([user, namespace]))\n"
    )
    core.create_namespaced_pod(namespace, manifests.python_pod("whoami", code))

    pod = waits.wait_until(
        lambda: (p := core.read_namespaced_pod("whoami", namespace)).status.phase in ("Succeeded", "Failed") and p,
        timeout_s=60,
        what="the whoami pod to finish",
    )

    assert pod.status.phase == "Succeeded", node_agent.container_log(namespace, "whoami")
    message = pod.status.container_statuses[0].state.terminated.message
    assert json.loads(message) == [f"system:serviceaccount:{namespace}:default", namespace]


@pytest.mark.parametrize("obeys_sigterm", [True, False], ids=["exits-on-SIGTERM", "ignores-SIGTERM"])
def test_deleting_a_running_pod_kills_its_process(core, namespace, node_agent, obeys_sigterm):
    """The victim prints its own pid; after the pod is gone that pid is dead.  One that ignores
    SIGTERM is killed (SIGKILL) only once its grace period has passed."""
    handler = "lambda *a: sys.exit(0)" if obeys_sigterm else "signal.SIG_IGN"
    code = f"import os, signal, sys, time\nsignal.signal(signal.SIGTERM, {handler})\nprint(os.getpid(), flush=True)\ntime.sleep(600)\n"
    core.create_namespaced_pod(namespace, manifests.python_pod("victim", code))
    pid = waits.wait_until(
        lambda: (log := node_agent.container_log(namespace, "victim").strip()) and int(log.split()[0]),
        timeout_s=60,
        what="the victim to print its pid",
    )
    assert _alive(pid)
    grace_s = 5
    started = time.monotonic()
    core.delete_namespaced_pod("victim", namespace, grace_period_seconds=grace_s)

    waits.wait_for_deleted(
        lambda: core.read_namespaced_pod("victim", namespace), timeout_s=30, what="the deleted pod to disappear"
    )
    assert not _alive(pid), f"pid {pid} outlived its pod"
    elapsed = time.monotonic() - started
    if obeys_sigterm:
        assert elapsed < grace_s - 1, f"took {elapsed:.1f} s: SIGTERM was not sent, it waited for the grace period"
    else:
        assert elapsed >= grace_s - 0.5, f"killed after {elapsed:.1f} s, before its grace period ended"


def test_deployment_rolls_out_a_running_ready_pod(control_plane, core, namespace, node_agent):
    apps = k8s_client.AppsV1Api(control_plane.api_client())
    labels = {"app": "sleeper"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "sleeper"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [manifests.python_container("import time; time.sleep(600)")]},
                },
            },
        },
    )

    deployment = waits.wait_until(
        lambda: (d := apps.read_namespaced_deployment("sleeper", namespace)).status.available_replicas == 1 and d,
        timeout_s=90,
        what="the Deployment to have one available replica",
    )

    pods = core.list_namespaced_pod(namespace, label_selector="app=sleeper").items
    assert deployment.status.ready_replicas == 1
    assert len(pods) == 1 and pods[0].status.phase == "Running"
    assert pods[0].metadata.owner_references[0].kind == "ReplicaSet"


def test_kubectl_talks_to_the_control_plane(control_plane):
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == _pinned("KUBERNETES_VERSION")


# -- process hygiene and failure messages


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _pinned(name: str) -> str:
    versions = (binaries.REPO_ROOT / "scripts" / "testbin.versions").read_text()
    return next(line.split("=", 1)[1] for line in versions.splitlines() if line.startswith(f"{name}="))


def test_standalone_harness_starts_under_60s_and_leaves_no_process_behind(tmp_path):
    for name in SERVER_BINARIES:
        binaries.require(name)
    marker = f"hygiene-{uuid.uuid4().hex}"  # every process of this run carries it in its env

    result = subprocess.run(
        [sys.executable, "-m", "harness.standalone", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR), procs.RUN_MARKER_ENV: marker},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # etcd, apiserver, controller-manager, minio, the pod's process: seen, then all gone
    assert len(report["pids"]) == 5
    assert set(report["pids"]) <= set(report["marked_while_running"])
    assert procs.processes_with_marker(marker) == set(), "processes left behind"
    assert not [pid for pid in report["pids"] if _alive(pid)]
    assert sum(report["startup_s"].values()) < 60, report["startup_s"]


def test_missing_binary_fails_with_build_hint_instead_of_skipping(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_needs_cluster(control_plane):\n    pass\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["harness.plugin"]\n')
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "EPNAS_TESTBIN_DIR": str(tmp_path / "no-binaries")}

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(probe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert result.returncode != 0
    assert "missing test binary 'etcd'" in result.stdout
    assert "make testbin" in result.stdout
    assert "skipped" not in result.stdout.lower()


def test_helm_at_the_pinned_version_installs_a_chart_into_the_control_plane(helm, core, namespace, tmp_path):
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-probe\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )

    version = helm("version", "--short").stdout
    helm("install", "rel", str(chart), "--namespace", namespace, "--wait", "--timeout", "60s")

    config_map = core.read_namespaced_config_map("rel-probe", namespace)
    assert version.startswith(_pinned("HELM_VERSION"))
    assert config_map.data["kube"] == _pinned("KUBERNETES_VERSION")


def test_namespace_fixture_has_default_service_account(core, namespace):
    try:
        core.read_namespaced_service_account("default", namespace)
    except ApiException as error:  # pragma: no cover - the assertion message is the point
        pytest.fail(f"default ServiceAccount missing in {namespace}: {error}")
