"""The generated CRD against the real kube-apiserver: accepted as structural, short names,
printer columns, structural errors rejected by the schema."""

from __future__ import annotations

import pathlib

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd.yaml"


@pytest.fixture(scope="module")
def installed_crd(control_plane):
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/architecturesearches.epnas.io")
    return control_plane


def tiny(name: str, **spec) -> str:
    doc = {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": name},
        "spec": {"dataset": {"kind": "synthetic"}, "budget": {"episodes": 1, "branches": 2}, **spec},
    }
    return yaml.safe_dump(doc)


def test_crd_is_structural_and_established(installed_crd):
    out = installed_crd.kubectl(
        "get",
        "crd",
        "architecturesearches.epnas.io",
        "-o",
        "jsonpath={.status.conditions[?(@.type=='NonStructuralSchema')].status}",
    )
    assert out.stdout.strip() in ("", "False")


def test_short_names_and_printer_columns(installed_crd, namespace):
    installed_crd.kubectl("apply", "-n", namespace, "-f", "-", input_text=tiny("cols"))
    for resource in ("nas", "archsearch", "architecturesearches"):
        out = installed_crd.kubectl("get", resource, "-n", namespace)
        header = out.stdout.splitlines()[0].split()
        assert header == ["NAME", "PHASE", "CHILDREN", "BEST-ACC", "FEASIBLE", "REASON", "AGE"], out.stdout
    wide = installed_crd.kubectl("get", "nas", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert wide == [
        "NAME",
        "PHASE",
        "CHILDREN",
        "BEST-ACC",
        "FEASIBLE",
        "REASON",
        "AGE",
        "POSITION",
        "FINAL-ACC",
        "FINAL-MODEL",
    ], wide


@pytest.mark.parametrize(
    "field",
    [
        "spec.budget.episodes",
        "spec.trainer.image",
        "spec.constraints.metric",
        "status.progress",
        "status.bestFeasibleAccuracy",
        "status.conditions.reason",
    ],
)
def test_kubectl_explain_describes_spec_and_status_fields(installed_crd, field):
    out = installed_crd.kubectl("explain", f"architecturesearch.{field}")

    description = out.stdout.split("DESCRIPTION:", 1)[1]
    assert "<no description>" not in description and "``" not in description and description.strip(), out.stdout


def test_structural_errors_are_rejected_by_the_schema(installed_crd, namespace):
    bad = tiny("bad", budget={"episodes": 0, "branches": 2}, searchSpace="nope")
    out = installed_crd.kubectl("apply", "-n", namespace, "-f", "-", input_text=bad, check=False)
    assert out.returncode != 0
    assert "spec.budget.episodes" in out.stderr and "spec.searchSpace" in out.stderr, out.stderr
