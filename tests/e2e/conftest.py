"""End-to-end tests: the controller as a user runs it, against the harness's real control plane,
node agent and MinIO (tests/harness; marked ``integration`` so failures carry the server logs).

Provides:

* ``crd`` (session): manifests/crd.yaml applied and Established.
* ``store_secret``: a Secret ``minio-credentials`` in ``namespace`` with the MinIO keys.
* ``start_controller``: ``start_controller(namespace, trainer_command=None, kubeconfig=None)`` →
  ``ControllerProcess`` (``python -m controller --namespace NS`` as a subprocess with the test
  kubeconfig, or ``kubeconfig``; its leader Lease in NS with a short ``LEASE``; killed after).
* ``search_yaml``: ``search_yaml(name, bucket, **spec overrides)`` → the YAML of a tiny synthetic
  search (2 episodes × 2 steps × 3 branches, 1 epoch, prediction regime) stored on MinIO.
* ``job_log``: ``job_log(namespace)`` → ``JobLog``, a watch started now that records every Job
  ever created in the namespace (uid → name), so deleted or TTL-collected Jobs still count.
* ``trainer_state``: ``trainer_state(bucket)`` → ``TrainerState`` for the wrapper trainer
  (tests/e2e/trainer_wrapper.py): who started/finished, and failure rules per child.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml
from e2e_helpers import LEASE
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

E2E_DIR = pathlib.Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
WRAPPER = E2E_DIR / "trainer_wrapper.py"
WRAPPER_STATE = pathlib.Path("/tmp/epnas-e2e-trainer")  # the wrapper's TMPDIR is the pod's emptyDir: a fixed path
SECRET = "minio-credentials"
TRAINER_IMAGE = "epnas/trainer:test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(str(E2E_DIR)):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def crd(control_plane):
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/architecturesearches.epnas.io")
    return control_plane


@pytest.fixture
def store_secret(control_plane, namespace, minio) -> str:
    core = k8s_client.CoreV1Api(control_plane.api_client())
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": SECRET},
            "stringData": {"AWS_ACCESS_KEY_ID": minio.root_user, "AWS_SECRET_ACCESS_KEY": minio.root_password},
        },
    )
    return SECRET


@pytest.fixture
def search_yaml(minio, store_secret):
    def build(name: str, bucket: str, **overrides) -> str:
        spec = {
            "seed": 4,
            "initialArchitecture": {"random": {"depth": 2}},
            "dataset": {"kind": "synthetic", "inputShape": [1, 8, 8], "numClasses": 4, "options": {"samples": 256}},
            "constraints": [{"metric": "modelSize", "max": 20000}],
            "budget": {"episodes": 2, "stepsPerEpisode": 2, "branches": 3, "topK": 3},
            "childTraining": {"regime": "prediction", "epochs": 1, "batchSize": 64, "lr": 0.1},
            "trainer": {
                "image": TRAINER_IMAGE,
                "gpu": 0,
                "cpu": "100m",
                "memory": "512Mi",
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 3600,
                "activeDeadlineSeconds": 600,
            },
            "store": {
                "uri": f"s3://{bucket}/searches",
                "endpoint": minio.endpoint,
                "secretName": store_secret,
                "region": minio.region,
            },
        }
        for key, value in overrides.items():
            spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
        return yaml.safe_dump(
            {"apiVersion": "epnas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": name}, "spec": spec}
        )

    return build


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ControllerProcess:
    """``python -m controller`` as a subprocess; ``.port`` serves /metrics, ``.log`` its output."""

    def __init__(self, argv: list[str], env: dict[str, str], log: pathlib.Path, port: int):
        self.argv, self.env, self.log, self.port = argv, env, log, port
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a node dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except (urllib.error.URLError, ConnectionError):  # not listening yet
            return 0, ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_controller(control_plane, minio, tmp_path, crd):
    started: list[ControllerProcess] = []

    def start(
        namespace: str, *, trainer_command: str | None = None, kubeconfig: pathlib.Path | None = None
    ) -> ControllerProcess:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "controller",
            "--namespace",
            namespace,
            "--metrics-port",
            str(port),
            "--leader-election-namespace",
            namespace,
            "--lease-duration",
            str(LEASE[0]),
            "--renew-deadline",
            str(LEASE[1]),
            "--retry-period",
            str(LEASE[2]),
        ]
        if trainer_command:
            argv += ["--trainer-command", trainer_command]
        if kubeconfig:
            argv += ["--kubeconfig", str(kubeconfig)]
        # The controller's own store credentials come from its environment, as in a Deployment.
        env = {
            **control_plane.env,
            "AWS_ACCESS_KEY_ID": minio.root_user,
            "AWS_SECRET_ACCESS_KEY": minio.root_password,
            "AWS_REGION": minio.region,
            "PYTHONUNBUFFERED": "1",
        }
        proc = ControllerProcess(argv, env, tmp_path / f"controller-{len(started)}.log", port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()


class JobLog:
    """Every Job ADDED in a namespace since the watch started: ``uids`` (uid → name)."""

    def __init__(self, api_client, namespace: str):
        self.batch = k8s_client.BatchV1Api(api_client)
        self.namespace = namespace
        self.uids: dict[str, str] = {}
        self.added_at: dict[str, float] = {}
        self.watch = k8s_watch.Watch()
        self.version = self.batch.list_namespaced_job(namespace).metadata.resource_version
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.stopped = False
        while not self.stopped:
            try:
                for event in self.watch.stream(
                    self.batch.list_namespaced_job, self.namespace, resource_version=self.version
                ):
                    job = event["object"]
                    self.version = job.metadata.resource_version or self.version
                    if event["type"] in ("ADDED", "MODIFIED") and job.metadata.uid not in self.uids:
                        self.uids[job.metadata.uid] = job.metadata.name
                        self.added_at[job.metadata.uid] = time.monotonic()
            except Exception:  # the connection closed: at teardown, or the API server restarted (a drill)
                if self.stopped:
                    return
                time.sleep(0.5)
                try:  # catch up with a list (a Job created meanwhile is in it), then watch from there
                    listed = self.batch.list_namespaced_job(self.namespace)
                except Exception:
                    continue
                for job in listed.items:
                    if job.metadata.uid not in self.uids:
                        self.uids[job.metadata.uid] = job.metadata.name
                        self.added_at[job.metadata.uid] = time.monotonic()
                self.version = listed.metadata.resource_version
                self.watch = k8s_watch.Watch()

    def names(self) -> list[str]:
        return sorted(self.uids.values())

    def stop(self) -> None:
        self.stopped = True
        self.watch.stop()


@pytest.fixture
def job_log(control_plane):
    logs: list[JobLog] = []

    def start(namespace: str) -> JobLog:
        log = JobLog(control_plane.api_client(), namespace)
        logs.append(log)
        return log

    yield start
    for log in logs:
        log.stop()


class TrainerState:
    """What the wrapper trainer recorded for one bucket, and the failure rules it follows."""

    def __init__(self, bucket: str):
        self.dir = WRAPPER_STATE / bucket
        self.dir.mkdir(parents=True, exist_ok=True)

    def fail(self, rules: dict[str, dict]) -> None:
        """``{child: {"exit": code, "times": n}}``: the child's first n attempts exit with code;
        ``{child: {"sleep_s": s}}``: every attempt waits s seconds first."""
        (self.dir / "rules.json").write_text(json.dumps(rules))

    def lines(self, kind: str) -> list[str]:
        path = self.dir / kind
        return path.read_text().split() if path.exists() else []

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def trainer_state():
    states: list[TrainerState] = []

    def make(bucket: str) -> TrainerState:
        state = TrainerState(bucket)
        states.append(state)
        return state

    yield make
    for state in states:
        state.cleanup()
