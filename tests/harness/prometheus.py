"""Prometheus as the Prometheus Operator would run it for a ServiceMonitor, on the test control plane.

* ``servicemonitor_crd()``: the Operator's own ServiceMonitor CRD, from its Go module at the
  pinned PROMETHEUS_OPERATOR_VERSION (scripts/testbin.versions; `scripts/testbin manifests`
  puts the module in the Go module cache).
* ``ServiceMonitorDiscovery``: the targets the Operator's scrape job would find for a
  ServiceMonitor, found on the real API server at each refresh: the Services its ``selector`` and
  ``namespaceSelector`` pick; for each ``endpoints[]`` entry, that Service's port of that name, its
  ``targetPort`` resolved on every running pod the Service's own ``selector`` matches. It serves
  them over Prometheus's HTTP service discovery (``http_sd_configs``), and ``scrape_jobs()``
  gives one job per entry with its path, interval and timeout. (The Operator uses Kubernetes
  discovery of EndpointSlices. Debian's prometheus is built without Kubernetes discovery, and the
  harness's pods run on the host with podIP 127.0.0.1, which the API server refuses as an
  endpoint address; so the same lookup, Service → selector → pods → named port, is done here
  from the API server's answers.) A ServiceMonitor that selects no Service, a port name the
  Service lacks, or a selector that matches no pod gives no target, so a wrong chart scrapes
  nothing.
* ``Prometheus``: Debian's prometheus with a given set of scrape jobs; ``.query(expr)``,
  ``.targets()``.
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

import yaml

from harness import binaries, procs

PROMETHEUS = "/usr/bin/prometheus"
PROMETHEUS_HINT = "install Prometheus with `scripts/test-deps` (apt-get install -y prometheus; `make testbin` runs it)"


def servicemonitor_crd() -> str:
    """The monitoring.coreos.com ServiceMonitor CRD of the pinned Prometheus Operator, as YAML text."""
    version = binaries.pinned_version("PROMETHEUS_OPERATOR_VERSION")
    module = binaries.go_module_dir("github.com/prometheus-operator/prometheus-operator", version)
    return (module / "example" / "prometheus-operator-crd" / "monitoring.coreos.com_servicemonitors.yaml").read_text()


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's ``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist) against ``labels``."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


class ServiceMonitorDiscovery:
    """HTTP service discovery for one ServiceMonitor; ``start()``, ``scrape_jobs()``, ``stop()``."""

    def __init__(self, core: Any, monitor: dict[str, Any]):
        self.core, self.monitor = core, monitor
        self.server: http.server.ThreadingHTTPServer | None = None

    def target_groups(self, index: int) -> list[dict[str, Any]]:
        """What ``http_sd_configs`` expects for ``endpoints[index]``: ``[{"targets": [...], "labels": {...}}]``."""
        meta, spec = self.monitor["metadata"], self.monitor["spec"]
        endpoint = spec["endpoints"][index]
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [meta["namespace"]]
        groups = []
        for namespace in namespaces:
            for service in self.core.list_namespaced_service(namespace).items:
                if not selects(spec["selector"], service.metadata.labels or {}):
                    continue
                port = next((p for p in service.spec.ports or [] if p.name == endpoint.get("port")), None)
                if port is None or not service.spec.selector:
                    continue
                target = port.target_port if port.target_port is not None else port.port
                selector = ",".join(f"{k}={v}" for k, v in service.spec.selector.items())
                for pod in self.core.list_namespaced_pod(namespace, label_selector=selector).items:
                    if pod.status.phase != "Running" or not pod.status.pod_ip:
                        continue
                    numbers = [
                        c.container_port
                        for container in pod.spec.containers
                        for c in container.ports or []
                        if (c.name == target if isinstance(target, str) else c.container_port == target)
                    ]
                    if numbers:
                        groups.append(
                            {
                                "targets": [f"{pod.status.pod_ip}:{numbers[0]}"],
                                "labels": {
                                    "namespace": namespace,
                                    "pod": pod.metadata.name,
                                    "service": service.metadata.name,
                                    "endpoint": str(endpoint.get("port")),
                                },
                            }
                        )
        return groups

    def start(self) -> None:
        discovery = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    body = json.dumps(discovery.target_groups(int(self.path.rsplit("/", 1)[-1]))).encode()
                    self.send_response(200)
                except Exception as err:  # a failed lookup is a failed refresh, as Prometheus sees it
                    body = str(err).encode()
                    self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def scrape_jobs(self) -> list[dict[str, Any]]:
        """One scrape job per ``endpoints[]`` entry, named as the Operator names them."""
        assert self.server is not None, "start() first"
        meta = self.monitor["metadata"]
        return [
            {
                "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "metrics_path": endpoint.get("path", "/metrics"),
                "scrape_interval": endpoint.get("interval") or "30s",
                "scrape_timeout": endpoint.get("scrapeTimeout") or "10s",
                "http_sd_configs": [
                    {"url": f"http://127.0.0.1:{self.server.server_port}/sd/{i}", "refresh_interval": "1s"}
                ],
            }
            for i, endpoint in enumerate(self.monitor["spec"]["endpoints"])
        ]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class Prometheus:
    """Debian's prometheus with ``jobs`` as its scrape configs; ``.query(expr)`` → result list,
    ``.targets()`` → active targets. ``evaluation_interval`` 1 s."""

    def __init__(self, *, jobs: list[dict[str, Any]], workdir: pathlib.Path):
        if not os.access(PROMETHEUS, os.X_OK):
            raise binaries.MissingBinaryError(f"{PROMETHEUS} missing: {PROMETHEUS_HINT}")
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs})
        )
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
            )
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"Prometheus did not get ready:\n{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)

    def _get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as answer:
            return json.loads(answer.read())

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets?state=active")["data"]["activeTargets"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
