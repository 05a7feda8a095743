"""The Kueue manager (sigs.k8s.io/kueue/cmd/kueue, built by `scripts/testbin kueue` at the
KUEUE_VERSION pinned in scripts/testbin.versions) against the test control plane.

`KueueServer.start()`:

1. installs Kueue's CRDs from the same module version in the Go module cache
   (`<GOMODCACHE>/sigs.k8s.io/kueue@<version>/config/components/crd/bases`, downloaded with
   `go mod download` when absent: the build put it there), server-side applied and Established;
2. makes a self-signed PKI with `certs.make_pki` (serving cert for 127.0.0.1) for the webhook
   server's certDir and the metrics server;
3. writes a `config.kueue.x-k8s.io/v1beta2` Configuration: the control plane's admin kubeconfig,
   leader election off, health probes and (secure) metrics on free loopback ports, the webhook
   server on a free 127.0.0.1 port, internal cert management off, the visibility on-demand
   server off (feature gate), integrations `batch/job` only;
4. starts the manager, waits for its /readyz (the webhook server is up), then registers its
   webhooks (below) and waits until the API server calls them.

**Its webhooks are registered with the API server, as an installation does**: the Mutating- and
ValidatingWebhookConfiguration from the same module (config/components/webhook/manifests.yaml),
keeping the webhooks for Kueue's own objects and for batch/v1 Jobs (the one integration
enabled; the manager serves no others), each pointed at `https://127.0.0.1:<webhook port>` with
the test CA as caBundle instead of the in-cluster Service (the API server runs on this host).
The Job webhooks get an objectSelector on the `kueue.x-k8s.io/queue-name` label, so the other
tests' Jobs never depend on a webhook that lives only while this session's Kueue does (with
manageJobsWithoutQueueName off, Kueue leaves unlabelled Jobs alone anyway). `start` returns
once a server-side dry-run of a labelled Job comes back suspended, i.e. Kueue's mutating Job
webhook answered; `stop` deletes both configurations before stopping the manager.

Kueue would admit Jobs without the webhooks too (its Job reconciler creates the Workload for a
labelled suspended Job and unsuspends it on admission); with them, every Kueue object and every
labelled Job the tests create is defaulted and validated by Kueue as on a cluster.

With internal cert management off, v0.17.0's manager reads its metrics serving cert from the
fixed path /etc/kueue/metrics/certs (cmd/kueue/main.go) and exits without it, so the manager runs
in its own mount namespace (`unshare --mount --propagation private`, as harness/rootfs.py does
for containers) where an overlay on /etc adds that directory; the host's /etc is untouched.
Only root can do that (the tests that run images are root already).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import time

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from harness import binaries, certs, procs
from harness.controlplane import SERVICE_IP, ControlPlane, _http_ok

MODULE = "sigs.k8s.io/kueue"
CRD_SUBDIR = pathlib.Path("config/components/crd/bases")
WEBHOOKS_FILE = pathlib.Path("config/components/webhook/manifests.yaml")
WEBHOOK_GROUPS = {"kueue.x-k8s.io", "batch"}  # Kueue's own objects, and batch/v1 Jobs (the integration enabled)
WEBHOOK_CONFIG_NAME = "epnas-test-kueue"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_NAMESPACE = "kueue-system"
API = "kueue.x-k8s.io/v1beta2"
# Runs the manager with /etc overlaid so that /etc/kueue/metrics/certs holds the metrics cert.
MOUNT_SCRIPT = 'set -e; mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc; shift 2; exec "$@"'


def pinned_version() -> str:
    """KUEUE_VERSION from scripts/testbin.versions."""
    return binaries.pinned_version("KUEUE_VERSION")


def module_dir(version: str | None = None) -> pathlib.Path:
    """The Kueue module at `version` (default: pinned) in the Go module cache."""
    return binaries.go_module_dir(MODULE, version or pinned_version())


def crd_files(version: str | None = None) -> list[pathlib.Path]:
    """Kueue's CRD manifests as that module version ships them (controller-gen output)."""
    files = sorted((module_dir(version) / CRD_SUBDIR).glob("*.yaml"))
    if not files:
        raise RuntimeError(f"no CRDs under {module_dir(version) / CRD_SUBDIR}")
    return files


def webhook_configurations(*, url: str, ca_bundle: bytes, version: str | None = None) -> list[dict]:
    """Kueue's Mutating- and ValidatingWebhookConfiguration of that module version, for a manager
    serving at ``url``: only the webhooks of WEBHOOK_GROUPS, called at ``url + path`` with
    ``ca_bundle``; the Job webhooks only for Jobs that carry the queue label."""
    docs = [d for d in yaml.safe_load_all((module_dir(version) / WEBHOOKS_FILE).read_text()) if d]
    out = []
    for doc in docs:
        hooks = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook["rules"] for g in rule["apiGroups"]}
            if not groups <= WEBHOOK_GROUPS:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": base64.b64encode(ca_bundle).decode()}
            if "batch" in groups:
                hook["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
            hooks.append(hook)
        kind = doc["kind"]
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": kind,
                "metadata": {"name": f"{WEBHOOK_CONFIG_NAME}-{kind.removesuffix('WebhookConfiguration').lower()}"},
                "webhooks": hooks,
            }
        )
    return out


class KueueServer:
    """A running Kueue manager. Attributes: `version`, `workdir`, `log_path`, `config_path`,
    `health_port`, `metrics_port`, `webhook_port`, `crds` (names), `webhooks` (the registered
    configurations), `startup_s`."""

    def __init__(self, workdir: pathlib.Path, control_plane: ControlPlane) -> None:
        self.workdir = workdir
        self.control_plane = control_plane
        self.version = pinned_version()
        self.log_path = workdir / "kueue.log"
        self.config_path = workdir / "config.yaml"
        self.health_port = self.metrics_port = self.webhook_port = 0
        self.crds: list[str] = []
        self.webhooks: list[dict] = []
        self.server: procs.ServerProcess | None = None
        self.startup_s = 0.0

    def start(self) -> None:
        started = time.monotonic()
        kueue_bin = binaries.require("kueue")
        if os.geteuid() != 0:
            raise RuntimeError(
                "the Kueue manager runs in its own mount namespace (metrics certs at /etc/kueue): run the tests as root"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._install_crds()
        self.control_plane.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
        pki = certs.make_pki(self.workdir / "pki", service_ip=SERVICE_IP)
        webhook_certs = self.workdir / "webhook-certs"
        etc_upper, etc_work = self.workdir / "etc-upper", self.workdir / "etc-work"
        metrics_certs = etc_upper / "kueue" / "metrics" / "certs"
        for directory in (webhook_certs, metrics_certs):
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pki.serving_cert, directory / "tls.crt")
            shutil.copyfile(pki.serving_key, directory / "tls.key")
        etc_work.mkdir(exist_ok=True)
        self.health_port, self.metrics_port, self.webhook_port = procs.free_port(), procs.free_port(), procs.free_port()
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": KUEUE_NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(webhook_certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "featureGates": {"VisibilityOnDemand": False},
            "integrations": {"frameworks": ["batch/job"]},
        }
        self.config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            MOUNT_SCRIPT,
            "kueue",
            str(etc_upper),
            str(etc_work),
            str(kueue_bin),
            f"--config={self.config_path}",
            f"--kubeconfig={self.control_plane.kubeconfig}",
            "--zap-log-level=info",
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir), **procs.run_marker_env()}
        self.server = procs.ServerProcess("kueue", argv, log_path=self.log_path, env=env, cwd=self.workdir)
        self.server.start()
        self.server.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{self.health_port}/readyz"), timeout_s=120)
        self.webhooks = webhook_configurations(
            url=f"https://127.0.0.1:{self.webhook_port}", ca_bundle=pki.ca_cert.read_bytes(), version=self.version
        )
        self.control_plane.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": self.webhooks}),
        )
        self.server.wait_ready(self._job_webhook_answers, timeout_s=60)
        self.startup_s = time.monotonic() - started

    def _job_webhook_answers(self) -> bool:
        """A server-side dry-run of a labelled, unsuspended Job comes back suspended: the API
        server called Kueue's mutating Job webhook (the configuration is live)."""
        batch = k8s_client.BatchV1Api(self.control_plane.api_client())
        body = {
            "metadata": {"name": "kueue-webhook-probe", "labels": {QUEUE_LABEL: "probe"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "probe"}]}}},
        }
        try:
            job = batch.create_namespaced_job("default", body, dry_run="All")
        except ApiException:
            return False
        return bool(job.spec.suspend)

    def _install_crds(self) -> None:
        files = crd_files(self.version)
        args = ["apply", "--server-side", "--force-conflicts"]
        for path in files:
            args += ["-f", str(path)]
        self.control_plane.kubectl(*args)
        listed = self.control_plane.kubectl("get", "crd", "-o", "name").stdout.split()
        self.crds = sorted(n.split("/", 1)[1] for n in listed if n.endswith(".kueue.x-k8s.io"))
        self.control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{name}" for name in self.crds]
        )

    def stop(self) -> None:
        for config in self.webhooks:
            self.control_plane.kubectl(
                "delete", config["kind"].lower(), config["metadata"]["name"], "--ignore-not-found", check=False
            )
        if self.server is not None:
            self.server.stop()
