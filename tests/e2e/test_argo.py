"""Argo Workflows on the test control plane (issue 16 item 2): the real workflow-controller
(harness/argo.py, v4.0.5 built by scripts/testbin) runs a Workflow's pod through the node agent,
whose init and wait containers run argoexec in the executor image and whose main container runs
`/var/run/argo/argoexec emissary -- python ...` in the Python base image of scripts/base-image
(harness/rootfs.py; a minute to build once per machine, then cached).

The controller tests run `python -m controller` with only the chart's RBAC (`helm template
--set argo.enabled=true`: its Roles and bindings applied, the controller authenticated with its
ServiceAccount's token), and the children's pods with the chart's Argo executor Role, so the
Argo path is shown to work with exactly the permissions the chart grants."""

from __future__ import annotations

import base64
import json
import pathlib
import shlex
import subprocess
import threading
import time

import pytest
import yaml
from e2e_helpers import read_search, search_jobs, wait_for_phase
from harness.argo import GROUP, VERSION
from harness.binaries import REPO_ROOT
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

CHART = REPO_ROOT / "helm" / "epnas"
CHART_SA = "epnas"  # the controller's ServiceAccount of release "epnas"


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


def chart_rbac_kubeconfig(
    helm, control_plane, namespace: str, path: pathlib.Path, *, argo_enabled: bool = True
) -> pathlib.Path:
    """Apply the chart's ServiceAccount, Roles and RoleBindings for release "epnas" in `namespace`
    with `argo.enabled=<argo_enabled>` and write a kubeconfig at `path` that authenticates as the
    chart's controller ServiceAccount (a TokenRequest token): the controller's permissions are then
    exactly the chart's, and (enabled) the children's default ServiceAccount has its Argo executor Role."""
    rendered = helm(
        "template",
        "epnas",
        str(CHART),
        "-n",
        namespace,
        "--kube-version",
        "1.37.0",
        "--set",
        f"argo.enabled={str(argo_enabled).lower()}",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Role", "epnas") in kinds and (("Role", "epnas-argo-executor") in kinds) == argo_enabled, kinds
    control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )
    token = control_plane.kubectl("create", "token", CHART_SA, "-n", namespace, "--duration=2h").stdout.strip()
    ca = base64.b64encode(control_plane.pki.ca_cert.read_bytes()).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": control_plane.server, "certificate-authority-data": ca}}],
        "users": [{"name": CHART_SA, "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": CHART_SA, "namespace": namespace}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(kubeconfig))
    path.chmod(0o600)
    return path


class WorkflowLog:
    """Every Workflow that existed in a namespace since the watch started: ``seen`` (uid → (name,
    creationTimestamp)), so a Workflow deleted and made again still counts twice."""

    def __init__(self, api_client, namespace: str):
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.seen: dict[str, tuple[str, str]] = {}
        self.stopped = False
        self.watch = k8s_watch.Watch()
        listed = self._list()
        self.version = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _list(self) -> dict:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "workflows")
        for workflow in listed["items"]:
            self._record(workflow)
        return listed

    def _record(self, workflow: dict) -> None:
        meta = workflow["metadata"]
        self.seen.setdefault(meta["uid"], (meta["name"], meta["creationTimestamp"]))

    def _run(self) -> None:
        while not self.stopped:
            try:
                for event in self.watch.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "workflows",
                    resource_version=self.version,
                ):
                    self._record(event["object"])
                    self.version = event["object"]["metadata"].get("resourceVersion") or self.version
            except Exception:  # the connection closed: at teardown, or a watch expired
                if self.stopped:
                    return
                time.sleep(0.5)
                try:
                    self.version = self._list()["metadata"]["resourceVersion"]
                except Exception:
                    continue
                self.watch = k8s_watch.Watch()

    def stop(self) -> None:
        self.stopped = True
        self.watch.stop()


@pytest.fixture
def workflow_log(control_plane):
    logs: list[WorkflowLog] = []

    def start(namespace: str) -> WorkflowLog:
        logs.append(WorkflowLog(control_plane.api_client(), namespace))
        return logs[-1]

    yield start
    for log in logs:
        log.stop()


def list_workflows(control_plane, namespace: str) -> list[dict]:
    custom = k8s_client.CustomObjectsApi(control_plane.api_client())
    return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workflows")["items"]


def workflow_pods(control_plane, namespace: str, workflow: str) -> list:
    core = k8s_client.CoreV1Api(control_plane.api_client())
    return core.list_namespaced_pod(namespace, label_selector=f"workflows.argoproj.io/workflow={workflow}").items


def slow_trainer_command(seconds: float, *, only: str = "") -> str:
    """--trainer-command: the real trainer (`python -m child_trainer` in the trainer image), after
    sleeping `seconds` when its arguments contain `only` (e.g. a step's "-s01-"; "": every child)."""
    code = (
        "import runpy, sys, time; "
        f"time.sleep({seconds} if {only!r} in ' '.join(sys.argv) else 0); "
        "runpy.run_module('child_trainer', run_name='__main__', alter_sys=True)"
    )
    return shlex.join(["python", "-c", code])


def wait_until(what: str, check, *, timeout_s: float, ctl=None, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        tail = ctl.output()[-3000:] if ctl is not None else ""
        assert time.monotonic() < deadline, f"{what} not after {timeout_s} s\n{tail}"
        if ctl is not None:
            assert ctl.proc.poll() is None, f"controller exited {ctl.proc.returncode}\n{tail}"
        time.sleep(every_s)
    return got


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
    argo,
    crd,
    control_plane,
    node_agent,
    images,
    minio,
    bucket,
    namespace,
    search_yaml,
    start_controller,
    helm,
    tmp_path,
):
    """`spec.executor: argo` through the controller, with only the chart's RBAC: each step is one
    Argo Workflow whose nodes train the children in the trainer image; results come from the store,
    and the search's status reads as with Jobs. No Job is created."""
    trainer = images["trainer"]
    argo.use_node(node_agent, trainer)
    ctl = start_controller(namespace, kubeconfig=chart_rbac_kubeconfig(helm, control_plane, namespace, tmp_path / "kc"))
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


ARGO_BUDGET = {"episodes": 1, "stepsPerEpisode": 2, "branches": 2, "topK": 2}


def test_without_the_charts_argo_switch_an_argo_search_fails_forbidden(
    argo,
    crd,
    control_plane,
    node_agent,
    images,
    minio,
    bucket,
    namespace,
    search_yaml,
    start_controller,
    helm,
    tmp_path,
):
    """With the chart's default RBAC (argo.enabled false) the controller may not create Workflows:
    an `executor: argo` search fails at its first step with ArgoUnavailable, the API server's 403
    and the chart value that grants it, and nothing is created."""
    kubeconfig = chart_rbac_kubeconfig(helm, control_plane, namespace, tmp_path / "kc", argo_enabled=False)
    ctl = start_controller(namespace, kubeconfig=kubeconfig)
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=search_yaml(
            "denied", bucket, executor="argo", trainer={"image": images["trainer"]}, budget=ARGO_BUDGET
        ),
    )
    status = wait_for_phase(control_plane, namespace, "denied", ("Succeeded", "Failed"), timeout_s=120, proc=ctl)[
        "status"
    ]

    assert (status["phase"], status["reason"]) == ("Failed", "ArgoUnavailable"), status
    assert "create workflows: 403" in status["message"], status["message"]
    assert "argo.enabled=true" in status["message"], status["message"]
    assert not list_workflows(control_plane, namespace) and not search_jobs(control_plane, namespace, "denied")


def test_a_controller_killed_mid_step_adopts_the_steps_workflow(
    argo,
    crd,
    control_plane,
    node_agent,
    images,
    minio,
    bucket,
    namespace,
    search_yaml,
    start_controller,
    helm,
    tmp_path,
    workflow_log,
):
    """SIGKILL the controller while step 1's Workflow runs (its children sleep first); a new
    controller takes the Lease, adopts that Workflow (409 on create, then polls it) and finishes the
    search: exactly one Workflow per step ever existed, the running one kept its uid and creation
    time, and each child ran in one pod."""
    trainer = images["trainer"]
    argo.use_node(node_agent, trainer)
    kubeconfig = chart_rbac_kubeconfig(helm, control_plane, namespace, tmp_path / "kc")
    seen = workflow_log(namespace)
    command = slow_trainer_command(30, only="-s01-")
    ctl = start_controller(namespace, trainer_command=command, kubeconfig=kubeconfig)
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=search_yaml("crash", bucket, executor="argo", trainer={"image": trainer}, budget=ARGO_BUDGET),
    )
    step1 = "crash-e000-s01"

    def step1_running() -> dict | None:
        workflows = {w["metadata"]["name"]: w for w in list_workflows(control_plane, namespace)}
        if step1 in workflows and workflow_pods(control_plane, namespace, step1):
            return workflows[step1]
        return None

    running = wait_until(f"{step1} with pods", step1_running, timeout_s=300, ctl=ctl)
    ctl.kill()
    assert (running.get("status") or {}).get("phase") in (None, "", "Pending", "Running"), running["status"]
    assert read_search(control_plane, namespace, "crash")["status"]["phase"] == "Running"
    time.sleep(2)

    again = start_controller(namespace, trainer_command=command, kubeconfig=kubeconfig)
    status = wait_for_phase(control_plane, namespace, "crash", ("Succeeded", "Failed"), timeout_s=600, proc=again)[
        "status"
    ]

    assert status["phase"] == "Succeeded", status
    assert status["children"]["failed"] == 0 and status["progress"] == "4/4", status
    workflows = list_workflows(control_plane, namespace)
    names = sorted(w["metadata"]["name"] for w in workflows)
    assert names == ["crash-e000-s00", step1], names  # one per step
    assert sorted(name for name, _ in seen.seen.values()) == names, seen.seen  # and never another one
    kept = next(w for w in workflows if w["metadata"]["name"] == step1)["metadata"]
    assert (kept["uid"], kept["creationTimestamp"]) == (
        running["metadata"]["uid"],
        running["metadata"]["creationTimestamp"],
    )
    for workflow in workflows:
        assert workflow["status"]["phase"] == "Succeeded", workflow["status"]
        children = [t for t in workflow["spec"]["templates"] if "container" in t]
        pods = workflow_pods(control_plane, namespace, workflow["metadata"]["name"])
        assert len(pods) == len(children), [p.metadata.name for p in pods]  # no child ran twice
    assert f"adopting existing Workflow {step1}" in again.output(), again.output()[-3000:]
    assert not search_jobs(control_plane, namespace, "crash")


def test_deleting_the_search_deletes_its_workflows_and_their_pods(
    argo,
    crd,
    control_plane,
    node_agent,
    images,
    minio,
    bucket,
    namespace,
    search_yaml,
    start_controller,
    helm,
    tmp_path,
    workflow_log,
):
    """`kubectl delete nas` of a search whose step's Workflow runs: its loop stops, the real
    garbage collector deletes the Workflow (owned by the search) and Argo's pods (owned by the
    Workflow) within a bounded wait, and no Workflow is created after."""
    trainer = images["trainer"]
    argo.use_node(node_agent, trainer)
    seen = workflow_log(namespace)
    ctl = start_controller(
        namespace,
        trainer_command=slow_trainer_command(600),
        kubeconfig=chart_rbac_kubeconfig(helm, control_plane, namespace, tmp_path / "kc"),
    )
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=search_yaml("doomed", bucket, executor="argo", trainer={"image": trainer}, budget=ARGO_BUDGET),
    )
    step0 = "doomed-e000-s00"
    wait_until(
        f"{step0}'s pods running",
        lambda: any(p.status.phase == "Running" for p in workflow_pods(control_plane, namespace, step0)),
        timeout_s=300,
        ctl=ctl,
    )
    (workflow,) = list_workflows(control_plane, namespace)
    (owner,) = workflow["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ArchitectureSearch", "doomed", True)
    pods = workflow_pods(control_plane, namespace, step0)
    assert pods and all(p.metadata.owner_references[0].uid == workflow["metadata"]["uid"] for p in pods)

    deleted = time.monotonic()
    control_plane.kubectl("delete", "nas", "doomed", "-n", namespace, "--timeout=60s")
    wait_until("the loop stopped", lambda: "doomed deleted: loop stopped" in ctl.output(), timeout_s=60, ctl=ctl)
    # the garbage collector's monitors of a CRD installed this session may need a discovery resync (30 s)
    wait_until("the Workflow collected", lambda: not list_workflows(control_plane, namespace), timeout_s=120)
    workflow_gc_s = time.monotonic() - deleted
    wait_until("its pods deleted", lambda: not workflow_pods(control_plane, namespace, step0), timeout_s=120)
    pods_gc_s = time.monotonic() - deleted
    time.sleep(5)

    assert [name for name, _ in seen.seen.values()] == [step0]  # nothing made after the delete
    assert not list_workflows(control_plane, namespace)
    assert ctl.proc.poll() is None
    print(f"deletion: Workflow collected in {workflow_gc_s:.1f} s, its pods in {pods_gc_s:.1f} s")
