"""manifests/rbac.yaml against the real RBAC authorizer: what the controller may and may not do."""

from __future__ import annotations

import pathlib

import pytest
from harness.argo import install_crds

REPO = pathlib.Path(__file__).resolve().parents[2]
SA = "system:serviceaccount:epnas-system:epnas-controller"


@pytest.fixture(scope="module")
def rbac(control_plane):
    control_plane.kubectl("create", "namespace", "epnas-system", check=False)
    control_plane.kubectl(
        "apply", "-f", str(REPO / "manifests" / "crd.yaml"), "-f", str(REPO / "manifests" / "rbac.yaml")
    )
    return control_plane


ALLOWED = [
    ("list", "architecturesearches.epnas.io"),
    ("watch", "architecturesearches.epnas.io"),
    ("patch", "architecturesearches.epnas.io/status"),
    ("update", "architecturesearches.epnas.io/finalizers"),
    ("create", "jobs.batch"),
    ("get", "jobs.batch"),
    ("list", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("list", "pods"),
    ("create", "events"),
    ("delete", "jobs.batch"),
]
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "architecturesearches.epnas.io"),
    ("delete", "architecturesearches.epnas.io"),
    ("patch", "architecturesearches.epnas.io"),
    ("update", "jobs.batch"),
    ("patch", "jobs.batch"),
    ("get", "configmaps"),
    ("create", "deployments.apps"),
    ("list", "nodes"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("update", "leases.coordination.k8s.io"),
]


@pytest.mark.parametrize(("verb", "resource"), ALLOWED)
def test_allowed(rbac, verb, resource):
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "--as", SA, "-n", "default"] + (["--subresource", sub] if sub else [])
    assert rbac.kubectl(*args, check=False).stdout.strip() == "yes"


def test_leases_only_in_the_controller_namespace(rbac):
    def can(verb: str, namespace: str) -> str:
        return rbac.kubectl(
            "auth", "can-i", verb, "leases.coordination.k8s.io", "--as", SA, "-n", namespace, check=False
        ).stdout.strip()

    assert [can(v, "epnas-system") for v in ("get", "create", "update", "delete")] == ["yes", "yes", "yes", "no"]
    assert can("update", "default") == "no"


@pytest.mark.parametrize(("verb", "resource"), DENIED)
def test_denied(rbac, verb, resource):
    assert (
        rbac.kubectl("auth", "can-i", verb, resource, "--as", SA, "-n", "default", check=False).stdout.strip() == "no"
    )


@pytest.fixture
def argo_rbac(rbac):
    """manifests/argo-rbac.yaml applied beside rbac.yaml (Argo's CRDs installed, so the authorizer
    knows the resources), the children's ServiceAccount bound as its header says; removed after."""
    install_crds(rbac)
    rbac.kubectl("apply", "-f", str(REPO / "manifests" / "argo-rbac.yaml"))
    rbac.kubectl(
        "create", "rolebinding", "epnas-argo-executor", "-n", "default",
        "--clusterrole", "epnas-argo-executor", "--serviceaccount", "default:default",
    )  # fmt: skip
    yield rbac
    rbac.kubectl("delete", "rolebinding", "epnas-argo-executor", "-n", "default", check=False)
    rbac.kubectl("delete", "-f", str(REPO / "manifests" / "argo-rbac.yaml"), check=False)


def test_the_argo_manifest_grants_the_workflow_verbs_and_the_executors_and_nothing_more(argo_rbac):
    def can(verb: str, resource: str, who: str = SA) -> str:
        return argo_rbac.kubectl(
            "auth", "can-i", verb, resource, "--as", who, "-n", "default", check=False
        ).stdout.strip()  # fmt: skip

    child = "system:serviceaccount:default:default"
    assert [can(v, "workflows.argoproj.io") for v in ("get", "create", "patch", "delete", "list")] == [
        "yes", "yes", "yes", "no", "no",
    ]  # fmt: skip
    assert [can(v, "workflowtaskresults.argoproj.io", child) for v in ("create", "patch", "get", "delete")] == [
        "yes", "yes", "no", "no",
    ]  # fmt: skip
    assert can("create", "workflowtaskresults.argoproj.io") == "no"  # the controller writes no task results
    assert can("create", "workflows.argoproj.io", child) == "no"  # the children start no Workflows
