"""Argo Workflows on the test control plane (issue 16 item 2): the real workflow-controller
(harness/argo.py, v4.0.5 built by scripts/testbin) runs a Workflow's pod through the node agent,
whose init and wait containers run argoexec in the executor image and whose main container runs
`/var/run/argo/argoexec emissary -- python ...` in the Python base image of scripts/base-image
(harness/rootfs.py; a minute to build once per machine, then cached)."""

from __future__ import annotations

import subprocess

import pytest
from e2e_helpers import search_jobs, wait_for_phase
from harness.argo import GROUP, VERSION
from harness.binaries import REPO_ROOT
from kubernetes import client as k8s_client


@pytest.fixture(scope="module")
def python_image() -> str:
    """The Debian + Python 3.11 base image the project's images build on (scripts/base-image)."""
    result = subprocess.run([str(REPO_ROOT / "scripts" / "base-image")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"scripts/base-image failed (make test-deps installs buildah and debootstrap):\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return result.stdout.strip().splitlines()[-1]


def _workflow(name: str, image: str, code: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": "main",
            "serviceAccountName": "default",
            "templates": [
                {"name": "main", "container": {"image": image, "command": ["python", "-c", code]}},
            ],
        },
    }


def test_workflow_controller_runs_a_one_container_workflow_to_succeeded(
    argo, control_plane, node_agent, python_image, namespace
):
    argo.use_node(node_agent, python_image)
    argo.grant_executor(namespace)
    api = control_plane.api_client()
    k8s_client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "workflows", _workflow("hello", python_image, "print('hello from argo', 6 * 7)")
    )

    workflow = argo.wait_for_phase(namespace, "hello", timeout_s=180)

    assert workflow["status"]["phase"] == "Succeeded", workflow["status"]
    pods = (
        k8s_client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector="workflows.argoproj.io/workflow=hello")
        .items
    )
    assert len(pods) == 1
    pod = pods[0]
    assert [c.name for c in pod.spec.init_containers] == ["init"]
    assert sorted(c.name for c in pod.spec.containers) == ["main", "wait"]
    main = next(c for c in pod.spec.containers if c.name == "main")
    assert main.command[:2] == ["/var/run/argo/argoexec", "emissary"]
    assert "hello from argo 42" in node_agent.container_log(namespace, pod.metadata.name, "main")
    nodes = workflow["status"]["nodes"]
    assert [n["phase"] for n in nodes.values() if n["type"] == "Pod"] == ["Succeeded"]


# The children's "trainer": exits 2 (invalid input) for c01, 1 for c02 (retried), else 0.
FAKE_TRAINER = [
    "python",
    "-c",
    "import sys; a = ' '.join(sys.argv); sys.exit(2 if 'c01/' in a else 1 if 'c02/' in a else 0)",
]


def test_argo_executor_runs_a_step_as_one_workflow_and_never_retries_exit_2(
    argo, crd, control_plane, node_agent, python_image, namespace
):
    from controller.argo import ArgoExecutor, workflow_name
    from controller.jobs import Owner
    from controller.kube import Kube
    from epnas.executors.base import ChildRun
    from epnas.spec import API_VERSION, KIND, SearchSpec

    argo.use_node(node_agent, python_image)
    argo.grant_executor(namespace)
    api = control_plane.api_client()
    custom = k8s_client.CustomObjectsApi(api)
    # the owner: an ArchitectureSearch that no controller runs here
    search = custom.create_namespaced_custom_object(
        "epnas.io",
        "v1alpha1",
        namespace,
        "architecturesearches",
        {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "s"}, "spec": {}},
    )
    spec = SearchSpec.model_validate(
        {
            "executor": "argo",
            "trainer": {
                "image": python_image,
                "gpu": 0,
                "cpu": "100m",
                "memory": "256Mi",
                "backoffLimit": 1,
                "activeDeadlineSeconds": 120,
            },
        }
    )
    runs = [
        ChildRun(
            "s",
            f"e000-s00-c{i:02d}",
            f"s3://b/s/e000-s00-c{i:02d}/arch.json",
            f"s3://b/s/e000-s00-c{i:02d}/",
            None,
            60.0,
            0,
            0,
            i,
        )
        for i in range(3)
    ]
    finished = []
    executor = ArgoExecutor(
        kube=Kube(api, on_error=lambda verb: None),
        spec=spec,
        owner=Owner("s", namespace, search["metadata"]["uid"]),
        parallelism=lambda: 2,
        should_stop=lambda: False,
        on_finished=finished.append,
        command=FAKE_TRAINER,
    )

    outcomes = {o.child: o for o in executor.submit(runs)}

    assert (outcomes["e000-s00-c00"].exit_code, outcomes["e000-s00-c00"].reason, outcomes["e000-s00-c00"].attempts) == (
        0,
        "Completed",
        1,
    )
    assert (outcomes["e000-s00-c01"].exit_code, outcomes["e000-s00-c01"].reason, outcomes["e000-s00-c01"].attempts) == (
        2,
        "InvalidInput",
        1,
    )
    assert (outcomes["e000-s00-c02"].exit_code, outcomes["e000-s00-c02"].attempts) == (
        1,
        2,
    )  # retried backoffLimit times
    assert sorted(o.child for o in finished) == sorted(outcomes)
    name = workflow_name("s", 0, 0)
    workflow = argo.workflow(namespace, name)
    assert workflow["spec"]["parallelism"] == 2
    assert workflow["metadata"]["ownerReferences"][0]["uid"] == search["metadata"]["uid"]
    pods = (
        k8s_client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector=f"workflows.argoproj.io/workflow={name}")
        .items
    )
    assert len(pods) == 4  # c00, c01 once; c02 twice
    assert all(p.metadata.labels["epnas.io/search"] == "s" for p in pods)

    # a restarted controller submits the same step again: it adopts the Workflow, no second one
    again = ArgoExecutor(
        kube=Kube(api, on_error=lambda verb: None),
        spec=spec,
        owner=Owner("s", namespace, search["metadata"]["uid"]),
        parallelism=lambda: 2,
        should_stop=lambda: False,
        on_finished=lambda outcome: None,
        command=FAKE_TRAINER,
    )
    assert [(o.child, o.exit_code) for o in again.submit(runs)] == [
        (r.child, outcomes[r.child].exit_code) for r in runs
    ]
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workflows")["items"]
    assert [w["metadata"]["name"] for w in listed] == [name]


def test_a_search_runs_to_succeeded_with_each_step_an_argo_workflow(
    argo, crd, control_plane, node_agent, images, minio, bucket, namespace, search_yaml, start_controller
):
    """`spec.executor: argo` through the controller: each step is one Argo Workflow whose nodes
    train the children in the trainer image; results come from the store, and the search's status
    reads as with Jobs. No Job is created."""
    trainer = images["trainer"]
    argo.use_node(node_agent, trainer)
    argo.grant_executor(namespace)
    ctl = start_controller(namespace)
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=search_yaml(
            "argo-search",
            bucket,
            executor="argo",
            trainer={"image": trainer},
            budget={"episodes": 1, "stepsPerEpisode": 2, "branches": 2, "topK": 2},
        ),
    )
    status = wait_for_phase(control_plane, namespace, "argo-search", ("Succeeded", "Failed"), timeout_s=300, proc=ctl)[
        "status"
    ]

    assert status["phase"] == "Succeeded", status
    assert status["children"]["failed"] == 0 and status["progress"] == "4/4", status
    custom = k8s_client.CustomObjectsApi(control_plane.api_client())
    workflows = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workflows")["items"]
    names = sorted(w["metadata"]["name"] for w in workflows)
    assert names and len(names) <= 2 and all(n.startswith("argo-search-e000-s0") for n in names), names  # one per step
    assert all(w["status"]["phase"] == "Succeeded" for w in workflows)
    assert all(w["metadata"]["ownerReferences"][0]["name"] == "argo-search" for w in workflows)
    assert not search_jobs(control_plane, namespace, "argo-search")
