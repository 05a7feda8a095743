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


# The children's "trainer": exits 2 (invalid input) for c01, 1 for c02 (retried), else 0.
FAKE_TRAINER = ["python", "-c", "import sys; a = ' '.join(sys.argv); sys.exit(2 if 'c01/' in a else 1 if 'c02/' in a else 0)"]


def test_argo_executor_runs_a_step_as_one_workflow_and_never_retries_exit_2(argo, crd, control_plane, node_agent,
                                                                           python_image, namespace):
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
    search = custom.create_namespaced_custom_object("epnas.io", "v1alpha1", namespace, "architecturesearches",
                                                    {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "s"}, "spec": {}})
    spec = SearchSpec.model_validate({"executor": "argo", "trainer": {
        "image": python_image, "gpu": 0, "cpu": "100m", "memory": "256Mi", "backoffLimit": 1, "activeDeadlineSeconds": 120}})
    runs = [ChildRun("s", f"e000-s00-c{i:02d}", f"s3://b/s/e000-s00-c{i:02d}/arch.json", f"s3://b/s/e000-s00-c{i:02d}/", None,
                     60.0, 0, 0, i) for i in range(3)]
    finished = []
    executor = ArgoExecutor(kube=Kube(api, on_error=lambda verb: None), spec=spec,
                            owner=Owner("s", namespace, search["metadata"]["uid"]), parallelism=lambda: 2,
                            should_stop=lambda: False, on_finished=finished.append, command=FAKE_TRAINER)

    outcomes = {o.child: o for o in executor.submit(runs)}

    assert (outcomes["e000-s00-c00"].exit_code, outcomes["e000-s00-c00"].reason, outcomes["e000-s00-c00"].attempts) == (0, "Completed", 1)
    assert (outcomes["e000-s00-c01"].exit_code, outcomes["e000-s00-c01"].reason, outcomes["e000-s00-c01"].attempts) == (2, "InvalidInput", 1)
    assert (outcomes["e000-s00-c02"].exit_code, outcomes["e000-s00-c02"].attempts) == (1, 2)  # retried backoffLimit times
    assert sorted(o.child for o in finished) == sorted(outcomes)
    name = workflow_name("s", 0, 0)
    workflow = argo.workflow(namespace, name)
    assert workflow["spec"]["parallelism"] == 2
    assert workflow["metadata"]["ownerReferences"][0]["uid"] == search["metadata"]["uid"]
    pods = k8s_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"workflows.argoproj.io/workflow={name}").items
    assert len(pods) == 4  # c00, c01 once; c02 twice
    assert all(p.metadata.labels["epnas.io/search"] == "s" for p in pods)

    # a restarted controller submits the same step again: it adopts the Workflow, no second one
    again = ArgoExecutor(kube=Kube(api, on_error=lambda verb: None), spec=spec, owner=Owner("s", namespace, search["metadata"]["uid"]),
                         parallelism=lambda: 2, should_stop=lambda: False, on_finished=lambda outcome: None, command=FAKE_TRAINER)
    assert [(o.child, o.exit_code) for o in again.submit(runs)] == [(r.child, outcomes[r.child].exit_code) for r in runs]
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workflows")["items"]
    assert [w["metadata"]["name"] for w in listed] == [name]


def test_a_search_runs_to_succeeded_with_each_step_an_argo_workflow(argo, crd, control_plane, node_agent, images, minio, bucket,
                                                                    namespace, search_yaml, monkeypatch):
    """What the runner runs for a search (SearchLoop on its store, results read from the store),
    with ArgoExecutor in place of JobExecutor: the children train in the trainer image as Argo
    Workflow nodes. In this process, since the runner does not pick the executor yet."""
    import yaml

    from controller.argo import ArgoExecutor, workflow_name
    from controller.jobs import Owner
    from controller.kube import Kube
    from controller.tenancy import search_location
    from epnas.checkpoint import pin_search
    from epnas.search import SearchLoop
    from epnas.spec import parse_search
    from epnas.store import open_store

    trainer = images["trainer"]
    argo.use_node(node_agent, trainer)
    argo.grant_executor(namespace)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.root_user)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.root_password)
    doc = yaml.safe_load(search_yaml("argo-search", bucket, executor="argo", trainer={"image": trainer},
                                     budget={"episodes": 1, "stepsPerEpisode": 2, "branches": 2, "topK": 2}))
    api = control_plane.api_client()
    created = k8s_client.CustomObjectsApi(api).create_namespaced_custom_object("epnas.io", "v1alpha1", namespace,
                                                                               "architecturesearches", doc)
    uid = created["metadata"]["uid"]
    search = parse_search(doc)
    uri = search_location(search.spec.store.uri, namespace=namespace, name="argo-search", uid=uid)
    store = open_store(uri, endpoint=search.spec.store.endpoint, region=search.spec.store.region)
    search = pin_search(store, search).search
    finished = []
    executor = ArgoExecutor(kube=Kube(api, on_error=lambda verb: None), spec=search.spec, owner=Owner("argo-search", namespace, uid),
                            parallelism=lambda: None, should_stop=lambda: False, on_finished=finished.append)

    summary = SearchLoop(search, store=store, store_uri=uri, executor=executor).run()

    assert summary["phase"] == "Succeeded", summary
    assert summary["children"]["total"] == 4 and summary["children"]["failed"] == 0, summary["children"]
    assert len(finished) == summary["children"]["trained"] and all(o.succeeded for o in finished)
    custom = k8s_client.CustomObjectsApi(api)
    names = sorted(w["metadata"]["name"] for w in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workflows")["items"])
    assert 1 <= len(names) <= 2 and all(n.startswith(workflow_name("argo-search", 0, 0)[:-2]) for n in names), names  # one per step
    for name in names:
        assert argo.workflow(namespace, name)["status"]["phase"] == "Succeeded"
