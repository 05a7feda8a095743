"""`helm install epnas ./helm/epnas` the way a user does it, on the harness's real control plane.

One test walks the whole path:

1. `helm install` into a namespace labelled `pod-security.kubernetes.io/enforce=restricted`,
   with MinIO as the store (`store.endpoint`, `store.existingSecret`);
2. the node agent runs the Deployment's pod *in the controller image* that Dockerfile.controller
   builds (the `images` fixture; harness/rootfs.py): its ENTRYPOINT, its non-root USER, a
   read-only root, the pod's projected ServiceAccount token at its mount path, so the image's
   in-cluster config and the chart's RBAC are what apply; the trainer pods likewise run in the
   trainer image;
3. `kubectl apply -f` of examples/digits-quick.yaml, shrunk (1 epoch, 2 episodes × 1 step ×
   2 branches, CPU) and pointed at MinIO, ends Succeeded; its trainer pods ran in the
   restricted namespace, so Pod Security admitted them;
4. the chart's ServiceMonitor (`metrics.serviceMonitor.enabled`), validated by the Prometheus
   Operator's real CRD, is turned into the scrape job the Operator would make
   (harness/prometheus.py): a real Prometheus (Debian's `prometheus`) is handed the controller pod
   by service discovery through the chart's Service (its selector, its `metrics` target port,
   looked up on the API server), scrapes it all along, and every PromQL expression of the Grafana dashboard, through
   Prometheus's HTTP API, returns at least one series;
5. `helm uninstall` stops the controller; the CRD stays (Helm never deletes crds/), so the
   search is deleted with kubectl and the garbage collector removes its Jobs.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml
from harness import binaries, rootfs
from harness.prometheus import PROMETHEUS, PROMETHEUS_HINT, Prometheus, ServiceMonitorDiscovery, servicemonitor_crd
from kubernetes import client as k8s_client

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "epnas"
DASHBOARD = CHART / "dashboards" / "epnas.json"
CONTROLLER_IMAGE = "epnas.local/epnas-controller"
CONTROLLER_TAG = "e2e"
TRAINER_IMAGE = "epnas.local/epnas-trainer:e2e"
SEARCH = "digits-quick"
# Grafana's variables, as a dashboard with "All" searches selected would expand them.
GRAFANA_VARIABLES = {"$namespace": ".*", "$search": ".*", "$__rate_interval": "2m"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def wait_for(what: str, check, *, timeout_s: float, every_s: float = 1.0, detail=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{detail()}")


@pytest.fixture(scope="session")
def epnas_crd(control_plane) -> None:
    """manifests/crd.yaml applied and Established (Helm installs crds/ only when the CRD is absent)."""
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/architecturesearches.epnas.io")


@pytest.fixture(scope="session")
def servicemonitor_crd_installed(control_plane) -> None:
    """The Prometheus Operator's ServiceMonitor CRD (pinned module), so the chart can create its ServiceMonitor."""
    try:
        manifest = servicemonitor_crd()
    except binaries.MissingBinaryError as error:
        pytest.fail(str(error), pytrace=False)
    control_plane.kubectl("apply", "--server-side", "-f", "-", input_text=manifest)
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com"
    )


@pytest.fixture
def store_secret_name(control_plane, namespace, minio) -> str:
    """Secret `epnas-store` with the MinIO keys, as manifests/minio-dev.yaml makes it on kind."""
    core = k8s_client.CoreV1Api(control_plane.api_client())
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "epnas-store"},
            "stringData": {"AWS_ACCESS_KEY_ID": minio.root_user, "AWS_SECRET_ACCESS_KEY": minio.root_password},
        },
    )
    return "epnas-store"


@pytest.fixture
def restricted_namespace(control_plane, namespace) -> str:
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    return namespace


@pytest.fixture
def controller_image(node_agent, images) -> str:
    """The chart's controller and trainer images, run by the node agent in the images built here."""
    image = f"{CONTROLLER_IMAGE}:{CONTROLLER_TAG}"
    node_agent.local_images[image] = images["controller"]
    node_agent.local_images[TRAINER_IMAGE] = images["trainer"]
    return image


def digits_search(*, bucket: str, minio, secret: str) -> str:
    """examples/digits-quick.yaml with a test-sized budget, CPU trainers and MinIO as the store."""
    search = yaml.safe_load((REPO / "examples" / "digits-quick.yaml").read_text())
    spec = search["spec"]
    spec["budget"] = {"episodes": 2, "stepsPerEpisode": 1, "branches": 2, "topK": 2}
    spec["childTraining"] = {**spec["childTraining"], "epochs": 1}
    spec["trainer"] = {
        "image": TRAINER_IMAGE,
        "gpu": 0,
        "cpu": "200m",
        "memory": "1Gi",
        "activeDeadlineSeconds": 600,
        "ttlSecondsAfterFinished": 3600,
    }
    spec["store"] = {
        "uri": f"s3://{bucket}/searches",
        "endpoint": minio.endpoint,
        "secretName": secret,
        "region": minio.region,
    }
    return yaml.safe_dump(search)


def custom_objects(control_plane) -> k8s_client.CustomObjectsApi:
    return k8s_client.CustomObjectsApi(control_plane.api_client())


def search_phase(control_plane, namespace: str) -> str | None:
    obj = custom_objects(control_plane).get_namespaced_custom_object(
        "epnas.io", "v1alpha1", namespace, "architecturesearches", SEARCH
    )
    return (obj.get("status") or {}).get("phase")


def controller_pod(core, namespace: str):
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=controller").items
    return pods[0] if pods else None


def test_helm_install_runs_digits_search_under_restricted_and_dashboard_queries_answer(
    helm,
    control_plane,
    node_agent,
    minio,
    bucket,
    epnas_crd,
    servicemonitor_crd_installed,
    store_secret_name,
    restricted_namespace,
    controller_image,
    images,
    tmp_path,
):
    namespace = restricted_namespace
    core = k8s_client.CoreV1Api(control_plane.api_client())
    batch = k8s_client.BatchV1Api(control_plane.api_client())
    metrics_port = free_port()
    timings: dict[str, float] = {}
    started = time.monotonic()

    installed = helm(
        "install",
        "epnas",
        str(CHART),
        "-n",
        namespace,
        "--wait=false",
        "--set",
        f"image.repository={CONTROLLER_IMAGE}",
        "--set",
        f"image.tag={CONTROLLER_TAG}",
        "--set",
        f"metrics.port={metrics_port}",
        "--set",
        f"store.endpoint={minio.endpoint}",
        "--set",
        f"store.region={minio.region}",
        "--set",
        f"store.existingSecret={store_secret_name}",
        "--set",
        "controller.logLevel=DEBUG",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.interval=1s",
        "--set",
        "metrics.serviceMonitor.scrapeTimeout=1s",
        # the node agent runs pods on the host network: two replicas would share the metrics port
        # (two replicas and the leader hand-over: tests/e2e/test_controller_resilience.py)
        "--set",
        "controller.replicas=1",
    )
    custom = k8s_client.CustomObjectsApi(control_plane.api_client())
    (monitor,) = custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "servicemonitors")[
        "items"
    ]
    discovery = ServiceMonitorDiscovery(core, monitor)
    discovery.start()
    jobs = discovery.scrape_jobs()
    assert [(j["job_name"], j["scrape_interval"]) for j in jobs] == [(f"serviceMonitor/{namespace}/epnas/0", "1s")], (
        jobs
    )
    prometheus = Prometheus(jobs=jobs, workdir=tmp_path / "prometheus")
    try:
        pod = wait_for("the controller pod", lambda: controller_pod(core, namespace), timeout_s=60)
        controller_log = lambda: node_agent.container_log(namespace, pod.metadata.name)[-4000:]  # noqa: E731
        wait_for(
            "controller /readyz",
            lambda: http_get(f"http://127.0.0.1:{metrics_port}/readyz")[0] == 200,
            timeout_s=90,
            detail=controller_log,
        )
        timings["install_to_ready_s"] = time.monotonic() - started
        # Prometheus found the controller pod through the Service, as the ServiceMonitor says, and scrapes it
        target = wait_for(
            "the controller as an up target",
            lambda: next((x for x in prometheus.targets() if x["health"] == "up"), None),
            timeout_s=60,
            detail=lambda: f"{prometheus.targets()}\n{prometheus.log.read_text(errors='replace')[-2000:]}",
        )
        assert {k: target["labels"][k] for k in ("job", "service", "endpoint", "namespace", "pod")} == {
            "job": f"serviceMonitor/{namespace}/epnas/0",
            "service": "epnas-metrics",
            "endpoint": "metrics",
            "namespace": namespace,
            "pod": pod.metadata.name,
        }, target
        assert target["scrapeUrl"] == f"http://127.0.0.1:{metrics_port}/metrics", target
        running = core.read_namespaced_pod(pod.metadata.name, namespace).status.container_statuses[0]
        assert running.container_id.startswith("rootfs://"), running  # in the controller image, not on the host
        assert running.image_id == f"sha256:{rootfs.image_id(images['controller'])}"

        control_plane.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input_text=digits_search(bucket=bucket, minio=minio, secret=store_secret_name),
        )
        applied = time.monotonic()
        phase = wait_for(
            "the search to finish",
            lambda: (
                search_phase(control_plane, namespace) in ("Succeeded", "Failed")
                and search_phase(control_plane, namespace)
            ),
            timeout_s=600,
            every_s=2,
            detail=controller_log,
        )
        timings["search_s"] = time.monotonic() - applied
        assert phase == "Succeeded", controller_log()

        jobs = batch.list_namespaced_job(namespace, label_selector=f"epnas.io/search={SEARCH}").items
        trainer_pods = core.list_namespaced_pod(namespace, label_selector=f"epnas.io/search={SEARCH}").items
        # Pod Security `restricted` is enforced at pod creation: every trainer pod that exists was admitted.
        assert len(jobs) >= 2
        assert trainer_pods and {p.status.phase for p in trainer_pods} == {"Succeeded"}
        assert all(p.spec.security_context.run_as_non_root for p in trainer_pods)
        # ... and every trainer ran in the trainer image, as the image's user 65532, not on the host
        assert {p.status.container_statuses[0].container_id.split("://")[0] for p in trainer_pods} == {"rootfs"}
        assert {p.status.container_statuses[0].image_id for p in trainer_pods} == {
            f"sha256:{rootfs.image_id(images['trainer'])}"
        }
        assert not [
            e
            for e in core.list_namespaced_event(namespace).items
            if e.reason == "FailedCreate" and "PodSecurity" in (e.message or "")
        ]

        # Prometheus has scraped the finished search: every dashboard expression answers.
        wait_for(
            "a scrape after the search ended",
            lambda: (
                prometheus.query(f'epnas_children_total{{search="{SEARCH}"}}')
                and prometheus.query("epnas_policy_entropy")
            ),
            timeout_s=60,
        )
        time.sleep(5)  # a few more samples for rate() and histogram_quantile()
        empty = []
        for expr in dashboard_expressions():
            # without the panels' `or vector(0)` fallback: a query answers only from the controller's own series
            concrete = expr.replace(" or vector(0)", "")
            for variable, value in GRAFANA_VARIABLES.items():
                concrete = concrete.replace(variable, value)
            if not prometheus.query(concrete):
                empty.append(concrete)
        assert empty == [], f"dashboard expressions with no series: {empty}"

        uninstalled_at = time.monotonic()
        helm("uninstall", "epnas", "-n", namespace, "--wait")
        wait_for("the controller pod gone", lambda: controller_pod(core, namespace) is None, timeout_s=90)
        wait_for(
            "the controller process gone",
            lambda: http_get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 0,
            timeout_s=60,
        )
        assert control_plane.kubectl("get", "crd", "architecturesearches.epnas.io", check=False).returncode == 0
        assert batch.list_namespaced_job(namespace, label_selector=f"epnas.io/search={SEARCH}").items

        control_plane.kubectl("delete", "-n", namespace, "architecturesearch", SEARCH, "--wait=false")
        wait_for(
            "the search's Jobs garbage-collected",
            lambda: not batch.list_namespaced_job(namespace, label_selector=f"epnas.io/search={SEARCH}").items,
            timeout_s=120,
            every_s=2,
        )
        timings["uninstall_and_gc_s"] = time.monotonic() - uninstalled_at
    finally:
        prometheus.stop()
        discovery.stop()
        helm("uninstall", "epnas", "-n", namespace, check=False)
    assert "kubectl get nas" in installed.stdout  # NOTES.txt
    print(f"e2e timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_prometheus_binary_is_installed():
    """The dashboard check needs Debian's prometheus; its absence fails with the install command."""
    found = shutil.which("prometheus") or (PROMETHEUS if os.access(PROMETHEUS, os.X_OK) else None)

    assert found, f"prometheus missing: {PROMETHEUS_HINT}"
