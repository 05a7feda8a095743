"""The Helm chart helm/epnas on the real control plane.

* `helm lint --strict` with the default values and every ci/*.yaml variant;
* `helm template` of each variant validated by `kubectl apply --dry-run=server` in a fresh
  namespace labelled for the restricted Pod Security profile (no PodSecurity warnings), with
  the EPNAS CRD applied, and the Prometheus Operator's real ServiceMonitor CRD (its module at
  the pinned version), so the server validates the chart's ServiceMonitor against its schema;
* the chart's crds/ file is byte-equal to manifests/crd.yaml;
* values.yaml documents every key;
* the controller's RBAC after `helm install`, through `kubectl auth can-i --as=<its SA>`;
* the Argo switch (`argo.enabled`): the Workflow verbs of controller/argo.py and the children's
  Argo executor Role (upstream's, at the pinned Argo version) when on, nothing about Argo when off.
"""

from __future__ import annotations

import json
import pathlib
import re
import secrets

import pytest
import yaml
from harness import binaries
from harness.argo import executor_role, install_crds
from harness.prometheus import servicemonitor_crd
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from controller import rbac
from controller.jobs import Owner, job_manifest
from controller.main import parse_args, trainer_defaults_arg
from epnas.executors.base import ChildRun
from epnas.spec import parse_search, with_trainer_defaults

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "epnas"
CRD_MANIFEST = REPO_ROOT / "manifests" / "crd.yaml"
CHART_CRD = CHART / "crds" / "architecturesearches.epnas.io.yaml"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
VARIANTS = [None, *CI_VALUES]
VARIANT_IDS = ["default", *(path.stem for path in CI_VALUES)]
# An image no node-agent mapping matches: the controller pod of an RBAC-only install stays
# Waiting (ErrImagePull) instead of starting a controller process.
UNRUNNABLE_IMAGE = "registry.invalid/epnas-rbac-only"


# -- fixtures and helpers


def kubectl_json(control_plane, *args: str) -> dict:
    return json.loads(control_plane.kubectl(*args, "-o", "json").stdout)


def apply_crd(control_plane, manifest: str, name: str) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", "-", input_text=manifest)
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@pytest.fixture(scope="session")
def crds(control_plane) -> None:
    """The EPNAS CRD (manifests/crd.yaml) and the Prometheus Operator's ServiceMonitor CRD, established."""
    apply_crd(control_plane, CRD_MANIFEST.read_text(), "architecturesearches.epnas.io")
    try:
        servicemonitors = servicemonitor_crd()
    except binaries.MissingBinaryError as error:
        pytest.fail(str(error), pytrace=False)
    apply_crd(control_plane, servicemonitors, "servicemonitors.monitoring.coreos.com")


@pytest.fixture(scope="session")
def argo_crds(control_plane) -> None:
    """Argo's CRDs at the pinned version, so `kubectl auth can-i` resolves workflows.argoproj.io."""
    install_crds(control_plane)


@pytest.fixture(scope="session")
def kube_version(control_plane) -> str:
    """The control plane's version, for `helm template --kube-version`."""
    return kubectl_json(control_plane, "version")["serverVersion"]["gitVersion"]


@pytest.fixture
def other_namespace(control_plane):
    """A second fresh namespace, deleted after the test."""
    core = k8s_client.CoreV1Api(control_plane.api_client())
    name = f"t-other-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def values_args(variant: pathlib.Path | None) -> list[str]:
    return [] if variant is None else ["-f", str(variant)]


def label_restricted(control_plane, namespace: str) -> None:
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/audit=restricted",
    )


# -- lint and schema validation


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_helm_lint_strict_passes(helm, variant):
    result = helm("lint", "--strict", str(CHART), *values_args(variant), check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_helm_template_passes_server_dry_run_under_restricted(
    helm, control_plane, crds, kube_version, namespace, variant
):
    label_restricted(control_plane, namespace)
    rendered = helm(
        "template",
        "epnas",
        str(CHART),
        "-n",
        namespace,
        "--kube-version",
        kube_version,
        "--include-crds",
        *values_args(variant),
    ).stdout
    kinds = [doc["kind"] for doc in yaml.safe_load_all(rendered) if doc]

    applied = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input_text=rendered, check=False
    )

    assert applied.returncode == 0, applied.stderr
    assert "PodSecurity" not in applied.stderr, applied.stderr
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service"} <= set(kinds)
    assert len(applied.stdout.strip().splitlines()) == len(kinds)


# (kind, name): the leader-election Role and RoleBinding come with every variant
LEADER = {("Role", "epnas-leader-election"), ("RoleBinding", "epnas-leader-election")}
WATCH_RBAC = {("Role", "epnas"), ("RoleBinding", "epnas")}
CLUSTER_RBAC = {("ClusterRole", "epnas"), ("ClusterRoleBinding", "epnas")}


@pytest.mark.parametrize(
    ("variant", "present", "absent"),
    [
        (None, WATCH_RBAC | LEADER, CLUSTER_RBAC | {("ServiceMonitor", "epnas"), ("ConfigMap", "epnas-dashboard")}),
        (CHART / "ci" / "all-namespaces.yaml", CLUSTER_RBAC | LEADER, WATCH_RBAC),
        (
            CHART / "ci" / "servicemonitor.yaml",
            {("ServiceMonitor", "epnas"), ("ConfigMap", "epnas-dashboard"), ("Role", "epnas")} | LEADER,
            CLUSTER_RBAC,
        ),
    ],
    ids=["default", "all-namespaces", "servicemonitor"],
)
def test_template_kinds_follow_values(helm, variant, present, absent):
    rendered = helm("template", "epnas", str(CHART), "--kube-version", "1.37.0", *values_args(variant)).stdout
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(rendered) if doc}

    assert present <= kinds, kinds
    assert not absent & kinds


def _rules(rules: list[dict]) -> list[tuple]:
    return sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in rules)


@pytest.mark.parametrize("variant", [None, CHART / "ci" / "all-namespaces.yaml"], ids=["role", "cluster-role"])
def test_chart_rbac_is_exactly_what_the_code_uses(helm, variant):
    """The Role/ClusterRole grant the verbs ``controller.kube`` calls (plus the finalizers
    update its Jobs' ownerReferences need) and nothing else; Leases only in the release namespace."""
    rendered = helm(
        "template", "epnas", str(CHART), "-n", "team-a", "--kube-version", "1.37.0", *values_args(variant)
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    main = docs.get(("Role", "epnas")) or docs[("ClusterRole", "epnas")]
    leader = docs[("Role", "epnas-leader-election")]

    assert _rules(main["rules"]) == _rules([r.as_manifest() for r in rbac.cluster_rules()])
    assert _rules(leader["rules"]) == _rules([r.as_manifest() for r in rbac.lease_rules()])
    assert leader["metadata"]["namespace"] == "team-a"


def _argo_docs(helm, *args: str) -> tuple[dict, dict, str]:
    rendered = helm("template", "epnas", str(CHART), "-n", "team-a", "--kube-version", "1.37.0", *args).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    return docs, docs.get(("Role", "epnas")) or docs[("ClusterRole", "epnas")], rendered


@pytest.mark.parametrize("variant", [None, CHART / "ci" / "all-namespaces.yaml"], ids=["role", "cluster-role"])
def test_chart_grants_the_argo_workflow_verbs_only_with_argo_enabled(helm, variant):
    """argo.enabled adds exactly controller/argo.py's ARGO_USES to the controller's Role/ClusterRole;
    off (the default), nothing in the chart names argoproj.io."""
    _, off, rendered_off = _argo_docs(helm, *values_args(variant))
    _, on, _ = _argo_docs(helm, *values_args(variant), "--set", "argo.enabled=true")

    assert "argoproj" not in rendered_off
    assert _rules(off["rules"]) == _rules([r.as_manifest() for r in rbac.cluster_rules()])
    assert _rules(on["rules"]) == _rules([r.as_manifest() for r in rbac.cluster_rules(argo=True)])
    assert [r for r in _rules(on["rules"]) if r not in _rules(off["rules"])] == [
        (("argoproj.io",), ("workflows",), ("create", "get", "patch"))
    ]


def test_argo_executor_role_is_upstreams_and_bound_to_the_childrens_service_account(helm):
    """With argo.enabled, the watched namespace gets the Role Argo's wait container needs (the
    upstream emissary executor Role of the pinned Argo version, = controller/argo.py's
    EXECUTOR_USES) bound to the children's ServiceAccount: trainer.serviceAccountName, else default."""
    docs, _, _ = _argo_docs(helm, "-f", str(CHART / "ci" / "argo.yaml"))
    role, binding = docs[("Role", "epnas-argo-executor")], docs[("RoleBinding", "epnas-argo-executor")]
    named, _, _ = _argo_docs(helm, "-f", str(CHART / "ci" / "argo.yaml"), "--set", "trainer.serviceAccountName=irsa")

    assert _rules(role["rules"]) == _rules([r.as_manifest() for r in rbac.executor_rules()])
    assert _rules(role["rules"]) == _rules(executor_role("team-a")["rules"])
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "epnas-argo-executor",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": "team-a"}]
    assert named[("RoleBinding", "epnas-argo-executor")]["subjects"][0]["name"] == "irsa"


def test_argo_executor_role_with_all_namespaces_is_a_cluster_role_left_to_bind(helm):
    docs, _, _ = _argo_docs(
        helm, "-f", str(CHART / "ci" / "all-namespaces.yaml"), "-f", str(CHART / "ci" / "argo.yaml")
    )
    argo_docs = {key for key in docs if key[1] == "epnas-argo-executor"}

    assert argo_docs == {("ClusterRole", "epnas-argo-executor")}
    assert _rules(docs[("ClusterRole", "epnas-argo-executor")]["rules"]) == _rules(
        [r.as_manifest() for r in rbac.executor_rules()]
    )


def test_trainer_values_become_the_jobs_defaults_and_a_search_overrides_them(helm):
    """values trainer.* reach the controller as --trainer-defaults; the Job the controller makes
    for a search that sets only some trainer fields carries the rest from the values."""
    rendered = helm(
        "template",
        "r",
        str(CHART),
        "-n",
        "team-a",
        "--kube-version",
        "1.37.0",
        "--set",
        "trainer.priorityClassName=gpu-batch",
        "--set",
        "trainer.imagePullSecrets={regcred}",
        "--set",
        "trainer.serviceAccountName=trainer-irsa",
        "--set",
        "trainer.nodeSelector.pool=gpu",
        "--set",
        "trainer.memory=32Gi",
    ).stdout
    deployment = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment")
    (arg,) = [
        a
        for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith("--trainer-defaults=")
    ]
    defaults = trainer_defaults_arg(arg.split("=", 1)[1])
    search = with_trainer_defaults(
        parse_search(
            {
                "apiVersion": "epnas.io/v1alpha1",
                "kind": "ArchitectureSearch",
                "metadata": {"name": "s"},
                "spec": {"trainer": {"gpu": 0}},
            }
        ),
        defaults,
    )
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
    pod = job_manifest(run, spec=search.spec, owner=Owner("s", "team-a", "uid"))["spec"]["template"]["spec"]

    assert pod["priorityClassName"] == "gpu-batch" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "trainer-irsa" and pod["nodeSelector"] == {"pool": "gpu"}
    container = pod["containers"][0]
    assert (
        container["image"].startswith("ghcr.io/epnas/epnas-trainer:")
        and container["resources"]["limits"]["memory"] == "32Gi"
    )
    assert "nvidia.com/gpu" not in container["resources"]["limits"]  # the search's own gpu: 0 wins


def test_deployment_args_probes_and_security_defaults(helm):
    rendered = helm("template", "r", str(CHART), "-n", "team-a", "--kube-version", "1.37.0").stdout
    deployment = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert container["args"][:4] == [
        "--namespace=team-a",
        "--metrics-port=8080",
        "--log-level=INFO",
        "--leader-election-id=r-epnas",
    ]
    assert container["args"][4].startswith("--trainer-defaults={") and len(container["args"]) == 5
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "command" not in container
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_dashboard_configmap_holds_the_dashboard_json(helm):
    rendered = helm(
        "template", "r", str(CHART), "--kube-version", "1.37.0", "-f", str(CHART / "ci" / "servicemonitor.yaml")
    ).stdout
    config_map = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "ConfigMap")

    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["epnas.json"]) == json.loads((CHART / "dashboards" / "epnas.json").read_text())


# -- files


def test_chart_crd_is_byte_equal_to_manifests_crd():
    assert CHART_CRD.read_bytes() == CRD_MANIFEST.read_bytes(), (
        f"{CHART_CRD.relative_to(REPO_ROOT)} differs from manifests/crd.yaml: run `scripts/sync-crd`"
    )


def undocumented_values_keys(text: str) -> list[str]:
    """Keys of a values.yaml not directly preceded by a comment, unless an ancestor key's
    comment starts with `# --` (the helm-docs mark of a value documented as a whole)."""
    missing: list[str] = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented as a whole)
    comment: list[str] = []  # the comment block right above the current line
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            ancestors = [a for a in ancestors if a[0] < indent]
            if not (comment or any(whole for _, whole in ancestors)):
                missing.append(match.group(2))
            ancestors.append((indent, bool(comment) and comment[0].startswith("# --")))
        if stripped.startswith("#"):
            comment.append(stripped)
        elif stripped:
            comment = []
    return missing


def test_every_values_key_is_commented():
    assert undocumented_values_keys((CHART / "values.yaml").read_text()) == []


def test_undocumented_values_keys_finds_a_bare_key():
    text = "# a\nsection:\n  # -- b\n  whole:\n    inner: 1\n  bare: 2\n"

    assert undocumented_values_keys(text) == ["bare"]


# -- RBAC on the real API server


def can_i(
    control_plane, service_account: str, verb: str, resource: str, namespace: str, subresource: str | None = None
) -> bool:
    args = ["auth", "can-i", verb, resource, "-n", namespace, f"--as={service_account}"]
    if subresource:
        args.append(f"--subresource={subresource}")
    result = control_plane.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stdout + result.stderr
    return answer == "yes"


def install(helm, release: str, namespace: str, *extra: str) -> None:
    helm("install", release, str(CHART), "-n", namespace, "--set", f"image.repository={UNRUNNABLE_IMAGE}", *extra)


# (verb, resource, subresource, where: "own" | "other", expected)
WATCHED_NAMESPACE_RULES = [
    ("create", "jobs.batch", None, "own", True),
    ("delete", "jobs.batch", None, "own", True),
    ("patch", "jobs.batch", None, "own", False),
    ("watch", "jobs.batch", None, "own", True),
    ("patch", "architecturesearches.epnas.io", "status", "own", True),
    ("update", "architecturesearches.epnas.io", "status", "own", False),
    ("update", "architecturesearches.epnas.io", "finalizers", "own", True),
    ("watch", "architecturesearches.epnas.io", None, "own", True),
    ("update", "leases.coordination.k8s.io", None, "own", True),
    ("update", "leases.coordination.k8s.io", None, "other", False),
    ("list", "pods", None, "own", True),
    ("create", "events", None, "own", True),
    ("get", "secrets", None, "own", False),
    ("list", "secrets", None, "own", False),
    ("create", "architecturesearches.epnas.io", None, "own", False),
    ("update", "architecturesearches.epnas.io", None, "own", False),
    ("delete", "architecturesearches.epnas.io", None, "own", False),
    ("delete", "pods", None, "own", False),
    ("create", "pods", None, "own", False),
    ("create", "jobs.batch", None, "other", False),
    ("list", "architecturesearches.epnas.io", None, "other", False),
    ("patch", "architecturesearches.epnas.io", "status", "other", False),
    ("get", "secrets", None, "other", False),
    ("create", "workflows.argoproj.io", None, "own", False),  # argo.enabled is false by default
    ("get", "workflows.argoproj.io", None, "own", False),
]

ALL_NAMESPACES_RULES = [
    ("create", "jobs.batch", None, "own", True),
    ("create", "jobs.batch", None, "other", True),
    ("patch", "architecturesearches.epnas.io", "status", "other", True),
    ("list", "architecturesearches.epnas.io", None, "other", True),
    ("get", "secrets", None, "own", False),
    ("get", "secrets", None, "other", False),
    ("list", "secrets", None, "other", False),
    ("create", "pods", None, "other", False),
]


def test_rbac_with_watched_namespace(helm, control_plane, crds, argo_crds, namespace, other_namespace):
    install(helm, "epnas", namespace)
    service_account = f"system:serviceaccount:{namespace}:epnas"
    where = {"own": namespace, "other": other_namespace}
    try:
        answers = [
            (verb, resource, sub, place, can_i(control_plane, service_account, verb, resource, where[place], sub))
            for verb, resource, sub, place, _ in WATCHED_NAMESPACE_RULES
        ]
    finally:
        helm("uninstall", "epnas", "-n", namespace)

    assert answers == [row[:4] + (row[4],) for row in WATCHED_NAMESPACE_RULES]


# (who: "controller" | "children", verb, resource) with argo.enabled, in the watched namespace
ARGO_RULES = [
    ("controller", "create", "workflows.argoproj.io", True),
    ("controller", "get", "workflows.argoproj.io", True),
    ("controller", "patch", "workflows.argoproj.io", True),
    ("controller", "list", "workflows.argoproj.io", False),
    ("controller", "watch", "workflows.argoproj.io", False),
    ("controller", "update", "workflows.argoproj.io", False),
    ("controller", "delete", "workflows.argoproj.io", False),
    ("controller", "create", "workflowtaskresults.argoproj.io", False),
    ("controller", "create", "jobs.batch", True),
    ("children", "create", "workflowtaskresults.argoproj.io", True),
    ("children", "patch", "workflowtaskresults.argoproj.io", True),
    ("children", "get", "workflowtaskresults.argoproj.io", False),
    ("children", "delete", "workflowtaskresults.argoproj.io", False),
    ("children", "create", "workflows.argoproj.io", False),
    ("children", "get", "pods", False),
    ("children", "get", "secrets", False),
]


@pytest.mark.parametrize("enabled", [True, False], ids=["argo-enabled", "argo-disabled"])
def test_rbac_with_argo(helm, control_plane, crds, argo_crds, namespace, other_namespace, enabled):
    """After `helm install`, the authorizer lets the controller use exactly the Workflow verbs of
    the Argo executor and the children's default ServiceAccount create/patch its node results, in
    the watched namespace only; with argo.enabled false, none of it."""
    install(helm, "epnas", namespace, "--set", f"argo.enabled={str(enabled).lower()}")
    who = {
        "controller": f"system:serviceaccount:{namespace}:epnas",
        "children": f"system:serviceaccount:{namespace}:default",
    }
    try:
        answers = [(w, v, r, can_i(control_plane, who[w], v, r, namespace)) for w, v, r, _ in ARGO_RULES]
        elsewhere = [
            can_i(control_plane, who["controller"], "create", "workflows.argoproj.io", other_namespace),
            can_i(
                control_plane,
                f"system:serviceaccount:{other_namespace}:default",
                "create",
                "workflowtaskresults.argoproj.io",
                other_namespace,
            ),
        ]
    finally:
        helm("uninstall", "epnas", "-n", namespace)

    expected = [(w, v, r, ok and (enabled or r == "jobs.batch")) for w, v, r, ok in ARGO_RULES]
    assert answers == expected
    assert elsewhere == [False, False]


def test_rbac_in_a_watched_namespace_other_than_the_release_namespace(
    helm, control_plane, crds, namespace, other_namespace
):
    install(helm, "epnas", namespace, "--set", f"watchNamespaces={{{other_namespace}}}")
    service_account = f"system:serviceaccount:{namespace}:epnas"
    try:
        in_watched = can_i(control_plane, service_account, "create", "jobs.batch", other_namespace)
        in_release = can_i(control_plane, service_account, "create", "jobs.batch", namespace)
        secrets_in_watched = can_i(control_plane, service_account, "get", "secrets", other_namespace)
    finally:
        helm("uninstall", "epnas", "-n", namespace)

    assert (in_watched, in_release, secrets_in_watched) == (True, False, False)


def test_two_watched_namespaces_fail_the_render(helm):
    result = helm(
        "template", "r", str(CHART), "--kube-version", "1.37.0", "--set", "watchNamespaces={a,b}", check=False
    )

    assert result.returncode != 0
    assert "the controller watches one namespace" in result.stderr


def test_rbac_with_all_namespaces(helm, control_plane, crds, namespace, other_namespace):
    release = f"epnas-{namespace}"[:53]  # cluster-scoped names: one per test namespace
    install(
        helm, release, namespace, "-f", str(CHART / "ci" / "all-namespaces.yaml"), "--set", "serviceAccount.name=epnas"
    )
    service_account = f"system:serviceaccount:{namespace}:epnas"
    where = {"own": namespace, "other": other_namespace}
    try:
        answers = [
            (verb, resource, sub, place, can_i(control_plane, service_account, verb, resource, where[place], sub))
            for verb, resource, sub, place, _ in ALL_NAMESPACES_RULES
        ]
    finally:
        helm("uninstall", release, "-n", namespace)

    assert answers == [row[:4] + (row[4],) for row in ALL_NAMESPACES_RULES]


def test_uninstall_removes_cluster_role(helm, control_plane, crds, namespace):
    release = f"epnas-{namespace}"[:53]
    install(helm, release, namespace, "-f", str(CHART / "ci" / "all-namespaces.yaml"))
    before = control_plane.kubectl("get", "clusterrole", release, check=False).returncode

    helm("uninstall", release, "-n", namespace)
    after = control_plane.kubectl("get", "clusterrole", release, check=False).returncode

    assert (before, after) == (0, 1)


# -- the Grafana dashboard


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "epnas.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def exported_series_names() -> set[str]:
    """Every series name the controller's registry can expose (counter `_total`, histogram
    `_bucket`/`_sum`/`_count`, gauge as is)."""
    from controller.metrics import ControllerMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix for family in ControllerMetrics().registry.collect() for suffix in suffixes[family.type]
    }


def test_dashboard_uses_only_metrics_the_controller_exports():
    used = {name for expr in dashboard_expressions() for name in re.findall(r"\bepnas_\w+", expr)}

    assert used and used <= exported_series_names(), used - exported_series_names()


def test_dashboard_covers_the_issue_panels():
    used = " ".join(dashboard_expressions())

    for name in (
        "epnas_searches_running",
        "epnas_best_accuracy",
        "epnas_best_reward",
        "epnas_feasible_ratio",
        "epnas_children_total",
        "epnas_child_duration_seconds_bucket",
        "epnas_policy_entropy",
        "epnas_kubernetes_api_errors_total",
        "epnas_store_errors_total",
    ):
        assert name in used
    assert "histogram_quantile(" in used


def notes_manifest(notes: str) -> dict:
    """The search NOTES.txt prints between ``<<'EOF'`` and ``EOF``, de-indented and parsed."""
    body = notes.split("<<'EOF'\n", 1)[1].split("\n     EOF", 1)[0]
    return yaml.safe_load("\n".join(line[5:] for line in body.splitlines()))


@pytest.mark.parametrize(
    "sets, uri, gpu_hint",
    [
        (
            [
                "store.allowed={s3://epnas/searches}",
                "store.endpoint=http://minio.minio:9000",
                "store.existingSecret=epnas-s3",
                "watchNamespaces={team-a}",
            ],
            "s3://epnas/searches",
            "trainer: {gpu: 0}",
        ),
        (["store.bucket=models", "trainer.gpu=0"], "s3://models/searches", "trainer: {gpu: 1}"),
    ],
)
def test_notes_print_a_search_this_installation_runs(helm, control_plane, crds, sets, uri, gpu_hint):
    """NOTES.txt's search is the embedded default with this installation's store filled in, the
    server accepts it, and every command that names the search names its namespace."""
    args = [a for s in sets for a in ("--set", s)]
    notes = helm("install", "r", str(CHART), "-n", "team-a", "--dry-run=client", *args).stdout.split("NOTES:", 1)[1]
    search = notes_manifest(notes)

    example = yaml.safe_load((pathlib.Path(__file__).parents[2] / "examples" / "digits-quick.yaml").read_text())
    assert {k: v for k, v in search["spec"].items() if k != "store"} == {
        k: v for k, v in example["spec"].items() if k != "store"
    }
    assert search["spec"]["store"]["uri"] == uri and parse_search(search).spec.store.uri == uri
    if "store.existingSecret=epnas-s3" in sets:
        assert search["spec"]["store"] == {"uri": uri, "endpoint": "http://minio.minio:9000", "secretName": "epnas-s3"}
    applied = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", "-", input_text=yaml.safe_dump(search), check=False
    )
    assert applied.returncode == 0, applied.stderr
    commands = [
        line.strip()
        for line in notes.splitlines()
        if line.strip().startswith("kubectl") and (" nas " in line or " jobs " in line)
    ]
    assert commands and all(" -n " in c for c in commands), commands
    assert gpu_hint in notes


def test_the_parallelism_value_becomes_the_controllers_default_parallelism(helm):
    """values `parallelism` reaches the controller as --default-parallelism, which its own parser takes; 0 passes nothing."""

    def args(*sets: str) -> list[str]:
        rendered = helm(
            "template",
            "r",
            str(CHART),
            "-n",
            "team-a",
            "--kube-version",
            "1.37.0",
            *[a for s in sets for a in ("--set", s)],
        ).stdout
        deployment = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment")
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    assert not [a for a in args() if a.startswith("--default-parallelism")]
    rendered = args("parallelism=16")
    assert "--default-parallelism=16" in rendered
    assert parse_args(rendered).default_parallelism == 16
