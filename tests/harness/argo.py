"""Argo Workflows' workflow-controller (built by `scripts/testbin argo` at the ARGO_VERSION pinned
in scripts/testbin.versions, with its executor `argoexec`) against the test control plane.

**Not for production**: the module proxy here serves only v4.0.5 of the v4 module, which has
reported security flaws. It is acceptable only as this loopback test fixture, never shipped
(no image, chart or dependency of the product carries it). The controller also opens two
listeners on every interface: /healthz on the fixed port 6060 (no flag moves it; a second
controller on the host logs that the port is taken and runs on) and the metrics
server, put here on a free port without TLS and used as the readiness probe.

`ArgoServer.start()`:

1. installs the Argo CRDs from the same module version in the Go module cache
   (`<GOMODCACHE>/github.com/argoproj/argo-workflows/v4@<version>/manifests/base/crds/minimal`,
   `go mod download`ed when absent), server-side applied and Established;
2. builds (once per argoexec binary, tagged by its hash) the executor image
   `localhost/epnas-argoexec:<version>-<hash>` with buildah: `scratch` plus /bin/argoexec,
   PATH=/bin. The node agent runs Argo's `init` and `wait` containers in it (harness/rootfs.py),
   since argoexec works at fixed paths (/var/run/argo, the ServiceAccount token at
   /var/run/secrets/kubernetes.io/serviceaccount) that only a container of its own gives it;
3. creates the namespace `argo` with the `workflow-controller-configmap` (metrics on a free
   port, plain HTTP) and runs `workflow-controller --kubeconfig <admin> --namespace argo
   --executor-image <that image>` with leader election off, watching every namespace.

A test then calls `use_node(node_agent, *images)` (the node_agent fixture forgets its local
images after each test) so that the executor image and the main containers' images run in
their images, and `grant_executor(namespace)` for the Role the `wait` container needs (the
upstream quick-start's emissary executor Role: create/patch workflowtaskresults) bound to the
Workflow's ServiceAccount. The main container runs `/var/run/argo/argoexec emissary -- <its
command>` from the emptyDir that the init container copied argoexec into, so its image must be
one built here (scripts/base-image's or the trainer image), not a host-process image.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import time

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from harness import binaries, procs
from harness.controlplane import ControlPlane, _http_ok

MODULE = "github.com/argoproj/argo-workflows/v4"
CRD_SUBDIR = pathlib.Path("manifests/base/crds/minimal")
EXECUTOR_ROLE_FILE = pathlib.Path("manifests/quick-start/base/executor/emissary/executor-role.yaml")
ARGO_NAMESPACE = "argo"
CONFIGMAP = "workflow-controller-configmap"
IMAGE_REPO = "localhost/epnas-argoexec"
GROUP, VERSION = "argoproj.io", "v1alpha1"


def pinned_version() -> str:
    """ARGO_VERSION from scripts/testbin.versions."""
    return binaries.pinned_version("ARGO_VERSION")


def module_dir(version: str | None = None) -> pathlib.Path:
    """The Argo module at `version` (default: pinned) in the Go module cache, downloaded if absent."""
    return binaries.go_module_dir(MODULE, version or pinned_version())


def executor_role(namespace: str, *, version: str | None = None) -> dict:
    """The upstream emissary executor Role of that version, in `namespace`."""
    role = yaml.safe_load((module_dir(version) / EXECUTOR_ROLE_FILE).read_text())
    role["metadata"] = {"name": "argo-executor", "namespace": namespace}
    return role


def executor_image(argoexec: pathlib.Path, version: str) -> str:
    """The executor image for this argoexec binary, built with buildah when it is not there yet."""
    digest = hashlib.sha256(argoexec.read_bytes()).hexdigest()[:12]
    ref = f"{IMAGE_REPO}:{version}-{digest}"
    if subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, check=False).returncode == 0:
        return ref

    def buildah(*args: str) -> str:
        result = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    container = buildah("from", "scratch")
    try:
        buildah("copy", "--chmod", "0755", container, str(argoexec), "/bin/argoexec")
        buildah("config", "--env", "PATH=/bin", "--entrypoint", '["/bin/argoexec"]', "--user", "0:0", container)
        buildah("commit", "--quiet", container, ref)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    return ref


def install_crds(control_plane: ControlPlane, version: str | None = None) -> list[str]:
    """Server-side apply the Argo CRDs of `version` (default: pinned) from its module and wait until
    they are Established; their names. Idempotent (also what `ArgoServer.start()` does first)."""
    crd_dir = module_dir(version) / CRD_SUBDIR
    files = sorted(crd_dir.glob("argoproj.io_*.yaml"))
    if not files:
        raise RuntimeError(f"no CRDs under {crd_dir}")
    args = ["apply", "--server-side", "--force-conflicts"]
    for path in files:
        args += ["-f", str(path)]
    control_plane.kubectl(*args)
    names = [yaml.safe_load(path.read_text())["metadata"]["name"] for path in files]
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{name}" for name in names])
    return names


class ArgoServer:
    """A running workflow-controller. Attributes: `version`, `workdir`, `log_path`,
    `metrics_port`, `executor_image`, `crds` (names), `startup_s`."""

    def __init__(self, workdir: pathlib.Path, control_plane: ControlPlane) -> None:
        self.workdir = workdir
        self.control_plane = control_plane
        self.version = pinned_version()
        self.log_path = workdir / "workflow-controller.log"
        self.metrics_port = 0
        self.executor_image = ""
        self.crds: list[str] = []
        self.server: procs.ServerProcess | None = None
        self.startup_s = 0.0

    def start(self) -> None:
        started = time.monotonic()
        controller_bin = binaries.require("workflow-controller")
        argoexec_bin = binaries.require("argoexec")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._install_crds()
        self.executor_image = executor_image(argoexec_bin, self.version)
        self.metrics_port = procs.free_port()
        config = {
            "metricsConfig": {"enabled": True, "port": self.metrics_port, "secure": False},
            "telemetryConfig": {"enabled": False},
        }
        self.control_plane.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input_text=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": [
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ARGO_NAMESPACE}},
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": CONFIGMAP, "namespace": ARGO_NAMESPACE},
                            "data": {"config": json.dumps(config)},
                        },  # JSON is YAML
                    ],
                }
            ),
        )
        argv = [
            str(controller_bin),
            f"--kubeconfig={self.control_plane.kubeconfig}",
            f"--namespace={ARGO_NAMESPACE}",
            f"--configmap={CONFIGMAP}",
            f"--executor-image={self.executor_image}",
            "--executor-image-pull-policy=IfNotPresent",
            "--loglevel=info",
            "--workflow-workers=4",
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "LEADER_ELECTION_DISABLE": "true",
            **procs.run_marker_env(),
        }
        self.server = procs.ServerProcess(
            "workflow-controller", argv, log_path=self.log_path, env=env, cwd=self.workdir
        )
        self.server.start()
        self.server.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{self.metrics_port}/metrics"), timeout_s=120)
        self.startup_s = time.monotonic() - started

    def _install_crds(self) -> None:
        self.crds = install_crds(self.control_plane, self.version)

    def use_node(self, node_agent, *images: str) -> None:
        """Make `node_agent` run the executor image and each of `images` in their images."""
        for image in (self.executor_image, *images):
            node_agent.local_images[image] = image

    def grant_executor(self, namespace: str, service_account: str = "default") -> None:
        """Bind the emissary executor Role to `service_account` in `namespace`."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"argo-executor-{service_account}", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "argo-executor"},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        }
        self.control_plane.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input_text=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": [executor_role(namespace, version=self.version), binding]}
            ),
        )

    def workflow(self, namespace: str, name: str) -> dict:
        """The Workflow object as the API server has it."""
        custom = k8s_client.CustomObjectsApi(self.control_plane.api_client())
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workflows", name)

    def wait_for_phase(self, namespace: str, name: str, *, timeout_s: float = 180) -> dict:
        """Wait until the Workflow's phase is Succeeded, Failed or Error; return the Workflow."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                workflow = self.workflow(namespace, name)
            except ApiException as error:
                if error.status != 404:
                    raise
                workflow = {}
            if (workflow.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Error"):
                return workflow
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Workflow {namespace}/{name} not finished after {timeout_s:.0f} s: "
                    f"{json.dumps(workflow.get('status'))[:3000]}\ncontroller log tail:\n"
                    + procs.log_tail(self.log_path, max_bytes=4000)
                )
            time.sleep(0.5)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
