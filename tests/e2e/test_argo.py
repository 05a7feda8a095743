"""Argo Workflows on the test control plane (issue 16 item 2): the real workflow-controller
(harness/argo.py, v4.0.5 built by scripts/testbin) runs a Workflow's pod through the node agent,
whose init and wait containers run argoexec in the executor image and whose main container runs
`/var/run/argo/argoexec emissary -- python ...` in the Python base image of scripts/base-image
(harness/rootfs.py; a minute to build once per machine, then cached)."""

from __future__ import annotations

import subprocess

import pytest
from kubernetes import client as k8s_client

from harness.argo import GROUP, VERSION
from harness.binaries import REPO_ROOT


@pytest.fixture(scope="module")
def python_image() -> str:
    """The Debian + Python 3.11 base image the project's images build on (scripts/base-image)."""
    result = subprocess.run([str(REPO_ROOT / "scripts" / "base-image")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/base-image failed (make test-deps installs buildah and debootstrap):\n{result.stderr[-3000:]}",
                    pytrace=False)
    return result.stdout.strip().splitlines()[-1]


def _workflow(name: str, image: str, code: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Workflow", "metadata": {"name": name},
        "spec": {"entrypoint": "main", "serviceAccountName": "default", "templates": [
            {"name": "main", "container": {"image": image, "command": ["python", "-c", code]}},
        ]},
    }


def test_workflow_controller_runs_a_one_container_workflow_to_succeeded(argo, control_plane, node_agent, python_image, namespace):
    argo.use_node(node_agent, python_image)
    argo.grant_executor(namespace)
    api = control_plane.api_client()
    k8s_client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "workflows", _workflow("hello", python_image, "print('hello from argo', 6 * 7)"))

    workflow = argo.wait_for_phase(namespace, "hello", timeout_s=180)

    assert workflow["status"]["phase"] == "Succeeded", workflow["status"]
    pods = k8s_client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector="workflows.argoproj.io/workflow=hello").items
    assert len(pods) == 1
    pod = pods[0]
    assert [c.name for c in pod.spec.init_containers] == ["init"]
    assert sorted(c.name for c in pod.spec.containers) == ["main", "wait"]
    main = next(c for c in pod.spec.containers if c.name == "main")
    assert main.command[:2] == ["/var/run/argo/argoexec", "emissary"]
    assert "hello from argo 42" in node_agent.container_log(namespace, pod.metadata.name, "main")
    nodes = workflow["status"]["nodes"]
    assert [n["phase"] for n in nodes.values() if n["type"] == "Pod"] == ["Succeeded"]
