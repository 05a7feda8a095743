"""etcd + kube-apiserver + kube-controller-manager on loopback, for tests.

`ControlPlane.start(workdir)` makes a PKI, starts the three servers each on free
127.0.0.1 ports with data and logs under `workdir`, writes an admin kubeconfig, and
returns once the apiserver is ready and the controller-manager is healthy.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from harness import binaries, certs, procs

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "root-ca-certificate-publisher-controller",
)
KUBECTL = "/usr/bin/kubectl"


def _b64_file(path: pathlib.Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: pathlib.Path, *, server: str, pki: certs.Pki) -> None:
    """Write a self-contained admin kubeconfig (JSON is valid kubeconfig YAML)."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "epnas-test", "cluster": {"server": server, "certificate-authority-data": _b64_file(pki.ca_cert)}}
        ],
        "users": [
            {
                "name": "epnas-admin",
                "user": {
                    "client-certificate-data": _b64_file(pki.admin_cert),
                    "client-key-data": _b64_file(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": "epnas-test", "context": {"cluster": "epnas-test", "user": "epnas-admin"}}],
        "current-context": "epnas-test",
    }
    path.write_text(json.dumps(kubeconfig, indent=1))
    path.chmod(0o600)


class ControlPlane:
    """A running etcd, kube-apiserver and kube-controller-manager.

    Attributes: `kubeconfig` (admin kubeconfig path), `server` (https URL), `env` (os.environ
    plus KUBECONFIG, for subprocesses), `workdir`, `pki`, `servers` (name → ServerProcess),
    `log_paths` (name → log file).
    """

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.pki: certs.Pki | None = None
        self.servers: dict[str, procs.ServerProcess] = {}
        self.kubeconfig = workdir / "kubeconfig"
        self.server = ""
        self.startup_s = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    @property
    def log_paths(self) -> dict[str, pathlib.Path]:
        return {name: server.log_path for name, server in self.servers.items()}

    def api_client(self) -> k8s_client.ApiClient:
        """Return a new kubernetes ApiClient authenticated as the admin (system:masters)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run /usr/bin/kubectl against this control plane; stdout/stderr captured as text."""
        return subprocess.run(
            [KUBECTL, *args],
            env=self.env,
            input=input_text,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout_s,
        )

    def start(self) -> None:
        """Start etcd, kube-apiserver and kube-controller-manager and wait until they serve."""
        started = time.monotonic()
        etcd_bin = binaries.require("etcd")
        apiserver_bin = binaries.require("kube-apiserver")
        kcm_bin = binaries.require("kube-controller-manager")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = certs.make_pki(self.workdir / "pki", service_ip=SERVICE_IP)

        etcd_url = self._start_etcd(etcd_bin)
        self._start_apiserver(apiserver_bin, etcd_url)
        write_kubeconfig(self.kubeconfig, server=self.server, pki=self.pki)
        self._start_controller_manager(kcm_bin)
        self.startup_s = time.monotonic() - started

    def stop(self) -> None:
        """Stop the servers in reverse start order and reap them."""
        for server in reversed(list(self.servers.values())):
            server.stop()

    def restart_apiserver(self, *, down_s: float) -> None:
        """Stop kube-apiserver (SIGTERM, then SIGKILL at once), keep it down ``down_s``, start it
        again on the same port and wait until it is ready: a control-plane upgrade or crash."""
        assert self.pki is not None
        server = self.servers["kube-apiserver"]
        server.stop(grace_s=0)
        time.sleep(down_s)
        server.start()
        context = _client_tls_context(self.pki)
        server.wait_ready(lambda: _http_ok(f"{self.server}/readyz", context=context), timeout_s=90)

    def _add(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> procs.ServerProcess:
        server = procs.ServerProcess(name, argv, log_path=self.workdir / f"{name}.log", env=env)
        self.servers[name] = server
        server.start()
        return server

    def _start_etcd(self, etcd_bin: pathlib.Path) -> str:
        client_port, peer_port = procs.free_port(), procs.free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._add(
            "etcd",
            [
                str(etcd_bin),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        etcd.wait_ready(lambda: _http_ok(f"{client_url}/health"), timeout_s=30)
        return client_url

    def _start_apiserver(self, apiserver_bin: pathlib.Path, etcd_url: str) -> None:
        assert self.pki is not None
        port = procs.free_port()
        self.server = f"https://127.0.0.1:{port}"
        apiserver = self._add(
            "kube-apiserver",
            [
                str(apiserver_bin),
                f"--etcd-servers={etcd_url}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={self.pki.serving_cert}",
                f"--tls-private-key-file={self.pki.serving_key}",
                f"--client-ca-file={self.pki.ca_cert}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # loopback advertise address: no kubernetes Endpoints
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # blockOwnerDeletion on an ownerReference needs update on the owner's finalizers, as on real clusters
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.pki.sa_pub}",
                f"--service-account-signing-key-file={self.pki.sa_key}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        context = _client_tls_context(self.pki)
        apiserver.wait_ready(lambda: _http_ok(f"{self.server}/readyz", context=context), timeout_s=90)

    def _start_controller_manager(self, kcm_bin: pathlib.Path) -> None:
        assert self.pki is not None
        port = procs.free_port()
        kcm = self._add(
            "kube-controller-manager",
            [
                str(kcm_bin),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_cert}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--concurrent-job-syncs=5",
                "--v=1",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        kcm.wait_ready(lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", context=insecure), timeout_s=60)


def _client_tls_context(pki: certs.Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def _http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    """True when GET `url` answers 200 (any error or other status: False)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False
