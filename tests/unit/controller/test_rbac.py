"""The RBAC manifests grant exactly what ``controller.kube`` calls (``controller.rbac``).

The chart's rendered rules are checked the same way in tests/integration/test_chart.py, and the
grants on the real authorizer in tests/integration/test_controller_rbac.py."""

from __future__ import annotations

import importlib.util
import pathlib

import yaml

from controller import argo, jobs, rbac
from controller.kube import Use
from epnas.executors.base import ChildRun
from epnas.spec import SearchSpec

REPO = pathlib.Path(__file__).resolve().parents[3]


def _rules(rules: list[dict]) -> list[tuple]:
    return sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in rules)


def test_code_uses_are_read_from_every_api_call():
    uses = rbac.code_uses()

    assert Use("create", "batch", "jobs") in uses and Use("watch", "epnas.io", "architecturesearches") in uses
    assert Use("update", "coordination.k8s.io", "leases") in uses
    # the garbage collector deletes finished Jobs; the controller deletes only a Job whose pod is stuck (a wrong image)
    assert {(u.group, u.resource) for u in uses if u.verb == "delete"} == {("batch", "jobs")}


def test_manifests_grant_exactly_the_code_uses():
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text())
        if d
    }

    assert _rules(docs[("ClusterRole", "epnas-controller")]["rules"]) == _rules(
        [r.as_manifest() for r in rbac.cluster_rules()]
    )
    leader = docs[("Role", "epnas-controller-leader-election")]
    assert _rules(leader["rules"]) == _rules([r.as_manifest() for r in rbac.lease_rules()])
    assert leader["metadata"]["namespace"] == "epnas-system"


def test_the_argo_manifest_grants_exactly_the_argo_executors_uses():
    """manifests/argo-rbac.yaml (Argo without Helm) adds the Workflow verbs to the controller's
    ServiceAccount and holds the children's executor rules, and nothing else."""
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((REPO / "manifests" / "argo-rbac.yaml").read_text())
        if d
    }

    assert set(docs) == {
        ("ClusterRole", "epnas-controller-argo"),
        ("ClusterRoleBinding", "epnas-controller-argo"),
        ("ClusterRole", "epnas-argo-executor"),
    }
    assert _rules(docs[("ClusterRole", "epnas-controller-argo")]["rules"]) == _rules(
        [r.as_manifest() for r in rbac.rules_for(rbac.argo_uses())]
    )
    assert docs[("ClusterRoleBinding", "epnas-controller-argo")]["subjects"] == [
        {"kind": "ServiceAccount", "name": "epnas-controller", "namespace": "epnas-system"}
    ]
    assert _rules(docs[("ClusterRole", "epnas-argo-executor")]["rules"]) == _rules(
        [r.as_manifest() for r in rbac.executor_rules()]
    )


def test_the_finalizers_permission_is_there_because_jobs_block_owner_deletion():
    run = ChildRun(
        search="s",
        child="e000-s00-c00",
        arch_uri="s3://b/a.json",
        out_uri="s3://b/o",
        weights_uri=None,
        timeout_s=60,
        episode=0,
        step=0,
        index=0,
    )
    manifest = jobs.job_manifest(run, spec=SearchSpec(), owner=jobs.Owner("s", "ns", "uid"))
    (owner,) = manifest["metadata"]["ownerReferences"]

    assert owner["blockOwnerDeletion"] is True
    assert Use("update", "epnas.io", "architecturesearches/finalizers") in rbac.code_uses()


def test_argo_uses_are_the_argo_executors_calls_and_not_granted_by_default():
    """``ARGO_USES`` (what the chart grants with ``argo.enabled``) is exactly what controller/argo.py calls."""
    assert rbac.argo_uses() == set(argo.ARGO_USES)
    assert {u.verb for u in argo.ARGO_USES} == {"create", "get", "patch"}
    assert all(u.group != "argoproj.io" for u in rbac.code_uses())
    assert all(r.group != "argoproj.io" for r in rbac.cluster_rules())


def test_cluster_rules_with_argo_add_only_the_workflow_verbs():
    without, with_argo = rbac.cluster_rules(), rbac.cluster_rules(argo=True)

    assert [r for r in with_argo if r not in without] == [
        rbac.Rule("argoproj.io", "workflows", ("get", "create", "patch"))
    ]
    assert [r for r in without if r not in with_argo] == []
    assert rbac.executor_rules() == [rbac.Rule("argoproj.io", "workflowtaskresults", ("create", "patch"))]


def test_uses_in_reads_only_calls_inside_functions(tmp_path):
    """A module-level ``Use`` constant is not an API call: ``uses_in`` skips it (``ARGO_USES`` is one)."""
    path = tmp_path / "fake_calls.py"
    path.write_text(
        "from controller.kube import Use\n"
        "THINGS = ('g', 'things')\n"
        "DECLARED = {Use('delete', *THINGS)}\n"
        "def call():\n"
        "    return Use('get', *THINGS)\n"
    )
    spec = importlib.util.spec_from_file_location("fake_calls", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert rbac.uses_in(module) == {Use("get", "g", "things")}
