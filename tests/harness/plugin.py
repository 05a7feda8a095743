"""Pytest fixtures and hooks of the harness (the fixture list is in harness/__init__.py)."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import secrets
import subprocess
import time

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from harness import binaries, procs, rootfs
from harness.controlplane import ControlPlane
from harness.kueue import KueueServer
from harness.minio import MinioServer
from harness.node_agent import NodeAgent, NodeConfig, default_images

LOGS_KEY = pytest.StashKey[dict[str, pathlib.Path]]()
HARNESS_FIXTURES = {"control_plane", "node_agent", "minio", "bucket", "namespace", "helm", "kueue"}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[LOGS_KEY] = {}


def _register_logs(config: pytest.Config, logs: dict[str, pathlib.Path]) -> None:
    config.stash[LOGS_KEY].update(logs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Append the harness servers' log tails to failed reports of tests that use the harness."""
    report = yield
    uses_harness = item.get_closest_marker("integration") is not None or bool(
        HARNESS_FIXTURES & set(getattr(item, "fixturenames", ()))
    )
    if report.failed and uses_harness:
        for name, path in item.config.stash[LOGS_KEY].items():
            report.sections.append((f"harness log tail: {name} ({path})", procs.log_tail(path)))
    return report


def _start_or_fail(server) -> None:
    try:
        server.start()
    except binaries.MissingBinaryError as error:
        server.stop()
        pytest.fail(str(error), pytrace=False)
    except Exception:
        server.stop()
        raise


@pytest.fixture(scope="session")
def harness_workdir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("epnas-harness")


@pytest.fixture(scope="session")
def control_plane(harness_workdir: pathlib.Path, pytestconfig: pytest.Config):
    plane = ControlPlane(harness_workdir / "control-plane")
    try:
        _start_or_fail(plane)
    finally:
        _register_logs(pytestconfig, plane.log_paths)
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def _node_agent_session(control_plane: ControlPlane, harness_workdir: pathlib.Path, pytestconfig: pytest.Config):
    workdir = harness_workdir / "node-agent"
    workdir.mkdir()
    log_path = workdir / "node-agent.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
    logger = logging.getLogger("epnas.node_agent")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    _register_logs(pytestconfig, {"node-agent": log_path})
    port = int(control_plane.server.rsplit(":", 1)[1])
    agent = NodeAgent(control_plane.api_client, workdir=workdir, apiserver_port=port)
    agent.start()
    yield agent
    agent.stop()
    logger.removeHandler(handler)
    handler.close()


@pytest.fixture
def node_agent(_node_agent_session: NodeAgent):
    agent = _node_agent_session
    defaults = NodeConfig()
    yield agent
    agent.images.clear()
    agent.images.update(default_images())
    agent.local_images.clear()
    if agent.config.taints != defaults.taints:
        agent.set_taints(defaults.taints)
    if agent.config.labels != defaults.labels:
        agent.set_labels(defaults.labels)


@pytest.fixture(scope="session")
def minio(harness_workdir: pathlib.Path, pytestconfig: pytest.Config):
    server = MinioServer(harness_workdir / "minio")
    _register_logs(pytestconfig, {"minio": server.log_path})
    _start_or_fail(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kueue(control_plane: ControlPlane, harness_workdir: pathlib.Path, pytestconfig: pytest.Config):
    """The Kueue manager (harness/kueue.py) against `control_plane`: its CRDs installed, its webhooks registered."""
    server = KueueServer(harness_workdir / "kueue", control_plane)
    _register_logs(pytestconfig, {"kueue": server.log_path})
    _start_or_fail(server)
    yield server
    server.stop()


def _dns_label(text: str, *, limit: int) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].strip("-") or "t"


@pytest.fixture
def bucket(minio: MinioServer, request: pytest.FixtureRequest):
    name = f"{_dns_label(request.node.name, limit=40)}-{secrets.token_hex(4)}"
    s3 = minio.s3_client()
    s3.create_bucket(Bucket=name)
    yield name
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest):
    core = k8s_client.CoreV1Api(control_plane.api_client())
    name = f"t-{_dns_label(request.node.name, limit=40)}-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name, "labels": {"epnas.io/test": "true"}}})
    deadline = time.monotonic() + 30
    # The ServiceAccount admission plugin rejects pods until `default` exists, and the
    # projected kube-api-access volume needs the kube-root-ca.crt ConfigMap.
    for read in (
        lambda: core.read_namespaced_service_account("default", name),
        lambda: core.read_namespaced_config_map("kube-root-ca.crt", name),
    ):
        while True:
            try:
                read()
                break
            except ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


class Helm:
    """The pinned helm binary bound to the test control plane, with its own cache/config/data dirs."""

    def __init__(self, binary: pathlib.Path, *, control_plane: ControlPlane, home: pathlib.Path) -> None:
        self.binary = binary
        self.env = {
            **control_plane.env,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, check: bool = True, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """Run `helm *args`; stdout/stderr captured as text; CalledProcessError when check and it fails."""
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, check=check, timeout=timeout_s
        )


@pytest.fixture(scope="session")
def helm(control_plane: ControlPlane, harness_workdir: pathlib.Path) -> Helm:
    try:
        binary = binaries.require("helm")
    except binaries.MissingBinaryError as error:
        pytest.fail(str(error), pytrace=False)
    return Helm(binary, control_plane=control_plane, home=harness_workdir / "helm")


IMAGES_HINT = "install buildah and debootstrap (`make test-deps`; apt-get install -y buildah debootstrap)"


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Both images, built by scripts/images with buildah (cached by their inputs' hash, so a
    rebuild happens only when a Dockerfile, a build argument or a file they copy changes):
    {"controller": ref, "trainer": ref}. A missing tool fails the test, saying what to install."""
    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "images"
    env = {**os.environ, "EPNAS_IMAGE_BUILDER": "buildah"}
    started = time.monotonic()
    result = subprocess.run([str(script)], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/images failed ({IMAGES_HINT}):\n{result.stderr[-4000:]}", pytrace=False)
    logging.getLogger("epnas.images").info(
        "images ready in %.0f s: %s", time.monotonic() - started, result.stdout.strip()
    )
    refs = dict(line.split() for line in result.stdout.strip().splitlines())
    try:
        rootfs.require_root()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    return refs


@pytest.fixture(scope="session")
def argo(control_plane: ControlPlane, harness_workdir: pathlib.Path, pytestconfig: pytest.Config):
    """Argo's workflow-controller (harness/argo.py) against `control_plane`: its CRDs installed,
    its executor image built; `.use_node(node_agent, *images)` and `.grant_executor(ns)` per test."""
    from harness.argo import ArgoServer

    server = ArgoServer(harness_workdir / "argo", control_plane)
    _register_logs(pytestconfig, {"workflow-controller": server.log_path})
    _start_or_fail(server)
    yield server
    server.stop()
