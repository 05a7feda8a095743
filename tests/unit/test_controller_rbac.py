"""The RBAC manifests grant exactly what ``controller.kube`` calls (``controller.rbac``).

The chart's rendered rules are checked the same way in tests/integration/test_chart.py, and the
grants on the real authorizer in tests/integration/test_controller_rbac.py."""

from __future__ import annotations

import pathlib

import yaml

from controller import jobs, rbac
from controller.kube import Use
from epnas.executors.base import ChildRun
from epnas.spec import SearchSpec

REPO = pathlib.Path(__file__).resolve().parents[2]


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
