"""Plain manifests (issue 7's part of manifests/) validated by the real API server:
manifests/controller (kustomize), manifests/minio-dev.yaml and
manifests/examples/digits-quick-kind.yaml, each with `kubectl apply --dry-run=server` in a
fresh namespace labelled for the restricted Pod Security profile (their own namespace is
swapped for the test's, so namespaced objects validate without creating `epnas`).
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

from epnas.spec import parse_search

REPO = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"


@pytest.fixture
def restricted(control_plane, namespace) -> str:
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    return namespace


@pytest.fixture(scope="session")
def epnas_crd(control_plane) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(MANIFESTS / "crd.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/architecturesearches.epnas.io")


def into_namespace(text: str, namespace: str) -> tuple[str, list[str]]:
    """The documents minus Namespaces, every namespaced one moved to `namespace`; and their kinds."""
    docs = [doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] != "Namespace"]
    for doc in docs:
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump_all(docs), [doc["kind"] for doc in docs]


def dry_run(control_plane, namespace: str, text: str) -> str:
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input_text=text, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr, result.stderr
    return result.stdout


def test_controller_kustomization_passes_server_dry_run(control_plane, restricted):
    rendered = control_plane.kubectl("kustomize", str(MANIFESTS / "controller")).stdout
    text, kinds = into_namespace(rendered, restricted)

    dry_run(control_plane, restricted, text)

    assert sorted(kinds) == ["Deployment", "Service"]


def test_minio_dev_passes_server_dry_run_and_pins_images(control_plane, restricted):
    source = (MANIFESTS / "minio-dev.yaml").read_text()
    text, kinds = into_namespace(source, restricted)
    images = [
        c["image"]
        for doc in yaml.safe_load_all(source)
        if doc and doc["kind"] in ("Deployment", "Job")
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]

    dry_run(control_plane, restricted, text)

    assert sorted(kinds) == ["Deployment", "Job", "Secret", "Service"]
    assert images and all(":RELEASE." in image for image in images)


def test_kind_example_is_a_valid_search_for_the_cli_and_the_api_server(control_plane, epnas_crd, restricted):
    source = (MANIFESTS / "examples" / "digits-quick-kind.yaml").read_text()
    search = parse_search(yaml.safe_load(source))
    text, _ = into_namespace(source, restricted)

    dry_run(control_plane, restricted, text)

    assert search.spec.store.uri == "s3://epnas/searches"
    assert search.spec.store.secret_name == "epnas-store"


def test_kind_example_is_digits_quick_but_for_store_trainer_and_namespace():
    example = yaml.safe_load((REPO / "examples" / "digits-quick.yaml").read_text())
    kind = yaml.safe_load((MANIFESTS / "examples" / "digits-quick-kind.yaml").read_text())

    for key in ("store", "trainer"):
        example["spec"].pop(key, None)
        kind["spec"].pop(key)
    kind["metadata"].pop("namespace")

    assert kind == example


def test_whole_manifests_kustomization_passes_server_dry_run(control_plane, epnas_crd, restricted):
    """`kubectl apply -k manifests/`: CRD, RBAC (manifests/rbac.yaml) and the controller."""
    rendered = control_plane.kubectl("kustomize", str(MANIFESTS)).stdout
    text, kinds = into_namespace(rendered, restricted)

    dry_run(control_plane, restricted, text)

    assert {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
    } <= set(kinds)


def test_controller_deployment_runs_as_the_rbac_service_account():
    deployment = yaml.safe_load((MANIFESTS / "controller" / "deployment.yaml").read_text())
    accounts = [
        doc
        for doc in yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text())
        if doc and doc["kind"] == "ServiceAccount"
    ]
    namespace = yaml.safe_load((MANIFESTS / "controller" / "kustomization.yaml").read_text())["namespace"]

    assert [(a["metadata"]["name"], a["metadata"]["namespace"]) for a in accounts] == [
        (deployment["spec"]["template"]["spec"]["serviceAccountName"], namespace)
    ]
